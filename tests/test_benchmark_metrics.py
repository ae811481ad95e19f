"""The public benchmarks' metrics: hand-computed cases, garbage replies, and (where lmms-eval is installed)
agreement with the reference scorers' own code (tests/official_scorers.py)."""

from __future__ import annotations

import math

import pytest

from tests import official_scorers
from vlm_jax.eval import benchmark_metrics as bm
from vlm_jax.eval import metrics

OPTS = {"A": "red", "B": "green", "C": "blue", "D": "white"}


def test_anls_hand_computed():
    refs = ["March 3, 1998", "3/3/98"]
    assert bm.anls("3/3/98", refs).value == 1.0
    # "march 3 1998" vs "march 3, 1998": 1 edit / 13 (the longer raw string) -> 12 / 13.
    assert bm.anls("march 3 1998", refs).value == pytest.approx(12 / 13)
    assert bm.anls("J Smith", ["J. Smith"]).value == pytest.approx(7 / 8)
    # 9 edits / 13 -> 4 / 13 < 0.5 -> 0.
    s = bm.anls("1998", refs[:1])
    assert s.value == 0.0 and s.extras["nl"] == pytest.approx(9 / 13) and not s.malformed
    # NL exactly 0.5 keeps its 0.5 (the reference scorer zeroes only scores below the threshold).
    assert bm.anls("abxy", ["abcd"]).value == 0.5
    # Lengths are the raw strings': "a    b" vs "ab" is 1 edit of "a b" -> "ab", over 6 characters.
    assert bm.anls("a    b", ["ab"]).value == pytest.approx(5 / 6)
    assert bm.anls("  NORWAY ", ["Norway"]).value == 1.0  # case and surrounding space do not count
    assert bm.anls("", ["Norway"]).malformed
    with pytest.raises(ValueError, match="at least one reference"):
        bm.anls("x", [])


def test_relaxed_accuracy_hand_computed():
    assert bm.relaxed_accuracy("47.5", "47.5").value == 1.0
    assert bm.relaxed_accuracy("45.2", "47.5").value == 1.0  # |45.2 - 47.5| / 47.5 = 0.0484
    assert bm.relaxed_accuracy("45.1", "47.5").value == 0.0  # 0.0505
    assert bm.relaxed_accuracy("50%", "0.5").value == 1.0  # a percentage is divided by 100
    assert bm.relaxed_accuracy("12%", "12").value == 0.0
    assert bm.relaxed_accuracy(" Yes ", "yes").value == 1.0
    assert bm.relaxed_accuracy("yes.", "yes").value == 0.0  # text must match exactly
    assert bm.relaxed_accuracy("0", "0").value == 1.0
    assert bm.relaxed_accuracy("0.0", "0").value == 0.0  # a zero reference is compared as text
    assert bm.relaxed_accuracy("2010", ["2009", "2010"]).value == 1.0
    assert bm.relaxed_accuracy("", "1").malformed


def test_ocrbench_hand_computed():
    assert bm.ocrbench_match("The text is HELLO.", ["HELLO"]).value == 1.0
    assert bm.ocrbench_match("HELL0", ["HELLO"]).value == 0.0
    # HME100k: spaces and line breaks dropped, case kept.
    assert bm.ocrbench_match("$x^{2}+1$", ["x ^ { 2 } + 1"], "HME100k").value == 1.0
    assert bm.ocrbench_match("$x^{2}+1$", ["x ^ { 2 } + 1"], "IIIT5K").value == 0.0
    assert bm.ocrbench_match("X^{2}+1", ["x ^ { 2 } + 1"], "HME100k").value == 0.0
    assert bm.ocrbench_match("annual\nreport", "Annual report").value == 1.0
    summary = bm.ocrbench_summary(["Regular Text Recognition", "Handwriting Recognition", "Doc-oriented VQA"],
                                  [1.0, 1.0, 0.0])
    assert summary["Text Recognition"] == 2.0 and summary["Final Score"] == 2.0
    assert summary["Doc-oriented VQA"] == 0.0 and summary["Key Information Extraction"] == 0.0


def test_counting_hand_computed():
    assert bm.countbench_exact("10", 10).value == 1.0
    assert bm.countbench_exact(" Ten ", 10).value == 1.0 and bm.countbench_exact("twenty", 20).value == 1.0
    assert bm.countbench_exact("none", 0).value == 1.0
    assert bm.countbench_exact("9", 10).value == 0.0 and not bm.countbench_exact("9", 10).malformed
    for reply in ("10.", "There are 10", ""):  # not a bare number: 0, malformed
        s = bm.countbench_exact(reply, 10)
        assert s.value == 0.0 and s.malformed, reply
    assert bm.pixmo_count_exact("There are 3 dogs.", 3).value == 1.0
    assert bm.pixmo_count_exact("3 or 4", 3).value == 1.0  # the first integer
    assert bm.pixmo_count_exact("I count 13", 3).value == 0.0
    assert bm.pixmo_count_exact("7", "7 people").value == 1.0
    assert bm.pixmo_count_exact("three", 3).malformed


@pytest.mark.parametrize("reply, picked", [
    ("C", "C"), ("(C)", "C"), ("C. blue", "C"), ("The answer is C.", "C"), ("Answer: B", "B"), ("A. red", "A"),
    ("**D**", "D"), ("blue", "C"), ("It is green.", "B"),
    ("A cat sat there", None),  # "A" in a long reply may be the article, and no option text occurs
    ("A bird, probably red", "A"),  # ... the text rule then finds "red"
    ("B or C", None), ("green or blue", None), ("Cannot determine the answer", None), ("Z", None), ("", None),
])
def test_option_extraction(reply, picked):
    assert bm.extract_option(reply, OPTS) == picked
    s = bm.choice_accuracy(reply, OPTS, "C")
    assert s.malformed == (picked is None) and s.value == float(picked == "C")


def test_circular_and_temporal_hand_computed():
    assert bm.circular_accuracy([1, 1, 0, 1, 1, 1], [1, 1, 1, 2, 2, 3]) == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        bm.circular_accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="not one of the option letters"):
        bm.choice_accuracy("A", OPTS, "E")
    assert bm.parse_time_span("The event happens in the 2.5 - 7.1 seconds.") == (2.5, 7.1)
    assert bm.parse_time_span("It happens from 3 to 5 seconds") == (3.0, 5.0)
    assert bm.parse_time_span("The event ends 7.1 \u2013 2.5") == (2.5, 7.1)  # en dash; ordered
    assert bm.parse_time_span("Starting time: 0.8 seconds\nEnding time: 1.1 seconds") == (0.8, 1.1)
    assert bm.parse_time_span("It happens at 2.5s - 7.1s") == (2.5, 7.1)
    # Only sentences about the start / end / happening count; one number is not a span.
    assert bm.parse_time_span("from 3 to 5 seconds") is None
    assert bm.parse_time_span("The start time is 4 seconds.") is None
    assert bm.parse_time_span("no idea") is None
    assert bm.span_iou((2, 6), (4, 8)) == pytest.approx(2 / 6)
    assert bm.span_iou((0, 1), (2, 3)) == 0.0 and bm.span_iou((1, 1), (1, 1)) == 0.0
    s = bm.temporal_iou_score("It happens in 4.0 - 8.0 seconds", [2.0, 6.0])
    assert s.value == pytest.approx(2 / 6) and s.extras["iou"] == s.value and not s.malformed
    assert bm.temporal_iou_score("soon", [2.0, 6.0]).malformed
    r = bm.recall_at_iou([0.2, 0.35, 0.55, 0.8])
    assert r == pytest.approx({"R@0.3": 0.75, "R@0.5": 0.5, "R@0.7": 0.25, "mIoU": 0.475})


GARBAGE = ["", " ", "garbage !!", "[" * 5000, "9" * 5000, "-" + "9" * 5000 + ".5", "NaN", "inf%", "1e999",
           "\ud800\udfff\x00", "</think>", "A B C D", "ÄÖÜ ß", "Z", "1 - 2 - 3", "99999999999999999999 - 1"]


def test_metrics_never_raise_on_garbage():
    calls = [lambda r: bm.anls(r, ["abc"]), lambda r: bm.relaxed_accuracy(r, "12"),
             lambda r: bm.relaxed_accuracy(r, "0"), lambda r: bm.ocrbench_match(r, ["x"], "HME100k"),
             lambda r: bm.countbench_exact(r, 3), lambda r: bm.pixmo_count_exact(r, 3),
             lambda r: bm.choice_accuracy(r, OPTS, "A"), lambda r: bm.temporal_iou_score(r, [1.0, 2.0])]
    for reply in GARBAGE:
        for call in calls:
            s = call(reply)
            assert isinstance(s, metrics.Score) and 0.0 <= s.value <= 1.0, reply[:20]
            assert all(math.isfinite(v) for v in s.extras.values())


# ----------------------------------------------------------------------------- against the reference scorers


def test_anls_matches_lmms_eval():
    ref = official_scorers.load("api/metrics.py")
    cases = [("March 3, 1998", ["March 3, 1998", "3/3/98"]), ("march 3 1998", ["March 3, 1998"]),
             ("1998", ["March 3, 1998"]), ("abxy", ["abcd"]), ("a    b", ["ab"]), ("J Smith", ["J. Smith"]),
             ("  NORWAY ", ["Norway"]), ("$ 1,250", ["$ 1,250.00"]), ("", ["x"]), ("Straße", ["STRASSE"])]
    for pred, answers in cases:
        assert bm.anls(pred, answers).value == pytest.approx(ref.anls(answers, [pred])["anls"]), (pred, answers)


def test_relaxed_accuracy_matches_lmms_eval():
    ref = official_scorers.load("tasks/chartqa/utils.py")
    cases = [("47.5", "47.5"), ("45.2", "47.5"), ("45.1", "47.5"), ("50%", "0.5"), ("12%", "12"), ("Yes", "yes"),
             ("yes.", "yes"), ("0", "0"), ("0.0", "0"), ("-3", "3"), ("1e3", "1000"), ("nan", "1"), ("inf", "5"),
             ("Canada", "canada"), ("2009", "2010"), ("0.051", "0.05"), ("1,000", "1000")]
    for pred, target in cases:
        assert bm.relaxed_accuracy(pred, target).value == float(ref.relaxed_correctness(pred, target)), (pred, target)


def test_counting_matches_lmms_eval():
    countbench = official_scorers.load("tasks/countbench/utils.py")
    pixmo = official_scorers.load("tasks/pixmo_count/utils.py")
    for reply in ("10", " Ten ", "twenty", "none", "9", "10.", "There are 10", "0", "zero", "3 or 4", "I count 13"):
        for n in (0, 3, 10, 20):
            doc = {"number": n, "answer": str(n), "question": "How many?"}
            assert bm.countbench_exact(reply, n).value == countbench.countbench_process_results(doc, [reply])["acc"]
            assert bm.pixmo_count_exact(reply, n).value == pixmo.pixmo_count_process_results(doc, [reply])["acc"]


def test_ocrbench_matches_lmms_eval():
    ref = official_scorers.load("tasks/ocrbench/utils.py")
    cases = [("The text is HELLO.", ["HELLO"], "IIIT5K"), ("HELL0", ["HELLO"], "IIIT5K"),
             ("$x^{2}+1$", ["x ^ { 2 } + 1"], "HME100k"), ("X^{2}+1", ["x ^ { 2 } + 1"], "HME100k"),
             ("annual\nreport", "Annual report", "docVQA"), ("annual report 2020", ["Annual Report"], "docVQA")]
    for pred, answers, dataset in cases:
        doc = {"answer": answers, "dataset": dataset, "question_type": "Doc-oriented VQA"}
        want = ref.ocrbench_process_results(doc, [pred])["ocrbench_accuracy"]["score"]
        assert bm.ocrbench_match(pred, answers, dataset).value == want, (pred, answers)


def test_temporal_matches_lmms_eval():
    ref = official_scorers.load("tasks/charades_sta/eval_tvg.py")
    gt = [2.0, 6.0]
    replies = ["The event happens in the 2.5 - 7.1 seconds.", "from 3 to 5 seconds", "It happens from 3 to 5 seconds",
               "The event ends 7.1 \u2013 2.5", "Starting time: 0.8 seconds\nEnding time: 1.1 seconds",
               "The event 'x' happens in 4.0-8.0 seconds", "It happens at 2.5s - 7.1s", "It starts at 1 and ends at 3.",
               "Start: 1\nEnd: 5.5\nStart again: 9", "0 - 10", "no idea", "The start time is 4 seconds.",
               "The event starts at 00:00:18\nand ends at 00:00:23", "it happens between 1.5 and 4 seconds"]
    for reply in replies:
        spans = ref.extract_time(reply)
        want = ref.iou(gt, spans[0]) if len(spans) == 1 else 0.0  # no span: a substitute after the clip, IoU 0
        assert bm.temporal_iou_score(reply, gt).value == pytest.approx(want), reply

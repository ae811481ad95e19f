"""The public benchmarks' own metric definitions: pure functions of (reply, ground truth) -> `metrics.Score`.

Each follows the definition of the benchmark's reference scorer (named in its docstring) so that numbers
compare with published ones; like `metrics`, none raises on model text. Aggregates over items
(circular evaluation, recall at IoU thresholds, OCRBench's category sums) are here too.

    anls                 DocVQA, InfoVQA      Average Normalized Levenshtein Similarity (threshold 0.5)
    relaxed_accuracy     ChartQA              numbers within 5% relative error, else exact text
    ocrbench_match       OCRBench             the reference occurs in the reply (per-dataset normalisation)
    countbench_exact     CountBench           the whole reply is the count (digits or a number word)
    pixmo_count_exact    PixMo-Count          the reply's first integer is the count
    choice_accuracy      MMMU, MMBench,       the option letter the reply picks (rule-based extraction of
                         MMStar, Video-MME    the Qwen3-VL evaluation) is the answer
    circular_accuracy    MMBench              a question counts only if all its circular copies are right
    temporal_iou_score   Charades-STA         IoU of the reply's [start, end] span with the reference
    box_accuracy         RefCOCO(+/g)         `metrics.box_accuracy`: first box's IoU >= 0.5
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence

from vlm_jax.eval.metrics import Score, edit_distance

ANLS_THRESHOLD = 0.5
RELAXED_TOLERANCE = 0.05
TEMPORAL_IOU_THRESHOLDS = (0.3, 0.5, 0.7)


def _malformed(**extras: float) -> Score:
    """An unreadable reply: scores 0, flagged malformed (as in `metrics`)."""
    return Score(0.0, True, extras)


# ----------------------------------------------------------------------------- documents, charts, OCR


def _collapse(s: str) -> str:
    return " ".join(s.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> Score:
    """ANLS of one question, as the DocVQA / InfoVQA (RRC) evaluation defines it (Qwen-VL's
    infographicsvqa_eval.py, VLMEvalKit and lmms-eval copy it): per reference, NL = edit distance of the
    normalised strings (stripped, lower case, whitespace collapsed) / the longer *raw* string's length;
    the score is 1 - min NL over the references, 0 when that is below `threshold`. extras: nl (min NL)."""
    if not answers:
        raise ValueError("ANLS needs at least one reference answer")
    pred = str(prediction)
    nls = []
    for ans in map(str, answers):
        length = max(len(ans.upper()), len(pred.upper()))  # the reference scorer's lengths, unnormalised
        nls.append(0.0 if length == 0 else edit_distance(_collapse(ans), _collapse(pred)) / length)
    value = 1.0 - min(nls)
    value = 0.0 if value < threshold else value
    if not pred.strip() and value == 0.0:
        return _malformed(nl=min(nls))
    return Score(value, False, {"nl": min(nls)})


def _relaxed_float(text: str) -> float | None:
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, answers: str | Sequence[str], tolerance: float = RELAXED_TOLERANCE) -> Score:
    """ChartQA's relaxed accuracy (Methani et al.; the pix2struct / Qwen-VL evaluate_vqa.py definition that
    lmms-eval and VLMEvalKit use): when the reply and a non-zero reference both parse as numbers (a
    trailing % divides by 100), right within `tolerance` relative error; otherwise right on
    case-insensitive equality. The reply is stripped of surrounding whitespace first. Several references:
    right if any is."""
    refs = [answers] if isinstance(answers, str) else list(answers)
    if not refs:
        raise ValueError("relaxed accuracy needs at least one reference answer")
    pred = str(prediction).strip()
    if not pred:
        return _malformed()
    for ref in map(str, refs):
        p, t = _relaxed_float(pred), _relaxed_float(ref)
        if p is not None and t:  # a zero reference falls through to the string comparison
            if abs(p - t) / abs(t) <= tolerance:
                return Score(1.0)
        elif pred.lower() == ref.lower():
            return Score(1.0)
    return Score(0.0)


HME_DATASET = "HME100k"  # OCRBench's handwritten mathematical expressions


def ocrbench_match(prediction: str, answers: str | Sequence[str], dataset: str = "") -> Score:
    """OCRBench's rule (its official evaluation script, which VLMEvalKit follows): right when a reference
    occurs in the reply. Items of the HME100k dataset compare with all spaces and line breaks removed;
    the others case-insensitively, stripped, with line breaks as spaces."""
    refs = [answers] if isinstance(answers, str) else list(answers)
    pred = str(prediction)
    if not pred.strip():
        return _malformed()
    if dataset == HME_DATASET:
        norm = lambda s: s.strip().replace("\n", " ").replace(" ", "")  # noqa: E731
    else:
        norm = lambda s: s.lower().strip().replace("\n", " ")  # noqa: E731
    return Score(float(any(norm(str(r)) in norm(pred) for r in refs)))


# OCRBench's categories (`question_type`), the six text-recognition ones first; totals on the full set.
OCRBENCH_RECOGNITION = ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                        "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition")
OCRBENCH_CATEGORIES = (*OCRBENCH_RECOGNITION, "Scene Text-centric VQA", "Doc-oriented VQA",
                       "Key Information Extraction", "Handwritten Mathematical Expression Recognition")


def ocrbench_summary(categories: Sequence[str], hits: Sequence[float]) -> dict[str, float]:
    """OCRBench's report: right answers per category, "Text Recognition" (the six recognition categories
    together) and "Final Score" (all of them; out of 1000 on the full benchmark)."""
    sums: dict[str, float] = {c: 0.0 for c in OCRBENCH_CATEGORIES}
    for c, h in zip(categories, hits, strict=True):
        sums[c] = sums.get(c, 0.0) + float(h)
    sums["Text Recognition"] = sum(sums[c] for c in OCRBENCH_RECOGNITION)
    sums["Final Score"] = float(sum(hits))
    return sums


# ----------------------------------------------------------------------------- counting

_COUNT_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
     "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"))}
_COUNT_WORDS["none"] = "0"


def _count_text(text: str) -> str:
    s = str(text).strip().lower()
    return _COUNT_WORDS.get(s, s)


def countbench_exact(prediction: str, count: int | str) -> Score:
    """CountBench(QA)'s exact match (lmms-eval's countbench task): the whole reply, stripped and lower
    case, a number word ("zero".."twenty", "none") read as its numeral, equals the count. A reply that
    is not a bare number is malformed."""
    pred = _count_text(prediction)
    value = float(pred == _count_text(str(count)))
    return Score(value) if value or pred.isdigit() else _malformed()


def pixmo_count_exact(prediction: str, count: int | str) -> Score:
    """PixMo-Count's exact match (lmms-eval's pixmo_count task): the reply's first run of digits equals
    the reference's (its first run of digits, for a reference like "5 dogs"). No digits: malformed."""
    ref = re.search(r"\d+", str(count))
    pred = re.search(r"\d+", str(prediction))
    if pred is None:
        return _malformed()
    return Score(float(pred.group() == (ref.group() if ref else str(count).strip())))


# ----------------------------------------------------------------------------- multiple choice

# Replies the Qwen3-VL / VLMEvalKit extraction treats as a refusal (its "Z").
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
_OPTION_PUNCTUATION = re.compile(r"[.()\[\],:;!*#{}]")


def extract_option(prediction: str, options: Mapping[str, str]) -> str | None:
    """The option letter a reply picks, by the rules the Qwen3-VL evaluation (evaluation/*/eval_utils.py,
    from VLMEvalKit's can_infer) applies before it asks an LLM judge; None where it would ask the judge
    (or the reply refuses). In order:
      1. a refusal phrase -> None;
      2. punctuation .()[],:;!*#{} becomes spaces; exactly one option letter among the words picks it,
         unless that letter is "A" in a reply of more than 3 words ("A" may be the article);
      3. exactly one option's text occurring in the reply (case-insensitive) picks it.
    """
    pred = str(prediction)
    if any(r in pred for r in REFUSALS):
        return None
    words = _OPTION_PUNCTUATION.sub(" ", pred).split()
    letters = [k for k in options if k in words]
    if len(letters) == 1 and not ("A" in words and len(words) > 3):
        return letters[0]
    if not letters and "Z" in words:  # the reference extraction's explicit "none of these"
        return None
    low = pred.lower()
    hits = [k for k, text in options.items() if str(text).lower() in low]
    return hits[0] if len(hits) == 1 else None


def choice_accuracy(prediction: str, options: Mapping[str, str], answer: str) -> Score:
    """1 when `extract_option` picks the reference letter `answer`; no pick is malformed (the reference
    evaluation would ask an LLM judge there; this scores it wrong)."""
    if answer not in options:
        raise ValueError(f"reference answer {answer!r} is not one of the option letters {sorted(options)}")
    picked = extract_option(prediction, options)
    return _malformed() if picked is None else Score(float(picked == answer))


def circular_accuracy(hits: Sequence[float], groups: Sequence[Hashable]) -> list[float]:
    """MMBench's circular evaluation: the items of a group are one question asked with its options
    rotated; a group scores 1 only when every one of its items does. Per-group 0 / 1 in order of first
    appearance (their mean is the circular accuracy)."""
    out: dict[Hashable, bool] = {}
    for h, g in zip(hits, groups, strict=True):
        out[g] = out.get(g, True) and float(h) == 1.0
    return [float(v) for v in out.values()]


# ----------------------------------------------------------------------------- temporal grounding

_SPAN_RE = re.compile(r"(\d+(?:\.\d+)?)\s*[\u2013-]\s*(\d+(?:\.\d+)?)")
_SPAN_SECONDS_RE = re.compile(r"(\d+(?:\.\d+)?)\s*s?\s*[\u2013-]\s*(\d+(?:\.\d+)?)")  # "2.5s - 7.1s"
_NUMBER_RE = re.compile(r"\b\d+(?:\.\d+)?\b")
_SPAN_KEYWORDS = ("start", "end", "happen")


def parse_time_span(text: str) -> tuple[float, float] | None:
    """The [start, end] seconds of a temporal-grounding reply, by the rules of lmms-eval's Charades-STA
    scorer (tasks/charades_sta/eval_tvg.py): "to" reads as "-"; only sentences (split at ! ? and line
    breaks) that mention start / end / happen count; in them, the first "a - b" pair of numbers, else
    the first numbers of the first two such sentences, else an "as - bs" pair. Ordered so that
    start <= end; None when nothing is found. (That scorer's HH:MM:SS rule never fires: a sentence with
    such a time has a number.)"""
    low = str(text).lower().replace("to", "-")
    sentences = [s for s in re.split(r"[!?\n]", low) if any(k in s for k in _SPAN_KEYWORDS)]
    pair = next(([float(a), float(b)] for s in sentences for a, b in _SPAN_RE.findall(s)[:1]), None)
    if pair is None:
        firsts = [float(n.group()) for s in sentences if (n := _NUMBER_RE.search(s))]
        pair = firsts[:2] if len(firsts) >= 2 else None
    if pair is None:
        pair = next(([float(a), float(b)] for s in sentences for a, b in _SPAN_SECONDS_RE.findall(s)[:1]), None)
    if pair is None or not all(math.isfinite(v) for v in pair):
        return None
    return min(pair), max(pair)


def span_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Temporal IoU of two [start, end] spans: overlap / hull, which is the union whenever they overlap
    (0 for disjoint or empty spans)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    hull = max(a[1], b[1]) - min(a[0], b[0])
    return inter / hull if inter > 0 and hull > 0 else 0.0


def temporal_iou_score(prediction: str, span: Sequence[float]) -> Score:
    """Charades-STA's per-query score: the IoU of the reply's span with the reference `span` (value, and
    extras iou); no span in the reply is malformed and scores IoU 0, as the reference scorer's
    substitute span after the clip does."""
    found = parse_time_span(prediction)
    if found is None:
        return _malformed(iou=0.0)
    iou = span_iou(found, (float(span[0]), float(span[1])))
    return Score(iou, False, {"iou": iou})


def recall_at_iou(ious: Sequence[float], thresholds: Sequence[float] = TEMPORAL_IOU_THRESHOLDS) -> dict[str, float]:
    """"R@t": the fraction of queries with IoU >= t, for each threshold, and "mIoU": the mean IoU."""
    n = max(len(ious), 1)
    out = {f"R@{t:g}": sum(i >= t for i in ious) / n for t in thresholds}
    out["mIoU"] = sum(ious) / n
    return out

"""Scoring one model reply against one ground truth: pure functions that never raise on model text.

The single home of answer parsing and scoring, used by the evaluation harness (`eval.tasks.score_item`
picks a metric per task family), the synthetic world's self-checks (`score`: the reference reply of
every sample scores 1) and RL rewards (`score_answer(answer, reply).value`, with `.malformed` as a
format signal). Every function is a pure function of (reply text, ground truth).

Every metric returns a `Score`: `value` in [0, 1], `malformed` (the reply could not be parsed into
the expected kind of answer: no box, no number, no option, an empty reply) and `extras` (e.g. the IoU
of the predicted box, the character error rate). A malformed reply scores 0; the harness counts them.

Replies are model text: anything may come back (garbage, truncated JSON, NaN, 5000-digit numbers,
deeply nested brackets), so every parse failure becomes "not found". Coordinates are Qwen3-VL's
relative [0, 1000] units.

The public benchmarks' own metric definitions (ANLS, relaxed accuracy, ...) are in `benchmark_metrics`,
built on this module's `Score` and `edit_distance`.

`score_answer` picks the rule from the ground truth's keys, first match wins: `count` (last integer or
number word), `time` (first number within the answer's `tolerance`), `value` (last integer),
`point_2d` (inside `bbox_2d` when given, else within `radius`), `bbox_2d` (IoU >= 0.5), `text`
(`text_match`). Only the text after the last `</think>` is scored.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

IOU_THRESHOLD = 0.5
# One tolerance rule for every temporal score: the ground truth's own `tolerance` when it has one,
# else TIME_TOLERANCE_S. Qwen3-VL sees a video as 2-frame temporal patch groups with one timestamp
# each; at its default 2 fps a group spans 1 s, so a +-0.5 s window is one group wide: the time
# resolution the model is given. The synthetic world's events sit exactly on (even) frames, so its
# answers carry half a frame interval (0.25 s at 2 fps): name the frame. A flat 1 s would let a
# constant "2.0" score every synthetic item (events at 1, 2 and 3 s).
TIME_TOLERANCE_S = 0.5
POINT_RADIUS = 40.0  # a point without a box to land in is right within this distance ([0, 1000] units)
COORD_MAX = 1000.0

_NUM_WORDS = {w: i for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
_INT_OR_WORD_RE = re.compile(r"-?\d+|[a-z]+")
_INT_RE = re.compile(r"-?\d+")
_FLOAT_RE = re.compile(r"-?\d+(?:\.\d+)?")
# "B", "(B)", "B.", "B) text", "Answer: B", "answer is (b)": a letter that stands alone.
_LETTER_RE = re.compile(r"^\s*(?:(?:the\s+)?answer(?:\s+is)?\s*[:\-]?\s*)?\(?([A-Za-z])\)?(?:[.:)]\s*|\s*$)",
                        re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Score:
    """One item's result: value in [0, 1]; malformed: unparseable reply; extras: e.g. iou, cer."""

    value: float
    malformed: bool = False
    extras: Mapping[str, float] = dataclasses.field(default_factory=dict)


def _malformed(**extras: float) -> Score:
    return Score(0.0, True, extras)


# ----------------------------------------------------------------------------- parsing


def final_answer(text: str) -> str:
    """The text after the last `</think>` (all of it if there is none), stripped: what is scored."""
    return text.rsplit("</think>", 1)[-1].strip()


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped, articles removed, whitespace collapsed."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def _json_objects(text: str) -> list[dict]:
    """The dicts of the reply's JSON list / object, else `"bbox_2d"` / `"point_2d"` items found by regex.

    A span that parses to no dicts (the `[30, 40]` inside `{"point_2d": [30, 40]}`) falls through to
    the next rule, and "[[[[..." (RecursionError) is not fatal.
    """
    t = re.sub(r"```(?:json)?", "", text)
    for opener, closer in (("[", "]"), ("{", "}")):
        i, j = t.find(opener), t.rfind(closer)
        if 0 <= i < j:
            try:
                obj = json.loads(t[i : j + 1])
            except (ValueError, RecursionError):
                continue
            dicts = [x for x in (obj if isinstance(obj, list) else [obj]) if isinstance(x, dict)]
            if dicts:
                return dicts
    out = []  # truncated JSON: the complete boxes / points in it
    for key in ("bbox_2d", "point_2d"):
        out += [{key: [float(x) for x in _FLOAT_RE.findall(m.group(1))]}
                for m in re.finditer(rf'"{key}"\s*:\s*\[([^\]]*)\]', t)]
    return out


def _as_floats(v: Any, n: int) -> list[float] | None:
    """`v` as n finite floats, or None (bools, strings, NaN, inf and overflowing ints are rejected)."""
    if not isinstance(v, list | tuple) or len(v) != n:
        return None
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int | float):
            return None
        try:
            f = float(x)
        except OverflowError:  # an int too large for a float
            return None
        if not math.isfinite(f):
            return None
        out.append(f)
    return out


def parse_boxes(text: str) -> list[list[float]]:
    """All `"bbox_2d": [x1, y1, x2, y2]` boxes of the reply's JSON, in order (finite numbers only)."""
    boxes = (_as_floats(it.get("bbox_2d"), 4) for it in _json_objects(text))
    return [b for b in boxes if b is not None]


def parse_points(text: str) -> list[list[float]]:
    """All `"point_2d": [x, y]` points of the reply's JSON, in order (finite numbers only)."""
    points = (_as_floats(it.get("point_2d"), 2) for it in _json_objects(text))
    return [p for p in points if p is not None]


def _to_int(token: str) -> int | float:
    try:
        return int(token)
    except ValueError:  # more digits than Python's int-from-str limit: no count can equal it
        return math.inf


def last_integer(text: str, words: bool = False) -> int | float | None:
    """The last integer of `text` (with `words`: also "zero".."ten", and "no"/"none" as 0); None if none."""
    if not words:
        found = _INT_RE.findall(text)
        return _to_int(found[-1]) if found else None
    value = None
    for tok in _INT_OR_WORD_RE.findall(text.lower()):
        if tok in ("no", "none"):
            value = 0
        elif tok in _NUM_WORDS:
            value = _NUM_WORDS[tok]
        elif tok[-1].isdigit():
            value = _to_int(tok)
    return value


def first_number(text: str) -> float | None:
    """The first decimal number of `text` (None if there is none or it is not finite)."""
    m = _FLOAT_RE.search(text)
    if m is None:
        return None
    v = float(m.group())  # float() of a long digit string gives inf, it does not raise
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- grounding and pointing


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 for empty boxes)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _area(r: Sequence[float]) -> float:
    return max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])


def _clip_box(b: Sequence[float]) -> list[float]:
    # True boxes lie in [0, 1000]; clipping keeps the intersection and bounds the union (no inf - inf).
    return [min(max(float(x), 0.0), COORD_MAX) for x in b]


def box_accuracy(prediction: str, box: Sequence[float], threshold: float = IOU_THRESHOLD) -> Score:
    """1 if the first predicted box has IoU >= `threshold` with `box`; extras: iou (0 when malformed)."""
    boxes = parse_boxes(prediction)
    if not boxes:
        return _malformed(iou=0.0)
    iou = box_iou(_clip_box(boxes[0]), _clip_box(box))
    return Score(float(iou >= threshold), False, {"iou": iou})


def point_in_box(prediction: str, box: Sequence[float]) -> Score:
    """1 if the first predicted point lies inside `box` (edges included)."""
    points = parse_points(prediction)
    if not points:
        return _malformed()
    (x, y), (x1, y1, x2, y2) = points[0], box
    return Score(float(x1 <= x <= x2 and y1 <= y <= y2))


def point_within(prediction: str, point: Sequence[float], radius: float) -> Score:
    """1 if the first predicted point is within `radius` ([0, 1000] units) of `point`."""
    points = parse_points(prediction)
    if not points:
        return _malformed()
    (x, y), (gx, gy) = points[0], point
    return Score(float(math.hypot(x - gx, y - gy) <= radius + 1e-9))


# ----------------------------------------------------------------------------- numbers


def count_exact(prediction: str, count: int) -> Score:
    """1 if the last integer or number word of the reply equals `count` ("There are 3 ..." replies)."""
    v = last_integer(prediction, words=True)
    return _malformed() if v is None else Score(float(v == int(count)))


def value_exact(prediction: str, value: int) -> Score:
    """1 if the last integer (digits) of the reply equals `value`."""
    v = last_integer(prediction)
    return _malformed() if v is None else Score(float(v == int(value)))


def time_tolerance(answer: Mapping[str, Any]) -> float:
    """The temporal tolerance (seconds) of a ground truth: its `tolerance`, else TIME_TOLERANCE_S."""
    return float(answer.get("tolerance", TIME_TOLERANCE_S))


def time_within(prediction: str, time_s: float, tolerance_s: float = TIME_TOLERANCE_S) -> Score:
    """1 if the first number of the reply (seconds) is within `tolerance_s` of `time_s`."""
    v = first_number(prediction)
    return _malformed() if v is None else Score(float(abs(v - float(time_s)) <= tolerance_s + 1e-9))


# ----------------------------------------------------------------------------- text


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit costs). No edit-distance library is a dependency, so a row-vectorised
    DP: insertions along a row are a running minimum, `row[j] = j + cummin(cand[k] - k)`. The Python
    loop runs over the shorter string (the reference, for a runaway reply)."""
    if len(a) > len(b):
        a, b = b, a
    if not a:
        return len(b)
    bs = np.fromiter(map(ord, b), np.int64, len(b))  # code points (lone surrogates included)
    idx = np.arange(len(b) + 1)
    row = idx.copy()
    for i, ch in enumerate(a, start=1):
        cand = np.empty_like(row)
        cand[0] = i
        cand[1:] = np.minimum(row[1:] + 1, row[:-1] + (bs != ord(ch)))  # deletion, substitution
        row = np.minimum.accumulate(cand - idx) + idx  # insertion
    return int(row[-1])


def character_error_rate(prediction: str, reference: str) -> float:
    """edit_distance / len(reference), capped at 1 so that one runaway reply cannot dominate a mean.
    An empty reference gives 0 for an empty prediction, else 1."""
    if not reference:
        return 0.0 if not prediction else 1.0
    return min(1.0, edit_distance(prediction, reference) / len(reference))


def clean_ocr(text: str) -> str:
    """Whitespace collapsed, and surrounding quotes / a final full stop removed ('"SUN".' -> 'SUN')."""
    return " ".join(text.split()).strip("\"'`").rstrip(".").strip("\"'`").strip()


def ocr_exact(prediction: str, reference: str) -> Score:
    """Case-sensitive exact match after `clean_ocr`; extras: cer (of the cleaned strings)."""
    pred, ref = clean_ocr(prediction), clean_ocr(reference)
    cer = character_error_rate(pred, ref)
    if not pred:
        return _malformed(cer=cer)
    return Score(float(pred == ref), False, {"cer": cer})


def token_f1(prediction: str, reference: str) -> Score:
    """SQuAD-style token F1 (lower case, no punctuation or articles); an empty reply is malformed."""
    pred, ref = normalize_text(prediction).split(), normalize_text(reference).split()
    if not pred:
        return _malformed()
    if not ref:
        return Score(0.0)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return Score(0.0)
    precision, recall = common / len(pred), common / len(ref)
    return Score(2 * precision * recall / (precision + recall))


def text_match(prediction: str, reference: str) -> Score:
    """1 for normalised equality, or for a short reference (<= 3 words) occurring in a reply at most 3
    words longer ("The orange bar." for "orange"); an empty reply is malformed."""
    pred, ref = normalize_text(prediction), normalize_text(reference)
    if not pred:
        return _malformed()
    if pred == ref:
        return Score(1.0)
    n_ref, n_pred = len(ref.split()), len(pred.split())
    return Score(float(0 < n_ref <= 3 and n_pred <= n_ref + 3 and _contains(pred, ref)))


# ----------------------------------------------------------------------------- multiple choice


def _contains(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def parse_choice(prediction: str, options: Sequence[str]) -> int | None:
    """Index of the option the reply picks, or None (nothing or several options match).

    In order: the reply equals an option (normalised); the reply is a letter ("B", "(b)", "B. red",
    "Answer: B"); exactly one option's words occur in the reply (the longest wins when one option
    contains another, e.g. "dark red" over "red").
    """
    norm = [normalize_text(str(o)) for o in options]
    pred = normalize_text(prediction)
    if pred and pred in norm:
        return norm.index(pred)
    m = _LETTER_RE.match(prediction)
    if m is not None:
        k = ord(m.group(1).upper()) - ord("A")
        bare = len(prediction.strip()) <= 3 or prediction.lstrip().lower().startswith("answer")
        if k < len(options) and (m.group(1).isupper() or bare):  # a lower-case "a" is usually the article
            return k
    hits = [i for i, o in enumerate(norm) if _contains(pred, o)]
    hits = [i for i in hits if not any(j != i and _contains(norm[j], norm[i]) for j in hits)]
    return hits[0] if len(hits) == 1 else None


def choice_index(answer: int | str, options: Sequence[str]) -> int:
    """The reference's option index from an index, a letter ("B") or the option text."""
    if isinstance(answer, int | np.integer) and not isinstance(answer, bool):
        return int(answer)
    s = str(answer).strip()
    if len(s) == 1 and s.isalpha() and ord(s.upper()) - ord("A") < len(options):
        return ord(s.upper()) - ord("A")
    norm = [normalize_text(str(o)) for o in options]
    if normalize_text(s) in norm:
        return norm.index(normalize_text(s))
    raise ValueError(f"reference answer {answer!r} is not one of the options {list(options)}")


def multiple_choice(prediction: str, options: Sequence[str], answer: int | str) -> Score:
    """1 if the reply picks the reference option (a letter or the option text); unclear -> malformed."""
    picked = parse_choice(prediction, options)
    return _malformed() if picked is None else Score(float(picked == choice_index(answer, options)))


# ----------------------------------------------------------------------------- by ground-truth keys


def score_answer(answer: Mapping[str, Any], prediction: str) -> Score:
    """The metric of a ground truth `answer` (a synthetic sample's `answer`: the rule comes from its
    keys, see the module docstring) applied to the final answer of the model reply `prediction`.
    ValueError if no rule fits the keys (a bad ground truth, not a bad reply)."""
    text = final_answer(prediction)
    if "count" in answer:
        return count_exact(text, answer["count"])
    if "time" in answer:
        return time_within(text, answer["time"], time_tolerance(answer))
    if "value" in answer:
        return value_exact(text, answer["value"])
    if "point_2d" in answer:
        if "bbox_2d" in answer:
            return point_in_box(text, answer["bbox_2d"])
        return point_within(text, answer["point_2d"], float(answer.get("radius", POINT_RADIUS)))
    if "bbox_2d" in answer:
        return box_accuracy(text, answer["bbox_2d"])
    if "text" in answer:
        return text_match(text, str(answer["text"]))
    raise ValueError(f"no scoring rule for answer keys {sorted(answer)}")


def score(answer: Mapping[str, Any], prediction: str) -> float:
    """`score_answer(answer, prediction).value`: 1.0 / 0.0 (a reward)."""
    return score_answer(answer, prediction).value

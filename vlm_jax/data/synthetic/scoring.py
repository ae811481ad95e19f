"""Checking model answers against the synthetic world's ground truth (``sample["answer"]``).

``score(answer, prediction) -> 1.0 | 0.0`` picks the rule from the answer's keys, first match wins:

- ``count``: the last integer (or number word; "no" / "none" = 0) of the reply equals the count
  (box / point counting replies end with "There are 3 red circles.").
- ``time``: the first number of the reply is within ``tolerance`` seconds (default 0.5).
- ``value``: the last integer equals the value.
- ``point_2d``: the first predicted point lies inside ``bbox_2d`` when the answer has one (pointing
  at an object), else within ``radius`` (default 40) of the true point; [0, 1000] units.
- ``bbox_2d``: IoU of the first predicted box with the true box >= 0.5.
- ``text``: normalised (lower case, no punctuation / articles) equality, or for short answers
  (<= 3 words) the answer phrase occurring in a reply at most 3 words longer.

Only the text after the last ``</think>`` is scored (thinking replies).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_NUM_WORDS = {
    w: i
    for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
}
_INT_RE = re.compile(r"-?\d+")
_FLOAT_RE = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(text: str) -> str:
    """The text after the last ``</think>`` (all of it if there is none), stripped."""
    return text.rsplit("</think>", 1)[-1].strip()


def parse_json_objects(text: str) -> list[dict]:
    """The dicts of the first JSON list/object in ``text`` (code fences allowed); [] if none parse.

    Falls back to a regex for ``"bbox_2d": [..4 ints..]`` / ``"point_2d": [..2 ints..]`` items.
    """
    t = re.sub(r"```(?:json)?", "", text)
    for opener, closer in (("[", "]"), ("{", "}")):
        i, j = t.find(opener), t.rfind(closer)
        if 0 <= i < j:
            try:
                obj = json.loads(t[i : j + 1])
            except ValueError:
                continue
            items = obj if isinstance(obj, list) else [obj]
            return [x for x in items if isinstance(x, dict)]
    out = []
    for key, n in (("bbox_2d", 4), ("point_2d", 2)):
        for m in re.finditer(rf'"{key}"\s*:\s*\[([^\]]*)\]', t):
            nums = _FLOAT_RE.findall(m.group(1))
            if len(nums) == n:
                out.append({key: [float(x) for x in nums]})
    return out


def _first(items: list[dict], key: str, n: int) -> list[float] | None:
    for it in items:
        v = it.get(key)
        if isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(x, (int, float)) for x in v):
            return [float(x) for x in v]
    return None


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 for empty boxes)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def _numbers(text: str) -> list[int]:
    out = []
    for tok in re.findall(r"-?\d+|[a-z]+", text.lower()):
        if tok in ("no", "none"):
            out.append(0)
        elif tok in _NUM_WORDS:
            out.append(_NUM_WORDS[tok])
        elif tok.lstrip("-").isdigit():
            out.append(int(tok))
    return out


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped, articles removed, whitespace collapsed."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def score(answer: Mapping[str, Any], prediction: str) -> float:
    """1.0 if ``prediction`` (a model reply) is correct for ground truth ``answer``, else 0.0."""
    text = final_answer(prediction)
    if "count" in answer:
        nums = _numbers(text)
        return float(bool(nums) and nums[-1] == int(answer["count"]))
    if "time" in answer:
        m = _FLOAT_RE.search(text)
        tol = float(answer.get("tolerance", 0.5))
        return float(m is not None and abs(float(m.group()) - float(answer["time"])) <= tol + 1e-9)
    if "value" in answer:
        nums = _INT_RE.findall(text)
        return float(bool(nums) and int(nums[-1]) == int(answer["value"]))
    if "point_2d" in answer:
        items = parse_json_objects(text)
        p = _first(items, "point_2d", 2)
        if p is None:
            nums = _FLOAT_RE.findall(text)
            p = [float(nums[0]), float(nums[1])] if len(nums) >= 2 else None
        if p is None:
            return 0.0
        if "bbox_2d" in answer:
            x1, y1, x2, y2 = answer["bbox_2d"]
            return float(x1 <= p[0] <= x2 and y1 <= p[1] <= y2)
        gx, gy = answer["point_2d"]
        return float(math.hypot(p[0] - gx, p[1] - gy) <= float(answer.get("radius", 40)))
    if "bbox_2d" in answer:
        b = _first(parse_json_objects(text), "bbox_2d", 4)
        return float(b is not None and box_iou(b, answer["bbox_2d"]) >= 0.5)
    if "text" in answer:
        gt, pr = normalize_text(str(answer["text"])), normalize_text(text)
        if pr == gt:
            return 1.0
        g, p = gt.split(), pr.split()
        if 0 < len(g) <= 3 and len(p) <= len(g) + 3:
            return float(f" {gt} " in f" {pr} ")
        return 0.0
    raise ValueError(f"no scoring rule for answer keys {sorted(answer)}")

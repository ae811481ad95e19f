"""Verifiable rewards for RL post-training: pure functions of (sample, completion text).

All parsing and scoring comes from `vlm_jax.eval.metrics` (the one scoring stack), so a reward agrees
with the evaluation harness: a reply the harness counts as correct earns the full task reward. Only the
text after the last `</think>` is scored (`metrics.final_answer`); a thinking trace never scores.

A sample is a synthetic-world sample (`vlm_jax.data.synthetic`): `task`, `messages` (the user prompt
and the reference reply) and `answer` (the machine-checkable ground truth, keys `count` / `bbox_2d` /
`point_2d` / `value` / `text` / `time`, plus `boxes` / `points` for located counting).

Task rewards (registry `REWARDS`, all in [0, 1], 0 for an unparseable reply):

- `count`: exact count (`metrics.count_exact`: the last integer or number word).
- `box_iou` / `box_iou50`: IoU of the first predicted box with the gold box, continuous / at 0.5.
- `boxes_matched`: several boxes, optimal one-to-one matching by IoU (Hungarian); the summed IoU of
  the matched pairs over max(#predicted, #gold), so unmatched boxes on either side count as 0.
- `point`: the first predicted point inside the gold box (or within the gold `radius` of the point).
- `ocr_similarity`: 1 - edit_distance / max(len) of the cleaned reply and reference.
- `chart_value`: the last number of the reply within tolerance of the gold value.
- `answer`: the harness's own rule for the answer keys (`metrics.score`), binary.
- `format`: 1 if the reply has the expected form (`format_valid`).

Penalties are magnitudes in [0, 1] that `combine` subtracts with weights: `format_penalty`,
`length_penalty` (over a token or character budget) and `language_penalty` (the reply's script differs
from the prompt's). `reward_for(sample)` picks the task reward by task, then by answer keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.optimize

from vlm_jax.eval import metrics

RewardFn = Callable[[Mapping[str, Any], str], float]

# ChartQA's "relaxed accuracy": a numeric answer within 5% of the gold value is right. The synthetic
# charts hold integers 1..max_value (<= 10 by default), so there it demands the exact integer.
CHART_REL_TOL = 0.05

# A text is CJK when at least this share of its letters (CJK characters + Latin letters) is CJK. One
# CJK character carries about a word, a Latin word about five letters, so a CJK sentence with a few
# English words stays well above 0.3 and an English sentence quoting a short CJK name stays below.
CJK_SHARE = 0.3

# Default `combine` weights (ours; Qwen3-VL's penalty sizes are not published). A malformed reply
# (task 0, format -0.5) ranks below a well-formed wrong one (0); a reply at the end of the length ramp
# loses a full correct answer (DAPO's overlong penalty reaches -1); a language switch costs half.
FORMAT_WEIGHT = 0.5
LENGTH_WEIGHT = 1.0
LANGUAGE_WEIGHT = 0.5

THINK_END = "</think>"


def _answer(sample: Mapping[str, Any]) -> Mapping[str, Any]:
    answer = sample.get("answer")
    if not isinstance(answer, Mapping):
        raise ValueError(f"sample has no 'answer' dict (keys: {sorted(sample)})")
    return answer


def _need(answer: Mapping[str, Any], key: str, reward: str) -> Any:
    if key not in answer:
        raise ValueError(f"reward {reward!r} needs answer key {key!r}; answer keys: {sorted(answer)}")
    return answer[key]


# ----------------------------------------------------------------------------- task rewards


def count_reward(sample: Mapping[str, Any], completion: str) -> float:
    """1 if the final answer's last integer (or number word) equals the gold `count`."""
    count = _need(_answer(sample), "count", "count")
    return metrics.count_exact(metrics.final_answer(completion), count).value


def box_iou_reward(sample: Mapping[str, Any], completion: str) -> float:
    """IoU in [0, 1] of the first predicted box with the gold `bbox_2d` (0 if there is no box)."""
    box = _need(_answer(sample), "bbox_2d", "box_iou")
    return float(metrics.box_accuracy(metrics.final_answer(completion), box).extras["iou"])


def box_iou50_reward(sample: Mapping[str, Any], completion: str) -> float:
    """1 if the first predicted box has IoU >= 0.5 with the gold `bbox_2d` (the harness's grounding score)."""
    box = _need(_answer(sample), "bbox_2d", "box_iou50")
    return metrics.box_accuracy(metrics.final_answer(completion), box).value


def _clip(box: Sequence[float]) -> list[float]:
    # As metrics.box_accuracy: true boxes lie in [0, 1000], clipping keeps IoU finite for wild replies.
    return [min(max(float(x), 0.0), metrics.COORD_MAX) for x in box]


def matched_iou(pred: Sequence[Sequence[float]], gold: Sequence[Sequence[float]]) -> float:
    """Mean IoU under the one-to-one matching of predicted to gold boxes that maximises total IoU;
    unmatched boxes (on either side) count as 0, so the sum is divided by max(#pred, #gold). Two empty
    lists score 1 (nothing to find, nothing claimed)."""
    if not pred or not gold:
        return float(not pred and not gold)
    p, g = [_clip(b) for b in pred], [_clip(b) for b in gold]
    iou = np.asarray([[metrics.box_iou(a, b) for b in g] for a in p], np.float64)
    # Exact (Hungarian), not greedy: swapped or crossing boxes still pair up optimally.
    rows, cols = scipy.optimize.linear_sum_assignment(iou, maximize=True)
    return float(iou[rows, cols].sum()) / max(len(p), len(g))


def boxes_matched_reward(sample: Mapping[str, Any], completion: str) -> float:
    """`matched_iou` of all predicted boxes against the gold `boxes` (or the single gold `bbox_2d`)."""
    answer = _answer(sample)
    gold = answer["boxes"] if "boxes" in answer else [_need(answer, "bbox_2d", "boxes_matched")]
    return matched_iou(metrics.parse_boxes(metrics.final_answer(completion)), gold)


def point_reward(sample: Mapping[str, Any], completion: str) -> float:
    """1 if the first predicted point lies in the gold `bbox_2d`, else (no box) within `radius` of `point_2d`."""
    answer, text = _answer(sample), metrics.final_answer(completion)
    if "bbox_2d" in answer:
        return metrics.point_in_box(text, answer["bbox_2d"]).value
    point = _need(answer, "point_2d", "point")
    return metrics.point_within(text, point, float(answer.get("radius", metrics.POINT_RADIUS))).value


def edit_similarity(prediction: str, reference: str) -> float:
    """1 - edit_distance / max(len): 1 for equal strings (two empty strings included), 0 for disjoint ones."""
    longest = max(len(prediction), len(reference))
    return 1.0 if longest == 0 else 1.0 - metrics.edit_distance(prediction, reference) / longest


def ocr_similarity_reward(sample: Mapping[str, Any], completion: str) -> float:
    """`edit_similarity` of the final answer and the gold `text`, both cleaned as `metrics.ocr_exact` does
    (whitespace collapsed, surrounding quotes and a final full stop dropped): 1 exactly when ocr_exact is 1."""
    reference = str(_need(_answer(sample), "text", "ocr_similarity"))
    return edit_similarity(metrics.clean_ocr(metrics.final_answer(completion)), metrics.clean_ocr(reference))


def last_number(text: str) -> float | None:
    """The last decimal number of `text` ("The red bar is at 7.5." -> 7.5), or None: the last
    whitespace-separated token holding a number, read by `metrics.first_number`."""
    for token in reversed(text.split()):
        value = metrics.first_number(token)
        if value is not None:
            return value
    return None


def chart_value_reward(sample: Mapping[str, Any], completion: str, rel_tol: float = CHART_REL_TOL) -> float:
    """1 if the final answer's last number is within max(answer `tolerance` (absolute, default 0),
    `rel_tol` * |gold|) of the gold `value`."""
    answer = _answer(sample)
    gold = float(_need(answer, "value", "chart_value"))
    value = last_number(metrics.final_answer(completion))
    if value is None:
        return 0.0
    tol = max(float(answer.get("tolerance", 0.0)), rel_tol * abs(gold))
    return float(abs(value - gold) <= tol + 1e-9)


def answer_reward(sample: Mapping[str, Any], completion: str) -> float:
    """The evaluation harness's binary score for the answer keys (`metrics.score`)."""
    return metrics.score(_answer(sample), completion)


# ----------------------------------------------------------------------------- format


def _is_thinking(sample: Mapping[str, Any]) -> bool:
    return sample.get("task") == "thinking"


def format_valid(sample: Mapping[str, Any], completion: str, require_think: bool | None = None) -> bool:
    """Whether the reply has the form its answer needs, checked with the harness's parsers:

    - a thinking reply (`require_think`, default: the sample's task is "thinking") closes its trace
      with `</think>` (the generation prompt opens it);
    - after the last `</think>`: a JSON box where a box is expected (`boxes` with at least one gold box,
      or `bbox_2d` without `point_2d`), a JSON point where a point is expected (`points`, `point_2d`),
      an integer or number word for a `count`, a number for a `value` / `time`, non-empty text for `text`.
    """
    if require_think is None:
        require_think = _is_thinking(sample)
    if require_think and THINK_END not in completion:
        return False
    answer, text = _answer(sample), metrics.final_answer(completion)
    if answer.get("boxes") and not metrics.parse_boxes(text):
        return False
    if answer.get("points") and not metrics.parse_points(text):
        return False
    if "count" in answer:
        return metrics.last_integer(text, words=True) is not None
    if "value" in answer or "time" in answer:
        return metrics.first_number(text) is not None
    if "point_2d" in answer:
        return bool(metrics.parse_points(text))
    if "bbox_2d" in answer:
        return bool(metrics.parse_boxes(text))
    if "text" in answer:
        return bool(text)
    raise ValueError(f"no answer format known for answer keys {sorted(answer)}")


def format_reward(sample: Mapping[str, Any], completion: str) -> float:
    """1.0 if `format_valid`, else 0.0."""
    return float(format_valid(sample, completion))


def format_penalty(sample: Mapping[str, Any], completion: str) -> float:
    """1.0 if the reply is malformed (`format_valid` is False), else 0.0."""
    return 1.0 - format_reward(sample, completion)


# ----------------------------------------------------------------------------- length


def length_penalty(num_tokens: int, budget: int, ramp: int = 0) -> float:
    """0 up to `budget` (tokens, or characters: any unit, the same for both), then rising linearly to 1
    over `ramp` more (DAPO's soft overlong penalty with budget = Lmax - Lc, ramp = Lc); `ramp` = 0 is a
    step to 1 at budget + 1."""
    if num_tokens < 0 or budget < 0 or ramp < 0:
        raise ValueError(f"length_penalty needs num_tokens, budget, ramp >= 0, got {num_tokens}, {budget}, {ramp}")
    over = num_tokens - budget
    if over <= 0:
        return 0.0
    return 1.0 if ramp == 0 else min(1.0, over / ramp)


# ----------------------------------------------------------------------------- language

# CJK ideographs (incl. extension A and compatibility), kana, Hangul syllables and jamo, CJK punctuation.
_CJK_RANGES = (
    (0x1100, 0x11FF),
    (0x3000, 0x30FF),
    (0x3130, 0x318F),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),
    (0xF900, 0xFAFF),
    (0xFF00, 0xFFEF),
)
_JSON_KEY_RE = re.compile(r'"[^"\n]*"\s*:')  # "bbox_2d": is markup, not language


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_latin(ch: str) -> bool:
    # Latin letters: basic, Latin-1, Extended-A/B and IPA (accented European letters included).
    return ch.isalpha() and ord(ch) < 0x0300


def script(text: str, cjk_share: float = CJK_SHARE) -> str | None:
    """"cjk" or "latin" by the share of CJK characters among CJK + Latin letters (>= `cjk_share`: cjk);
    None when there are no letters (a bare number, a JSON box without a label). JSON keys are ignored.

    A heuristic, not a language identifier: it separates CJK from Latin-script languages only (English
    vs French is not a switch; Cyrillic, Arabic, ... count as neither). Enough to catch the Chinese /
    English code switching that RL on a bilingual model tends to produce."""
    text = _JSON_KEY_RE.sub(" ", text)
    cjk = sum(map(_is_cjk, text))
    latin = sum(map(_is_latin, text))
    if cjk + latin == 0:
        return None
    return "cjk" if cjk / (cjk + latin) >= cjk_share else "latin"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # [{"type": "image"}, {"type": "text", "text": ...}]
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, Mapping))
    return ""


def prompt_text(sample: Mapping[str, Any]) -> str:
    """The text of the sample's user turns (media items dropped)."""
    return " ".join(_content_text(m.get("content")) for m in sample.get("messages", ()) if m.get("role") == "user")


def reference_text(sample: Mapping[str, Any]) -> str:
    """The reference reply: the assistant turns' text, else the answer's `text`."""
    turns = [_content_text(m.get("content")) for m in sample.get("messages", ()) if m.get("role") == "assistant"]
    return " ".join(turns) or str(sample.get("answer", {}).get("text", ""))


def language_penalty(
    sample: Mapping[str, Any], completion: str, cjk_share: float = CJK_SHARE, include_thinking: bool = False
) -> float:
    """1.0 if the reply's script (`script`) differs from the prompt's, else 0.0.

    The final answer is checked (with `include_thinking`, the whole completion, trace included). No
    penalty when either side has no letters, or when the reply's script is the reference reply's (an
    English question about Chinese text in the image is rightly answered in Chinese)."""
    reply = completion if include_thinking else metrics.final_answer(completion)
    got = script(reply, cjk_share)
    asked = script(prompt_text(sample), cjk_share)
    if got is None or asked is None or got == asked:
        return 0.0
    return float(got != script(reference_text(sample), cjk_share))


# ----------------------------------------------------------------------------- registry and dispatch

REWARDS: dict[str, RewardFn] = {
    "count": count_reward,
    "box_iou": box_iou_reward,
    "box_iou50": box_iou50_reward,
    "boxes_matched": boxes_matched_reward,
    "point": point_reward,
    "ocr_similarity": ocr_similarity_reward,
    "chart_value": chart_value_reward,
    "answer": answer_reward,
    "format": format_reward,
}

# Synthetic tasks whose dense or tolerant reward differs from the binary `answer` rule.
TASK_REWARDS: dict[str, str] = {
    "ground_box": "box_iou",
    "ground_point": "point",
    "geometry": "point",
    "count": "count",
    "count_boxes": "boxes_matched",
    "count_points": "count",
    "video_count": "count",
    "ocr": "ocr_similarity",
    "chart_value": "chart_value",
}


def get_reward(name: str) -> RewardFn:
    """The reward registered as `name`; ValueError naming the valid choices otherwise."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid choices: {sorted(REWARDS)}")
    return REWARDS[name]


def reward_name_for(sample: Mapping[str, Any]) -> str:
    """The registry name of the task reward of `sample`: by task (a "thinking" sample by its base task,
    `meta.base_task`), else by answer keys: `boxes` -> boxes_matched, `count` -> count, `point_2d` ->
    point, `bbox_2d` -> box_iou, any other key the harness scores (`value`, `time`, `text`) -> answer."""
    task = sample.get("task")
    if task == "thinking":
        task = (sample.get("meta") or {}).get("base_task")
    if task in TASK_REWARDS:
        return TASK_REWARDS[task]
    answer = _answer(sample)
    for key, name in (("boxes", "boxes_matched"), ("count", "count"), ("point_2d", "point"), ("bbox_2d", "box_iou")):
        if key in answer:
            return name
    if any(k in answer for k in ("value", "time", "text")):
        return "answer"
    raise ValueError(f"no reward for task {sample.get('task')!r} with answer keys {sorted(answer)}")


def reward_for(sample: Mapping[str, Any]) -> RewardFn:
    """The task reward function of `sample` (see `reward_name_for`)."""
    return REWARDS[reward_name_for(sample)]


def combine(
    sample: Mapping[str, Any],
    completion: str,
    reward: str | RewardFn | None = None,
    num_tokens: int | None = None,
    length_budget: int | None = None,
    length_ramp: int = 0,
    format_weight: float = FORMAT_WEIGHT,
    length_weight: float = LENGTH_WEIGHT,
    language_weight: float = LANGUAGE_WEIGHT,
) -> dict[str, float]:
    """The total reward and its parts: task - format_weight * format - length_weight * length -
    language_weight * language.

    `reward`: a registry name or function (default `reward_for(sample)`); a malformed reply gets task 0.
    The length penalty applies only with a `length_budget`, and then needs `num_tokens` (in the budget's
    unit: tokens, or characters). Defaults: FORMAT_WEIGHT 0.5, LENGTH_WEIGHT 1.0, LANGUAGE_WEIGHT 0.5.
    Returns {"total", "task", "format_penalty", "length_penalty", "language_penalty"} (penalties in [0, 1])."""
    fn = reward_for(sample) if reward is None else get_reward(reward) if isinstance(reward, str) else reward
    malformed = not format_valid(sample, completion)
    task = 0.0 if malformed else float(fn(sample, completion))
    length = 0.0
    if length_budget is not None:
        if num_tokens is None:
            raise ValueError("combine: a length_budget needs num_tokens (the completion's length in its unit)")
        length = length_penalty(num_tokens, length_budget, length_ramp)
    language = language_penalty(sample, completion)
    parts = {"task": task, "format_penalty": float(malformed), "length_penalty": length, "language_penalty": language}
    total = task - format_weight * parts["format_penalty"] - length_weight * length - language_weight * language
    return {"total": total, **parts}

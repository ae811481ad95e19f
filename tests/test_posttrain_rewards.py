"""Tests of the RL rewards: hand-computed task rewards, matching, thinking, format, length and language."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from vlm_jax.data.synthetic import TASKS, SyntheticWorld
from vlm_jax.posttrain import rewards as R


def sample(answer: dict, question: str = "Question?", task: str | None = None, reference: str = "ref") -> dict:
    s = {
        "answer": answer,
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": reference},
        ],
    }
    if task is not None:
        s["task"] = task
    return s


def boxes_json(*boxes: list[int]) -> str:
    return json.dumps([{"bbox_2d": b, "label": "red circle"} for b in boxes])


# ----------------------------------------------------------------------------- task rewards


def test_count_exact():
    s = sample({"count": 3})
    assert R.count_reward(s, "There are 3 circles.") == 1.0
    assert R.count_reward(s, "three") == 1.0
    assert R.count_reward(s, "4") == 0.0
    assert R.count_reward(s, "many") == 0.0


def test_box_iou_continuous_and_thresholded():
    s = sample({"bbox_2d": [0, 0, 100, 100]})
    # Intersection 50 * 50 = 2500; union 10000 + 10000 - 2500 = 17500.
    assert R.box_iou_reward(s, boxes_json([50, 50, 150, 150])) == pytest.approx(2500 / 17500)
    assert R.box_iou50_reward(s, boxes_json([50, 50, 150, 150])) == 0.0
    # Half the gold box: intersection 5000, union 10000 -> exactly 0.5, which passes the threshold.
    assert R.box_iou_reward(s, boxes_json([0, 0, 100, 50])) == pytest.approx(0.5)
    assert R.box_iou50_reward(s, boxes_json([0, 0, 100, 50])) == 1.0
    assert R.box_iou_reward(s, "top left") == 0.0


def test_matched_boxes_pairs_swapped_order():
    gold = [[0, 0, 100, 100], [200, 200, 300, 300]]
    s = sample({"count": 2, "boxes": gold}, task="count_boxes")
    # Listed in the other order: in-order pairing would give 0; the matching gives (1 + 0.5) / 2.
    reply = boxes_json([200, 200, 300, 300], [0, 0, 100, 50]) + "\nThere are 2 red circles."
    assert R.boxes_matched_reward(s, reply) == pytest.approx(0.75)
    assert R.reward_for(s)(s, reply) == pytest.approx(0.75)


def test_matched_boxes_unmatched_count_as_zero():
    gold = [[0, 0, 100, 100]]
    assert R.matched_iou([[0, 0, 100, 100], [500, 500, 600, 600]], gold) == pytest.approx(0.5)
    assert R.matched_iou([[0, 0, 100, 100]], gold + [[200, 200, 300, 300]]) == pytest.approx(0.5)
    assert R.matched_iou([], gold) == 0.0
    assert R.matched_iou([], []) == 1.0
    assert R.matched_iou([[0, 0, 100, 100]], []) == 0.0


def test_matching_is_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n_pred, n_gold = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        corners = rng.integers(0, 400, (n_pred + n_gold, 2))
        sizes = rng.integers(50, 300, (n_pred + n_gold, 2))
        boxes = np.concatenate([corners, corners + sizes], 1).tolist()
        pred, gold = boxes[:n_pred], boxes[n_pred:]
        small, big = (pred, gold) if n_pred <= n_gold else (gold, pred)
        best = max(
            sum(R.metrics.box_iou(small[i], big[j]) for i, j in enumerate(perm))
            for perm in itertools.permutations(range(len(big)), len(small))
        )
        assert R.matched_iou(pred, gold) == pytest.approx(best / max(n_pred, n_gold))


def test_point_in_box_and_within_radius():
    s = sample({"point_2d": [150, 150], "bbox_2d": [100, 100, 200, 200]})
    assert R.point_reward(s, '[{"point_2d": [120, 190]}]') == 1.0
    assert R.point_reward(s, '[{"point_2d": [200, 200]}]') == 1.0  # edges count as inside
    assert R.point_reward(s, '[{"point_2d": [201, 150]}]') == 0.0
    g = sample({"point_2d": [500, 500], "radius": 40})
    assert R.point_reward(g, '{"point_2d": [530, 520]}') == 1.0  # distance sqrt(900 + 400) = 36.1
    assert R.point_reward(g, '{"point_2d": [530, 530]}') == 0.0  # distance 42.4


def test_ocr_edit_similarity():
    s = sample({"text": "kitten"})
    # kitten -> sitting: 2 substitutions + 1 insertion = 3 edits over max length 7.
    assert R.ocr_similarity_reward(s, "sitting") == pytest.approx(1 - 3 / 7)
    assert R.ocr_similarity_reward(s, '"kitten".') == 1.0  # cleaned like metrics.ocr_exact
    assert R.ocr_similarity_reward(s, "KITTEN") == 0.0  # case-sensitive, as the harness
    assert R.edit_similarity("", "") == 1.0
    assert R.edit_similarity("", "ab") == 0.0


def test_chart_value_tolerance():
    s = sample({"value": 40})  # 5% relative tolerance: +-2
    assert R.chart_value_reward(s, "The bar is at 41.5.") == 1.0
    assert R.chart_value_reward(s, "Bar 2 reaches 42") == 1.0  # the last number is the answer
    assert R.chart_value_reward(s, "42.5") == 0.0
    assert R.chart_value_reward(s, "37") == 0.0
    assert R.chart_value_reward(s, "no idea") == 0.0
    assert R.chart_value_reward(sample({"value": 40, "tolerance": 3.0}), "37") == 1.0
    assert R.chart_value_reward(s, "41", rel_tol=0.0) == 0.0


# ----------------------------------------------------------------------------- thinking and format


def test_thinking_trace_is_ignored():
    s = sample({"count": 3}, task="thinking")
    assert R.count_reward(s, "I first thought 5, then 3.\n</think>\n\n3") == 1.0
    assert R.count_reward(s, "I see 3 of them.\n</think>\n\n5") == 0.0
    b = sample({"bbox_2d": [0, 0, 100, 100]})
    reply = boxes_json([0, 0, 100, 100]) + "</think>" + boxes_json([500, 500, 600, 600])
    assert R.box_iou_reward(b, reply) == 0.0


def test_malformed_gets_format_penalty_and_zero_task():
    s = sample({"bbox_2d": [0, 0, 100, 100]})
    assert not R.format_valid(s, "in the top left corner")
    out = R.combine(s, "in the top left corner")
    assert out["task"] == 0.0 and out["format_penalty"] == 1.0
    assert out["total"] == pytest.approx(-R.FORMAT_WEIGHT)
    assert R.combine(s, "in the top left corner", format_weight=0.25)["total"] == pytest.approx(-0.25)
    good = R.combine(s, boxes_json([0, 0, 100, 100]))
    assert good["format_penalty"] == 0.0 and good["total"] == pytest.approx(1.0)


def test_unclosed_thinking_is_malformed_even_if_right():
    s = sample({"count": 3}, task="thinking")
    assert not R.format_valid(s, "Let me count... there are 3")
    out = R.combine(s, "Let me count... there are 3")
    assert out["task"] == 0.0 and out["format_penalty"] == 1.0
    assert R.combine(s, "Three of them.\n</think>\n\n3")["total"] == pytest.approx(1.0)


def test_format_by_answer_kind():
    assert not R.format_valid(sample({"count": 2}), "several")
    assert R.format_valid(sample({"count": 0}), "There are none.")
    assert not R.format_valid(sample({"point_2d": [5, 5]}), boxes_json([0, 0, 10, 10]))
    assert not R.format_valid(sample({"value": 4}), "tall")
    assert not R.format_valid(sample({"text": "red"}), "   ")
    located = sample({"count": 1, "boxes": [[0, 0, 10, 10]]})
    assert not R.format_valid(located, "There is 1 red circle.")  # the boxes are missing
    assert R.format_valid(located, boxes_json([0, 0, 10, 10]) + "\nThere is 1 red circle.")
    assert R.format_valid(sample({"count": 0, "boxes": []}), "[]\nThere are no red circles.")


# ----------------------------------------------------------------------------- length


def test_length_penalty_starts_exactly_past_budget():
    assert R.length_penalty(100, 100) == 0.0
    assert R.length_penalty(101, 100) == 1.0
    assert R.length_penalty(101, 100, ramp=10) == pytest.approx(0.1)
    assert R.length_penalty(105, 100, ramp=10) == pytest.approx(0.5)
    assert R.length_penalty(500, 100, ramp=10) == 1.0
    s = sample({"count": 3})
    assert R.combine(s, "3", num_tokens=100, length_budget=100)["total"] == pytest.approx(1.0)
    over = R.combine(s, "3", num_tokens=101, length_budget=100, length_weight=0.4)
    assert over["length_penalty"] == 1.0 and over["total"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="num_tokens"):
        R.combine(s, "3", length_budget=100)
    with pytest.raises(ValueError, match=">= 0"):
        R.length_penalty(-1, 100)


# ----------------------------------------------------------------------------- language


def test_script_heuristic():
    assert R.script("图中有3个red circle") == "cjk"
    assert R.script("The sign says 東京") == "latin"
    assert R.script("12, 40") is None
    assert R.script('[{"bbox_2d": [1, 2, 3, 4], "label": "红色圆"}]') == "cjk"  # JSON keys ignored


def test_language_penalty_for_cjk_answer_to_english_prompt():
    s = sample({"count": 3}, question="How many red circles are there?", reference="3")
    assert R.language_penalty(s, "有3个。") == 1.0
    assert R.language_penalty(s, "There are 3.") == 0.0
    assert R.language_penalty(s, "3") == 0.0  # no letters: no language to compare
    out = R.combine(s, "有3个。")
    assert out["task"] == 1.0 and out["total"] == pytest.approx(1.0 - R.LANGUAGE_WEIGHT)
    zh = sample({"count": 3}, question="图中有几个红色圆？", reference="3")
    assert R.language_penalty(zh, "有3个。") == 0.0
    assert R.language_penalty(zh, "There are 3.") == 1.0


def test_language_penalty_exceptions_and_thinking():
    ocr = sample({"text": "東京"}, question="Read the text in the image.", reference="東京")
    assert R.language_penalty(ocr, "東京") == 0.0  # the reference itself is CJK
    s = sample({"count": 3}, question="How many red circles are there?", reference="3")
    reply = "我数了一下，有三个红色的圆。\n</think>\n\nThere are 3."
    assert R.language_penalty(s, reply) == 0.0
    assert R.language_penalty(s, reply, include_thinking=True) == 1.0


# ----------------------------------------------------------------------------- registry and dispatch


def test_registry_and_dispatch():
    with pytest.raises(ValueError, match="valid choices.*box_iou"):
        R.get_reward("iou")
    assert R.get_reward("ocr_similarity") is R.ocr_similarity_reward
    assert R.reward_name_for(sample({"bbox_2d": [0, 0, 1, 1]}, task="ground_box")) == "box_iou"
    assert R.reward_name_for(sample({"text": "SUN"}, task="ocr")) == "ocr_similarity"
    thinking = sample({"count": 2, "boxes": [[0, 0, 1, 1]] * 2}, task="thinking")
    thinking["meta"] = {"base_task": "count_boxes"}
    assert R.reward_name_for(thinking) == "boxes_matched"
    assert R.reward_name_for(sample({"bbox_2d": [0, 0, 1, 1]})) == "box_iou"
    assert R.reward_name_for(sample({"point_2d": [0, 0]})) == "point"
    assert R.reward_name_for(sample({"text": "red"})) == "answer"
    with pytest.raises(ValueError, match="answer keys"):
        R.reward_name_for(sample({"colour": "red"}))
    with pytest.raises(ValueError, match="no 'answer'"):
        R.count_reward({"messages": []}, "3")
    with pytest.raises(ValueError, match="needs answer key 'bbox_2d'"):
        R.box_iou_reward(sample({"count": 1}), "3")
    assert R.combine(sample({"count": 3}), "3", reward="answer")["task"] == 1.0


def test_reference_replies_earn_full_reward():
    world = SyntheticWorld()
    for task in TASKS:
        for i in range(3):
            s = world.sample(i, "eval", task=task)
            reply = s["messages"][1]
            text = reply["content"]
            if task == "thinking":
                text = reply["reasoning"] + "\n</think>\n\n" + text
            out = R.combine(s, text, num_tokens=len(text), length_budget=len(text))
            assert out == {"total": 1.0, "task": 1.0, "format_penalty": 0.0, "length_penalty": 0.0,
                           "language_penalty": 0.0}, (task, text, s["answer"])

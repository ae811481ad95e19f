"""The binding diagnosis: the binding gap of counting predictions, the question and target categories, and
the cell labels of the attribute probe."""

import collections
import importlib.util
from pathlib import Path

import numpy as np

_SPEC = importlib.util.spec_from_file_location(
    "probe_binding", Path(__file__).resolve().parents[1] / "experiments" / "probe_binding.py")
probe_binding = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe_binding)

C = collections.Counter


def test_binding_gap_is_zero_when_predictions_ignore_the_true_count_and_one_when_they_follow_it():
    blind = {2: {1: C({"1": 30, "2": 20}), 2: C({"1": 30, "2": 20})}}
    bound = {2: {1: C({"1": 50}), 2: C({"2": 40})}, 3: {2: C({"2": 12}), 3: C({"3": 11})}}
    half = {2: {1: C({"1": 20, "2": 20}), 2: C({"2": 40})}}
    assert probe_binding.binding_gap(blind) == 0.0
    assert probe_binding.binding_gap(bound) == 1.0
    assert probe_binding.binding_gap(half) == 0.5
    # Fewer than 10 items for a k: not compared; nothing to compare gives None.
    assert probe_binding.binding_gap({2: {1: C({"1": 50}), 2: C({"2": 9})}}) is None


def test_cell_labels_name_the_object_covering_most_of_each_cell():
    plan = {"objects": [{"color": "red", "shape": "circle", "x": 0, "y": 0, "s": 20},  # (0,0) 16x16; (0,1), (1,0) 4x16
                        {"color": "green", "shape": "circle", "x": 22, "y": 2, "s": 10},  # (0,1) 10x10 beats red
                        {"color": "blue", "shape": "square", "x": 14, "y": 17, "s": 18}]}  # (1,0) 2x15; (1,1) 16x15
    labels = probe_binding.cell_labels(plan, rows=2, cols=2, cell=16)
    # Cell (1,0): red covers 4x16 = 64 (a quarter: enough), blue 2x15.
    assert labels == [("red", "circle"), ("green", "circle"), ("red", "circle"), ("blue", "square")]
    plan["objects"][0]["s"] = 19  # red now covers 3x16 = 48 of cell (1,0): less than a quarter
    assert probe_binding.cell_labels(plan, rows=2, cols=2, cell=16)[2] == ("bg", "bg")


def test_ridge_probe_reads_a_linear_label_and_not_noise():
    rng = np.random.default_rng(0)
    labels = list(rng.choice(["red", "green", "bg"], size=800))
    signal = np.eye(3)[[["red", "green", "bg"].index(v) for v in labels]] @ rng.normal(size=(3, 16))
    clean = probe_binding.ridge_accuracy(signal + 0.1 * rng.normal(size=signal.shape), labels)
    noise = probe_binding.ridge_accuracy(rng.normal(size=signal.shape), labels)
    assert clean["accuracy"] > 0.95 and noise["accuracy"] < 0.7
    assert clean["tokens"] == sum(v != "bg" for v in labels[600:])


def _obj(color, shape):
    return {"color": color, "shape": shape, "x": 0, "y": 0, "s": 8}


def test_count_category_names_what_the_question_names():
    assert probe_binding.count_category({"category": {"shape": "square", "color": ""}}) == "shape"
    assert probe_binding.count_category({"category": {"shape": "", "color": "red"}}) == "colour"
    assert probe_binding.count_category({"category": {"shape": "circle", "color": "red"}}) == "both"


def test_target_category_is_what_tells_the_target_apart():
    red_circle, red_square, blue_circle = _obj("red", "circle"), _obj("red", "square"), _obj("blue", "circle")
    cat = probe_binding.target_category
    assert cat({"objects": [red_circle], "target": 0}) == "alone"
    assert cat({"objects": [red_circle, blue_circle], "target": 0}) == "colour"  # shapes equal: colour tells
    assert cat({"objects": [red_circle, red_square], "target": 1}) == "shape"
    # Red is shared (red square) and circle is shared (blue circle): only the pair names it.
    assert cat({"objects": [red_square, red_circle, blue_circle], "target": 1}) == "both"
    assert cat({"objects": [red_square, red_circle, blue_circle], "target": 2}) == "colour"


def test_scores_by_category_groups_each_prediction_with_its_scene():
    plans = {("count", 0): {"category": {"shape": "", "color": "red"}},
             ("count", 1): {"category": {"shape": "circle", "color": ""}},
             ("ground_box", 2): {"objects": [_obj("red", "circle"), _obj("red", "square")], "target": 0},
             ("ground_box", 3): {"objects": [_obj("red", "circle")], "target": 0}}

    class World:
        def sample(self, index, split, task):
            assert split == "eval"
            return {"meta": {"plan": plans[(task, index)]}}

    preds = [{"id": "eval-count-0", "task": "count", "family": "counting", "score": 1.0},
             {"id": "eval-count-1", "task": "count", "family": "counting", "score": 0.0},
             {"id": "eval-ground_box-2", "task": "ground_box", "family": "grounding", "score": 0.0},
             {"id": "eval-ground_box-3", "task": "ground_box", "family": "grounding", "score": 1.0},
             {"id": "eval-ocr-4", "task": "ocr", "family": "ocr", "score": 1.0}]
    assert probe_binding.scores_by_category(preds, World(), "eval") == {
        "count": {"colour": [1, 1.0], "shape": [1, 0.0]},
        "ground_box": {"alone": [1, 1.0], "shape": [1, 0.0]}}

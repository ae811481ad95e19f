"""The grounding diagnosis: its config options and the generated-box correlation it reports."""

import importlib.util
import json
from pathlib import Path

import pytest

from vlm_jax.configs import experiment as experiment_lib
from vlm_jax.configs import grounding_probe

_SPEC = importlib.util.spec_from_file_location(
    "probe_grounding", Path(__file__).resolve().parents[1] / "experiments" / "probe_grounding.py")
probe_grounding = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe_grounding)


def test_options_reach_the_config_and_unknown_ones_are_named():
    c = grounding_probe.get_config("objs=1,tasks=ground_box,pos=0.5,mz=0,merger=0.003,steps=70")
    experiment_lib.validate(c)
    world = c.data.sources.synthetic.world
    assert (world["max_objects"], world["max_distractors"], dict(world["tasks"])) == (1, 0, {"ground_box": 1.0})
    assert (c.model.vision.pos_embed_init, c.model.vision.pos_embed_init_scale) == ("sincos", 0.5)
    assert c.model.merger_out_init_scale == 0.0 and c.train.optimizer.merger_lr == 0.003
    assert c.train.num_train_steps == 70
    with pytest.raises(ValueError, match="unknown options \\['lr'\\]"):
        grounding_probe.get_config("lr=1")


def _results(tmp_path, boxes):
    preds = [{"family": "grounding", "reply": json.dumps([{"bbox_2d": p, "label": "x"}]), "answer": {"bbox_2d": t}}
             for p, t in boxes]
    preds.append({"family": "counting", "reply": "3", "answer": {"count": 3}})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"predictions": preds}))
    return path


def test_generated_correlation_tells_image_reading_from_a_constant_box(tmp_path):
    truth = [[100 * i, 50 * i, 100 * i + 200, 50 * i + 300] for i in range(6)]
    tracked = probe_grounding.generated_correlation(_results(tmp_path, [(t, t) for t in truth]))
    assert tracked == {"n": 6, "corr": [1.0, 1.0, 1.0, 1.0]}
    flipped = [[500 - t[0], t[1], t[2], t[3]] for t in truth]
    out = probe_grounding.generated_correlation(_results(tmp_path, list(zip(flipped, truth))))
    assert out["corr"][0] == -1.0
    constant = probe_grounding.generated_correlation(_results(tmp_path, [([1, 2, 3, 4], t) for t in truth]))
    assert constant["corr"] == [0.0, 0.0, 0.0, 0.0]
    assert probe_grounding.generated_correlation(tmp_path / "missing.json") is None

"""The model zoo's configs (`vlm_jax/configs/zoo.py`): the teacher is the larger model the distillation
issue asks for, at a cost per step that lets it train as long as the student."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from vlm_jax.configs import experiment, zoo
from vlm_jax.model.vlm import param_shapes


def _params(model: str) -> dict[str, int]:
    """Total parameters, and those a token uses (the experts' share scaled to the k of E it is routed to)."""
    mc = experiment.model_config(zoo.get_config(model))
    total = active = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(param_shapes(mc)))[0]:
        n = int(np.prod(leaf.shape))
        name = jax.tree_util.keystr(path)
        # Scanned layers: [layers, experts, ...].
        is_expert = "['moe']" in name and name.endswith(("['wi_gate']", "['wi_up']", "['wo']"))
        assert not is_expert or leaf.shape[1] == mc.text.num_experts, (name, leaf.shape)
        total += n
        active += n * mc.text.num_experts_per_tok // mc.text.num_experts if is_expert else n
    return {"total": total, "active": active}


def test_teacher_has_five_times_the_parameters_at_the_students_compute():
    student, teacher = _params("student"), _params("teacher")
    assert teacher["total"] >= 5 * student["total"]
    assert teacher["active"] == pytest.approx(student["active"], rel=0.02)  # + the router only


def test_zoo_models_share_the_training_recipe():
    """Everything but the model is the same: steps, curriculum, world, optimizer, pipeline and eval."""
    s, t = zoo.get_config("student").to_dict(), zoo.get_config("teacher").to_dict()
    for key in ("train", "data", "eval"):
        assert s[key] == t[key], key
    assert t["model"]["text"]["num_experts"] == 32 and s["model"]["text"]["num_experts"] == 0
    assert s["model"]["vision"] == t["model"]["vision"]
    with pytest.raises(ValueError, match="unknown zoo model 'giant'"):
        zoo.get_config("giant")

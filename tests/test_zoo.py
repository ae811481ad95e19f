"""The model zoo's configs (`vlm_jax/configs/zoo.py`): the teacher is the larger model the distillation
issue asks for, at a cost per step that lets it train as long as the student."""

from __future__ import annotations

import pytest

from vlm_jax.configs import experiment, zoo
from vlm_jax.params.count import count_params


def _params(model: str) -> dict[str, int]:
    """Total parameters, and those a token uses (the experts' share scaled to the k of E it is routed to)."""
    return count_params(experiment.model_config(zoo.get_config(model)))


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

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


def test_upcycled_teacher_fits_the_upcycled_student_export():
    """The upcycle tool's MoE config is the teacher_upcycled model (so `init_from` loads), and it is
    initialised from the upcycled student with the student's compute per token."""
    from vlm_jax.params.upcycle import upcycle_config

    student = experiment.model_config(zoo.get_config("student"))
    teacher = experiment.model_config(zoo.get_config("teacher_upcycled"))
    upcycled = upcycle_config(student, **zoo.UPCYCLE).to_dict()
    want = teacher.to_dict()
    for d in (upcycled, want):
        d.pop("name")
        d["text"].pop("moe_gmm")  # how the grouped matmul runs, not what it computes
    assert upcycled == want
    assert zoo.get_config("teacher_upcycled").init_from == zoo.UPCYCLED_INIT
    params = _params("teacher_upcycled")
    assert params["total"] >= 5 * _params("student")["total"]
    assert params["active"] == pytest.approx(_params("student")["active"], rel=0.02)


def test_upcycled_teacher_without_the_student_export_says_what_to_run(tmp_path, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "zoo_script", Path(__file__).resolve().parents[1] / "experiments" / "zoo.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(tmp_path)  # no runs/zoo/student/final here
    assert script.main(["--model=teacher_upcycled"]) == 2
    err = capsys.readouterr().err
    assert "runs/zoo/student/final" in err and "--model=student first" in err
    assert not (tmp_path / "runs").exists()  # nothing trained or written

"""Distillation (`vlm_jax.posttrain.distill`) on the tiny student from a random init, with a smaller random-init
teacher: an off-policy step (forward KL to the teacher's logits) and an on-policy step (sampled reverse KL)
move the student and never the teacher, text-only distillation trains the LLM backbone only, stop + resume
gives the params of an uninterrupted run, and both configs validate at tiny and released sizes."""

from __future__ import annotations

import importlib
import os
import shutil

import flax.linen as nn
import jax
import ml_collections as mlc
import numpy as np
import pytest

from tests.helpers import assert_released_size, max_abs_diff, metrics_rows
from vlm_jax.configs import experiment, zoo
from vlm_jax.configs import model as model_configs
from vlm_jax.configs.posttrain import base, distill_onpolicy
from vlm_jax.model.vlm import init_params, param_shapes
from vlm_jax.params.store import load_params, save_params
from vlm_jax.posttrain import distill
from vlm_jax.train.optimizer import param_labels
from vlm_jax.train.step import CPU_FAST_COMPILE

CONFIGS = ("distill_offpolicy", "distill_onpolicy")
DEVICES = jax.devices()[:1]  # a one-device mesh: no padding to the 8 test devices
KW = dict(devices=DEVICES, compiler_options=CPU_FAST_COMPILE)


def _small(offpolicy_steps: int, onpolicy_steps: int, student: str, teacher: str, **distill_keys):
    """distill_onpolicy at tiny scale shrunk to seconds: 2 prompts x G=2, 8 new tokens, 2 updates an iteration."""
    c = distill_onpolicy.get_config()
    c.init_from, c.distill.teacher_from = student, teacher
    c.distill.update(offpolicy_steps=offpolicy_steps, onpolicy_steps=onpolicy_steps, **distill_keys)
    c.rollout.update(prompts_per_iteration=2, group_size=2, max_new_tokens=8, seq_len=64, max_patches=128,
                     max_grids=4)
    c.minibatches = 2
    c.eval.update(tasks=("text",), num_per_task=2, batch_size=2, max_new_tokens=8, every=0)
    c.train.checkpoint.update(every_steps=1, keep=3, async_save=False)
    return c


def _group_diffs(a, b, config) -> dict[str, float]:
    """Largest change per module group (llm, merger, vision)."""
    labels = param_labels(a, base.train_config(config))
    out: dict[str, float] = {}
    for label, x, y in zip(jax.tree.leaves(labels), jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        out[label] = max(out.get(label, 0.0), float(np.max(np.abs(np.asarray(x) - np.asarray(y)))))
    return out


def _teacher_config(student: mlc.ConfigDict) -> mlc.ConfigDict:
    """Half the student's decoder depth: a different model, same vocabulary and vision tower shape."""
    t = mlc.ConfigDict(student.to_dict())
    t.name = "test-teacher"
    t.text.update(num_layers=2, intermediate_size=128)
    return t


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Exports of a random-init student (the zoo student's shapes) and a different random-init teacher."""
    mc = base.model_config(distill_onpolicy.get_config())
    student, teacher = tmp_path_factory.mktemp("student"), tmp_path_factory.mktemp("teacher")
    save_params(jax.device_get(nn.unbox(init_params(mc, jax.random.key(1)))), mc, student)
    tc = _teacher_config(mc)
    save_params(jax.device_get(nn.unbox(init_params(tc, jax.random.key(2)))), tc, teacher)
    return str(student), str(teacher)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dirs):
    """Text-only, two off-policy then one on-policy iteration, straight; and the same run stopped after the
    first iteration (its checkpoint directory as a stopped run leaves it), then rerun: it resumes. One config,
    so every compile is shared."""
    straight, split = str(tmp_path_factory.mktemp("straight")), str(tmp_path_factory.mktemp("split"))
    a = distill.run(_small(2, 1, *dirs), straight, **KW)
    shutil.copytree(os.path.join(straight, "checkpoints"), os.path.join(split, "checkpoints"))
    for later in ("2", "3"):
        shutil.rmtree(os.path.join(split, "checkpoints", later))
    return {"straight": (straight, a), "resumed": (split, distill.run(_small(2, 1, *dirs), split, **KW))}


def test_offpolicy_and_onpolicy_steps_move_the_student_never_the_teacher(dirs):
    """One off-policy step (forward KL) trains the LLM backbone only (text-only); one on-policy step (sampled
    reverse KL) moves it again; the teacher's device arrays are read, never donated or updated."""
    c = _small(2, 1, *dirs)
    s = distill._Setup(c, DEVICES, CPU_FAST_COMPILE)
    teacher = distill.load_teacher(c, s.mc, s.tokenizer, s.mesh)
    before = jax.device_get(teacher.params)
    assert max_abs_diff(before, load_params(dirs[1])[1]) == 0
    state = distill._start_state(s)
    start = jax.device_get(state.params)
    state, row, cursor = distill.train_iteration(s, state, teacher, 0, 0, s.pipeline())
    off = jax.device_get(state.params)
    diffs = _group_diffs(off, start, c)
    # Text-only: the LLM moves; vision tower and merger are frozen (no weight decay either).
    assert diffs["llm"] > 0 and diffs["vision"] == 0 and diffs["merger"] == 0, diffs
    assert row["distill/onpolicy"] == 0 and row["distill/updates"] == 2 and cursor == 0
    state, row, cursor = distill.train_iteration(s, state, teacher, 2, cursor, None)
    assert row["distill/onpolicy"] == 1 and row["distill/updates"] == 2 and cursor == 2
    assert max_abs_diff(jax.device_get(state.params), off) > 0
    assert max_abs_diff(jax.device_get(teacher.params), before) == 0


def test_run_logs_each_phase_and_exports(runs):
    straight, summary = runs["straight"]
    assert summary["iterations"] == 3 and summary["updates"] == 6 and summary["skipped_steps"] == 0
    assert summary["prompts_drawn"] == 2  # off-policy logits iterations draw no prompts
    rows = metrics_rows(straight)
    assert [r["distill/onpolicy"] for r in rows] == [0, 0, 1]
    off, on = rows[0], rows[2]
    assert off["distill/kl"] == off["distill/loss"] > 0  # forward KL between two different models
    assert 0 <= off["distill/top1_agreement"] <= 1 and off["distill/tokens"] > 0
    assert "rollout/response_length" not in off  # teacher-forced on the pipeline's batches: nothing sampled
    assert 0 < on["rollout/response_length"] <= 8 and on["distill/tokens"] > 0
    assert 0 <= on["distill/teacher_top1_rate"] <= 1 and on["distill/teacher_logp"] < 0
    assert np.isfinite(on["distill/kl"]) and "distill/top1_agreement" not in on
    for key in ("distill/grad_norm", "lr_llm", "time/update_seconds"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert np.isfinite(on["eval/text/acc"])  # held-out eval after the last iteration
    assert os.listdir(os.path.join(straight, "tensorboard"))
    assert {"model_config.json", "params", "tokenizer.json", "processor_config.json"} <= set(
        os.listdir(summary["final_params"]))


def test_stop_and_resume_equals_uninterrupted_run(runs):
    """Resumed inside the off-policy phase: the data pipeline's position, the prompt cursor and the
    sampling keys all come back."""
    (straight, a), (split, b) = runs["straight"], runs["resumed"]
    assert b["resumed_from"] == 1 and a["resumed_from"] is None
    assert a["iterations"] == b["iterations"] == 3 and a["updates"] == b["updates"] == 6
    assert a["prompts_drawn"] == b["prompts_drawn"]
    rows_b = metrics_rows(split)
    assert [r["step"] for r in rows_b] == [2, 3]
    for row_a, row_b in zip(metrics_rows(straight)[1:], rows_b, strict=True):
        for key in ("distill/loss", "distill/tokens", "distill/grad_norm"):
            assert row_a[key] == pytest.approx(row_b[key], abs=1e-6), key
    diff = max_abs_diff(load_params(os.path.join(straight, "final"))[1], load_params(os.path.join(split, "final"))[1])
    assert diff <= 1e-6, diff


@pytest.mark.slow
def test_offpolicy_samples_with_images_train_every_module(dirs, tmp_path):
    """The teacher samples replies to image prompts; CE on them moves the vision tower too."""
    c = _small(1, 0, *dirs, offpolicy="samples", offpolicy_loss="ce", text_only=False)
    c.eval.tasks = ()
    summary = distill.run(c, str(tmp_path), **KW)
    [row] = metrics_rows(str(tmp_path))
    assert row["distill/onpolicy"] == 0 and 0 < row["rollout/response_length"] <= 8
    assert summary["prompts_drawn"] == 2 and "distill/kl" not in row
    diffs = _group_diffs(load_params(summary["final_params"])[1], load_params(dirs[0])[1], c)
    assert min(diffs.values()) > 0, diffs


def test_phases_follow_the_step_counts(dirs):
    c = _small(2, 3, *dirs, offpolicy="samples", offpolicy_loss="ce")
    assert [distill.phase_of(c, i) for i in range(5)] == ["offpolicy_samples"] * 2 + ["onpolicy"] * 3
    assert distill.objective(c, "offpolicy_samples") is None  # next-token CE
    assert distill.objective(c, "onpolicy").extra_keys == ("teacher_logp",)


def test_sft_control_is_next_token_ce_on_the_same_batches(dirs):
    """offpolicy "logits" with the "ce" loss: the pipeline's batches, no teacher output in the step (the
    control of experiments/distill_methods.py)."""
    c = _small(2, 0, *dirs, offpolicy="logits", offpolicy_loss="ce")
    base.validate(c)
    assert distill.phase_of(c, 0) == "offpolicy_logits" and distill.objective(c, "offpolicy_logits") is None


def test_cut_placeholders_drops_what_the_forward_cannot_replay():
    from vlm_jax.posttrain.rollout import RolloutBatch

    rb = RolloutBatch(prompt_index=np.array([0, 0, 1]), prompt_ids=[[5], [5], [6]],
                      completions=[[7, 9, 8], [9, 7], [7, 8]],
                      logprobs=[np.array([-1.0, -2.0, -3.0]), np.array([-1.0, -2.0]), np.array([-1.0, -2.0])],
                      finished=np.array([True, True, True]), pixel_values=[np.zeros((0, 4))] * 3,
                      grid_thw=[np.zeros((0, 3), np.int32)] * 3, temperature=1.0)
    out, cut = distill.cut_placeholders(rb, {9})
    assert cut == 2 and out.completions == [[7], [7, 8]] and out.prompt_index.tolist() == [0, 1]
    assert [lp.tolist() for lp in out.logprobs] == [[-1.0], [-1.0, -2.0]] and out.finished.tolist() == [False, True]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_at_tiny_with_the_zoo_models(name):
    c = importlib.import_module(f"vlm_jax.configs.posttrain.{name}").get_config()
    base.validate(c)
    assert c.method == "distill" and c.init_from == f"{zoo.ZOO_DIR}/student/final"
    assert c.distill.teacher_from == f"{zoo.ZOO_DIR}/teacher_upcycled/final" and c.distill.text_only
    assert base.model_config(c).to_dict() == experiment.model_config(zoo.get_config("student")).to_dict()
    # The zoo's upcycled teacher fits the student (without its export on disk).
    distill.check_teacher(base.model_config(c), experiment.model_config(zoo.get_config("teacher_upcycled")),
                          text_only=False)
    assert c.iterations == c.distill.offpolicy_steps + c.distill.onpolicy_steps >= 1
    assert distill.distill_tasks(c) == {"text": 2.0} and distill.eval_families(c) == ["text"]
    assert distill.train_config(c).optimizer.freeze_vision and distill.train_config(c).optimizer.freeze_merger
    c.distill.onpolicy_steps += 3  # the run length follows the phase lengths (a config reference)
    assert c.iterations == c.distill.offpolicy_steps + c.distill.onpolicy_steps
    base.validate(c)


@pytest.mark.parametrize("size", ["8b", "30b-a3b"])
@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_at_released_size(name, size):
    """Validated with abstract shapes only: nothing is allocated."""
    c = importlib.import_module(f"vlm_jax.configs.posttrain.{name}").get_config(size)
    assert c.name == f"{name}_{size}"
    assert_released_size(c, base.model_config(c), distill.train_config(c), size)
    teacher = distill.teacher_model_config(c)
    t_total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(param_shapes(teacher))))
    assert t_total / 1e9 == pytest.approx(model_configs.PUBLISHED_TOTAL_B[c.distill.teacher_size], rel=0.02)


@pytest.mark.parametrize(("keys", "match"), [
    ({"iterations": 7}, "iterations=7 must equal"),
    ({"distill.loss": "kl"}, "distill.loss='kl'"),
    ({"distill.options": {"beta": 0.5}}, "beta"),
    ({"tasks": {"count": 1.0}}, "hold no text task"),
    ({"distill.offpolicy_steps": 0, "distill.onpolicy_steps": 0, "iterations": 0}, "one iteration at least"),
    ({"rollout.temperature": 0.7}, "reverse_kl_sampled"),
])
def test_bad_config_fails_naming_the_key(keys, match):
    c = distill_onpolicy.get_config()
    for dotted, value in keys.items():
        node, *path = dotted.split(".")
        target = c if not path else c[node]
        target[path[-1] if path else node] = value
    with pytest.raises(ValueError, match=match):
        base.validate(c)


def test_mismatched_teacher_fails_naming_the_setting():
    student = base.model_config(distill_onpolicy.get_config())
    teacher = mlc.ConfigDict(student.to_dict())
    teacher.text.vocab_size = 2048
    teacher.vision.patch_size = 16
    with pytest.raises(ValueError, match="text.vocab_size 2048 != 1024"):
        distill.check_teacher(student, teacher, text_only=True)
    teacher.text.vocab_size = 1024
    distill.check_teacher(student, teacher, text_only=True)  # text only: the patches do not matter
    with pytest.raises(ValueError, match="vision.patch_size 16 != 8"):
        distill.check_teacher(student, teacher, text_only=False)

"""The RL loop (`vlm_jax.posttrain.rl`) on the tiny model from a random init: one iteration moves the params
and logs its metrics, stop + resume gives the params of an uninterrupted run, group selection, RL prompts
equal the eval harness's, the CLI's errors, and every RL config validates at tiny and released sizes."""

from __future__ import annotations

import importlib
import os
import signal
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from tests.helpers import assert_released_size, max_abs_diff, metrics_rows
from vlm_jax.configs import experiment, zoo
from vlm_jax.configs.posttrain import base, rl_sapo
from vlm_jax.data.synthetic import SyntheticWorld
from vlm_jax.eval import harness
from vlm_jax.eval import tasks as tasks_lib
from vlm_jax.model.vlm import init_params
from vlm_jax.parallel import make_mesh
from vlm_jax.params.store import load_params, save_params
from vlm_jax.posttrain import rl
from vlm_jax.posttrain.__main__ import main as cli_main
from vlm_jax.train.checkpoint import Checkpointer
from vlm_jax.train.data import make_tokenizer
from vlm_jax.train.state import unboxed_abstract_state
from vlm_jax.train.step import CPU_FAST_COMPILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RL_CONFIGS = ("rl_sapo", "rl_grpo", "rl_gspo")
DEVICES = jax.devices()[:1]  # a one-device mesh: no padding to the 8 test devices, one copy of the work


def _reward(sample, reply: str) -> float:
    """A reward random replies earn half the time (the task rewards give a random init 0 everywhere)."""
    return float(len(reply) % 2)


def _small(iterations: int, init_from: str):
    """rl_sapo at tiny scale shrunk to seconds: 2 prompts x G=2, 8 new tokens, 2 minibatches, a 2-item eval."""
    c = rl_sapo.get_config()
    c.init_from = init_from
    c.iterations = iterations
    c.tasks = {"count": 1.0, "ground_box": 1.0}
    c.rollout.update(prompts_per_iteration=2, group_size=2, max_new_tokens=8, seq_len=64, max_patches=128,
                     max_grids=4)
    c.minibatches = 2
    c.filters.max_rounds = 6
    c.eval.update(tasks=("counting",), num_per_task=2, batch_size=2, max_new_tokens=8, every=0)
    c.train.checkpoint.update(every_steps=1, async_save=False)
    return c


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    """A random init exported like the zoo student (the default `init_from` of tiny RL)."""
    mc = base.model_config(rl_sapo.get_config())
    out = tmp_path_factory.mktemp("init")
    save_params(jax.device_get(nn.unbox(init_params(mc, jax.random.key(1)))), mc, out)
    return str(out)


def _stop_after_first_iteration():
    """A reward that sends this process SIGTERM on its first call: the run checkpoints after the iteration
    in progress and returns (`PreemptionGuard`), as a preempted job would."""
    sent = []

    def reward(sample, reply):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return _reward(sample, reply)

    return reward


@pytest.fixture(scope="module")
def runs(tmp_path_factory, init_dir):
    """2 iterations straight; the same config stopped by SIGTERM after iteration 1, then rerun (resumes).
    One config, so the compiled step is shared."""
    straight, split = str(tmp_path_factory.mktemp("straight")), str(tmp_path_factory.mktemp("split"))
    kw = dict(devices=DEVICES, compiler_options=CPU_FAST_COMPILE)
    out = {"straight": (straight, rl.run(_small(2, init_dir), straight, reward_fn=_reward, **kw))}
    stopped = rl.run(_small(2, init_dir), split, reward_fn=_stop_after_first_iteration(), **kw)
    c = _small(2, init_dir)
    mc, tc = base.model_config(c), base.train_config(c)
    ckpt = Checkpointer(os.path.join(split, "checkpoints"))
    state, data_state, step = ckpt.restore(unboxed_abstract_state(mc, tc, make_mesh(tc.parallel, DEVICES)))
    ckpt.close()
    out["stopped"] = (stopped, metrics_rows(split), jax.device_get(state.params), data_state, step)
    out["resumed"] = (split, rl.run(c, split, reward_fn=_reward, **kw))
    return out


def test_one_iteration_moves_the_params_and_logs_metrics(runs, init_dir):
    summary, rows, params, data_state, step = runs["stopped"]
    assert summary["stopped_by_signal"] and "final_params" not in summary
    assert summary["iterations"] == step == 1 and summary["updates"] == 2 and summary["skipped_steps"] == 0
    assert data_state == {"iteration": 1, "prompt_cursor": summary["prompts_drawn"]}
    assert max_abs_diff(params, load_params(init_dir)[1]) > 0
    [row] = rows
    first = metrics_rows(runs["straight"][0])[0]["time/iteration_seconds"]
    print(f"one tiny RL iteration (compiles included): {first:.1f}"
          f" s; compiled: {row['time/iteration_seconds']:.1f} s")
    for key in ("reward/mean", "reward/count", "reward/ground_box", "pass_rate/mean", "groups/kept",
                "policy/gate_weight_mean", "policy/approx_kl", "policy/kl_to_start", "policy/entropy",
                "policy/response_length", "rollout/response_length", "time/rollout_seconds", "time/update_seconds"):
        assert np.isfinite(row[key]), key
    assert row["groups/kept"] == 2 and row["policy/updates"] == 2
    # Drawn = kept + dropped (+ the surplus of the last round); with 0/1 rewards and G = 2 a group that
    # passes the pass-rate filter has one right and one wrong reply, so never equal rewards.
    assert row["rollout/prompts_drawn"] == 2 * row["rollout/rounds"] == summary["prompts_drawn"]
    dropped = sum(row[f"groups/{k}"] for k in ("too_easy", "all_wrong", "no_signal", "unusable"))
    assert row["groups/kept"] + dropped <= row["rollout/prompts_drawn"] and row["groups/no_signal"] == 0
    assert row["pass_rate/mean"] == row["reward/mean"]  # 0/1 rewards at threshold 0.5
    assert 0 < row["policy/gate_weight_mean"] <= 1 and row["policy/kl_to_start"] >= 0
    assert 0 < row["policy/response_length"] <= 8 and row["rollout/response_length"] <= 8
    assert os.listdir(os.path.join(summary["workdir"], "tensorboard"))
    # The rollout's phases (benchmarks/rollout.py reads them): each took time, together at most the whole.
    phases = [row[f"time/{k}_seconds"] for k in ("prompt", "generate", "reward")]
    assert min(phases) > 0 and sum(phases) <= row["time/rollout_seconds"]
    rows_drawn = row["rollout/prompts_drawn"] * 2  # G = 2
    assert row["rollout/tokens"] == pytest.approx(row["rollout/response_length"] * rows_drawn)
    assert 0 < row["rollout/tokens"] <= 8 * rows_drawn


def test_stop_and_resume_equals_uninterrupted_run(runs):
    (straight, a), (split, b) = runs["straight"], runs["resumed"]
    assert b["resumed_from"] == 1 and a["resumed_from"] is None
    assert a["iterations"] == b["iterations"] == 2 and a["updates"] == b["updates"] == 4
    assert a["prompts_drawn"] == b["prompts_drawn"]
    rows_a, rows_b = metrics_rows(straight), metrics_rows(split)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [1, 2]
    for row_a, row_b in zip(rows_a, rows_b):
        for key in ("reward/mean", "groups/kept", "rollout/rounds", "policy/loss", "policy/kl_to_start"):
            assert row_a[key] == pytest.approx(row_b[key], abs=1e-6), key
    assert rows_a[1]["policy/kl_to_start"] > 0  # the reference stayed the start params across the resume
    diff = max_abs_diff(load_params(os.path.join(straight, "final"))[1], load_params(os.path.join(split, "final"))[1])
    assert diff <= 1e-6, diff
    # Export and the held-out eval after the last iteration.
    assert {"model_config.json", "params", "tokenizer.json", "processor_config.json"} <= set(
        os.listdir(b["final_params"]))
    assert np.isfinite(rows_b[1]["eval/reward_mean"]) and 0 <= rows_b[1]["eval/counting/exact"] <= 1
    assert b["eval"]["eval/reward_mean"] == rows_b[1]["eval/reward_mean"]


def test_select_groups_filters_by_pass_rate_and_signal():
    rewards = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.3, 0.1, 0.0], [1.0, 0.0, 1.0]])
    correct = rewards >= 0.5
    unusable = np.array([False, False, False, False, True])
    keep, counts = rl.select_groups(rewards, correct, unusable, max_pass_rate=0.9, min_pass_rate=0.0)
    assert keep.tolist() == [False, False, True, False, False]
    assert counts == {"too_easy": 1, "all_wrong": 2, "no_signal": 0, "unusable": 1}
    # min_pass_rate = -1 keeps all-wrong groups: the one with unequal rewards trains, the flat one has no signal.
    keep, counts = rl.select_groups(rewards, correct, unusable, max_pass_rate=1.0, min_pass_rate=-1.0)
    assert keep.tolist() == [False, False, True, True, False]
    assert counts == {"too_easy": 0, "all_wrong": 0, "no_signal": 2, "unusable": 1}


def test_rl_prompts_are_the_eval_harness_prompts(monkeypatch):
    """The tokens and pixels RL samples from are those the eval harness generates from for the same item."""
    c = rl_sapo.get_config()
    world = SyntheticWorld(base.world_config(c))
    tok, processor = make_tokenizer(c.data), base.processor_config(c)
    ours = rl.draw_prompts(world, 10, 4, tok, processor, c.rollout.seq_len, c.rollout.max_new_tokens)
    seen = {}

    def fake_generate(config, params, *, prompts, pixel_values, grid_thw, **kw):
        seen.update(prompts=prompts, pixel_values=pixel_values)
        return types.SimpleNamespace(sequences=lambda: [[] for _ in prompts])

    monkeypatch.setattr(harness.generate_lib, "generate", fake_generate)
    items = [tasks_lib.item_from_sample(world.sample(i, "train")) for i in range(10, 14)]
    harness.predict(base.model_config(c), None, tok, items, batch_size=4, processor=processor)
    assert sorted(seen["prompts"]) == sorted(p.prompt.input_ids for p in ours)
    by_ids = {tuple(p.prompt.input_ids): p.prompt.pixel_values for p in ours}
    order = [by_ids[tuple(ids)] for ids in seen["prompts"]]
    np.testing.assert_array_equal(seen["pixel_values"], np.concatenate(order))
    assert [p.task for p in ours] == [it.task for it in items]


def test_prompt_longer_than_seq_len_fails_naming_it():
    c = rl_sapo.get_config()
    world = SyntheticWorld(base.world_config(c))
    with pytest.raises(ValueError, match="exceeds rollout.seq_len=40"):
        rl.draw_prompts(world, 0, 1, make_tokenizer(c.data), base.processor_config(c), 40, 8)


@pytest.mark.parametrize("name", RL_CONFIGS)
def test_rl_config_validates_at_tiny_and_fits_the_zoo_student(name):
    c = importlib.import_module(f"vlm_jax.configs.posttrain.{name}").get_config()
    base.validate(c)
    assert c.method == "rl" and c.init_from == f"{zoo.ZOO_DIR}/student/final"
    # The default init is the zoo student's export: same model, same image processing.
    student = zoo.get_config("student")
    assert base.model_config(c).to_dict() == experiment.model_config(student).to_dict()
    assert base.processor_config(c) == experiment.processor_config(student)
    assert base.train_config(c).num_train_steps == c.iterations * c.ppo_epochs * c.minibatches


@pytest.mark.parametrize("size", ["8b", "30b-a3b"])
@pytest.mark.parametrize("name", RL_CONFIGS)
def test_rl_config_validates_at_released_size(name, size):
    """Validated with abstract shapes only: the train state is traced, nothing is allocated."""
    c = importlib.import_module(f"vlm_jax.configs.posttrain.{name}").get_config(size)
    assert c.name == f"{name}_{size}"
    assert_released_size(c, base.model_config(c), base.train_config(c), size)


def test_loss_defaults_follow_the_reference():
    configs = {n: importlib.import_module(f"vlm_jax.configs.posttrain.{n}").get_config() for n in RL_CONFIGS}
    assert configs["rl_sapo"].loss.options.to_dict() == {"tau_pos": 1.0, "tau_neg": 1.05, "beta": 0.0,
                                                         "aggregation": "seq_mean_token_mean"}
    assert configs["rl_grpo"].loss.options.clip_eps_low == 0.2 and configs["rl_grpo"].loss.options.beta == 0.04
    g = configs["rl_gspo"]
    assert (g.loss.options.clip_eps_low, g.loss.options.clip_eps_high, g.minibatches) == (3e-4, 4e-4, 4)


@pytest.mark.parametrize("key, value, message", [
    ("loss.options", {"tau_pos": 1.0, "tau": 2.0}, "has no option"),
    ("rollout.group_size", 1, "group_size=1"),
    ("minibatches", 3, "minibatches=3"),
    ("filters.min_pass_rate", 0.95, "min_pass_rate"),
    ("rollout.seq_len", 40, "seq_len=40"),
    ("tasks", {"count": 1.0, "not_a_task": 1.0}, "not_a_task"),
    ("eval.tasks", ("counting", "nope"), "nope"),
    ("data.processor.video_time_encoding", "absolute_time", "data.processor.video_time_encoding='absolute_time' "
                                                            "differs from model.video_time_encoding='timestamps'"),
    ("data.processor.merger", "resampler", "data.processor.merger='resampler' differs from model.merger='mlp'"),
])
def test_bad_config_fails_naming_the_key(key, value, message):
    c = rl_sapo.get_config()
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    with c.unlocked():
        node[leaf] = value
    with pytest.raises(ValueError, match=message):
        base.validate(c)


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    config = f"--config={REPO}/vlm_jax/configs/posttrain/rl_sapo.py"
    assert cli_main([config, "--config.iterations=0", f"--workdir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: invalid posttrain config: iterations=0, ppo_epochs=1, minibatches=2 must be >= 1")
    from vlm_jax.posttrain import __main__ as posttrain_cli

    monkeypatch.setattr(posttrain_cli, "METHODS", {**posttrain_cli.METHODS, "distill": "vlm_jax.posttrain.no_module"})
    assert cli_main([config, "--config.method=distill", f"--workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config.method='distill' needs vlm_jax.posttrain.no_module") and "\n" not in err
    assert posttrain_cli.runner("rl") is rl.run


def test_rollouts_helpers_keep_rows_and_pad():
    rb = rl.RolloutBatch(prompt_index=np.array([0, 0, 1, 1]), prompt_ids=[[1], [1], [2], [2]],
                         completions=[[3], [4], [5], [6]], logprobs=[np.zeros(1, np.float32)] * 4,
                         finished=np.array([True, False, True, False]),
                         pixel_values=[np.zeros((0, 4), np.float32)] * 4, grid_thw=[np.zeros((0, 3), np.int32)] * 4,
                         temperature=1.0)
    joined = rl.concat_rollouts([rl.select_rows(rb, [2, 3]), rl.select_rows(rb, [1, 0])])
    assert joined.completions == [[5], [6], [4], [3]] and joined.prompt_index.tolist() == [1, 1, 2, 2]
    assert joined.finished.tolist() == [True, False, False, True]
    batch = {"input_ids": np.ones((2, 5), np.int32), "position_ids": np.ones((3, 2, 5), np.int32),
             "loss_weights": np.ones((2, 5), np.float32), "grid_thw": np.ones((4, 3), np.int32),
             "advantages": np.ones(2, np.float32)}
    padded = rl.pad_rows(batch, 4, pad_id=7)
    assert padded["input_ids"].shape == (4, 5) and (padded["input_ids"][2:] == 7).all()
    assert padded["position_ids"].shape == (3, 4, 5) and not padded["position_ids"][:, 2:].any()
    assert not padded["loss_weights"][2:].any() and padded["advantages"].tolist() == [1, 1, 0, 0]
    assert padded["grid_thw"] is batch["grid_thw"]

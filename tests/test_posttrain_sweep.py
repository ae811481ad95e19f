"""Post-training runs in the sweep runner (`vlm_jax.experiments`): the loop's evaluation of the starting
params (`eval.at_start`), the start / gain scores and held-out curves read from a run's logs, the dispatch
to the RL and distillation loops, and `experiments/rl_methods.py` (its configs; its smoke sweep is slow)."""

from __future__ import annotations

import json
import os

import pytest

from vlm_jax.configs.posttrain import base
from vlm_jax.experiments import measure, spec, sweep
from vlm_jax.posttrain import driver

RL_METHODS = "experiments/rl_methods.py"


class _Ckpt:
    def __init__(self):
        self.saved = []

    def save(self, it, state, data_state, force=False):
        self.saved.append(it)

    def latest_step(self):
        return self.saved[-1] if self.saved else None

    def close(self):
        pass


class _State:
    def __init__(self, params):
        self.params = params


def _loop(workdir, start, eval_at_start):
    """Three iterations that add 1 to the params; the eval scores the params themselves."""
    evaluated = []

    def evaluate(params):
        evaluated.append(params)
        return {"eval/counting/exact": params / 10}

    res = driver.run_iterations(
        workdir=str(workdir), ckpt=_Ckpt(), state=_State(start), start=start, iterations=3,
        step=lambda state, it: (_State(state.params + 1), {"loss": 0.0}), data_state=lambda it: {},
        log_line=lambda it, row: f"it {it}", evaluate=evaluate, eval_every=2, eval_at_start=eval_at_start,
        tensorboard=False, save_on_sigterm=False)
    return res, evaluated


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_eval_at_start_logs_the_starting_params_as_iteration_zero(tmp_path):
    res, evaluated = _loop(tmp_path / "fresh", 0, eval_at_start=True)
    assert evaluated == [0, 2, 3]  # the start, every 2 iterations, the last
    rows = _rows(tmp_path / "fresh")
    assert rows[0] == {"step": 0, "eval/counting/exact": 0.0}
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and len(res.history) == 3  # not a training iteration
    # Off, or resumed past the start: no iteration-0 evaluation.
    assert _loop(tmp_path / "off", 0, eval_at_start=False)[1] == [2, 3]
    assert _loop(tmp_path / "resumed", 1, eval_at_start=True)[1] == [2, 3]


def _write_run(run_dir, start, final, steps=(0, 50, 100)):
    os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for i, step in enumerate(steps):
            value = start + (final - start) * i / (len(steps) - 1)
            f.write(json.dumps({"step": step, "eval/counting/exact": value, "reward/mean": 0.5}) + "\n")
            f.write(json.dumps({"step": step + 1, "reward/mean": 0.5}) + "\n")  # a row without an eval
    with open(os.path.join(run_dir, "eval", "results.json"), "w") as f:
        json.dump({"tasks": {"counting": {"exact": final, "n": 10}, "grounding": {"acc@0.5": 0.3, "n": 10}}}, f)


def test_start_and_gain_scores_and_curves(tmp_path):
    _write_run(tmp_path, start=0.25, final=0.40)
    scores = measure.run_scores(str(tmp_path))
    assert scores["heldout/counting"] == pytest.approx(0.40)
    assert scores["start/counting"] == pytest.approx(0.25) and scores["gain/counting"] == pytest.approx(0.15)
    assert "start/grounding" not in scores  # no starting score logged for it
    curves = measure.eval_curves(str(tmp_path), ["counting", "grounding"])
    assert curves["counting"] == [(0, 0.25), (50, 0.325), (100, 0.40)]
    assert curves["grounding"] == []
    # A run without an iteration-0 evaluation (the train loop's runs) has no start or gain.
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert not any(k.startswith(("start/", "gain/")) for k in measure.run_scores(str(tmp_path)))


def test_sweep_trains_posttrain_configs_with_their_loop(monkeypatch, tmp_path):
    from vlm_jax.posttrain import distill, rl

    calls = []
    monkeypatch.setattr(rl, "run", lambda c, w: calls.append(("rl", c.loss.name, w)) or {})
    monkeypatch.setattr(distill, "run", lambda c, w: calls.append(("distill", c.method, w)) or {})
    exp = spec.load_experiment(RL_METHODS)
    run = exp.runs()[0]
    config = exp.config(run)
    assert spec.is_posttrain(config) and spec.length(config) == "iterations=150"
    sweep.train(config, str(tmp_path))
    from vlm_jax.configs.posttrain import distill_onpolicy

    sweep.train(distill_onpolicy.get_config(), str(tmp_path))
    assert calls == [("rl", "grpo", str(tmp_path)), ("distill", "distill", str(tmp_path))]
    sweep.check_batches(config)  # post-training builds its own prompts: nothing to render


def test_rl_methods_arms_share_prompts_budget_and_start():
    exp = spec.load_experiment(RL_METHODS)
    runs = exp.runs()
    assert len(runs) == 9 and {r.arm for r in runs} == {"sapo", "grpo", "gspo"} and exp.reference == "grpo"
    configs = {r.name: exp.config(r) for r in runs}
    for r in runs:
        c = configs[r.name]
        assert c.loss.name == r.arm and c.train.seed == r.seed and c.init_from.endswith("zoo/student/final")
        assert (c.iterations, c.rollout.prompts_per_iteration, c.rollout.group_size) == (150, 8, 8)
        assert dict(c.tasks) == {"count": 1.0, "ground_box": 1.0, "ground_point": 1.0}
        assert c.eval.at_start and c.eval.num_per_task == 0 and c.eval.every == 50
        assert base.world_config(c)["question_first"] == 1.0  # the zoo student's prompt layout
    main = exp.config(spec.Run("x", {}, "world=main,init=runs/synthetic_tiny/final", "sapo", 0))
    assert main.init_from == "runs/synthetic_tiny/final" and main.data.world["max_objects"] == 3
    with pytest.raises(ValueError, match="loss must be one of sapo, grpo, gspo"):
        exp.module.get_config("loss=ppo")


@pytest.mark.slow
def test_rl_methods_smoke_sweep(tmp_path):
    """Two RL runs of 2 iterations from a random init, through the real loops: the table, the start and
    gain scores, and a held-out curve per family (about 90 s)."""
    exp = spec.load_experiment(RL_METHODS, smoke=True)
    assert sweep.run_sweep(exp, str(tmp_path), smoke=True) == 0
    out = tmp_path / "smoke"
    res = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in res["runs"]] == ["done", "done"]
    for r in res["runs"]:
        assert r["scores"]["gain/counting"] == pytest.approx(r["scores"]["heldout/counting"]
                                                             - r["scores"]["start/counting"])
    assert (out / "plots" / "curve_heldout_counting.png").exists()


DISTILL_METHODS = "experiments/distill_methods.py"


def test_distill_methods_arms_share_batches_and_budget():
    exp = spec.load_experiment(DISTILL_METHODS)
    runs = exp.runs()
    assert len(runs) == 9 and exp.reference == "sft"
    for r in runs:
        c = exp.config(r)
        ds = c.distill
        assert (ds.offpolicy, c.iterations, c.train.seed) == ("logits", 100, r.seed)
        phases = {"sft": ("ce", 100, 0), "offpolicy": ("forward_kl", 100, 0), "off_on": ("forward_kl", 50, 50)}
        assert (ds.offpolicy_loss, ds.offpolicy_steps, ds.onpolicy_steps) == phases[r.arm]
        assert ds.teacher_from.endswith("zoo/teacher_upcycled/final") and c.init_from.endswith("zoo/student/final")
        assert not ds.text_only and "grounding" in c.eval.tasks and c.eval.at_start
    assert "gap_closed/grounding" in exp.metrics()
    text = exp.module.get_config("text_only=True,method=sft")
    assert text.distill.text_only and list(text.eval.tasks) == ["text"]
    assert exp.module.metrics("text_only=True") == ["heldout/text", "gain/text", "gap_closed/text"]


def test_gap_closed_from_the_teacher_and_start_scores(tmp_path, monkeypatch):
    exp = spec.load_experiment(DISTILL_METHODS)
    run_dir = tmp_path / "method-sft_seed-0"
    os.makedirs(run_dir / "eval")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/text/acc": 0.2}) + "\n")
    (run_dir / "eval" / "results.json").write_text(json.dumps({"tasks": {"text": {"acc": 0.35, "n": 4}}}))
    config = exp.module.get_config("method=sft,text_only=True")
    key = {"teacher": config.distill.teacher_from, "families": ["text"], "num_per_task": 0}
    (tmp_path / "teacher_eval.json").write_text(json.dumps({"key": key, "scores": {"text": 0.5}}))
    out = exp.module.measure("method=sft,text_only=True", config, str(run_dir))
    # gain 0.15 of a 0.3 gap: half closed.
    assert out == {"teacher/text": 0.5, "gap_closed/text": pytest.approx(0.5)}


@pytest.mark.slow
def test_distill_methods_smoke_sweep(tmp_path):
    """SFT and off-policy-then-on-policy distillation of a random-init student from a random-init teacher, 2
    iterations each, through the real loop, with the teacher's held-out scores (about 2-4 min)."""
    exp = spec.load_experiment(DISTILL_METHODS, smoke=True)
    assert sweep.run_sweep(exp, str(tmp_path), smoke=True) == 0
    res = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert [r["status"] for r in res["runs"]] == ["done", "done"]
    assert all("teacher/text" in r["scores"] and "gain/text" in r["scores"] for r in res["runs"])

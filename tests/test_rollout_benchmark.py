"""benchmarks/rollout.py: the phase bookkeeping on hand-made metric rows, the ranked reward, the flag checks,
and (slow) the whole benchmark at a minimal size: strict JSON on stdout with finite, positive numbers."""

from __future__ import annotations

import json
import math

import jax
import pytest

from benchmarks import common
from benchmarks import rollout as bench
from vlm_jax.train.step import CPU_FAST_COMPILE


def _row(prompts, generate, reward, ref, update, iteration, tokens, kept=2):
    return {"time/prompt_seconds": prompts, "time/generate_seconds": generate, "time/reward_seconds": reward,
            "time/ref_seconds": ref, "time/update_seconds": update, "time/iteration_seconds": iteration,
            "rollout/tokens": tokens, "groups/kept": kept}


def test_summary_splits_compile_from_steady_state_and_shares_add_up():
    rows = [_row(0.5, 30.0, 0.2, 10.0, 40.0, 81.0, 64),  # the compiling iteration
            _row(0.1, 2.0, 0.2, 0.5, 1.0, 4.0, 60), _row(0.1, 3.0, 0.2, 0.5, 2.0, 6.0, 64),
            _row(0.1, 2.5, 0.2, 0.5, 1.5, 5.0, 62)]
    s = bench.summarise_rl(rows, warmup=1, updates_per_iteration=2)
    assert s["steady_s"]["generate"] == 2.5 and s["steady_s"]["iteration"] == 5.0
    assert s["steady_s"]["rollout"] == 3.0  # generation + reference log-probs
    assert s["compile_s"] == {"generate": 27.5, "ref_logprobs": 9.5, "update": 38.5, "iteration": 76.0}
    assert s["first_iteration_s"]["other"] == pytest.approx(81.0 - 0.5 - 30.0 - 0.2 - 10.0 - 40.0, abs=1e-3)
    # Over the timed iterations: 186 tokens in 9 s of rollout (7.5 s of it generating), 15 s in all.
    assert s["rollout_tokens_per_s"] == pytest.approx(186 / 9.0, abs=0.05)
    assert s["generate_tokens_per_s"] == pytest.approx(186 / 7.5, abs=0.05)
    assert s["update_ms_per_step"] == 750.0
    share = s["share_of_iteration"]
    assert share["rollout"] == pytest.approx(9 / 15, abs=1e-4) and share["update"] == pytest.approx(4.5 / 15, abs=1e-4)
    assert sum(share[k] for k in ("rollout", "reward", "update", "prompts", "other")) == pytest.approx(1.0, abs=1e-3)
    assert s["iteration_s"] == [81.0, 4.0, 6.0, 5.0] and s["groups_kept"] == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="need more than warmup=4"):
        bench.summarise_rl(rows, warmup=4, updates_per_iteration=2)


def test_ranked_reward_computes_the_task_reward_and_returns_ranks(monkeypatch):
    """Each call scores the reply with the task reward (so the reward phase costs what it does in a real run)
    and returns the call's rank in its group of G consecutive calls."""
    scored = []
    monkeypatch.setattr(bench.rl, "task_reward", lambda sample, reply: scored.append(reply) or 0.0)
    reward = bench.ranked_reward(3)
    got = [reward({"task": "count"}, reply) for reply in ["3", "2", "three", "x", "3", ""]]
    assert got == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    assert scored == ["3", "2", "three", "x", "3", ""]


def test_bad_sizes_fail_naming_the_flag():
    bench.FLAGS.unparse_flags()
    bench.FLAGS(["prog", "--configs=tiny", "--group_size=1"])
    with pytest.raises(ValueError, match="--group_size >= 2"):
        bench.sizes("tiny", bench.FLAGS)
    bench.FLAGS.unparse_flags()
    bench.FLAGS(["prog", "--configs=100m"])
    assert bench.sizes("100m", bench.FLAGS) == bench.DEFAULTS["100m"]
    assert bench.main(["--configs=tiny", "--warmup=0"]) == 2  # a one-line error, no run


@pytest.mark.slow  # 267 s on a busy 2-core host (45 s of CPU): it compiles generate, the reference forward
# and two train steps
def test_benchmark_runs_and_reports_finite_positive_numbers(capsys):
    bench.FLAGS.unparse_flags()
    bench.FLAGS(["prog", "--configs=tiny", "--prompts=2", "--group_size=2", "--max_new_tokens=4", "--iterations=1"])
    bench.run(bench.FLAGS, devices=jax.devices()[:1], compiler_options=CPU_FAST_COMPILE, emit=common.print_json)
    out = json.loads(capsys.readouterr().out)  # stdout holds exactly one strict JSON object
    assert out["benchmark"] == "rollout" and set(out["sides"]) == {"rl", "train_step"}
    assert {"load_avg_start", "load_avg_end", "threads"} <= set(out["host"])
    r = out["configs"]["tiny"]
    rl, step = r["rl"], r["train_step"]
    for v in (rl["rollout_tokens_per_s"], rl["generate_tokens_per_s"], rl["update_ms_per_step"],
              step["step_ms_median"], step["first_step_s"], r["rl_update_step_over_train_step"],
              *(rl["steady_s"][k] for k in ("prompts", "generate", "reward", "ref_logprobs", "update", "iteration"))):
        assert v is not None and math.isfinite(v) and v > 0
    assert rl["generated_tokens_per_iteration"] <= 2 * 2 * 4 and rl["updates_run"] >= 1
    assert rl["first_iteration_s"]["iteration"] > rl["steady_s"]["iteration"]  # the first one compiles
    assert step["tokens"] == rl["rows_per_update"] * rl["seq_len"] and step["steps"] == 2
    assert 0 < rl["share_of_iteration"]["rollout"] < 1 and 0 < rl["share_of_iteration"]["update"] < 1
    assert r["model"]["dtype"] == "float32" and r["model"]["params"] > 0

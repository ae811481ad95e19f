"""RL post-training speed: rollout tokens/s and where an RL iteration's time goes, next to the plain
train step on a batch of the same shape, on CPU.

What each side runs (same model config, dtype, random init; image prompts of the synthetic world):
  rl:         `vlm_jax.posttrain.rl.run` on the rl_sapo config shrunk by the flags: per iteration, P
              prompts x G samples from the jitted `generate` (prefill + while_loop decode, temperature
              1, sampler log-probs), rewards on the host, the frozen start params' log-probs (one
              jitted forward per micro-batch: log.kl_to_start), then `minibatches` optimizer steps of
              the jitted `make_train_step` with the SAPO objective. Phase times are the loop's own
              metrics (time/{prompt, generate, reward, ref, update, iteration}_seconds).
  train_step: the jitted `make_train_step` with the default next-token loss and the same train config,
              on a batch shaped as one RL optimizer step: P * G / minibatches rows of rollout.seq_len
              tokens, the same prompts and images, random completion tokens of max_new_tokens.

Phases: rollout = generation (the sampler's log-probs come out of it) + the reference log-probs;
rollout tokens/s = generated tokens / rollout seconds (generate_tokens_per_s: over generation alone).
Shares are of the iteration's wall time, summed over the timed iterations: rollout, reward, update,
prompts (drawing and processing them) and other (logging, batch bookkeeping) add up to 1.

Rewards: every completion's task reward is computed (the reward phase costs what it costs in a real
run), but the value returned is the completion's rank in its group (0 .. G-1), so every group carries
signal and the update trains on the full batch from a random init (where task rewards are all 0 and
nothing would train). Dynamic sampling is off, so each iteration generates exactly P x G completions.
A group with a visual placeholder id in a completion is still dropped (the loop's rule; a random
init samples one now and then), which shortens only the reference forward: the update's step shape
is fixed.

Compile vs steady state: the first iteration (step) compiles; the first `--warmup` are not timed; the
steady values are medians over the `--iterations` after them; compile_s = first - steady median.

    python benchmarks/rollout.py --configs tiny,100m
    python benchmarks/rollout.py --configs tiny --prompts 8 --group_size 8 --max_new_tokens 40

Progress goes to stderr; stdout is one JSON object.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import ml_collections as mlc  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import model as model_configs  # noqa: E402
from vlm_jax.configs.posttrain import base as posttrain_base  # noqa: E402
from vlm_jax.configs.posttrain import rl_sapo  # noqa: E402
from vlm_jax.data.synthetic import SyntheticWorld  # noqa: E402
from vlm_jax.parallel import make_mesh  # noqa: E402
from vlm_jax.posttrain import rl  # noqa: E402
from vlm_jax.posttrain.rollout import RolloutBatch, to_train_batch  # noqa: E402
from vlm_jax.train import data as data_lib  # noqa: E402
from vlm_jax.train.state import init_train_state  # noqa: E402
from vlm_jax.train.step import effective_model_config, global_batch_shapes, make_train_step, put_batch  # noqa: E402

# Per-config defaults: (prompts, group_size, max_new_tokens, timed iterations). tiny: the tiny RL run's
# rollout shape; 100m: smaller, so its optimizer steps (seconds each on 2 cores) fit in a few minutes.
DEFAULTS = {"tiny": (8, 8, 40, 3), "tiny-moe": (8, 8, 40, 3), "100m": (4, 4, 32, 2)}
FALLBACK = (4, 4, 32, 2)
# The loop's metrics -> the phase names of the report.
PHASES = {"prompts": "time/prompt_seconds", "generate": "time/generate_seconds", "reward": "time/reward_seconds",
          "ref_logprobs": "time/ref_seconds", "update": "time/update_seconds", "iteration": "time/iteration_seconds"}


def sizes(name: str, args: Any) -> tuple[int, int, int, int]:
    """(prompts, group_size, max_new_tokens, iterations): the flags, their 0 values replaced by `DEFAULTS`."""
    dflt = DEFAULTS.get(name, FALLBACK)
    given = (args.prompts, args.group_size, args.max_new_tokens, args.iterations)
    prompts, group_size, max_new_tokens, iterations = (int(g) if g else d for g, d in zip(given, dflt))
    if min(prompts, max_new_tokens, iterations) < 1 or group_size < 2:
        raise ValueError(f"need --prompts, --max_new_tokens, --iterations >= 1 and --group_size >= 2 "
                         f"(group-normalised advantages); got {prompts}, {max_new_tokens}, {iterations}, {group_size}")
    return prompts, group_size, max_new_tokens, iterations


def model_dict(name: str, dtype: str) -> dict:
    """`vlm_jax.configs.model.get_config(name)` in `dtype`, blocked ViT attention of one 64 x 64 frame."""
    m = model_configs.get_config(name).unlock()
    m.dtype = dtype
    m.vision.attention_block = 64  # the world's 64 x 64 images: at most 64 patches a frame
    return m.to_dict()


def rl_config(name: str, args: Any, prompts: int, group_size: int, max_new_tokens: int,
              iterations: int) -> mlc.ConfigDict:
    """rl_sapo (tiny recipe) with model `name` from a random init, one rollout round per iteration, no
    eval, no TensorBoard, no checkpoint before the last; rollout.seq_len / max_patches / max_grids are set
    by `fit_buffers`."""
    c = rl_sapo.get_config()
    c.init_from = ""
    c.model = mlc.ConfigDict(model_dict(name, args.dtype))
    c.data.processor.update(patch_size=c.model.vision.patch_size, merge_size=c.model.vision.spatial_merge_size)
    c.rollout.update(prompts_per_iteration=prompts, group_size=group_size, max_new_tokens=max_new_tokens)
    c.filters.update(dynamic_sampling=False, max_pass_rate=1.0)
    c.iterations = iterations
    c.eval.tasks = ()
    c.log.tensorboard = False
    c.train.seed = args.seed
    c.train.checkpoint.update(every_steps=10**9, async_save=False)
    return c


def draw(c: mlc.ConfigDict, n: int) -> list[rl.RLPrompt]:
    """The first `n` prompts of the run's prompt stream (the loop reads them in this order)."""
    world = SyntheticWorld(posttrain_base.world_config(c))
    tok = data_lib.make_tokenizer(c.data)
    return rl.draw_prompts(world, 0, n, tok, posttrain_base.processor_config(c), seq_len=10**9,
                           max_new_tokens=c.rollout.max_new_tokens)


def fit_buffers(c: mlc.ConfigDict, prompts: Sequence[rl.RLPrompt]) -> int:
    """Sets rollout.seq_len (longest prompt + max_new_tokens, rounded up to 8) and the vision buffer of one
    micro-batch (its rows times the most patches / images of a prompt); returns the micro-batch rows."""
    r = c.rollout
    rows = r.prompts_per_iteration * r.group_size // (c.minibatches * c.train.grad_accum_steps)
    longest = max(len(p.prompt) for p in prompts)
    r.seq_len = -(-(longest + r.max_new_tokens) // 8) * 8
    r.max_patches = rows * max(1, max(len(p.prompt.pixel_values) for p in prompts))
    r.max_grids = rows * max(1, max(len(p.prompt.grid_thw) for p in prompts))
    return rows


def ranked_reward(group_size: int) -> rl.RewardFn:
    """A reward that computes the task reward (for its cost) and returns the completion's rank in its group:
    the loop scores a round's completions in row order, G rows per prompt (module docstring)."""
    calls = itertools.count()

    def reward(sample: Mapping[str, Any], reply: str) -> float:
        rl.task_reward(sample, reply)
        return float(next(calls) % group_size)

    return reward


def train_batch(c: mlc.ConfigDict, prompts: Sequence[rl.RLPrompt], rows: int, seed: int) -> dict[str, np.ndarray]:
    """One RL optimizer step's batch shape from the run's first prompts (G rows each, as the loop lays a
    micro-batch out), completions of max_new_tokens random ids above the special ids."""
    r, mc = c.rollout, posttrain_base.model_config(c)
    rows_prompts = [prompts[i // r.group_size].prompt for i in range(rows)]
    low = 1 + max(mc.image_token_id, mc.video_token_id, mc.vision_start_token_id, mc.vision_end_token_id)
    rng = np.random.default_rng(seed)
    completions = [rng.integers(low, mc.text.vocab_size, r.max_new_tokens).tolist() for _ in range(rows)]
    rb = RolloutBatch(prompt_index=np.arange(rows) // r.group_size,
                      prompt_ids=[list(p.input_ids) for p in rows_prompts], completions=completions,
                      logprobs=[np.zeros(r.max_new_tokens, np.float32)] * rows,
                      finished=np.zeros(rows, bool), pixel_values=[np.asarray(p.pixel_values) for p in rows_prompts],
                      grid_thw=[np.asarray(p.grid_thw, np.int32).reshape(-1, 3) for p in rows_prompts],
                      temperature=1.0)
    return to_train_batch(rb, r.seq_len, mc, max_patches=r.max_patches, max_grids=r.max_grids)


def bench_train_step(c: mlc.ConfigDict, batch: Mapping[str, np.ndarray], warmup: int, steps: int,
                     devices: Sequence[jax.Device] | None, compiler_options: dict | None = None) -> dict:
    """The plain step on `batch`: first call (compile included), then `warmup - 1` untimed and `steps` timed."""
    tc = posttrain_base.train_config(c)
    mc = effective_model_config(posttrain_base.model_config(c), tc)
    mesh = make_mesh(tc.parallel, devices)
    state = {"s": init_train_state(mc, tc, mesh, compiler_options=compiler_options)}
    n_params = int(sum(x.size for x in jax.tree.leaves(state["s"].params)))
    step = make_train_step(mc, tc, mesh, batch_shapes=global_batch_shapes(batch), compiler_options=compiler_options)
    dev = put_batch(batch, mesh)

    def one() -> float:
        state["s"], m = step(state["s"], dev)  # the state is donated: rebind it every step
        return float(m["loss"])  # blocks until the step is done

    first, loss = common.timed(one)
    times = common.interleaved({"step": one}, reps=steps, warmup=max(warmup - 1, 0))["step"]
    wall = common.median(times["wall"])
    return {"rows": int(batch["input_ids"].shape[0]), "seq_len": int(batch["input_ids"].shape[1]),
            "tokens": int(batch["input_ids"].size), "real_tokens": int(np.sum(batch["segment_ids"] != 0)),
            "trained_tokens": int(np.sum(batch["loss_weights"] > 0)), "patches": int(np.sum(np.prod(
                batch["grid_thw"], axis=-1))), "params": n_params,
            "first_step_s": round(first, 3), "step_ms_median": round(1e3 * wall, 1),
            "compile_s": round(first - wall, 3), "step_cpu_s_median": round(common.median(times["cpu"]), 3),
            "steps": steps, "step_ms": [round(1e3 * x, 1) for x in times["wall"]], "loss_first": round(loss, 4)}


def phase_times(row: Mapping[str, float]) -> dict[str, float]:
    """One iteration's phases in seconds (module docstring), "other" = iteration - the rest."""
    t = {k: float(row.get(v, 0.0)) for k, v in PHASES.items()}
    t["rollout"] = t["generate"] + t["ref_logprobs"]
    t["other"] = t["iteration"] - t["prompts"] - t["generate"] - t["reward"] - t["ref_logprobs"] - t["update"]
    return t


def summarise_rl(rows: Sequence[Mapping[str, float]], warmup: int, updates_per_iteration: int) -> dict:
    """Steady medians, shares, first-iteration times and compile estimates from the loop's metric rows."""
    if len(rows) <= warmup:
        raise ValueError(f"{len(rows)} iterations ran; need more than warmup={warmup}")
    per = [phase_times(r) for r in rows]
    timed = per[warmup:]
    steady = {k: common.median([p[k] for p in timed]) for k in per[0]}
    tokens = [float(r["rollout/tokens"]) for r in rows[warmup:]]
    total = sum(p["iteration"] for p in timed)
    share = {k: round(sum(p[k] for p in timed) / total, 4)
             for k in ("rollout", "generate", "ref_logprobs", "reward", "update", "prompts", "other")}
    rnd = lambda d: {k: round(v, 4) for k, v in d.items()}
    return {
        "rollout_tokens_per_s": common.rate(sum(tokens), sum(p["rollout"] for p in timed), 1),
        "generate_tokens_per_s": common.rate(sum(tokens), sum(p["generate"] for p in timed), 1),
        "generated_tokens_per_iteration": common.median(tokens),
        "steady_s": rnd(steady),
        "share_of_iteration": share,
        "update_ms_per_step": round(1e3 * steady["update"] / updates_per_iteration, 1),
        "first_iteration_s": rnd(per[0]),
        "compile_s": {k: round(per[0][k] - steady[k], 3) for k in ("generate", "ref_logprobs", "update", "iteration")},
        "groups_kept": [int(r["groups/kept"]) for r in rows],
        "iteration_s": [round(p["iteration"], 3) for p in per],
    }


def bench_config(name: str, args: Any, devices: Sequence[jax.Device] | None = None,
                 compiler_options: dict | None = None) -> dict:
    """Both sides for model config `name` (module docstring) on `devices` (default all); compiler_options:
    XLA options of both train steps (tests: `CPU_FAST_COMPILE`)."""
    prompts, group_size, max_new, iterations = sizes(name, args)
    if args.warmup < 1:
        raise ValueError(f"--warmup={args.warmup} must be >= 1 (the first iteration compiles)")
    c = rl_config(name, args, prompts, group_size, max_new, args.warmup + iterations)
    stream = draw(c, c.iterations * prompts)  # every prompt the run reads: the buffers fit them all
    rows = fit_buffers(c, stream)
    updates = c.ppo_epochs * c.minibatches
    common.log(f"[{name}] RL: {c.iterations} iterations of {prompts} prompts x {group_size} samples, "
               f"{max_new} new tokens, seq_len {c.rollout.seq_len}, {updates} updates of {rows} rows")
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON only
        t_run, summary = common.timed(lambda: rl.run(c, os.path.join(tmp, "run"), reward_fn=ranked_reward(group_size),
                                                     devices=devices, compiler_options=compiler_options))
        with open(os.path.join(tmp, "run", "metrics.jsonl")) as f:
            rows_logged = [json.loads(line) for line in f]
    rl_out = {"prompts": prompts, "group_size": group_size, "max_new_tokens": max_new,
              "seq_len": c.rollout.seq_len, "max_patches": c.rollout.max_patches, "loss": c.loss.name,
              "kl_to_start": bool(c.log.kl_to_start), "updates_per_iteration": updates, "rows_per_update": rows,
              "warmup": args.warmup, "iterations": iterations, "updates_run": summary["updates"],
              **summarise_rl(rows_logged, args.warmup, updates)}
    # Outside the iterations: state init (its compile), the final checkpoint and the export.
    rl_out["run_s"] = round(t_run, 2)
    rl_out["outside_iterations_s"] = round(t_run - sum(r["time/iteration_seconds"] for r in rows_logged), 2)

    common.log(f"[{name}] plain train step on {rows} x {c.rollout.seq_len} tokens")
    batch = train_batch(c, stream, rows, args.seed)
    step = bench_train_step(c, batch, args.warmup, iterations * updates, devices, compiler_options)
    mc = posttrain_base.model_config(c)
    out = {"model": {"name": name, "params": step.pop("params"), "dtype": mc.dtype,
                     "patch_size": mc.vision.patch_size, "prompt_tokens_max": max(len(p.prompt) for p in stream)},
           "rl": rl_out, "train_step": step,
           "rl_update_step_over_train_step": common.rate(rl_out["update_ms_per_step"], step["step_ms_median"], 3)}
    common.log(f"[{name}] rollout {rl_out['rollout_tokens_per_s']} tokens/s; share rollout "
               f"{rl_out['share_of_iteration']['rollout']}, update {rl_out['share_of_iteration']['update']}; "
               f"RL update step {rl_out['update_ms_per_step']} ms vs train step {step['step_ms_median']} ms")
    return out


def sides(args: Any) -> dict[str, str]:
    """What each side runs, for the JSON."""
    return {
        "rl": (f"vlm_jax.posttrain.rl.run (rl_sapo, random init, {args.dtype}, image prompts): jitted generate "
               "(prefill + while_loop decode, sampler log-probs), task rewards on the host (value: rank in the "
               "group), jitted reference log-prob forward (kl_to_start), jitted make_train_step with the SAPO "
               "objective; one rollout round per iteration"),
        "train_step": (f"jitted make_train_step, next-token loss, same train config, {args.dtype}, on one RL "
                       "optimizer step's batch shape (same prompts and images, random completions)"),
    }


FLAGS = flags.FlagValues()
flags.DEFINE_string("configs", "tiny,100m", "comma-separated model sizes (vlm_jax.configs.model names)",
                    flag_values=FLAGS)
flags.DEFINE_integer("prompts", 0, f"prompts per iteration (0: per-config default, {DEFAULTS})", flag_values=FLAGS)
flags.DEFINE_integer("group_size", 0, "samples per prompt (0: per-config default)", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 0, "tokens generated per sample at most (0: per-config default)",
                     flag_values=FLAGS)
flags.DEFINE_integer("iterations", 0, "timed RL iterations (0: per-config default); the plain step is timed for "
                     "as many optimizer steps", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 1, "untimed RL iterations (plain steps) first, the compiling one included",
                     flag_values=FLAGS)
flags.DEFINE_string("dtype", "float32", "compute dtype (bfloat16 on accelerators)", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "train seed (params, sampling) and the random completions' seed", flag_values=FLAGS)


def run(args: flags.FlagValues, devices: Sequence[jax.Device] | None = None, compiler_options: dict | None = None,
        emit: Callable[[dict], None] = common.print_json) -> dict:
    """Benchmarks every config of the parsed flags `args` (`FLAGS`) on `devices` (default all), the train steps
    compiled with `compiler_options`; `emit`s the result (default: one JSON object on stdout) and returns it."""
    names = [n for n in args.configs.split(",") if n]
    if not names:
        raise ValueError("--configs names no model config")
    start = common.host_start()
    result = {"benchmark": "rollout", "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
              "sides": sides(args), "settings": args.flag_values_dict(),
              "configs": {name: bench_config(name, args, devices, compiler_options) for name in names}}
    result["host"] = common.host_report(start)
    emit(result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS) and None, argv, doc=__doc__)  # the result is printed, not returned


if __name__ == "__main__":
    sys.exit(main())

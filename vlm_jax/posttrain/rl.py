"""The RL loop: prompts -> rollouts -> rewards -> group advantages -> filtering and dynamic sampling ->
minibatch updates of the train step -> metrics, held-out eval, checkpoints, export.

    summary = run(config, workdir)        # config: vlm_jax/configs/posttrain/rl_*.py

One iteration:
  1. prompts: `rollout.prompts_per_iteration` samples of the synthetic world's train split (task mixture
     `config.tasks`), read in index order from a cursor; prompt tokens are built as the eval harness
     builds them (`tasks.item_from_sample` + `build_prompt`), so RL and eval prompts are token-identical.
  2. rollouts: G completions per prompt at `rollout.temperature` (`rollout.rollout`).
  3. rewards: each sample's task reward (`rewards.reward_for`) of the decoded reply; a completion is
     correct when its reward >= `filters.correct_threshold`.
  4. groups kept: pass rate in (min_pass_rate, max_pass_rate] (`advantages.pass_rate_filter`) and unequal
     rewards (`advantages.has_signal`). With `filters.dynamic_sampling`, further rounds of fresh prompts
     refill the batch (DAPO) until prompts_per_iteration groups are kept or `filters.max_rounds` rounds
     ran; the rest of the batch stays empty. A group with a visual placeholder id in a completion is
     dropped: the training forward cannot replay it.
  5. advantages: `advantages.group_advantages` of each kept group.
  6. updates: `ppo_epochs` passes, each shuffling the kept rows into `minibatches` optimizer steps of
     `make_train_step(loss_fn=PolicyObjective(...))` against the sampler's log-probs (old_logp); with
     beta > 0 or `log.kl_to_start`, the frozen start params' log-probs (ref_logp) too.
  7. metrics to metrics.jsonl and TensorBoard; held-out eval every `eval.every` iterations and after the
     last; a checkpoint every `train.checkpoint.every_steps` iterations.

Shapes are fixed, so the step compiles once: a micro-batch has P * G / (minibatches * grad_accum_steps)
rows (rounded up to the mesh's batch shards; empty rows pad a partly filled batch), `rollout.seq_len`
tokens and `rollout.max_patches` / `max_grids` vision rows. Compiled steps are reused by later runs in
the same process (sweeps, tests).

Exact resume: a checkpoint holds the train state and {"iteration", "prompt_cursor"}; every random choice is
a function of (train.seed, iteration, round or epoch) and the params, so stopping and rerunning gives the
params of an uninterrupted run.

Workdir: checkpoints/<iteration>/, final/ (params, model config, tokenizer, processor), metrics.jsonl,
tensorboard/, eval/results.json (the latest held-out eval), summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from vlm_jax.configs.posttrain import base as config_lib
from vlm_jax.data.synthetic import SyntheticWorld
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.eval import harness
from vlm_jax.eval import tasks as tasks_lib
from vlm_jax.inference.prompt import Prompt, build_prompt
from vlm_jax.inference.sampling import SamplingConfig
from vlm_jax.parallel import make_mesh
from vlm_jax.parallel import rules as rules_lib
from vlm_jax.posttrain import advantages as adv_lib
from vlm_jax.posttrain import driver
from vlm_jax.posttrain import rewards as rewards_lib
from vlm_jax.posttrain.objectives import PolicyObjective
from vlm_jax.posttrain.rollout import RolloutBatch, rollout, to_train_batch, token_logprobs
from vlm_jax.train import checkpoint as checkpoint_lib
from vlm_jax.train import data as data_lib
from vlm_jax.train.loop import export_final, load_init_params
from vlm_jax.train.state import (
    init_train_state,
    state_shardings,
    train_state_from_params,
    unbox,
    unboxed_abstract_state,
)
from vlm_jax.train.step import (
    BATCH_KEYS,
    check_skips,
    effective_model_config,
    global_batch_shapes,
    make_train_step,
    put_batch,
    stack_microbatches,
)

RewardFn = Callable[[Mapping[str, Any], str], float]

# Train-step metrics averaged over an iteration's updates -> their names in the log.
_POLICY_METRICS = {"loss": "policy/loss", "pg_loss": "policy/pg_loss", "entropy": "policy/entropy",
                   "ratio_mean": "policy/ratio_mean", "approx_kl": "policy/approx_kl",
                   "clip_fraction": "policy/clip_fraction", "gate_weight_mean": "policy/gate_weight_mean",
                   "kl": "policy/kl_to_start", "grad_norm": "policy/grad_norm",
                   "response_length_mean": "policy/response_length"}


@dataclasses.dataclass
class RLPrompt:
    """One prompt of the stream: `sample` (the eval item as a sample: what rewards score), its task and tokens."""

    index: int
    task: str
    sample: dict
    prompt: Prompt


def make_prompt(item: tasks_lib.EvalItem, tokenizer: Tokenizer, processor: Mapping[str, Any]) -> Prompt:
    """The generation prompt of an eval item, built as `harness.predict` builds it (no thinking)."""
    return build_prompt(item.messages, item.images, item.videos, tokenizer, processor, False)


def draw_prompts(world: SyntheticWorld, start: int, n: int, tokenizer: Tokenizer, processor: Mapping[str, Any],
                 seq_len: int, max_new_tokens: int) -> list[RLPrompt]:
    """Train-split samples start .. start + n - 1 as prompts; ValueError when one cannot fit seq_len."""
    out = []
    for i in range(start, start + n):
        item = tasks_lib.item_from_sample(world.sample(i, "train"))
        prompt = make_prompt(item, tokenizer, processor)
        if len(prompt) + max_new_tokens > seq_len:
            raise ValueError(f"train sample {i} ({item.task}): the prompt has {len(prompt)} tokens; with "
                             f"rollout.max_new_tokens={max_new_tokens} it exceeds rollout.seq_len={seq_len}")
        out.append(RLPrompt(i, item.task, item.to_sample(), prompt))
    return out


def task_reward(sample: Mapping[str, Any], reply: str) -> float:
    """The sample's task reward (`rewards.reward_for`) of a decoded reply."""
    return float(rewards_lib.reward_for(sample)(sample, reply))


def select_groups(rewards: np.ndarray, correct: np.ndarray, unusable: np.ndarray, max_pass_rate: float,
                  min_pass_rate: float) -> tuple[np.ndarray, dict[str, int]]:
    """(keep mask [P], counts) for groups of rewards / correct [P, G] and unusable [P] (cannot be trained).

    Kept: pass rate in (min, max], rewards not all equal, usable. Counts: too_easy (pass rate > max),
    all_wrong (<= min), no_signal (passed the filter, equal rewards), unusable (passed, had signal)."""
    rate = adv_lib.pass_rates(correct)
    passed = adv_lib.pass_rate_filter(correct, max_pass_rate=max_pass_rate, min_pass_rate=min_pass_rate)
    signal = adv_lib.has_signal(rewards)
    keep = passed & signal & ~unusable
    counts = {"too_easy": int(np.sum(rate > max_pass_rate)), "all_wrong": int(np.sum(rate <= min_pass_rate)),
              "no_signal": int(np.sum(passed & ~signal)), "unusable": int(np.sum(passed & signal & unusable))}
    return keep, counts


def select_rows(rb: RolloutBatch, rows: Sequence[int]) -> RolloutBatch:
    """The rollout rows `rows`, in that order."""
    rows = [int(i) for i in rows]
    return RolloutBatch(prompt_index=rb.prompt_index[rows], prompt_ids=[rb.prompt_ids[i] for i in rows],
                        completions=[rb.completions[i] for i in rows], logprobs=[rb.logprobs[i] for i in rows],
                        finished=rb.finished[rows], pixel_values=[rb.pixel_values[i] for i in rows],
                        grid_thw=[rb.grid_thw[i] for i in rows], temperature=rb.temperature)


def concat_rollouts(parts: Sequence[RolloutBatch]) -> RolloutBatch:
    """Rollout batches joined row-wise (prompt_index renumbered: one group per (part, prompt))."""
    offsets = np.cumsum([0] + [int(p.prompt_index.max()) + 1 if len(p) else 0 for p in parts])
    return RolloutBatch(
        prompt_index=np.concatenate([p.prompt_index + o for p, o in zip(parts, offsets)]).astype(np.int64),
        prompt_ids=[x for p in parts for x in p.prompt_ids], completions=[x for p in parts for x in p.completions],
        logprobs=[x for p in parts for x in p.logprobs], finished=np.concatenate([p.finished for p in parts]),
        pixel_values=[x for p in parts for x in p.pixel_values], grid_thw=[x for p in parts for x in p.grid_thw],
        temperature=parts[0].temperature)


def _row_axis(key: str) -> int | None:
    return None if key in ("pixel_values", "grid_thw") else 1 if key == "position_ids" else 0


def pad_rows(batch: Mapping[str, np.ndarray], rows: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """`batch` with empty rows appended up to `rows` (no tokens, zero loss weight; vision buffers as they are)."""
    out = {}
    for k, v in batch.items():
        axis = _row_axis(k)
        n = 0 if axis is None else v.shape[axis]
        if n > rows:
            raise ValueError(f"batch[{k!r}] has {n} rows > {rows}")
        if axis is None or n == rows:
            out[k] = v
            continue
        widths = [(0, 0)] * v.ndim
        widths[axis] = (0, rows - n)
        out[k] = np.pad(v, widths, constant_values=pad_id if k == "input_ids" else 0)
    return out


def _empty_batch(seq_len: int, patch_dim: int, max_patches: int, max_grids: int) -> dict[str, np.ndarray]:
    b = {k: np.zeros((0, seq_len), np.float32 if k == "loss_weights" else np.int32)
         for k in ("input_ids", "segment_ids", "targets", "loss_weights", "task_ids")}
    b.update(position_ids=np.zeros((3, 0, seq_len), np.int32), old_logp=np.zeros((0, seq_len), np.float32),
             pixel_values=np.zeros((max_patches, patch_dim), np.float32), grid_thw=np.zeros((max_grids, 3), np.int32))
    return b


class _Batches:
    """Builds fixed-shape train micro-batches from kept rollout rows."""

    def __init__(self, config: mlc.ConfigDict, model_config: mlc.ConfigDict, pad_id: int, rows: int):
        r, v = config.rollout, model_config.vision
        self.mc, self.pad_id, self.rows = model_config, pad_id, rows
        self.seq_len, self.max_patches, self.max_grids = r.seq_len, r.max_patches, r.max_grids
        self.patch_dim = int(v.in_channels * v.temporal_patch_size * v.patch_size ** 2)

    def micro(self, rb: RolloutBatch, advantages: np.ndarray, ref_logp: np.ndarray | None) -> dict[str, np.ndarray]:
        if len(rb):
            b = to_train_batch(rb, self.seq_len, self.mc, pad_id=self.pad_id, max_patches=self.max_patches,
                               max_grids=self.max_grids)
        else:
            b = _empty_batch(self.seq_len, self.patch_dim, self.max_patches, self.max_grids)
        b["advantages"] = np.asarray(advantages, np.float32)
        if ref_logp is not None:
            b["ref_logp"] = np.asarray(ref_logp, np.float32)
        return pad_rows(b, self.rows, self.pad_id)


_STEPS: dict[Any, Any] = {}


def _train_step(mc: mlc.ConfigDict, tc: mlc.ConfigDict, mesh: Any, batch: Mapping[str, np.ndarray],
                objective: PolicyObjective, compiler_options: Mapping[str, Any] | None):
    """`make_train_step` for these shapes, compiled once per process (module docstring)."""
    shapes = global_batch_shapes(batch, extra_keys=objective.extra_keys)
    key = (mc.to_json(), tc.to_json(), repr(objective), tuple(sorted(shapes.items())), mesh,
           tuple(sorted((compiler_options or {}).items())))
    if key not in _STEPS:
        _STEPS[key] = make_train_step(mc, tc, mesh, batch_shapes=shapes, loss_fn=objective,
                                      compiler_options=dict(compiler_options) if compiler_options else None)
    return _STEPS[key]


def _start_params(config: mlc.ConfigDict, mc: mlc.ConfigDict, tc: mlc.ConfigDict, mesh: Any,
                  compiler_options: Mapping[str, Any] | None) -> Any:
    """The start policy's params in the mesh layout: `init_from`, else the random init of train.seed."""
    if config.init_from:
        params = load_init_params(config.init_from, mc)
        return jax.device_put(unbox(params), state_shardings(mc, tc, mesh).params)
    return init_train_state(mc, tc, mesh, compiler_options=compiler_options).params


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def heldout_eval(config: mlc.ConfigDict, model_config: mlc.ConfigDict, params: Any, tokenizer: Tokenizer,
                 items: Sequence[tasks_lib.EvalItem], reward_fn: RewardFn, workdir: str) -> dict[str, float]:
    """Greedy replies on the held-out items, scored by the harness and by the RL reward; "eval/..." scalars
    (harness metrics per family, reward_mean, reward/<family>); writes eval/results.json."""
    e = config.eval
    report = harness.evaluate(model_config, params, tokenizer, items, batch_size=e.batch_size,
                              max_new_tokens=e.max_new_tokens, processor=config_lib.processor_config(config))
    rewards = [reward_fn(it.to_sample(), r.reply) for it, r in zip(items, report.results)]
    out = {f"eval/{k}": v for k, v in report.scalars().items()}
    out["eval/reward_mean"] = _mean(rewards)
    for fam in report.families():
        out[f"eval/reward/{fam}"] = _mean([x for x, it in zip(rewards, items) if it.family == fam])
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
            json.dump(report.to_json(), f, indent=1)
    return out


@dataclasses.dataclass
class Rollouts:
    """One iteration's rollouts: the kept groups (at most prompts_per_iteration) and everything drawn."""

    kept: list[RolloutBatch]  # one per kept group, G rows each
    kept_rewards: list[np.ndarray]  # [G] per kept group
    rewards: np.ndarray  # [prompts drawn, G]
    correct: np.ndarray  # [prompts drawn, G] bool
    tasks: list[str]  # per prompt drawn
    lengths: list[int]  # completion tokens per row drawn
    finished: np.ndarray  # per row drawn
    counts: dict[str, int]  # groups dropped, by reason (`select_groups`)
    rounds: int
    seconds: float = 0.0  # the whole collection; of it, by phase summed over rounds:
    prompt_seconds: float = 0.0  # drawing and tokenising prompts (images rendered and processed)
    generate_seconds: float = 0.0  # `rollout`: jitted generation, sampler log-probs included
    reward_seconds: float = 0.0  # decoding replies, rewards, group selection


class _Setup:
    """What an RL run reads every iteration, built once from the config."""

    def __init__(self, config: mlc.ConfigDict, model_config: mlc.ConfigDict, devices: Sequence[jax.Device] | None,
                 reward_fn: RewardFn, compiler_options: Mapping[str, Any] | None):
        self.config, self.model_config = config, model_config
        self.tc = config_lib.train_config(config)
        self.mc = effective_model_config(model_config, self.tc)
        self.mesh = mesh = make_mesh(self.tc.parallel, devices)
        self.tokenizer = data_lib.make_tokenizer(config.data)
        self.processor = config_lib.processor_config(config)
        self.world = SyntheticWorld(config_lib.world_config(config))
        self.reward_fn, self.compiler_options = reward_fn, compiler_options
        r = config.rollout
        options = config.loss.options.to_dict()
        self.objective = PolicyObjective(config.loss.name, options, temperature=r.temperature,
                                         with_ref=options.get("beta", 0.0) > 0 or config.log.kl_to_start)
        self.stop = (self.tokenizer.im_end_id, self.tokenizer.pad_id)  # as the eval harness
        self.placeholders = {self.mc.image_token_id, self.mc.video_token_id}
        shards = math.prod(mesh.shape[a] for a in rules_lib.BATCH_AXES)
        rows = r.prompts_per_iteration * r.group_size // (config.minibatches * self.tc.grad_accum_steps)
        self.batches = _Batches(config, self.mc, self.tokenizer.pad_id, -(-rows // shards) * shards)


def collect(s: _Setup, params: Any, iteration: int, cursor: int) -> tuple[Rollouts, int]:
    """Rollout rounds of fresh prompts from `cursor` until the batch is full (dynamic sampling), one round
    without it, or filters.max_rounds; returns them and the next cursor."""
    r, f = s.config.rollout, s.config.filters
    P, G = r.prompts_per_iteration, r.group_size
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(s.tc.seed), iteration)
    out = Rollouts([], [], np.zeros((0, G)), np.zeros((0, G), bool), [], [], np.zeros(0, bool),
                   dict.fromkeys(("too_easy", "all_wrong", "no_signal", "unusable"), 0), 0)
    while True:
        t_prompts = time.perf_counter()
        prompts = draw_prompts(s.world, cursor, P, s.tokenizer, s.processor, r.seq_len, r.max_new_tokens)
        cursor += P
        t_generate = time.perf_counter()
        rb = rollout(s.mc, params, [p.prompt for p in prompts], group_size=G, max_new_tokens=r.max_new_tokens,
                     sampling=SamplingConfig(temperature=r.temperature), stop_tokens=s.stop,
                     pad_token_id=s.tokenizer.pad_id, rng=jax.random.fold_in(key, out.rounds))
        out.rounds += 1
        t_reward = time.perf_counter()
        replies = [harness.decode_reply(s.tokenizer, x, s.stop) for x in rb.completions]
        rewards = np.asarray([s.reward_fn(prompts[p].sample, reply) for p, reply in zip(rb.prompt_index, replies)],
                             np.float64).reshape(P, G)
        correct = rewards >= f.correct_threshold
        unusable = np.asarray([bool(s.placeholders & set(x)) for x in rb.completions]).reshape(P, G).any(axis=1)
        keep, counts = select_groups(rewards, correct, unusable, f.max_pass_rate, f.min_pass_rate)
        for name, n in counts.items():
            out.counts[name] += n
        out.rewards = np.concatenate([out.rewards, rewards])
        out.correct = np.concatenate([out.correct, correct])
        out.tasks += [p.task for p in prompts]
        out.lengths += [len(x) for x in rb.completions]
        out.finished = np.concatenate([out.finished, rb.finished])
        for g in np.flatnonzero(keep)[:P - len(out.kept)]:
            out.kept.append(select_rows(rb, range(g * G, (g + 1) * G)))
            out.kept_rewards.append(rewards[g])
        out.prompt_seconds += t_generate - t_prompts
        out.generate_seconds += t_reward - t_generate
        out.reward_seconds += time.perf_counter() - t_reward
        if len(out.kept) >= P or not f.dynamic_sampling or out.rounds >= f.max_rounds:
            break
    out.seconds = time.perf_counter() - t0
    return out, cursor


def update(s: _Setup, state: Any, ref_params: Any, ro: Rollouts, iteration: int
           ) -> tuple[Any, list[dict[str, float]], dict[str, float]]:
    """ppo_epochs passes of minibatch steps over the kept rows; (state, per-step metrics, seconds)."""
    c, k = s.config, s.tc.grad_accum_steps
    times = {"time/ref_seconds": 0.0, "time/update_seconds": 0.0}
    if not ro.kept:
        return state, [], times
    rows = concat_rollouts(ro.kept)
    adv = np.asarray(adv_lib.group_advantages(np.stack(ro.kept_rewards), scale_std=c.loss.scale_std),
                     np.float32).reshape(-1)
    n, per_micro = len(rows), s.batches.rows
    ref = None
    if s.objective.with_ref:  # the start policy's log-probs, once per row
        t0 = time.perf_counter()
        ref = np.zeros((n, c.rollout.seq_len), np.float32)
        for chunk in np.array_split(np.arange(n), -(-n // per_micro)):
            b = s.batches.micro(select_rows(rows, chunk), adv[chunk], None)
            ref[chunk] = np.asarray(token_logprobs(s.mc, ref_params, b, c.rollout.temperature))[:len(chunk)]
        times["time/ref_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    keys = (*BATCH_KEYS, *s.objective.extra_keys)
    metrics = []
    for epoch in range(c.ppo_epochs):
        order = np.random.default_rng([s.tc.seed, iteration, epoch]).permutation(n)
        for chunk in np.array_split(order, c.minibatches):
            if not len(chunk):
                continue
            micro = [s.batches.micro(select_rows(rows, m), adv[m], None if ref is None else ref[m])
                     for m in np.array_split(chunk, k)]
            if k == 1:
                batch = {key: micro[0][key] for key in keys}
            else:
                batch = stack_microbatches(micro, s.objective.extra_keys)
            step = _train_step(s.mc, s.tc, s.mesh, batch, s.objective, s.compiler_options)
            state, m = step(state, put_batch(batch, s.mesh, microbatched=k > 1, extra_keys=s.objective.extra_keys))
            m = jax.device_get(m)
            check_skips(m, s.tc)
            metrics.append({name: float(np.asarray(v)) for name, v in m.items() if np.ndim(v) == 0})
    times["time/update_seconds"] = time.perf_counter() - t0
    return state, metrics, times


def iteration_metrics(ro: Rollouts, steps: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The logged row of one iteration (see `run`), timings aside."""
    P = ro.rewards.shape[0] // max(ro.rounds, 1)
    row = {"reward/mean": float(ro.rewards.mean()), "pass_rate/mean": float(ro.correct.mean()),
           "groups/kept": len(ro.kept), **{f"groups/{name}": v for name, v in ro.counts.items()},
           "rollout/rounds": ro.rounds, "rollout/prompts_drawn": ro.rounds * P,
           "rollout/response_length": _mean(ro.lengths), "rollout/tokens": int(np.sum(ro.lengths)),
           "rollout/truncated_fraction": float(1.0 - ro.finished.mean())}
    tasks = np.asarray(ro.tasks)
    for task in sorted(set(ro.tasks)):
        row[f"reward/{task}"] = float(ro.rewards[tasks == task].mean())
        row[f"pass_rate/{task}"] = float(ro.correct[tasks == task].mean())
    applied = [m for m in steps if not m["skipped"]]
    for name, log_name in _POLICY_METRICS.items():
        if applied and name in applied[0]:
            row[log_name] = _mean([m[name] for m in applied])
    row["policy/updates"] = len(applied)
    row["policy/skipped"] = len(steps) - len(applied)
    if steps:
        row.update({name: v for name, v in steps[-1].items() if name.startswith("lr_")})
    row["time/rollout_seconds"] = ro.seconds
    row["time/prompt_seconds"] = ro.prompt_seconds
    row["time/generate_seconds"] = ro.generate_seconds
    row["time/reward_seconds"] = ro.reward_seconds
    return row


def run(config: mlc.ConfigDict, workdir: str, *, reward_fn: RewardFn | None = None,
        devices: Sequence[jax.Device] | None = None,
        compiler_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Runs (or resumes) RL in `workdir`; returns the summary (also in summary.json).

    reward_fn(sample, reply) -> float replaces the task rewards (default `task_reward`); devices: the
    mesh's devices (default all); compiler_options: XLA options of the train step (tests: CPU_FAST_COMPILE).

    Logged per iteration: reward/mean, reward/<task>, pass_rate/mean, pass_rate/<task>, groups/{kept,
    too_easy, all_wrong, no_signal, unusable}, rollout/{rounds, prompts_drawn, response_length, tokens (generated),
    truncated_fraction}, policy/{loss, pg_loss, entropy, ratio_mean, approx_kl, clip_fraction (clip losses)
    or gate_weight_mean (sapo), kl_to_start (with a reference), grad_norm, response_length, updates,
    skipped}, lr_<group>, time/{rollout, ref, update, iteration}_seconds, and rollout_seconds by phase:
    time/{prompt, generate, reward}_seconds; eval/... after a held-out eval.
    """
    config_lib.validate(config)
    if config.method != "rl":
        raise ValueError(f"config.method={config.method!r}: posttrain.rl runs method 'rl'")
    t_start = time.perf_counter()
    model_config = config_lib.model_config(config)
    workdir = os.path.abspath(workdir)  # Orbax writes with TensorStore, which rejects relative paths
    os.makedirs(workdir, exist_ok=True)
    s = _Setup(config, model_config, devices, reward_fn or task_reward, compiler_options)
    mc, tc, mesh = s.mc, s.tc, s.mesh

    kc = tc.checkpoint
    ckpt = checkpoint_lib.Checkpointer(kc.dir or os.path.join(workdir, "checkpoints"), every_steps=kc.every_steps,
                                       keep=kc.keep, async_save=kc.async_save, model_config=mc)
    start_it, cursor, ref_params = 0, 0, None
    resumed = ckpt.latest_step() is not None
    if resumed:
        state, data_state, start_it = ckpt.restore(unboxed_abstract_state(mc, tc, mesh))
        cursor = int((data_state or {}).get("prompt_cursor", 0))
        if s.objective.with_ref:
            ref_params = _start_params(config, mc, tc, mesh, compiler_options)
        print(f"resumed from {ckpt.directory}/{start_it}", flush=True)
    else:
        start = _start_params(config, mc, tc, mesh, compiler_options)
        state = train_state_from_params(start, mc, tc, mesh, compiler_options=compiler_options)  # copies `start`
        ref_params = start if s.objective.with_ref else None
        if config.init_from:
            print(f"initialised params from {config.init_from}", flush=True)

    e = config.eval
    eval_items = None
    if e.tasks:
        eval_items = tasks_lib.load_items(list(e.tasks), split=e.split, num_per_task=e.num_per_task,
                                          world_config=config_lib.world_config(config))

    def step(state: Any, it: int) -> tuple[Any, dict[str, float]]:
        nonlocal cursor
        ro, cursor = collect(s, state.params, it, cursor)
        state, steps, times = update(s, state, ref_params, ro, it)
        return state, {**iteration_metrics(ro, steps), **times}

    def log_line(it: int, row: dict[str, float]) -> str:
        return (f"iteration {it}/{config.iterations}  reward {row['reward/mean']:.3f}  "
                f"pass {row['pass_rate/mean']:.2f}  kept {row['groups/kept']} in {row['rollout/rounds']} round(s)  "
                f"kl {row.get('policy/kl_to_start', float('nan')):.4f}  rollout {row['time/rollout_seconds']:.1f}s  "
                f"update {row['time/update_seconds']:.1f}s")

    evaluate = None
    if eval_items:
        evaluate = lambda params: heldout_eval(config, model_config, params, s.tokenizer, eval_items, s.reward_fn,
                                               workdir)
    res = driver.run_iterations(
        workdir=workdir, ckpt=ckpt, state=state, start=start_it, iterations=config.iterations, step=step,
        data_state=lambda it: {"iteration": it, "prompt_cursor": cursor}, log_line=log_line, evaluate=evaluate,
        eval_every=e.every, eval_at_start=e.at_start, tensorboard=config.log.tensorboard,
        save_on_sigterm=kc.save_on_sigterm)
    state, it, history, stopped_early = res.state, res.iterations, res.history, res.stopped_early
    summary: dict[str, Any] = {
        "workdir": workdir, "method": "rl", "loss": config.loss.name, "model": mc.name, "iterations": it,
        "resumed_from": start_it if resumed else None, "stopped_by_signal": stopped_early,
        "updates": int(jax.device_get(state.step)), "skipped_steps": int(jax.device_get(state.skipped_steps)),
        "prompts_drawn": cursor, "seconds": round(time.perf_counter() - t_start, 1),
    }
    if history:
        summary["first_reward"] = round(history[0]["reward/mean"], 4)
        summary["final_reward"] = round(history[-1]["reward/mean"], 4)
    return driver.close_run(workdir, summary, stopped_early, lambda: export_final(
        workdir, state.params, model_config, s.tokenizer, s.processor), res.last_eval)

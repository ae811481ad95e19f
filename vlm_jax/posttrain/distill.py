"""Distillation of a student from a frozen teacher: off-policy, on-policy, or off-policy then on-policy.

    summary = run(config, workdir)        # config: vlm_jax/configs/posttrain/distill_*.py

Iterations 0 .. distill.offpolicy_steps - 1 are off-policy, the next distill.onpolicy_steps on-policy
(`phase_of`); each iteration makes ppo_epochs x minibatches optimizer updates of
`make_train_step`. The phases (POSTTRAIN reference notes, distillation section):

  offpolicy_logits   the data pipeline's packed batches of the world's train split (teacher-forced
                     reference replies); the teacher's logits at every position, forward KL
                     KL(p_T || p_S) on the reply tokens (distill.offpolicy_loss: any logit loss).
                     With offpolicy_loss "ce" the teacher is not used: plain SFT on the same batches,
                     the control a distillation comparison needs (experiments/distill_methods.py).
  offpolicy_samples  the teacher samples G replies to P prompts of the world; the student trains on
                     them with next-token CE (offpolicy_loss "ce": SFT on teacher outputs) or a logit
                     loss against the teacher's logits on those sequences.
  onpolicy           the student samples G replies to P prompts; the teacher scores the student's
                     sequences in one forward pass; per-token reverse KL on the student's tokens
                     (distill.loss "reverse_kl_sampled", Tinker / Qwen3), or a full-vocabulary logit
                     loss (reverse_kl, generalized_jsd: GKD with lambda = 1).

The teacher's params are loaded once (`load_teacher`) and only read: its forward is its own jit, whose
outputs (logits [B, S, V] or log-probs [B, S]) stay on the device in the train step's batch sharding.

distill.text_only (Qwen3-VL sec 5.3: text-only, LLM backbone only): prompts and batches come from the text
tasks of `tasks` only (`TEXT_TASKS`), and the vision tower and merger are frozen; held-out eval keeps the
text families of eval.tasks. Without it, every task of `tasks` (images included) and every module trains,
and the teacher must cut images into the same patches as the student.

Sampled replies are cut before their first visual placeholder id (the training forward would splice
visual features there); rows left empty are dropped (rollout/placeholder_cut counts the cut rows).

Exact resume: a checkpoint holds the train state and {"iteration", "prompt_cursor", "pipeline" (the data
iterator's state)}; sampling keys are functions of (train.seed, iteration), shuffles of (train.seed,
iteration, epoch), so a stopped and rerun job ends with the params of an uninterrupted one.

Logged per iteration (metrics.jsonl, TensorBoard): distill/{onpolicy (0 or 1), loss, kl (KL losses),
top1_agreement (logit losses: student and teacher argmax agree), teacher_top1_rate and teacher_logp (onpolicy
with reverse_kl_sampled: the student's tokens that are the teacher's argmax, their mean teacher log-prob),
tokens (trained tokens of one pass), grad_norm, updates, skipped}, rollout/{response_length,
truncated_fraction, placeholder_cut} when sampling, lr_<group>, time/{sample, update, iteration}_seconds,
eval/... after a held-out eval.

Workdir: checkpoints/<iteration>/, final/, metrics.jsonl, tensorboard/, eval/results.json, summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vlm_jax.configs import experiment
from vlm_jax.configs import model as model_configs
from vlm_jax.configs.posttrain import base as config_lib
from vlm_jax.data.synthetic import SyntheticWorld
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.eval import harness
from vlm_jax.eval import tasks as tasks_lib
from vlm_jax.inference.generate import target_logprobs
from vlm_jax.inference.sampling import SamplingConfig
from vlm_jax.model.vlm import Qwen3VL, param_shapes
from vlm_jax.parallel import make_mesh
from vlm_jax.parallel import rules as rules_lib
from vlm_jax.posttrain import distill_losses, driver
from vlm_jax.posttrain.objectives import DistillObjective
from vlm_jax.posttrain.rl import draw_prompts, pad_rows, select_rows
from vlm_jax.posttrain.rollout import RolloutBatch, rollout, to_train_batch
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
    check_skips,
    compact_vision,
    effective_model_config,
    global_batch_shapes,
    make_train_step,
    put_batch,
    stack_microbatches,
)

PHASES = ("offpolicy_logits", "offpolicy_samples", "onpolicy")
OFFPOLICY = ("logits", "samples")
LOGIT_LOSSES = ("forward_kl", "reverse_kl", "generalized_jsd")
KL_LOSSES = ("forward_kl", "reverse_kl", "reverse_kl_sampled")
# Synthetic tasks without images or videos (the text-only distillation data).
TEXT_TASKS = ("text",)
# Vision settings that decide the patches and visual token count of an image: teacher and student must agree.
_VISION_KEYS = ("in_channels", "patch_size", "temporal_patch_size", "spatial_merge_size")
_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


# ----------------------------------------------------------------------------------------- config


def phase_of(config: mlc.ConfigDict, iteration: int) -> str:
    """The phase of iteration `iteration` (0-based): off-policy first, then on-policy."""
    if iteration < config.distill.offpolicy_steps:
        return f"offpolicy_{config.distill.offpolicy}"
    return "onpolicy"


def distill_tasks(config: mlc.ConfigDict) -> dict[str, float]:
    """The task mixture of prompts and batches: `tasks`, only its text tasks with distill.text_only."""
    tasks = {k: float(v) for k, v in dict(config.tasks).items()}
    if config.distill.text_only:
        tasks = {k: v for k, v in tasks.items() if k in TEXT_TASKS}
    return tasks


def world_config(config: mlc.ConfigDict) -> dict[str, Any]:
    """SyntheticWorld overrides with the distillation task mixture."""
    return {**config_lib.world_config(config), "tasks": distill_tasks(config)}


def eval_families(config: mlc.ConfigDict) -> list[str]:
    """eval.tasks, only the families made of text tasks with distill.text_only."""
    fams = list(config.eval.tasks)
    if config.distill.text_only:
        fams = [f for f in fams if set(tasks_lib.FAMILIES[f].synthetic_tasks) <= set(TEXT_TASKS)]
    return fams


def train_config(config: mlc.ConfigDict) -> mlc.ConfigDict:
    """The validated train config; distill.text_only freezes the vision tower and merger (LLM backbone only)."""
    tc = config_lib.train_config(config)
    if config.distill.text_only:
        tc = experiment.with_overrides(tc, {"optimizer.freeze_vision": True, "optimizer.freeze_merger": True})
    return tc


def teacher_model_config(config: mlc.ConfigDict) -> mlc.ConfigDict | None:
    """The teacher's model config: distill.teacher_size's, else the teacher export's; None when neither is
    known (no size and no export yet)."""
    ds = config.distill
    if ds.teacher_size:
        return model_configs.get_config(ds.teacher_size)
    if not ds.teacher_from:
        return None
    from vlm_jax.params.store import load_config, resolve_params_dir

    try:
        return load_config(resolve_params_dir(ds.teacher_from))
    except FileNotFoundError:
        return None


def check_teacher(student: mlc.ConfigDict, teacher: mlc.ConfigDict, text_only: bool) -> None:
    """ValueError naming every setting where the teacher cannot score the student's sequences: the
    vocabulary and vision token ids, and (with images) how an image is cut into patches and tokens."""
    bad = []
    if teacher.text.vocab_size != student.text.vocab_size:
        bad.append(f"text.vocab_size {teacher.text.vocab_size} != {student.text.vocab_size}")
    bad += [f"{k} {teacher[k]} != {student[k]}" for k in _TOKEN_KEYS if teacher[k] != student[k]]
    if not text_only:
        bad += [f"vision.{k} {teacher.vision[k]} != {student.vision[k]}" for k in _VISION_KEYS
                if teacher.vision[k] != student.vision[k]]
    if bad:
        raise ValueError("the teacher does not fit the student (teacher vs student): " + "; ".join(bad))


def objective(config: mlc.ConfigDict, phase: str) -> DistillObjective | None:
    """The train-step loss of a phase (`PHASES`); None = next-token CE (SFT on teacher samples)."""
    if phase not in PHASES:
        raise ValueError(f"unknown distillation phase {phase!r}; phases: {', '.join(PHASES)}")
    ds = config.distill
    if phase == "onpolicy":
        return DistillObjective(ds.loss, _plain(ds.options))
    if ds.offpolicy_loss == "ce":
        return None
    return DistillObjective(ds.offpolicy_loss, _plain(ds.offpolicy_options))


def validate(c: mlc.ConfigDict) -> None:
    """The distillation keys (called by `config_lib.validate`, which checks the shared ones). Builds no
    params; the teacher's config is checked when distill.teacher_size is set or its export exists."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"invalid posttrain config: {msg}")

    ds, r = c.distill, c.rollout
    need(ds.offpolicy_steps >= 0 and ds.onpolicy_steps >= 0 and ds.offpolicy_steps + ds.onpolicy_steps >= 1,
         f"distill.offpolicy_steps={ds.offpolicy_steps}, onpolicy_steps={ds.onpolicy_steps}: need >= 0 each and "
         "one iteration at least")
    need(c.iterations == ds.offpolicy_steps + ds.onpolicy_steps,
         f"iterations={c.iterations} must equal distill.offpolicy_steps + distill.onpolicy_steps = "
         f"{ds.offpolicy_steps + ds.onpolicy_steps}")
    need(ds.offpolicy in OFFPOLICY, f"distill.offpolicy={ds.offpolicy!r} (expected one of {OFFPOLICY})")
    need(ds.offpolicy_loss in ("ce", *LOGIT_LOSSES),
         f"distill.offpolicy_loss={ds.offpolicy_loss!r} (expected 'ce' or one of {LOGIT_LOSSES})")
    need(ds.loss in distill_losses.DISTILL_LOSSES, f"distill.loss={ds.loss!r} (expected one of "
         f"{tuple(distill_losses.DISTILL_LOSSES)})")
    for phase in ("offpolicy_" + ds.offpolicy, "onpolicy"):
        try:
            objective(c, phase)
        except ValueError as e:
            raise ValueError(f"invalid posttrain config: distill ({phase}): {e}") from e
    need(not (ds.onpolicy_steps and ds.loss == "reverse_kl_sampled" and r.temperature != 1.0),
         f"distill.loss='reverse_kl_sampled' scores the student at temperature 1; rollout.temperature="
         f"{r.temperature} would sample from another distribution")
    need(c.ppo_epochs >= 1 and c.minibatches >= 1, f"ppo_epochs={c.ppo_epochs}, minibatches={c.minibatches} "
         "must be >= 1")
    need(r.prompts_per_iteration >= 1 and r.group_size >= 1,
         "rollout.prompts_per_iteration and rollout.group_size must be >= 1")
    need(r.max_new_tokens >= 1 and r.temperature > 0,
         f"rollout.max_new_tokens={r.max_new_tokens} must be >= 1 and temperature={r.temperature} > 0")
    need(r.seq_len > r.max_new_tokens, f"rollout.seq_len={r.seq_len} leaves no room for a prompt before "
         f"max_new_tokens={r.max_new_tokens}")
    need(r.max_patches >= 1 and r.max_grids >= 1, "rollout.max_patches and rollout.max_grids must be >= 1")
    rows, k = r.prompts_per_iteration * r.group_size, c.train.grad_accum_steps
    need(rows % (c.minibatches * k) == 0, f"the {rows} rows of an iteration (prompts_per_iteration x group_size) "
         f"must split into minibatches={c.minibatches} x train.grad_accum_steps={k} equal parts")
    tasks = distill_tasks(c)
    need(bool(tasks), f"distill.text_only: tasks {sorted(dict(c.tasks))} hold no text task ({', '.join(TEXT_TASKS)})")
    need(ds.teacher_size in ("", *model_configs.SIZES),
         f"distill.teacher_size={ds.teacher_size!r} (expected '' or one of {model_configs.SIZES})")
    train_config(c)
    world = SyntheticWorld(world_config(c))
    if ds.onpolicy_steps or ds.offpolicy == "samples":  # every task's prompts can be built
        for task in world.task_names:
            tasks_lib.item_from_sample(world.sample(0, "train", task=task))
    teacher = teacher_model_config(c)
    if teacher is not None:
        try:
            check_teacher(config_lib.model_config(c), teacher, ds.text_only)
        except ValueError as e:
            raise ValueError(f"invalid posttrain config: {e}") from e


def _plain(x: Any) -> dict[str, Any]:
    return x.to_dict() if hasattr(x, "to_dict") else dict(x)


# ---------------------------------------------------------------------------------------- teacher


@dataclasses.dataclass
class Teacher:
    """The frozen teacher: its model config and params (in the mesh layout); never updated."""

    config: mlc.ConfigDict
    params: Any


def load_teacher(config: mlc.ConfigDict, student: mlc.ConfigDict, tokenizer: Tokenizer, mesh: Any) -> Teacher:
    """The teacher of distill.teacher_from, checked against the student (`check_teacher`) and tokenizer."""
    from vlm_jax.inference.loading import check_compatible, load_model

    ds = config.distill
    if not ds.teacher_from:
        raise ValueError("distill.teacher_from is empty: set it to the teacher's params dir (an export or a "
                         "workdir with final/)")
    if ds.teacher_size:
        tmc = model_configs.get_config(ds.teacher_size)
        params = load_init_params(ds.teacher_from, tmc)  # checks the shapes against the size
    else:
        tmc, params, _ = load_model(ds.teacher_from)
    check_teacher(student, tmc, ds.text_only)
    check_compatible(tmc, tokenizer)
    shardings = rules_lib.param_shardings(param_shapes(tmc), mesh)
    return Teacher(tmc, jax.device_put(unbox(params), shardings))


_JITS: dict[Any, Any] = {}


def _teacher_fn(tmc: mlc.ConfigDict, mesh: Any, what: str, microbatched: bool, out_shardings: Any,
                compiler_options: Mapping[str, Any] | None):
    """jit(params, device batch) -> "logits" [.., B, S, V], or "scores": (log p_T(targets) [.., B, S], sum of
    teacher-argmax hits and of log p_T on the trained tokens); compiled once per process and setting."""
    key = ("teacher", tmc.to_json(), what, microbatched, mesh, out_shardings,
           tuple(sorted((compiler_options or {}).items())))
    if key in _JITS:
        return _JITS[key]
    model, chunks = Qwen3VL(mlc.FrozenConfigDict(tmc)), jax.process_count()

    def one(params, b):
        pixel_values, grid_thw = compact_vision(b["pixel_values"], b["grid_thw"], chunks)
        logits = model.apply({"params": params}, b["input_ids"], b["position_ids"], b["segment_ids"],
                             pixel_values, grid_thw)["logits"]
        if what == "logits":
            return logits
        logp = target_logprobs(logits, b["targets"])
        mask = b["loss_weights"] > 0
        hits = jnp.sum(jnp.where(mask, jnp.argmax(logits, axis=-1) == b["targets"], False).astype(jnp.float32))
        return logp, hits, jnp.sum(jnp.where(mask, logp, 0.0))

    def fn(params, batch):
        with rules_lib.sharding_context(mesh, rules_lib.RULES):
            if not microbatched:
                return one(params, batch)
            out = jax.lax.map(lambda mb: one(params, mb), batch)
            return out if what == "logits" else (out[0], jnp.sum(out[1]), jnp.sum(out[2]))

    _JITS[key] = jax.jit(fn, out_shardings=out_shardings,
                         compiler_options=dict(compiler_options) if compiler_options else None)
    return _JITS[key]


# ------------------------------------------------------------------------------------------ setup


class _Setup:
    """What a distillation run reads every iteration, built once from the config."""

    def __init__(self, config: mlc.ConfigDict, devices: Sequence[jax.Device] | None,
                 compiler_options: Mapping[str, Any] | None):
        self.config = config
        self.model_config = config_lib.model_config(config)
        self.tc = train_config(config)
        self.mc = effective_model_config(self.model_config, self.tc)
        self.mesh = mesh = make_mesh(self.tc.parallel, devices)
        self.tokenizer = data_lib.make_tokenizer(config.data)
        self.processor = config_lib.processor_config(config)
        self.world = SyntheticWorld(world_config(config))
        self.compiler_options = compiler_options
        self.stop = (self.tokenizer.im_end_id, self.tokenizer.pad_id)  # as the eval harness
        self.placeholders = {self.mc.image_token_id, self.mc.video_token_id}
        r = config.rollout
        shards = math.prod(mesh.shape[a] for a in rules_lib.BATCH_AXES)
        rows = r.prompts_per_iteration * r.group_size // (config.minibatches * self.tc.grad_accum_steps)
        self.rows = -(-rows // shards) * shards  # rows of one micro-batch
        self.objectives = {p: objective(config, p) for p in (f"offpolicy_{config.distill.offpolicy}", "onpolicy")}

    def pipeline(self) -> Any:
        """The packed train batches of the world (off-policy logits), `rows` per micro-batch."""
        r = self.config.rollout
        data = mlc.ConfigDict({
            "tokenizer": self.config.data.tokenizer,
            "sources": {"synthetic": {"kind": "synthetic", "world": world_config(self.config), "split": "train",
                                      "length": 10**7}},  # as the experiment configs: the train split is endless
            "pipeline": {"seq_len": r.seq_len, "batch_size": self.rows // jax.process_count(),
                         "max_patches": r.max_patches, "max_grids": r.max_grids, "loss_normalization": "token",
                         "worker_count": 0, "processor": self.processor}})
        return iter(data_lib.make_pipeline(data, seed=self.tc.seed)[0])


def _step(s: _Setup, obj: DistillObjective | None, shapes: Mapping[str, tuple[int, ...]]):
    """`make_train_step` for this objective and these shapes, compiled once per process."""
    key = ("step", s.mc.to_json(), s.tc.to_json(), repr(obj), tuple(sorted(shapes.items())), s.mesh,
           tuple(sorted((s.compiler_options or {}).items())))
    if key not in _JITS:
        _JITS[key] = make_train_step(s.mc, s.tc, s.mesh, batch_shapes=shapes, loss_fn=obj,
                                     extra_keys=() if obj is None else obj.extra_keys,
                                     compiler_options=dict(s.compiler_options) if s.compiler_options else None)
    return _JITS[key]


# --------------------------------------------------------------------------------------- sampling


def cut_placeholders(rb: RolloutBatch, placeholders: set[int]) -> tuple[RolloutBatch, int]:
    """Each reply cut before its first visual placeholder id, rows left empty dropped; (new rows, cut count)."""
    completions, logprobs, finished = list(rb.completions), list(rb.logprobs), np.array(rb.finished, bool)
    cut = 0
    for i, c in enumerate(completions):
        hit = next((j for j, t in enumerate(c) if int(t) in placeholders), None)
        if hit is not None:
            cut += 1
            completions[i], logprobs[i], finished[i] = list(c[:hit]), logprobs[i][:hit], False
    out = dataclasses.replace(rb, completions=completions, logprobs=logprobs, finished=finished)
    keep = [i for i, c in enumerate(completions) if c]
    return (out if len(keep) == len(out) else select_rows(out, keep)), cut


def sample_replies(s: _Setup, config: mlc.ConfigDict, params: Any, iteration: int, cursor: int
                   ) -> tuple[RolloutBatch, dict[str, float], int]:
    """G replies to P fresh prompts from `cursor` by the model (config, params); (rows, metrics, next cursor)."""
    r = s.config.rollout
    prompts = draw_prompts(s.world, cursor, r.prompts_per_iteration, s.tokenizer, s.processor, r.seq_len,
                           r.max_new_tokens)
    rb = rollout(config, params, [p.prompt for p in prompts], group_size=r.group_size, max_new_tokens=r.max_new_tokens,
                 sampling=SamplingConfig(temperature=r.temperature), stop_tokens=s.stop,
                 pad_token_id=s.tokenizer.pad_id, rng=jax.random.fold_in(jax.random.key(s.tc.seed), iteration))
    metrics = {"rollout/response_length": float(np.mean([len(c) for c in rb.completions])),
               "rollout/truncated_fraction": float(1.0 - np.mean(rb.finished))}
    rb, cut = cut_placeholders(rb, s.placeholders)
    metrics["rollout/placeholder_cut"] = float(cut)
    return rb, metrics, cursor + r.prompts_per_iteration


def _rollout_micro(s: _Setup, rb: RolloutBatch, rows: np.ndarray) -> dict[str, np.ndarray]:
    r = s.config.rollout
    if not len(rows):  # an all-padding micro-batch: no tokens, no loss
        b = to_train_batch(select_rows(rb, [0]), r.seq_len, s.mc, pad_id=s.tokenizer.pad_id,
                           max_patches=r.max_patches, max_grids=r.max_grids)
        b = {k: np.zeros_like(v) for k, v in b.items()}
    else:
        b = to_train_batch(select_rows(rb, rows), r.seq_len, s.mc, pad_id=s.tokenizer.pad_id,
                           max_patches=r.max_patches, max_grids=r.max_grids)
    return pad_rows(b, s.rows, s.tokenizer.pad_id)


def minibatches(s: _Setup, source: RolloutBatch | list[dict[str, np.ndarray]], iteration: int, epoch: int
                ) -> Iterator[list[dict[str, np.ndarray]]]:
    """The `minibatches` updates of one pass, each a list of grad_accum_steps host micro-batches.

    source: sampled rows (shuffled into micro-batches with the key (seed, iteration, epoch)) or the
    iteration's pipeline batches in order (their order shuffled per epoch)."""
    k, n_mb = s.tc.grad_accum_steps, s.config.minibatches
    rng = np.random.default_rng([s.tc.seed, iteration, epoch])
    if isinstance(source, list):
        groups = [source[i * k:(i + 1) * k] for i in range(n_mb)]
        yield from (groups if epoch == 0 else [groups[i] for i in rng.permutation(n_mb)])
        return
    if not len(source):
        return
    for chunk in np.array_split(rng.permutation(len(source)), n_mb):
        if len(chunk):
            yield [_rollout_micro(s, source, part) for part in np.array_split(chunk, k)]


# ---------------------------------------------------------------------------------------- updates


@dataclasses.dataclass
class _Sums:
    """Per-iteration sums over the applied updates (host floats)."""

    steps: list[dict[str, float]] = dataclasses.field(default_factory=list)
    tokens: float = 0.0
    teacher_hits: float = 0.0
    teacher_logp: float = 0.0
    scored: float = 0.0


def update(s: _Setup, state: Any, teacher: Teacher, phase: str, micro: list[dict[str, np.ndarray]],
           sums: _Sums, count_tokens: bool) -> Any:
    """One optimizer update on `micro` (grad_accum_steps host micro-batches) with the teacher's outputs."""
    obj, k = s.objectives[phase], s.tc.grad_accum_steps
    batch = micro[0] if k == 1 else stack_microbatches(micro)
    extra = () if obj is None else obj.extra_keys
    shapes = global_batch_shapes(batch)
    for key in extra:  # teacher outputs: the targets' shape (+ the vocabulary for logits)
        shapes[key] = shapes["targets"] + ((teacher.config.text.vocab_size,) if key == "teacher_logits" else ())
    shardings = rules_lib.batch_shardings(shapes, s.mesh, microbatched=k > 1, extra_keys=extra)
    dev = put_batch(batch, s.mesh, shardings={name: shardings[name] for name in shapes if name not in extra},
                    microbatched=k > 1)
    if "teacher_logits" in extra:
        fn = _teacher_fn(teacher.config, s.mesh, "logits", k > 1, shardings["teacher_logits"], s.compiler_options)
        dev["teacher_logits"] = fn(teacher.params, dev)
    elif "teacher_logp" in extra:
        rep = rules_lib.replicated(s.mesh)
        fn = _teacher_fn(teacher.config, s.mesh, "scores", k > 1, (shardings["teacher_logp"], rep, rep),
                         s.compiler_options)
        dev["teacher_logp"], hits, logp = fn(teacher.params, dev)
        if count_tokens:
            sums.teacher_hits += float(hits)
            sums.teacher_logp += float(logp)
            sums.scored += float(np.sum(np.asarray(batch["loss_weights"]) > 0))
    state, m = _step(s, obj, shapes)(state, dev)
    m = jax.device_get(m)
    check_skips(m, s.tc)
    sums.steps.append({name: float(np.asarray(v)) for name, v in m.items() if np.ndim(v) == 0})
    if count_tokens:
        sums.tokens += float(np.sum(np.asarray(batch["loss_weights"]) > 0))
    return state


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def iteration_row(config: mlc.ConfigDict, phase: str, sums: _Sums) -> dict[str, float]:
    """The logged distill/... metrics of one iteration's updates (module docstring)."""
    applied = [m for m in sums.steps if not m["skipped"]]
    loss_name = config.distill.loss if phase == "onpolicy" else config.distill.offpolicy_loss
    row = {"distill/onpolicy": float(phase == "onpolicy"), "distill/loss": _mean([m["loss"] for m in applied]),
           "distill/grad_norm": _mean([m["grad_norm"] for m in applied]), "distill/tokens": sums.tokens,
           "distill/updates": float(len(applied)), "distill/skipped": float(len(sums.steps) - len(applied))}
    if loss_name in KL_LOSSES:
        row["distill/kl"] = row["distill/loss"]
    if applied and "top1_agreement" in applied[0]:
        row["distill/top1_agreement"] = _mean([m["top1_agreement"] for m in applied])
    if sums.scored:
        row["distill/teacher_top1_rate"] = sums.teacher_hits / sums.scored
        row["distill/teacher_logp"] = sums.teacher_logp / sums.scored
    if sums.steps:
        row.update({name: v for name, v in sums.steps[-1].items() if name.startswith("lr_")})
    return row


def train_iteration(s: _Setup, state: Any, teacher: Teacher, iteration: int, cursor: int,
                    pipeline: Iterator[dict[str, np.ndarray]] | None) -> tuple[Any, dict[str, float], int]:
    """One iteration of its phase: data (pipeline batches or samples), then ppo_epochs x minibatches
    updates; (state, logged row without eval, next prompt cursor)."""
    c, phase, row = s.config, phase_of(s.config, iteration), {}
    t0 = time.perf_counter()
    if phase == "offpolicy_logits":
        if pipeline is None:
            raise ValueError("the off-policy logits phase needs the data pipeline")
        source: Any = [next(pipeline) for _ in range(c.minibatches * s.tc.grad_accum_steps)]
    else:
        model = (teacher.config, teacher.params) if phase == "offpolicy_samples" else (s.mc, state.params)
        source, row, cursor = sample_replies(s, *model, iteration, cursor)
    row["time/sample_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sums = _Sums()
    for epoch in range(c.ppo_epochs):
        for micro in minibatches(s, source, iteration, epoch):
            state = update(s, state, teacher, phase, micro, sums, count_tokens=epoch == 0)
    row["time/update_seconds"] = time.perf_counter() - t0
    return state, {**iteration_row(c, phase, sums), **row}, cursor


# -------------------------------------------------------------------------------------------- run


def heldout_eval(s: _Setup, params: Any, items: Sequence[tasks_lib.EvalItem], workdir: str) -> dict[str, float]:
    """Greedy replies on the held-out items, scored by the harness: "eval/<family>/<metric>" scalars;
    writes eval/results.json."""
    e = s.config.eval
    report = harness.evaluate(s.model_config, params, s.tokenizer, items, batch_size=e.batch_size,
                              max_new_tokens=e.max_new_tokens, processor=s.processor)
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
            json.dump(report.to_json(), f, indent=1)
    return {f"eval/{k}": v for k, v in report.scalars().items()}


def _start_state(s: _Setup) -> Any:
    """A fresh train state around `init_from` (else the random init of train.seed)."""
    if s.config.init_from:
        params = load_init_params(s.config.init_from, s.mc)
        params = jax.device_put(unbox(params), state_shardings(s.mc, s.tc, s.mesh).params)
        print(f"initialised params from {s.config.init_from}", flush=True)
        return train_state_from_params(params, s.mc, s.tc, s.mesh, compiler_options=s.compiler_options)
    return init_train_state(s.mc, s.tc, s.mesh, compiler_options=s.compiler_options)


def run(config: mlc.ConfigDict, workdir: str, *, devices: Sequence[jax.Device] | None = None,
        compiler_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Runs (or resumes) distillation in `workdir`; returns the summary (also in summary.json).

    devices: the mesh's devices (default all); compiler_options: XLA options of the train step and the
    teacher forward (tests: CPU_FAST_COMPILE). Logged metrics: the module docstring."""
    config_lib.validate(config)
    if config.method != "distill":
        raise ValueError(f"config.method={config.method!r}: posttrain.distill runs method 'distill'")
    t_start = time.perf_counter()
    workdir = os.path.abspath(workdir)  # Orbax writes with TensorStore, which rejects relative paths
    os.makedirs(workdir, exist_ok=True)
    s = _Setup(config, devices, compiler_options)
    teacher = load_teacher(config, s.mc, s.tokenizer, s.mesh)
    ds = config.distill
    pipeline = s.pipeline() if ds.offpolicy_steps and ds.offpolicy == "logits" else None

    kc = s.tc.checkpoint
    ckpt = checkpoint_lib.Checkpointer(kc.dir or os.path.join(workdir, "checkpoints"), every_steps=kc.every_steps,
                                       keep=kc.keep, async_save=kc.async_save, model_config=s.mc)
    start_it, cursor = 0, 0
    resumed = ckpt.latest_step() is not None
    if resumed:
        state, restored, start_it = ckpt.restore(unboxed_abstract_state(s.mc, s.tc, s.mesh))
        restored = restored or {}
        cursor = int(restored.get("prompt_cursor", 0))
        if pipeline is not None and restored.get("pipeline") is not None:
            pipeline.set_state(restored["pipeline"])
        print(f"resumed from {ckpt.directory}/{start_it}", flush=True)
    else:
        state = _start_state(s)

    def data_state(it: int) -> dict[str, Any]:
        return {"iteration": it, "prompt_cursor": cursor,
                "pipeline": None if pipeline is None else pipeline.get_state()}

    def step(state: Any, it: int) -> tuple[Any, dict[str, float]]:
        nonlocal cursor
        state, row, cursor = train_iteration(s, state, teacher, it, cursor, pipeline)
        return state, row

    def log_line(it: int, row: dict[str, float]) -> str:
        return (f"iteration {it}/{config.iterations} ({phase_of(config, it - 1)})  loss {row['distill/loss']:.4f}  "
                f"tokens {row['distill/tokens']:.0f}  update {row['time/update_seconds']:.1f}s")

    e = config.eval
    families = eval_families(config)
    items = tasks_lib.load_items(families, split=e.split, num_per_task=e.num_per_task,
                                 world_config=world_config(config)) if families else None
    res = driver.run_iterations(
        workdir=workdir, ckpt=ckpt, state=state, start=start_it, iterations=config.iterations, step=step,
        data_state=data_state, log_line=log_line,
        evaluate=(lambda params: heldout_eval(s, params, items, workdir)) if items else None, eval_every=e.every,
        eval_at_start=e.at_start, tensorboard=config.log.tensorboard, save_on_sigterm=kc.save_on_sigterm)
    state, it, history, stopped_early = res.state, res.iterations, res.history, res.stopped_early
    summary: dict[str, Any] = {
        "workdir": workdir, "method": "distill", "model": s.mc.name, "teacher": ds.teacher_from,
        "teacher_model": teacher.config.name, "offpolicy": f"{ds.offpolicy} ({ds.offpolicy_loss})",
        "offpolicy_steps": ds.offpolicy_steps, "onpolicy_loss": ds.loss, "onpolicy_steps": ds.onpolicy_steps,
        "text_only": ds.text_only, "iterations": it, "resumed_from": start_it if resumed else None,
        "stopped_by_signal": stopped_early, "updates": int(jax.device_get(state.step)),
        "skipped_steps": int(jax.device_get(state.skipped_steps)), "prompts_drawn": cursor,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if history:
        summary["first_loss"] = round(history[0]["distill/loss"], 4)
        summary["final_loss"] = round(history[-1]["distill/loss"], 4)
    return driver.close_run(workdir, summary, stopped_early, lambda: export_final(
        workdir, state.params, s.model_config, s.tokenizer, s.processor), res.last_eval)

"""The train loop: data -> sharded step -> metrics / checkpoints -> final export -> evaluation.

    summary = train_and_evaluate(config, workdir)     # config: an experiment config (configs/*.py)

Workdir layout:
    checkpoints/<step>/     Orbax train state + data-iterator state (resumed from automatically)
    final/                  params + model_config.json + tokenizer.json (inference / next stage)
    metrics.jsonl           one line per logged step (and "eval/..." lines)
    tensorboard/            event files
    summary.json            the end-of-run summary (also printed)
    eval/                   evaluation JSON and PNG visualisations

The host loop stays one step ahead of the device: step n's metrics are fetched after step n+1
is dispatched, so the next batch is prepared while the device works, and the non-finite guard
still sees every step (one step late).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from vlm_jax.configs import experiment as experiment_lib
from vlm_jax.parallel import make_mesh
from vlm_jax.train import checkpoint as checkpoint_lib
from vlm_jax.train import curves as curves_lib
from vlm_jax.train import data as data_lib
from vlm_jax.train import metrics as metrics_lib
from vlm_jax.train import vision_probe
from vlm_jax.train.state import init_train_state, train_state_from_params, unboxed_abstract_state
from vlm_jax.train.step import (
    check_skips,
    effective_model_config,
    global_batch_shapes,
    make_train_step,
    put_batch,
    stack_microbatches,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Window:
    """Host-side sums over the steps since the last log line."""

    steps: int = 0
    tokens: float = 0.0
    flops: float = 0.0
    loss: float = 0.0
    ce_loss: float = 0.0
    grad_norm: float = 0.0
    skipped: int = 0
    task_ce: np.ndarray | None = None
    task_w: np.ndarray | None = None
    lrs: dict = dataclasses.field(default_factory=dict)
    t0: float = dataclasses.field(default_factory=time.perf_counter)


def load_init_params(path: str, model_config: mlc.ConfigDict) -> Any:
    """Params of a previous stage: a params dir (`model_config.json` + `params/`) or a workdir with `final/`."""
    from vlm_jax.params.store import load_config, load_params, resolve_params_dir

    try:
        d = resolve_params_dir(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"init_from={path!r}: {e}") from e
    saved = load_config(d)
    bad = checkpoint_lib.shape_mismatches(_param_shapes(saved), _param_shapes(model_config))
    if bad:
        raise checkpoint_lib.IncompatibleCheckpointError(
            f"init_from={path!r} does not fit the model config ({len(bad)} mismatch(es)):\n  " + "\n  ".join(bad))
    return load_params(d, saved)[1]


def _param_shapes(model_config: mlc.ConfigDict) -> Any:
    import flax.linen as nn

    from vlm_jax.model.vlm import param_shapes

    return nn.unbox(param_shapes(model_config))


def export_final(workdir: str, params: Any, model_config: mlc.ConfigDict, tokenizer: Any,
                 processor: Mapping[str, Any] | None = None) -> str:
    """Writes `final/` (params, model config, tokenizer, processor settings): what inference, the
    evaluation CLI and the next stage load (`vlm_jax.inference.loading`)."""
    from vlm_jax.inference.loading import PROCESSOR_CONFIG_FILE, TOKENIZER_FILE
    from vlm_jax.params.store import save_params

    out = os.path.join(workdir, "final")
    save_params(jax.device_get(params), model_config, out)
    backend = getattr(tokenizer, "backend", None)
    if backend is not None:
        backend.save(os.path.join(out, TOKENIZER_FILE))
    if processor:
        with open(os.path.join(out, PROCESSOR_CONFIG_FILE), "w") as f:
            json.dump(dict(processor), f, indent=1)
    return out


def _trainable_groups(train_config: mlc.ConfigDict) -> dict[str, bool]:
    o = train_config.optimizer
    return {"llm": not o.freeze_llm, "merger": not o.freeze_merger, "vision": not o.freeze_vision}


def _batch_counts(batch: Mapping[str, np.ndarray], vision_config: mlc.ConfigDict) -> tuple[float, float, float, float]:
    """(real tokens, real patches, text attention pairs, ViT attention pairs) of a host batch
    (micro-batch axis included), for `metrics_lib.step_flops`."""
    segment_ids = np.asarray(batch["segment_ids"])
    tokens = float(np.sum(segment_ids != 0))
    grid = np.asarray(batch["grid_thw"]).reshape(-1, 3)
    patches = float(np.sum(grid[:, 0].astype(np.float64) * grid[:, 1] * grid[:, 2]))
    return (tokens, patches, metrics_lib.text_attention_pairs(segment_ids),
            metrics_lib.vision_attention_pairs(grid, vision_config))


class _Progress:
    """tqdm bar with ETA on a terminal; plain log lines elsewhere (CI logs, nohup)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, n: int, line: str, postfix: Mapping[str, str]) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_and_evaluate(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint), exports and evaluates."""
    experiment_lib.validate(config)
    t_start = time.perf_counter()
    model_config = experiment_lib.model_config(config)
    train_config = experiment_lib.train_config(config)
    workdir = os.path.abspath(workdir)  # Orbax writes with TensorStore, which rejects relative paths
    os.makedirs(workdir, exist_ok=True)

    pipe, tokenizer, task_names = data_lib.make_pipeline(config.data, seed=train_config.seed)
    if config.log.per_task_loss and task_names and not train_config.loss.num_tasks:
        train_config = experiment_lib.with_overrides(train_config, {"loss.num_tasks": len(task_names)})
    mc = effective_model_config(model_config, train_config)
    mesh = make_mesh(train_config.parallel)
    it = iter(pipe)
    # Curriculum (`data.curriculum`): each stage's steps read its (easier) world's pipeline, in order.
    stage_ends, stage_its = [], []
    for steps, stage_data in data_lib.curriculum_data_configs(config.data, task_names):
        stage_ends.append((stage_ends[-1] if stage_ends else 0) + steps)
        stage_its.append(iter(data_lib.make_pipeline(stage_data, seed=train_config.seed)[0]))

    def source(at_step: int):
        """The iterator that step `at_step + 1` reads from (whose state a checkpoint at `at_step` keeps)."""
        for end, stage_it in zip(stage_ends, stage_its, strict=True):
            if at_step < end:
                return stage_it
        return it

    kc = train_config.checkpoint
    ckpt = checkpoint_lib.Checkpointer(
        kc.dir or os.path.join(workdir, "checkpoints"), every_steps=kc.every_steps, keep=kc.keep,
        async_save=kc.async_save, model_config=mc)
    start_step = 0
    resumed = ckpt.latest_step() is not None
    if resumed:
        target = unboxed_abstract_state(mc, train_config, mesh)
        state, data_state, start_step = ckpt.restore(target)
        if data_state is not None:
            source(start_step).set_state(data_state)
        print(f"resumed from {ckpt.directory}/{start_step}", flush=True)
    elif config.init_from:
        params = load_init_params(config.init_from, mc)
        state = train_state_from_params(params, mc, train_config, mesh)
        print(f"initialised params from {config.init_from}", flush=True)
    else:
        state = init_train_state(mc, train_config, mesh)

    k = train_config.grad_accum_steps

    def next_batch(at_step: int) -> dict[str, np.ndarray]:
        src = source(at_step)
        if k == 1:
            return next(src)
        return stack_microbatches([next(src) for _ in range(k)])

    num_steps = train_config.num_train_steps
    writer = metrics_lib.MetricWriter(workdir, tensorboard=config.log.tensorboard)
    peak, peak_src = metrics_lib.device_peak_flops(override=config.log.peak_flops_per_device)
    counts = metrics_lib.model_flop_counts(mc)
    trainable = _trainable_groups(train_config)
    guard = checkpoint_lib.PreemptionGuard() if train_config.checkpoint.save_on_sigterm else None
    progress = _Progress(num_steps, start_step, config.log.progress)
    history: list[dict[str, float]] = []
    step_fn = None
    probe = None
    pending = None  # (step number, device metrics, host counts) of the step in flight
    window = _Window()
    first_step_done_at = None
    stopped_early = False
    step = start_step
    try:
        while step < num_steps:
            batch = next_batch(step)
            if step_fn is None:
                step_fn = make_train_step(mc, train_config, mesh, batch_shapes=global_batch_shapes(batch))
                # With a curriculum, probe the main world (a fixed unshuffled batch of it), not the first batch.
                probe_batch = batch if not stage_ends else data_lib.first_batches(
                    config.data, 8 * config.data.pipeline.batch_size, seed=train_config.seed)[0]
                probe = _make_probe(config, mc, probe_batch, k if not stage_ends else 1)
            tokens, patches, text_pairs, vision_pairs = _batch_counts(batch, mc.vision)
            flops = metrics_lib.step_flops(mc, counts, tokens=tokens, patches=patches, text_pairs=text_pairs,
                                           vision_pairs=vision_pairs, trainable=trainable)
            state, device_metrics = step_fn(state, put_batch(batch, mesh, microbatched=k > 1))
            step += 1
            if pending is not None:
                _account(pending, window, train_config)
            pending = (step, device_metrics, tokens, flops)
            if first_step_done_at is None:
                jax.block_until_ready(device_metrics)
                first_step_done_at = time.perf_counter()
                window = _Window()  # compile time is not step time
                _account(pending, window, train_config)
                pending = None
            ckpt.save(step, state, source(step).get_state())
            if step % config.log.every_steps == 0 or step == num_steps:
                if pending is not None:
                    _account(pending, window, train_config)
                    pending = None
                history.append(_log(step, window, writer, progress, task_names, peak, num_steps))
                window = _Window()
            if probe is not None and (step % config.log.vision_probe_every == 0 or step == num_steps):
                writer.write(step, probe(state.params))
            if guard is not None and guard.should_stop(step):
                stopped_early = True
                break
        if pending is not None:
            _account(pending, window, train_config)
        if window.steps:
            history.append(_log(step, window, writer, progress, task_names, peak, num_steps))
    finally:
        progress.close()
        if guard is not None:
            guard.close()
    if ckpt.latest_step() != step:
        ckpt.save(step, state, source(step).get_state(), force=True)
    ckpt.close()
    train_seconds = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "workdir": workdir,
        "model": mc.name,
        "steps": step,
        "resumed_from": start_step if resumed else None,
        "stopped_by_signal": stopped_early,
        "train_seconds": round(train_seconds, 1),
        "compile_seconds": None if first_step_done_at is None else round(first_step_done_at - t_start, 1),
        "skipped_steps": int(np.asarray(jax.device_get(state.skipped_steps))),
        "packing_efficiency": round(it.packing_efficiency, 4),
        "data_skipped": dict(it.stats["skipped"]),
        "peak_flops_per_device": peak,
        "peak_flops_source": peak_src,
    }
    if history:
        tail = history[-max(1, len(history) // 10):]
        summary["final_loss"] = round(float(np.mean([h["loss"] for h in tail])), 4)
        summary["first_loss"] = round(history[0]["loss"], 4)
        summary["tokens_per_second"] = round(float(np.median([h["tokens_per_second"] for h in history])), 1)
        summary["mfu"] = round(float(np.median([h["mfu"] for h in history])), 4)
    if stopped_early:
        write_summary(workdir, summary)
        print(f"stopped by signal at step {step}; checkpoint saved. Run again to resume.", flush=True)
        return summary

    final = export_final(workdir, state.params, model_config, tokenizer, experiment_lib.processor_config(config))
    summary["final_params"] = final
    if config.eval.tasks:
        summary["eval"] = run_eval(config, model_config, state.params, tokenizer, workdir, writer, step)
    writer.close()
    if jax.process_index() == 0:
        summary["curves"] = curves_lib.write_curves(workdir)
    write_summary(workdir, summary)
    print(format_summary(summary), flush=True)
    return summary


def _make_probe(config: mlc.ConfigDict, model_config: mlc.ConfigDict, batch: Mapping[str, np.ndarray],
                grad_accum: int) -> vision_probe.PixelInfluence | None:
    """The visual-pathway probe on the first batch (`log.vision_probe_every`), or None when off or
    when the batch has no two images of one grid to swap."""
    if not config.log.vision_probe_every or jax.process_count() > 1:
        return None
    first = {key: np.asarray(v)[0] for key, v in batch.items()} if grad_accum > 1 else batch
    try:
        return vision_probe.PixelInfluence(model_config, [first])
    except ValueError as e:
        log.warning("vision probe off: %s", e)
        return None


def _account(pending, window: _Window, train_config: mlc.ConfigDict) -> None:
    _, device_metrics, tokens, flops = pending
    m = jax.device_get(device_metrics)
    check_skips(m, train_config)
    window.steps += 1
    window.tokens += tokens
    window.flops += flops
    window.skipped += int(m["skipped"])
    if not m["skipped"]:
        window.loss += float(m["loss"])
        window.ce_loss += float(m["ce_loss"])
        window.grad_norm += float(m["grad_norm"])
    window.lrs = {k: float(v) for k, v in m.items() if k.startswith("lr_")}
    if "task_loss" in m:
        tl, tw = np.nan_to_num(np.asarray(m["task_loss"], np.float64)), np.asarray(m["task_weight"], np.float64)
        window.task_ce = tl * tw if window.task_ce is None else window.task_ce + tl * tw
        window.task_w = tw if window.task_w is None else window.task_w + tw


def _log(step: int, w: _Window, writer: metrics_lib.MetricWriter, progress: _Progress, task_names, peak: float,
         num_steps: int) -> dict[str, float]:
    dt = max(time.perf_counter() - w.t0, 1e-9)
    applied = max(w.steps - w.skipped, 1)
    n_dev = jax.device_count()
    row = {
        "loss": w.loss / applied,
        "ce_loss": w.ce_loss / applied,
        "grad_norm": w.grad_norm / applied,
        "skipped": float(w.skipped),
        "step_seconds": dt / max(w.steps, 1),
        "tokens_per_second": w.tokens / dt,
        "mfu": w.flops / dt / (peak * n_dev) if peak and math.isfinite(peak) else float("nan"),
        **w.lrs,
    }
    if w.task_w is not None:
        for i, name in enumerate(task_names, start=1):
            if i < len(w.task_w) and w.task_w[i] > 0:
                row[f"task_loss/{name}"] = w.task_ce[i] / w.task_w[i]
    writer.write(step, row)
    line = (f"step {step}/{num_steps}  loss {row['loss']:.4f}  grad_norm {row['grad_norm']:.3f}  "
            f"{row['tokens_per_second']:.0f} tok/s  {row['step_seconds'] * 1000:.0f} ms/step  mfu {row['mfu']:.3f}")
    progress.update(w.steps, line, {"loss": f"{row['loss']:.3f}", "tok/s": f"{row['tokens_per_second']:.0f}"})
    return row


def run_eval(config: mlc.ConfigDict, model_config: mlc.ConfigDict, params: Any, tokenizer: Any, workdir: str,
             writer: metrics_lib.MetricWriter, step: int) -> dict[str, Any]:
    """Scores the final params on the held-out tasks (`config.eval`: the whole split unless num_per_task
    caps it, optionally the vision-off control); prints the table (n, score [95% CI], baseline on the
    same items, vision-off), writes eval/."""
    from vlm_jax.eval import harness, tasks

    e = config.eval
    world_cfg = experiment_lib.eval_world_config(config)
    items = tasks.load_items(list(e.tasks), split=e.split, num_per_task=e.num_per_task, world_config=world_cfg)
    report = harness.evaluate(model_config, params, tokenizer, items, batch_size=e.batch_size,
                              max_new_tokens=e.max_new_tokens, processor=experiment_lib.processor_config(config),
                              vision_off_control=e.vision_off_control)
    baselines = harness.trivial_baselines(list(e.tasks), world_config=world_cfg)
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    result = report.to_json(baselines=baselines)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    if e.num_visualizations:
        from vlm_jax.eval import visualize

        visualize.write_visualizations(report, items, out, n=e.num_visualizations)
    print(report.table(baselines=baselines), flush=True)
    writer.write(step, {f"eval/{k}": v for k, v in report.scalars().items()})
    return result


def write_summary(workdir: str, summary: Mapping[str, Any]) -> None:
    """Writes `<workdir>/summary.json` atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    tmp = os.path.join(workdir, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1, default=str)
    os.replace(tmp, os.path.join(workdir, "summary.json"))




def format_summary(summary: Mapping[str, Any]) -> str:
    """The concise end-of-run block printed by the CLI."""
    keys = ("model", "steps", "train_seconds", "compile_seconds", "first_loss", "final_loss", "tokens_per_second",
            "mfu", "skipped_steps", "packing_efficiency", "final_params", "curves")
    width = max(len(k) for k in keys)
    lines = ["", "== run summary =="]
    lines += [f"{k:<{width}}  {summary[k]}" for k in keys if summary.get(k) is not None]
    return "\n".join(lines)

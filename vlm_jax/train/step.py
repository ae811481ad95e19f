"""The jitted train step: forward, loss, gradient (with micro-batch accumulation), non-finite
guard, optimizer update, metrics.

    mesh = vlm_jax.parallel.make_mesh(train_config.parallel)
    state = init_train_state(model_config, train_config, mesh)
    step = make_train_step(model_config, train_config, mesh, batch_shapes=global_batch_shapes(batch))
    state, metrics = step(state, put_batch(batch, mesh))

Gradient accumulation is an explicit `lax.scan` over micro-batches inside the step, not
`optax.MultiSteps`: the loss is sum(w * ce) / sum(w) over the *whole* optimizer batch
(`vlm_jax.train.losses`), so the denominator is computed from all micro-batches' weights before
the scan and each micro-batch contributes sum(w * ce) / W_total; MultiSteps would average
per-micro-batch means, weighting micro-batches wrongly when their token counts differ (always,
with packing and sample / sqrt weights). The scan also keeps the accumulator out of the
optimizer state (not checkpointed, no extra params-sized buffer between steps) and clipping and
the non-finite guard see the full gradient once.

With `grad_accum_steps = k > 1` every batch array has a leading [k] axis (`stack_microbatches`),
each micro-batch with its own vision buffer.

Extra batch keys (post-training: old_logp [B, S], advantages [B], teacher_logits [B, S, V], ...) travel
with the CONTRACTS.md keys when named in `extra_keys` (`put_batch`, `global_batch_shapes`,
`stack_microbatches`, `make_train_step`, which also takes them from `loss_fn.extra_keys`): any rank, a
leading batch axis (after the [k] axis), split over the batch axes like `targets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from jax.sharding import Mesh

from vlm_jax.model.vlm import Qwen3VL
from vlm_jax.parallel import rules as rules_lib
from vlm_jax.train import losses
from vlm_jax.train.optimizer import GROUPS, build_optimizer, lr_schedules, trainable_mask
from vlm_jax.train.state import TrainState, abstract_state

# XLA options that cut CPU compile time ~4x (tests, CPU smoke runs): no LLVM optimisation and the
# classic loop emitters. Same float32 math, slower kernels; never use them for real training.
CPU_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}

BATCH_KEYS = ("input_ids", "segment_ids", "position_ids", "targets", "loss_weights", "task_ids",
              "pixel_values", "grid_thw")


def effective_model_config(model_config: mlc.ConfigDict, train_config: mlc.ConfigDict) -> mlc.ConfigDict:
    """The model config with the train config's remat policy applied ("model" keeps it)."""
    if train_config.remat_policy in ("model", model_config.remat_policy):
        return model_config
    c = mlc.ConfigDict(model_config.to_dict())
    c.remat_policy = train_config.remat_policy
    c.lock()
    return c


def compact_vision(pixel_values: jnp.ndarray, grid_thw: jnp.ndarray, chunks: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Joins `chunks` per-process vision buffers into one buffer in the model's layout.

    In a multi-process run each process's pipeline packs its own rows with its own buffer (real
    patches then zero padding; real grid rows then zero rows), and the global arrays are the
    concatenation of those buffers. The model needs the real patches (and grid rows) of the
    whole batch contiguous at the front, in placeholder order; since process blocks are in row
    order, a stable sort that moves padding behind the real entries gives exactly that.
    """
    if chunks == 1:
        return pixel_values, grid_thw
    p, m = pixel_values.shape[0], grid_thw.shape[0]
    if p % chunks or m % chunks:
        raise ValueError(f"vision buffers ({p} patches, {m} grid rows) do not split into {chunks} process blocks")
    grid = grid_thw.reshape(chunks, m // chunks, 3)
    counts = jnp.prod(grid, axis=-1)  # patches per grid row (0 on padding rows)
    real_patches = jnp.sum(counts, axis=-1)  # [chunks]
    patch_real = (jnp.arange(p // chunks)[None, :] < real_patches[:, None]).reshape(-1)
    grid_real = (counts > 0).reshape(-1)
    patch_order = jnp.argsort(jnp.where(patch_real, 0, 1), stable=True)
    grid_order = jnp.argsort(jnp.where(grid_real, 0, 1), stable=True)
    pixel_values = jnp.where(patch_real[patch_order][:, None], pixel_values[patch_order], 0)
    grid_thw = jnp.where(grid_real[grid_order][:, None], grid_thw[grid_order], 0)
    return pixel_values, grid_thw


def stack_microbatches(batches: Sequence[Mapping[str, np.ndarray]],
                       extra_keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """k pipeline batches -> one batch with a leading [k] axis (for grad_accum_steps = k)."""
    return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in (*BATCH_KEYS, *extra_keys)}


def global_batch_shapes(batch: Mapping[str, Any], global_batch: bool = False,
                        extra_keys: Sequence[str] = ()) -> dict[str, tuple[int, ...]]:
    """Global shapes of a process-local batch (its batch and vision-buffer axes times the process
    count), for `make_train_step(batch_shapes=...)`; `global_batch`: the batch is already global.
    Extra keys have their batch axis first, after the micro-batch axis when `targets` has one."""
    n = 1 if global_batch else jax.process_count()
    micro = np.ndim(batch["targets"]) - len(rules_lib.BATCH_LOGICAL["targets"])
    out = {}
    for k in (*BATCH_KEYS, *extra_keys):
        shape = list(np.shape(batch[k]))
        if k in rules_lib.BATCH_LOGICAL:
            names = rules_lib.BATCH_LOGICAL[k]
            axis = len(shape) - len(names) + next(i for i, a in enumerate(names) if a is not None)
        else:
            axis = micro
        shape[axis] *= n
        out[k] = tuple(shape)
    return out


def put_batch(batch: Mapping[str, Any], mesh: Mesh, shardings: Mapping[str, Any] | None = None,
              microbatched: bool = False, extra_keys: Sequence[str] = ()) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global device arrays (only the CONTRACTS.md keys and
    `extra_keys` are kept).

    Each process passes its own rows and vision buffer; the global batch is their
    concatenation in process order (`compact_vision` fixes up the vision buffers in the step)."""
    keys = (*BATCH_KEYS, *extra_keys)
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing} (the step expects all of {keys})")
    if shardings is None:
        shardings = rules_lib.batch_shardings(global_batch_shapes(batch, extra_keys=extra_keys), mesh,
                                              microbatched=microbatched, extra_keys=extra_keys)
    out = {}
    for k in keys:
        local = np.asarray(batch[k])
        if jax.process_count() == 1:
            out[k] = jax.device_put(local, shardings[k])
        else:
            out[k] = jax.make_array_from_process_local_data(shardings[k], local)
    return out


def _where_tree(pred: jnp.ndarray, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def make_train_step(
    model_config: mlc.ConfigDict,
    train_config: mlc.ConfigDict,
    mesh: Mesh,
    *,
    batch_shapes: Mapping[str, Sequence[int]] | None = None,
    rules: rules_lib.Rules = rules_lib.RULES,
    vision_chunks: int | None = None,
    donate: bool = True,
    compiler_options: dict[str, Any] | None = None,
    loss_fn: losses.LossFn | None = None,
    extra_keys: Sequence[str] | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """One `jax.jit` (state, batch) -> (state, metrics) with explicit shardings.

    batch_shapes: global shapes of the batch arrays (with the leading micro-batch axis when
      grad_accum_steps > 1); used to fall back to replicated vision buffers when they do not
      divide over the batch axes. None: every batch array must divide evenly.
    vision_chunks: per-process vision buffers in the global batch (default: process count).
    donate: the input state's buffers are reused for the output state.
    compiler_options: XLA options for this jit (`CPU_FAST_COMPILE` in tests).
    loss_fn: (model_out, batch, weight_total) -> (objective, stats), see `vlm_jax.train.losses`
      (distillation, RL); default `losses.NextTokenLoss.from_configs(model_config, train_config)`.
      A loss may define `weight_total(batch) -> scalar`: the weight_total it is given (computed on the
      whole optimizer batch, micro-batch axis included), instead of sum(loss_weights).
    extra_keys: batch keys beyond the CONTRACTS.md ones (module docstring); None: the loss_fn's
      `extra_keys` attribute, else none. The step's batch must hold exactly these keys (`put_batch`).

    Metrics (replicated scalars unless noted): weight_sum, num_tokens, grad_norm (before clipping),
    skipped (1 if this step was not applied), skipped_steps, consecutive_skips, lr_<group>, and the
    loss's: `loss_fn.metrics(summed stats, weight_total)` when it has that method, else loss (the
    summed objective) and the summed stats. The default loss reports loss (the optimised objective),
    ce_loss, z_loss, moe_aux_loss (scaled); with loss.num_tasks > 0 also task_loss and task_weight
    [num_tasks + 1] (index = task id). The non-finite guard checks "loss" and grad_norm.
    """
    mc = effective_model_config(model_config, train_config)
    model = Qwen3VL(mc)
    tx = build_optimizer(train_config, mc)
    schedules = lr_schedules(train_config)
    k_micro = train_config.grad_accum_steps
    loss_fn = losses.NextTokenLoss.from_configs(mc, train_config) if loss_fn is None else loss_fn
    loss_metrics = getattr(loss_fn, "metrics", None)
    loss_total = getattr(loss_fn, "weight_total", None)
    extra_keys = tuple(getattr(loss_fn, "extra_keys", ()) if extra_keys is None else extra_keys)
    guard = bool(train_config.guard.skip_nonfinite)
    chunks = jax.process_count() if vision_chunks is None else vision_chunks
    boxed = abstract_state(mc, train_config)  # traced once: shapes, logical names, optimizer structure
    trainable = trainable_mask(boxed.params, train_config)
    st_shardings = rules_lib.param_shardings(boxed, mesh, rules)
    microbatched = k_micro > 1
    shapes = {k: None if batch_shapes is None else batch_shapes[k] for k in (*BATCH_KEYS, *extra_keys)}
    b_shardings = rules_lib.batch_shardings(shapes, mesh, rules, microbatched=microbatched, extra_keys=extra_keys)
    metrics_sharding = rules_lib.replicated(mesh)

    def objective_fn(params, mb, weight_total):
        # Frozen params: no gradient flows, so XLA drops their weight-gradient computation.
        params = jax.tree.map(lambda t, p: p if t else jax.lax.stop_gradient(p), trainable, params)
        pixel_values, grid_thw = compact_vision(mb["pixel_values"], mb["grid_thw"], chunks)
        out = model.apply({"params": params}, mb["input_ids"], mb["position_ids"], mb["segment_ids"],
                          pixel_values, grid_thw)
        return loss_fn(out, mb, weight_total)

    grad_fn = jax.value_and_grad(objective_fn, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array]):
        params = state.params
        weight_sum = jnp.sum(batch["loss_weights"].astype(jnp.float32))
        weight_total = jnp.maximum(weight_sum if loss_total is None else loss_total(batch), 1e-8)
        if k_micro == 1:
            (objective, stats), grads = grad_fn(params, batch, weight_total)
        else:
            def body(carry, mb):
                (o, s), g = grad_fn(params, mb, weight_total)
                return jax.tree.map(jnp.add, carry, (g, o, s)), None

            first = jax.tree.map(lambda x: x[0], batch)
            zeros_g = jax.tree.map(jnp.zeros_like, params)
            zeros_os = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                    jax.eval_shape(lambda: grad_fn(params, first, weight_total)[0]))
            zeros = (zeros_g, *zeros_os)
            (grads, objective, stats), _ = jax.lax.scan(body, zeros, batch)

        loss_out = loss_metrics(stats, weight_total) if loss_metrics is not None else {"loss": objective, **stats}
        loss = loss_out["loss"]
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        skipped = jnp.logical_not(finite) if guard else jnp.zeros((), bool)
        if guard:
            # A skipped step leaves params and optimizer state (incl. its step count, hence the
            # lr schedule) exactly as they were; only the counters and the rng move on.
            new_params = _where_tree(finite, new_params, params)
            new_opt_state = _where_tree(finite, new_opt_state, state.opt_state)
        skipped_i = skipped.astype(jnp.int32)
        applied = state.step - state.skipped_steps  # updates applied so far = schedule position
        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            opt_state=new_opt_state,
            rng=jax.random.split(state.rng)[0],
            skipped_steps=state.skipped_steps + skipped_i,
            consecutive_skips=jnp.where(skipped, state.consecutive_skips + 1, 0),
        )
        metrics = {
            **loss_out,
            "weight_sum": weight_sum, "num_tokens": jnp.sum(batch["segment_ids"] != 0).astype(jnp.float32),
            "grad_norm": grad_norm, "skipped": skipped_i, "skipped_steps": new_state.skipped_steps,
            "consecutive_skips": new_state.consecutive_skips,
        }
        for g in GROUPS:
            metrics[f"lr_{g}"] = jnp.asarray(schedules[g](applied), jnp.float32)
        return new_state, metrics

    def traced(state, batch):
        with rules_lib.sharding_context(mesh, rules):
            return step(state, batch)

    return jax.jit(traced, in_shardings=(st_shardings, b_shardings), out_shardings=(st_shardings, metrics_sharding),
                   donate_argnums=(0,) if donate else (), compiler_options=compiler_options)


class NonFiniteAbort(RuntimeError):
    """Raised by `check_skips` when too many consecutive steps were skipped."""


def check_skips(metrics: Mapping[str, Any], train_config: mlc.ConfigDict) -> None:
    """Host-side guard for the loop: raises after `guard.max_consecutive_skips` skipped steps in a row."""
    consecutive = int(np.asarray(metrics["consecutive_skips"]))
    limit = train_config.guard.max_consecutive_skips
    if consecutive >= limit:
        raise NonFiniteAbort(
            f"{consecutive} consecutive train steps had a non-finite loss or gradient and were skipped "
            f"(limit guard.max_consecutive_skips={limit}; {int(np.asarray(metrics['skipped_steps']))} skipped in "
            f"total); last loss={float(np.asarray(metrics['loss']))}, grad_norm="
            f"{float(np.asarray(metrics['grad_norm']))}. Lower the learning rate, check the data, or resume "
            "from an earlier checkpoint.")

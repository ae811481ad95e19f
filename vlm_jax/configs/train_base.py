"""Training config: every key the train step, optimizer, checkpointing and mesh read.

Usage: `get_config()` (locked: assigning an unknown key fails), then override values and call
`validate(config)`; `get_config(**overrides)` does both, e.g.
`get_config(**{"optimizer.llm_lr": 1e-4, "parallel.fsdp": 4})`.
Stage recipes (S0-S3, SFT) start from this base and change values, never add keys.
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from vlm_jax.configs import model as model_configs
from vlm_jax.configs.validate import check_keys, merge, unflatten

SCHEDULES = ("cosine", "linear", "constant")
MESH_AXES = ("data", "fsdp", "expert", "sequence", "tensor")
REMAT_POLICIES = ("model", *model_configs.CHOICES["remat_policy"])  # "model": keep the model config's


def base_config() -> mlc.ConfigDict:
    """All train keys with defaults (Qwen-VL AdamW settings, Qwen3-VL fine-tuning learning rates)."""
    c = mlc.ConfigDict()
    c.seed = 0
    c.num_train_steps = 1000
    # Micro-batches per optimizer step. The step then takes batches with a leading [k] axis
    # (`vlm_jax.train.step.stack_microbatches`), each micro-batch with its own vision buffer.
    c.grad_accum_steps = 1
    c.remat_policy = "model"  # "model": keep the model config's policy; else override it

    o = c.optimizer = mlc.ConfigDict()
    o.b1 = 0.9
    o.b2 = 0.98
    o.eps = 1e-6
    o.weight_decay = 0.05
    o.grad_clip_norm = 1.0  # global norm over all trainable grads; 0 = no clipping
    o.schedule = "cosine"  # "cosine" | "linear" | "constant" (after linear warmup from 0)
    o.warmup_steps = 100
    o.decay_steps = 0  # steps of warmup + decay; 0 = num_train_steps
    o.min_lr_ratio = 0.0  # final lr = peak * min_lr_ratio
    # Per-module peak learning rates: LLM = embed, decoder, lm_head; merger = merger + DeepStack mergers.
    o.llm_lr = 1e-5
    o.vision_lr = 1e-6
    o.merger_lr = 1e-5
    # Frozen modules get no gradient computation and no optimizer state.
    o.freeze_vision = False
    o.freeze_merger = False
    o.freeze_llm = False
    # ViT layer-wise lr decay (BEiT style): block i gets decay^(depth - i), patch/pos embed decay^(depth + 1).
    o.vision_layer_decay = 1.0
    o.decay_norms = False  # apply weight decay to norm scales/biases
    o.decay_biases = False  # ... to Dense biases
    o.decay_embeddings = False  # ... to token / position embeddings (and resampler queries)
    o.mu_dtype = "float32"  # dtype of Adam's first moment

    lo = c.loss = mlc.ConfigDict()
    lo.z_loss_coef = 0.0  # coef * weighted mean of logsumexp(logits)^2
    lo.num_tasks = 0  # per-task loss breakdown for task ids 0..num_tasks (0 = off)
    # The MoE load-balancing coefficient is the model's `text.router_aux_loss_coef`.

    g = c.guard = mlc.ConfigDict()
    g.skip_nonfinite = True  # skip (do not apply) a step whose loss or gradient is not finite
    g.max_consecutive_skips = 10  # the loop aborts after this many consecutive skipped steps

    p = c.parallel = mlc.ConfigDict()
    p.data = -1  # -1: all devices not used by the other axes
    p.fsdp = 1
    p.expert = 1
    p.sequence = 1
    p.tensor = 1

    k = c.checkpoint = mlc.ConfigDict()
    k.dir = ""  # "" = no checkpoints
    k.every_steps = 1000
    k.keep = 3  # keep the last K checkpoints
    k.async_save = True
    k.save_on_sigterm = True
    return c


def get_config(**overrides: Any) -> mlc.ConfigDict:
    """The validated, locked base train config; `overrides` are dotted keys -> values."""
    c = base_config()
    c.lock()
    merge(c, unflatten(overrides), "train")
    validate(c)
    return c


def validate(c: mlc.ConfigDict) -> None:
    """Fails with a message naming the key when a key is unknown/missing or a value is invalid."""
    check_keys(c, base_config(), "train")
    o = c.optimizer

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"invalid train config: {msg}")

    need(c.num_train_steps > 0, f"num_train_steps={c.num_train_steps} must be > 0")
    need(c.grad_accum_steps >= 1, f"grad_accum_steps={c.grad_accum_steps} must be >= 1")
    need(c.remat_policy in REMAT_POLICIES, f"remat_policy={c.remat_policy!r} (expected one of {REMAT_POLICIES})")
    need(o.schedule in SCHEDULES, f"optimizer.schedule={o.schedule!r} (expected one of {SCHEDULES})")
    need(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optimizer.b1={o.b1}, b2={o.b2} must be in [0, 1)")
    need(o.eps > 0, f"optimizer.eps={o.eps} must be > 0")
    need(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay} must be >= 0")
    need(o.grad_clip_norm >= 0, f"optimizer.grad_clip_norm={o.grad_clip_norm} must be >= 0")
    need(o.warmup_steps >= 0, f"optimizer.warmup_steps={o.warmup_steps} must be >= 0")
    decay = o.decay_steps or c.num_train_steps
    need(decay > o.warmup_steps or o.schedule == "constant",
         f"optimizer.decay_steps (or num_train_steps) = {decay} must exceed warmup_steps={o.warmup_steps}")
    need(0 <= o.min_lr_ratio <= 1, f"optimizer.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
    for k in ("llm_lr", "vision_lr", "merger_lr"):
        need(o[k] >= 0, f"optimizer.{k}={o[k]} must be >= 0")
    need(not (o.freeze_vision and o.freeze_merger and o.freeze_llm), "every module is frozen: nothing to train")
    need(0 < o.vision_layer_decay <= 1, f"optimizer.vision_layer_decay={o.vision_layer_decay} must be in (0, 1]")
    need(o.mu_dtype in ("float32", "bfloat16"), f"optimizer.mu_dtype={o.mu_dtype!r}")
    need(c.loss.z_loss_coef >= 0, f"loss.z_loss_coef={c.loss.z_loss_coef} must be >= 0")
    need(c.loss.num_tasks >= 0, f"loss.num_tasks={c.loss.num_tasks} must be >= 0")
    need(c.guard.max_consecutive_skips >= 1,
         f"guard.max_consecutive_skips={c.guard.max_consecutive_skips} must be >= 1")
    sizes = [c.parallel[a] for a in MESH_AXES]
    need(all(s == -1 or s >= 1 for s in sizes) and sizes.count(-1) <= 1,
         f"parallel axes {dict(zip(MESH_AXES, sizes))}: sizes must be >= 1, at most one -1")
    k = c.checkpoint
    need(k.every_steps >= 1, f"checkpoint.every_steps={k.every_steps} must be >= 1")
    need(k.keep >= 1, f"checkpoint.keep={k.keep} must be >= 1")

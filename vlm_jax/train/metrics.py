"""What the train loop reports: metric writers (JSONL + TensorBoard), FLOPs and MFU estimates.

FLOPs of one train step are counted from the batch's real token and patch counts (padding is
not useful work), with the usual dense-transformer formula: 6 FLOPs per parameter per token
(forward + backward) for every matmul weight a token passes through, plus the attention score
and value products, 12 * layers * (heads * head_dim) * context per token (6 with a causal
mask: XLA computes every score, but MFU counts only the useful half). Embedding lookups cost
nothing; the (tied) LM head is a matmul and counts. Frozen modules need no weight gradient,
so they cost 4 instead of 6 per parameter (forward 2 + input gradient 2), and the vision tower
costs only its forward 2 when nothing below the merger trains.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

# Dense bf16 peak FLOP/s per device, from vendor data sheets (matmul units, no sparsity).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA B200": 2250e12,
}


def model_flop_counts(model_config: mlc.ConfigDict) -> dict[str, float]:
    """Matmul parameters a token passes through, per part: {"text", "lm_head", "vision", "merger"}."""
    from vlm_jax.params import count_params  # imported late: it traces the model

    c = count_params(model_config)
    t, v = model_config.text, model_config.vision
    embed = t.vocab_size * t.hidden_size
    active_text = c["active"] - c["vision"]  # text params incl. embed (and lm_head when untied)
    lm_head = embed
    body = active_text - embed - (0 if t.tie_word_embeddings else embed)
    vision_body = v.depth * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    merger = c["vision"] - vision_body
    return {"text": float(body), "lm_head": float(lm_head), "vision": float(vision_body),
            "merger": float(max(merger, 0))}


def step_flops(model_config: mlc.ConfigDict, counts: Mapping[str, float], *, tokens: float, patches: float,
               seq_len: int, frame_patches: float, trainable: Mapping[str, bool]) -> float:
    """Useful FLOPs of one train step over `tokens` real tokens and `patches` real patches.

    seq_len: the packed row length (attention context is at most this; we use half of it, the
    mean causal context of a full row). frame_patches: mean patches per image/frame (the ViT
    attends within a frame). trainable: {"llm", "merger", "vision"} -> bool."""
    t, v = model_config.text, model_config.vision

    def mult(train_weights: bool, need_input_grad: bool) -> float:
        return 2.0 + (2.0 if need_input_grad else 0.0) + (2.0 if train_weights else 0.0)

    below_merger = trainable["vision"]
    below_llm = below_merger or trainable["merger"]
    llm_mult = mult(trainable["llm"], below_llm)
    text = (counts["text"] + counts["lm_head"]) * tokens * llm_mult
    # QK^T and AV: 4 * heads * head_dim FLOPs per (token, context position) forward; the mean
    # causal context of a full packed row is seq_len / 2. `mult / 2` scales forward to fwd + bwd.
    attn_text = 4.0 * t.num_layers * t.num_heads * t.head_dim * (seq_len / 2) * tokens * llm_mult / 2.0
    # The merger sees each 2x2 group once (its first matmul is over the concatenated group).
    merged = patches / (v.spatial_merge_size**2)
    merger = counts["merger"] * merged * mult(trainable["merger"], below_merger)
    vis_mult = mult(trainable["vision"], False)
    vision = counts["vision"] * patches * vis_mult
    attn_vision = 4.0 * v.depth * v.hidden_size * frame_patches * patches * vis_mult / 2.0
    return float(text + attn_text + merger + vision + attn_vision)


def device_peak_flops(device: jax.Device | None = None, override: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number came from). CPUs have no data sheet here:
    we measure a large float32 matmul once (the achievable peak, so CPU MFU reads high)."""
    if override > 0:
        return float(override), "config"
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, flops in PEAK_FLOPS.items():
        if kind.startswith(name):
            return flops, f"data sheet ({kind})"
    if device.platform == "cpu":
        return measure_matmul_flops(), "measured matmul"
    return float("nan"), f"unknown device kind {kind!r}"


def measure_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


class MetricWriter:
    """Scalars to `<workdir>/metrics.jsonl` (one JSON object per logged step) and TensorBoard
    event files under `<workdir>/tensorboard` (tensorboardX: no TensorFlow needed). Only process 0 writes."""

    def __init__(self, workdir: str | None, tensorboard: bool = True):
        self.enabled = bool(workdir) and jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _to_float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None and math.isfinite(v):
                    self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        self._jsonl = self._tb = None


def _to_float(v: Any) -> float | None:
    try:
        return float(np.asarray(v))
    except (TypeError, ValueError):
        return None

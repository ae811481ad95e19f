"""What the train loop reports: metric writers (JSONL + TensorBoard), FLOPs and MFU estimates.

MFU counts useful work only. FLOPs of one train step are counted from the batch's real token and
patch counts (padding is not useful work), with the usual dense-transformer formula: 6 FLOPs per
parameter per token (forward + backward) for every matmul weight a token passes through, plus the
attention score and value products, 12 * layers * (heads * head_dim) FLOPs per attended (query, key)
pair. Attended pairs are those the mask lets through, from the batch's actual layout
(`text_attention_pairs`, `vision_attention_pairs`): a packed row of several sequences attends only
within each sequence, causally, so a segment of L tokens is L^2 / 2 pairs; the cross-segment pairs
and the masked upper triangle, which dense XLA attention computes anyway, are not counted. The ViT
attends within each frame (P^2 pairs for P patches), or within windows in its windowed layers.
Embedding lookups cost nothing; the (tied) LM head is a matmul and counts. A trained LLM or ViT
costs 6 (its inner layers need input gradients even when nothing below it trains); frozen modules
need no weight gradient, so they cost 4 (forward 2 + input gradient 2) when something below them
trains and only their forward 2 otherwise (the vision tower whenever it is frozen).
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
    """Matmul parameters a token (patch) passes through, per part: {"text", "lm_head", "vision", "merger"}.

    Embedding tables are lookups and do not count; the attention score / value products have no
    parameters: `step_flops` adds them from the attended (query, key) pairs."""
    from vlm_jax.params.count import count_params  # imported late: it traces the model

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


def text_attention_pairs(segment_ids: np.ndarray) -> float:
    """Causal (query, key) pairs the LLM's attention mask allows, summed over a batch: L^2 / 2 for
    each segment of L tokens (a token attends to the earlier tokens of its own segment; the diagonal's
    L / 2 is left out, as in the usual 6N + 12 * layers * width * context / 2 estimate). segment_ids
    [..., S]: every leading axis (rows, micro-batches) is a row; id 0 is padding and attends nothing."""
    seg = np.asarray(segment_ids)
    if seg.ndim < 1 or seg.size == 0:
        return 0.0
    seg = seg.reshape(-1, seg.shape[-1]).astype(np.int64)
    if (seg < 0).any():
        raise ValueError("segment_ids must be >= 0 (0 = padding)")
    # One bin per (row, segment id): tokens of a segment, wherever they sit in the row (the mask
    # pairs equal ids).
    keys = np.arange(seg.shape[0])[:, None] * (int(seg.max()) + 1) + seg
    lengths = np.bincount(keys[seg != 0]).astype(np.float64)
    return float(np.sum(lengths**2) / 2.0)


def vision_attention_pairs(grid_thw: np.ndarray, vision_config: mlc.ConfigDict) -> float:
    """(query, key) pairs of the ViT's attention per layer (mean over layers), summed over a batch.

    Every layer attends within a frame: P^2 pairs for a frame of P = h * w patches, t frames per
    grid row (t, h, w). With `vision.attention == "window"`, the layers outside
    `full_attention_layers` attend within windows of `window_size // patch_size` patches a side: a
    frame's pairs are then (sum of squared window heights) * (sum of squared window widths).
    grid_thw [..., 3]; all-zero (padding) rows count nothing."""
    grid = np.asarray(grid_thw, np.float64).reshape(-1, 3)
    t, h, w = grid[:, 0], grid[:, 1], grid[:, 2]
    full = float(np.sum(t * (h * w) ** 2))
    if vision_config.attention != "window":
        return full
    wp = vision_config.window_size // vision_config.patch_size

    def squares(n: np.ndarray) -> np.ndarray:  # sum of squared chunk sizes of n split into wp-chunks
        return (n // wp) * wp**2 + (n % wp) ** 2

    windowed = float(np.sum(t * squares(h) * squares(w)))
    depth = vision_config.depth
    n_full = sum(1 for i in set(vision_config.full_attention_layers) if 0 <= i < depth)
    return (n_full * full + (depth - n_full) * windowed) / depth


def step_flops(model_config: mlc.ConfigDict, counts: Mapping[str, float], *, tokens: float, patches: float,
               text_pairs: float, vision_pairs: float, trainable: Mapping[str, bool]) -> float:
    """Useful FLOPs of one train step over `tokens` real tokens and `patches` real patches (see the
    module docstring for what counts).

    text_pairs: `text_attention_pairs(segment_ids)` of the step's batch (causal pairs within each
    packed segment). vision_pairs: `vision_attention_pairs(grid_thw, vision_config)` (pairs within
    each frame / window, per ViT layer). trainable: {"llm", "merger", "vision"} -> bool."""
    t, v = model_config.text, model_config.vision

    def mult(train_weights: bool, need_input_grad: bool) -> float:
        return 2.0 + (2.0 if need_input_grad else 0.0) + (2.0 if train_weights else 0.0)

    below_merger = trainable["vision"]
    below_llm = below_merger or trainable["merger"]
    # A trained layer stack needs input gradients inside it (layer k's weight gradient needs the
    # gradient at layer k's output), so it costs the full 6 even when nothing below it trains.
    llm_mult = mult(trainable["llm"], below_llm or trainable["llm"])
    text = (counts["text"] + counts["lm_head"]) * tokens * llm_mult
    # QK^T and AV: 4 * heads * head_dim FLOPs per attended (query, key) pair forward, per layer.
    # They have no weights: any backward through them (dQ, dK, dV) costs twice the forward.
    attn_text = 4.0 * t.num_layers * t.num_heads * t.head_dim * text_pairs * _attn_mult(llm_mult > 2.0)
    # The merger sees each 2x2 group once (its first matmul is over the concatenated group).
    merged = patches / (v.spatial_merge_size**2)
    merger = counts["merger"] * merged * mult(trainable["merger"], below_merger)
    vis_mult = mult(trainable["vision"], trainable["vision"])
    vision = counts["vision"] * patches * vis_mult
    attn_vision = 4.0 * v.depth * v.hidden_size * vision_pairs * _attn_mult(vis_mult > 2.0)
    return float(text + attn_text + merger + vision + attn_vision)


def _attn_mult(backward: bool) -> float:
    """Forward + backward of the weightless attention products, in units of their forward."""
    return 3.0 if backward else 1.0


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

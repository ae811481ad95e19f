"""SigLIP-2-style vision tower with native dynamic resolution (Qwen3-VL).

All patches of a batch form one flat sequence [P, C*T*p*p]; `grid_thw` [M, 3] says which image
or video each run of patches belongs to (trailing all-zero rows and trailing patches are padding,
so shapes stay static under jit). Every per-patch quantity (row, column, frame, window, position
embedding taps) is derived from `grid_thw` inside the computation.

Layers are scanned in segments that end at the DeepStack taps, so the tap outputs come out of a
scan without storing every layer's activations.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections as mlc

from vlm_jax.kernels.attention import segment_attention
from vlm_jax.model import layers, rope

# Window ids live in the low 16 bits of a window segment id (see `patch_layout`).
_WINDOW_BITS = 16


def patch_layout(grid_thw: jnp.ndarray, num_patches: int, merge: int, window_patches: int = 0) -> dict:
    """Per-patch metadata for a flat patch buffer of length `num_patches`.

    Patches of an entry are laid out frame by frame, each frame in 2x2-merge-block order
    (block row, block col, row in block, col in block). Returns int32 arrays [P]:
      row, col      position inside the frame's patch grid
      height, width the frame's patch grid (for position-embedding interpolation)
      segment       attention segment: one per frame, 1-based; 0 for padding patches
      window        segment refined by (window_patches x window_patches) windows (Qwen2.5-VL)
      entry         1-based index of the grid entry (image or video); 0 for padding
    """
    grid_thw = jnp.asarray(grid_thw, jnp.int32)
    t, h, w = grid_thw[:, 0], grid_thw[:, 1], grid_thw[:, 2]
    counts = t * h * w
    ends = jnp.cumsum(counts)
    idx = jnp.arange(num_patches, dtype=jnp.int32)
    entry = jnp.searchsorted(ends, idx, side="right")
    valid = idx < ends[-1]
    entry = jnp.minimum(entry, grid_thw.shape[0] - 1)
    eh, ew = jnp.maximum(h[entry], 1), jnp.maximum(w[entry], 1)
    within_entry = idx - (ends[entry] - counts[entry])
    frame = within_entry // (eh * ew)
    within = within_entry % (eh * ew)
    blocks_w = jnp.maximum(ew // merge, 1)
    row = (within // (merge * merge * blocks_w)) * merge + (within // merge) % merge
    col = ((within // (merge * merge)) % blocks_w) * merge + within % merge
    frames_before = jnp.cumsum(t) - t
    segment = jnp.where(valid, frames_before[entry] + frame + 1, 0)
    if window_patches:
        windows_w = (ew + window_patches - 1) // window_patches
        win = (row // window_patches) * windows_w + col // window_patches
        window = jnp.where(valid, (segment << _WINDOW_BITS) + win, 0)
    else:
        window = segment
    entry_id = jnp.where(valid, entry + 1, 0)
    return dict(row=row, col=col, height=eh, width=ew, segment=segment, window=window, entry=entry_id)


def interpolation_taps(row, col, height, width, side: int):
    """Bilinear (align_corners=True) taps [P, 4] and weights [P, 4] into a side x side grid."""

    def axis(index, size):
        src = index.astype(jnp.float32) * (side - 1) / jnp.maximum(size - 1, 1).astype(jnp.float32)
        floor = jnp.floor(src)
        raw = floor.astype(jnp.int32)[:, None] + jnp.arange(2)
        weight = jnp.maximum(1.0 - jnp.abs(src[:, None] - floor[:, None] - jnp.arange(2)), 0.0)
        return jnp.clip(raw, 0, side - 1), weight

    ht, hw = axis(row, height)
    wt, ww = axis(col, width)
    taps = (ht[:, :, None] * side + wt[:, None, :]).reshape(-1, 4)
    weights = (hw[:, :, None] * ww[:, None, :]).reshape(-1, 4)
    return taps, weights


class VisionAttention(nn.Module):
    config: mlc.ConfigDict

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids):
        v = self.config.vision
        dt, pdt = layers.dtype_of(self.config.dtype), layers.dtype_of(self.config.param_dtype)
        heads, hd = v.num_heads, v.hidden_size // v.num_heads
        qkv = layers.Dense(3 * v.hidden_size, ("vision_embed", "vision_qkv"), dtype=dt, param_dtype=pdt,
                           name="qkv")(x)
        q, k, val = jnp.split(qkv.reshape(x.shape[0], 3, heads, hd), 3, axis=1)
        q, k, val = (a[:, 0] for a in (q, k, val))  # [P, H, hd]
        q, k = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)
        out = segment_attention(q, k, val, segment_ids, block=v.attention_block, impl=self.config.attention_impl)
        out = out.reshape(x.shape[0], v.hidden_size)
        return layers.Dense(v.hidden_size, ("vision_heads", "vision_embed"), dtype=dt, param_dtype=pdt,
                            name="proj")(out)


class VisionBlock(nn.Module):
    """Pre-norm block: LayerNorm, attention with 2D RoPE, LayerNorm, GELU(tanh) MLP."""

    config: mlc.ConfigDict

    @nn.compact
    def __call__(self, x, full_attention, cos, sin, frame_ids, window_ids):
        v = self.config.vision
        dt, pdt = layers.dtype_of(self.config.dtype), layers.dtype_of(self.config.param_dtype)
        segment_ids = frame_ids if window_ids is None else jnp.where(full_attention, frame_ids, window_ids)
        h = layers.LayerNorm(v.layer_norm_eps, "vision_embed", pdt, name="norm1")(x)
        x = x + VisionAttention(self.config, name="attn")(h, cos, sin, segment_ids)
        h = layers.LayerNorm(v.layer_norm_eps, "vision_embed", pdt, name="norm2")(x)
        h = layers.Dense(v.intermediate_size, ("vision_embed", "vision_mlp"), dtype=dt, param_dtype=pdt,
                         name="fc1")(h)
        h = layers.Dense(v.hidden_size, ("vision_mlp", "vision_embed"), dtype=dt, param_dtype=pdt,
                         name="fc2")(layers.gelu_tanh(h))
        x = layers.constrain(x + h, ("vision_seq", "vision_embed"))
        return x, None


def vision_segments(config: mlc.ConfigDict) -> list[tuple[int, int]]:
    """[start, end) layer ranges scanned together: each configured DeepStack tap ends a segment.

    The cuts follow `vision.deepstack_layers` even when `deepstack=False`, so switching the
    ablation on or off keeps the same param tree.
    """
    v = config.vision
    cuts = sorted(set(i + 1 for i in v.deepstack_layers)) + [v.depth]
    out, start = [], 0
    for end in cuts:
        if end > start:
            out.append((start, end))
            start = end
    return out


def pos_embed_init(v: mlc.ConfigDict, side: int):
    """Initializer of the [side * side, width] position grid (`vision.pos_embed_init`)."""
    if v.pos_embed_init == "normal":
        return layers.DEFAULT_INIT
    if v.pos_embed_init != "sincos":
        raise ValueError(f"vision.pos_embed_init={v.pos_embed_init!r}: expected 'normal' or 'sincos'")

    def init(key, shape, dtype=jnp.float32):
        del key
        idx = jnp.arange(shape[0])
        return (v.pos_embed_init_scale * rope.sincos_2d(idx // side, idx % side, shape[1])).astype(dtype)

    return init


class VisionTower(nn.Module):
    """Patches -> per-patch features, plus the features at each DeepStack tap layer."""

    config: mlc.ConfigDict

    @nn.compact
    def __call__(self, pixel_values: jnp.ndarray, grid_thw: jnp.ndarray):
        c, v = self.config, self.config.vision
        dt, pdt = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        num_patches = pixel_values.shape[0]
        window_patches = v.window_size // v.patch_size if v.attention == "window" else 0
        lay = patch_layout(grid_thw, num_patches, v.spatial_merge_size, window_patches)

        x = layers.Dense(v.hidden_size, ("vision_patch", "vision_embed"), dtype=dt, param_dtype=pdt,
                         name="patch_embed")(pixel_values)
        side = int(round(v.num_position_embeddings ** 0.5))
        pos_table = self.param("pos_embed", layers.param_init(pos_embed_init(v, side), ("vision_pos", "vision_embed")),
                               (v.num_position_embeddings, v.hidden_size), pdt)
        taps, weights = interpolation_taps(lay["row"], lay["col"], lay["height"], lay["width"], side)
        pos = jnp.sum(pos_table[taps].astype(jnp.float32) * weights[..., None], axis=1)
        x = layers.constrain((x + pos.astype(x.dtype)), ("vision_seq", "vision_embed"))

        cos, sin = rope.vision_cos_sin(lay["row"], lay["col"], v.hidden_size // v.num_heads, v.rope_theta)
        # Attention segments: frames in full-attention layers, windows inside frames otherwise.
        window_ids = lay["window"] if window_patches else None
        full_layers = jnp.asarray([(i in v.full_attention_layers) or not window_patches for i in range(v.depth)])

        block = layers.maybe_remat(VisionBlock, c.remat_policy)
        taps_out = []
        for start, end in vision_segments(c):
            stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                            length=end - start, unroll=min(c.scan_unroll, end - start),
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(c, name=f"blocks_{start}_{end}")(x, full_layers[start:end], cos, sin, lay["segment"],
                                                          window_ids)
            if c.deepstack and (end - 1) in v.deepstack_layers:
                taps_out.append(x)
        # Taps in the configured order (the order of the DeepStack mergers).
        order = sorted(v.deepstack_layers)
        taps_out = [taps_out[order.index(i)] for i in v.deepstack_layers] if c.deepstack else []
        return x, taps_out, lay

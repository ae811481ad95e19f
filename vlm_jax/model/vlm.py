"""The whole model: vision tower -> merger (+ DeepStack mergers) -> Qwen3 decoder -> logits.

A model is `(config, params)`: `Qwen3VL(config).apply({"params": params}, ...)`.
Visual features are spliced into the token embeddings at the `<|image_pad|>` / `<|video_pad|>`
positions in flattened [B, S] order; the k-th placeholder takes the k-th merged visual token,
so images and videos must be listed in `grid_thw` in the order their placeholders appear.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vlm_jax.data.processor import llm_grids
from vlm_jax.model import layers
from vlm_jax.model.decoder import Decoder
from vlm_jax.model.merger import PatchMerger, Resampler
from vlm_jax.model.moe import load_balancing_loss
from vlm_jax.model.vision import VisionTower


def visual_tokens_per_entry(grid_thw: np.ndarray, config: mlc.ConfigDict) -> np.ndarray:
    """How many placeholder tokens each grid entry expands to in the token sequence."""
    return llm_grid_thw(grid_thw, config).prod(-1) // config.vision.spatial_merge_size ** 2


def llm_grid_thw(grid_thw: np.ndarray, config: mlc.ConfigDict) -> np.ndarray:
    """The grids `get_rope_index` should see: the patch grids, or for the resampler the virtual
    (1, 2*side, 2*side) grid of its side x side queries (`processor.llm_grids`, the data side's rule)."""
    return llm_grids(grid_thw, config.merger, config.resampler_num_queries, config.vision.spatial_merge_size)


def check_visual_inputs(config: mlc.ConfigDict, input_ids, pixel_values, grid_thw) -> None:
    """Raises a ValueError naming the mismatch between placeholders, grids and patches."""
    ids = np.asarray(input_ids)
    n_img = int(np.sum(ids == config.image_token_id))
    n_vid = int(np.sum(ids == config.video_token_id))
    if grid_thw is None or pixel_values is None:
        if n_img or n_vid:
            raise ValueError(f"input_ids hold {n_img} image and {n_vid} video placeholder tokens but no "
                             "pixel_values/grid_thw were given")
        return
    grid = np.asarray(grid_thw).reshape(-1, 3)
    v = config.vision
    need_patches = int(grid.prod(-1).sum())
    if need_patches > pixel_values.shape[0]:
        raise ValueError(f"grid_thw describes {need_patches} patches but pixel_values has {pixel_values.shape[0]}")
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    if pixel_values.shape[-1] != patch_dim:
        raise ValueError(f"pixel_values rows have {pixel_values.shape[-1]} values, expected {patch_dim} "
                         f"(channels x temporal_patch_size x patch_size^2)")
    m = v.spatial_merge_size
    bad = np.nonzero((grid[:, 0] > 0) & ((grid[:, 1] % m != 0) | (grid[:, 2] % m != 0)))[0]
    if bad.size:
        raise ValueError(f"grid_thw rows {bad.tolist()} have h or w not divisible by spatial_merge_size={m}")
    tokens = int(visual_tokens_per_entry(grid, config).sum())
    if n_img + n_vid != tokens:
        raise ValueError(f"visual placeholder tokens and visual features do not match: input_ids hold {n_img} "
                         f"image + {n_vid} video placeholders, grid_thw makes {tokens} visual tokens")


def center_per_frame(tokens: jnp.ndarray, frame: jnp.ndarray) -> jnp.ndarray:
    """tokens [N, D] minus the mean of the tokens of the same frame (`frame` [N], 0 = padding)."""
    n = tokens.shape[0]
    sums = jax.ops.segment_sum(tokens.astype(jnp.float32), frame, num_segments=n + 1)
    counts = jax.ops.segment_sum(jnp.ones((n,), jnp.float32), frame, num_segments=n + 1)
    mean = sums / jnp.maximum(counts, 1.0)[:, None]
    return (tokens - mean[frame].astype(tokens.dtype)) * (frame > 0)[:, None].astype(tokens.dtype)


class Qwen3VL(nn.Module):
    config: mlc.ConfigDict

    def setup(self):
        c = self.config
        self.vision = VisionTower(c)
        self.merger = Resampler(c) if c.merger == "resampler" else PatchMerger(c)
        if c.deepstack:
            self.deepstack_mergers = [PatchMerger(c, postshuffle_norm=True) for _ in c.vision.deepstack_layers]
        pdt = layers.dtype_of(c.param_dtype)
        self.embed = self.param("embed", layers.param_init(layers.DEFAULT_INIT, ("vocab", "embed")),
                                (c.text.vocab_size, c.text.hidden_size), pdt)
        self.decoder = Decoder(c)
        if not c.text.tie_word_embeddings:
            self.lm_head = self.param("lm_head", layers.param_init(layers.DEFAULT_INIT, ("embed", "vocab")),
                                      (c.text.hidden_size, c.text.vocab_size), pdt)

    def encode_vision(self, pixel_values: jnp.ndarray, grid_thw: jnp.ndarray):
        """Merged visual tokens [N, D] and DeepStack features [levels, N, D] (or None)."""
        c = self.config
        x, taps, lay = self.vision(pixel_values.astype(layers.dtype_of(c.dtype)), grid_thw)
        if c.merger == "resampler":
            return self.merger(x, lay, grid_thw.shape[0]), None
        merged = self.merger(x)
        deepstack = jnp.stack([m(f) for m, f in zip(self.deepstack_mergers, taps)]) if c.deepstack else None
        if c.merger_center:
            frame = lay["segment"][:: c.vision.spatial_merge_size**2]  # merge groups are adjacent patches
            merged = center_per_frame(merged, frame)
            deepstack = None if deepstack is None else jax.vmap(center_per_frame, (0, None))(deepstack, frame)
        return merged, deepstack

    def __call__(
        self,
        input_ids: jnp.ndarray,
        position_ids: jnp.ndarray,
        segment_ids: jnp.ndarray | None = None,
        pixel_values: jnp.ndarray | None = None,
        grid_thw: jnp.ndarray | None = None,
        cache: dict | None = None,
        cache_index: jnp.ndarray | int | None = None,
        return_hidden: bool = False,
    ) -> dict:
        """input_ids [B, S]; position_ids [3, B, S]; segment_ids [B, S] (0 = padding);
        pixel_values [P, C*T*p*p] and grid_thw [M, 3] (see docs/CONTRACTS.md).

        Returns {"logits" [B, S, V] float32, "aux_loss" (MoE load balancing, unscaled),
        "cache" (when decoding), "hidden" (when asked)}.
        """
        c = self.config
        dt = layers.dtype_of(c.dtype)
        if not isinstance(input_ids, jax.core.Tracer):
            check_visual_inputs(c, input_ids, pixel_values, grid_thw)
        x = jnp.take(self.embed, input_ids, axis=0).astype(dt)
        x = layers.constrain(x, ("batch", "seq", "embed"))

        deepstack = visual_index = visual_mask = None
        if pixel_values is not None:
            visual, deepstack = self.encode_vision(pixel_values, grid_thw)
            visual_mask = (input_ids == c.image_token_id) | (input_ids == c.video_token_id)
            flat = visual_mask.reshape(-1)
            visual_index = jnp.clip(jnp.cumsum(flat) - 1, 0, visual.shape[0] - 1).reshape(input_ids.shape)
            x = jnp.where(visual_mask[..., None], visual[visual_index].astype(dt), x)

        h, new_cache, stats = self.decoder(x, position_ids, segment_ids, deepstack, visual_index, visual_mask,
                                           cache, cache_index)
        head = self.embed.T if c.text.tie_word_embeddings else self.lm_head
        logits = jnp.einsum("bsd,dv->bsv", h, head.astype(dt), preferred_element_type=jnp.float32)
        logits = layers.constrain(logits, ("batch", "seq", "vocab"))
        out = {"logits": logits, "aux_loss": jnp.zeros((), jnp.float32)}
        if stats is not None:
            out["aux_loss"] = load_balancing_loss(stats, c.text.num_experts)
        if new_cache is not None:
            out["cache"] = new_cache
        if return_hidden:
            out["hidden"] = h
        return out


def init_params(config: mlc.ConfigDict, rng: jax.Array, *, num_patches: int = 16, seq_len: int = 8) -> dict:
    """Random params (shapes do not depend on the dummy input sizes used here)."""
    m = config.vision.spatial_merge_size
    grid = np.asarray([[1, m, num_patches // m]], np.int32)
    n_visual = int(visual_tokens_per_entry(grid, config)[0])
    seq_len = max(seq_len, n_visual + 1)
    ids = np.zeros((1, seq_len), np.int32)
    ids[0, :n_visual] = config.image_token_id
    pos = np.zeros((3, 1, seq_len), np.int32)
    px = np.zeros((num_patches, config.vision.in_channels * config.vision.temporal_patch_size
                   * config.vision.patch_size ** 2), np.float32)
    return Qwen3VL(config).init(rng, ids, pos, None, px, grid)["params"]


def param_shapes(config: mlc.ConfigDict) -> dict:
    """Abstract param tree (ShapeDtypeStructs) without allocating: for counting and sharding."""
    return jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))

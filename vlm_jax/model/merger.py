"""Vision -> language connectors: the 2x2 MLP merger, DeepStack mergers, and the Qwen-VL resampler."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections as mlc

from vlm_jax.kernels.attention import dot_product_attention
from vlm_jax.model import layers, rope


class PatchMerger(nn.Module):
    """Concatenate each 2x2 block of neighbouring patches (adjacent in the flat order), then
    LayerNorm, Linear, GELU, Linear to the LLM width. `postshuffle_norm` (DeepStack mergers)
    normalises the concatenated 4*width vector instead of each patch."""

    config: mlc.ConfigDict
    postshuffle_norm: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c, v = self.config, self.config.vision
        dt, pdt = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        group = v.spatial_merge_size ** 2
        width = v.hidden_size * group
        if self.postshuffle_norm:
            x = layers.LayerNorm(1e-6, "vision_merged", pdt, name="norm")(x.reshape(-1, width))
        else:
            x = layers.LayerNorm(1e-6, "vision_embed", pdt, name="norm")(x).reshape(-1, width)
        x = layers.Dense(width, ("vision_merged", "vision_merged_mlp"), dtype=dt, param_dtype=pdt, name="fc1")(x)
        x = layers.gelu_exact(x)
        x = layers.Dense(c.text.hidden_size, ("vision_merged_mlp", "embed"), dtype=dt, param_dtype=pdt,
                         init_scale=c.merger_out_init_scale, name="fc2")(x)
        return layers.constrain(x, ("vision_tokens", "embed"))


class Resampler(nn.Module):
    """Qwen-VL (v1) connector, for ablation: one cross-attention layer in which
    `resampler_num_queries` learnable queries attend to one image's (or frame's) ViT features,
    with 2D sin-cos positions added to queries and keys. Each grid entry (an image, or a whole
    video clip) becomes `resampler_num_queries` tokens regardless of its resolution."""

    config: mlc.ConfigDict

    @nn.compact
    def __call__(self, x: jnp.ndarray, lay: dict, num_entries: int) -> jnp.ndarray:
        c, v = self.config, self.config.vision
        dt, pdt = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        nq = c.resampler_num_queries
        side = int(round(nq ** 0.5))
        d = v.hidden_size
        heads = v.num_heads
        queries = self.param("queries", layers.param_init(layers.DEFAULT_INIT, ("vision_queries", "vision_embed")),
                             (nq, d), pdt)
        kv = layers.LayerNorm(1e-6, "vision_embed", pdt, name="ln_kv")(x)
        q = layers.LayerNorm(1e-6, "vision_embed", pdt, name="ln_q")(queries.astype(dt))
        qi = jnp.arange(nq)
        q = q + rope.sincos_2d(qi // side, qi % side, d).astype(dt)
        # Keys get positions on the query grid's scale, so any resolution lines up with the queries.
        kr = lay["row"].astype(jnp.float32) * side / lay["height"]
        kc = lay["col"].astype(jnp.float32) * side / lay["width"]
        k_in = kv + rope.sincos_2d(kr, kc, d).astype(dt)
        def project(name, a):
            out = layers.Dense(d, ("vision_embed", "vision_heads"), dtype=dt, param_dtype=pdt, name=name)(a)
            return out.reshape(1, -1, heads, d // heads)

        qh, kh, vh = project("q_proj", q), project("k_proj", k_in), project("v_proj", kv)
        # One query set per grid entry (image or video clip), masked to that entry's patches.
        qh = jnp.tile(qh, (1, num_entries, 1, 1))
        q_entry = jnp.repeat(jnp.arange(1, num_entries + 1), nq)[None]
        mask = q_entry[:, :, None] == lay["entry"][None, None, :]
        out = dot_product_attention(qh, kh, vh, mask=mask, impl="xla")[0].reshape(num_entries * nq, d)
        out = layers.Dense(d, ("vision_heads", "vision_embed"), dtype=dt, param_dtype=pdt, name="o_proj")(out)
        out = layers.LayerNorm(1e-6, "vision_embed", pdt, name="ln_post")(out)
        return layers.Dense(c.text.hidden_size, ("vision_embed", "embed"), dtype=dt, param_dtype=pdt,
                            name="proj")(out)

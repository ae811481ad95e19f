"""Qwen3 decoder: pre-norm RMSNorm, GQA with per-head RMSNorm on q and k, SwiGLU or MoE,
MRoPE, a KV cache for decoding, and the DeepStack hook that adds visual features to the
hidden states after each of the first N layers at the visual-token positions."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc

from vlm_jax.kernels.attention import dot_product_attention
from vlm_jax.model import layers, rope
from vlm_jax.model.moe import MoE
from vlm_jax.parallel import context


class Attention(nn.Module):
    config: mlc.ConfigDict

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids, cache=None, cache_index=None, cache_segment_ids=None):
        c, t = self.config, self.config.text
        dt, pdt = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        b, s, _ = x.shape
        hd = t.head_dim

        def proj(n, axis, name):
            return layers.Dense(n * hd, ("embed", axis), use_bias=False, dtype=dt, param_dtype=pdt, name=name)(x)

        q = proj(t.num_heads, "heads", "q_proj").reshape(b, s, t.num_heads, hd)
        k = proj(t.num_kv_heads, "kv_heads", "k_proj").reshape(b, s, t.num_kv_heads, hd)
        v = proj(t.num_kv_heads, "kv_heads", "v_proj").reshape(b, s, t.num_kv_heads, hd)
        q = layers.RMSNorm(t.rms_norm_eps, "head_dim", pdt, name="q_norm")(q)
        k = layers.RMSNorm(t.rms_norm_eps, "head_dim", pdt, name="k_norm")(k)
        q, k = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)
        q = layers.constrain(q, ("batch", "seq", "q_heads", "head_dim"))

        if cache is None:
            # Plain dot_product_attention unless the mesh splits the sequence and context_parallel is set.
            out = context.context_parallel_attention(q, k, v, segment_ids, strategy=c.context_parallel,
                                                     load_balanced=c.context_parallel_load_balance,
                                                     impl=c.attention_impl)
            new_cache = None
        else:
            # Write this block's keys/values at [cache_index, cache_index + s) of a fixed-size cache.
            ck = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, cache_index, 0, 0))
            cv = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, cache_index, 0, 0))
            q_pos = jnp.broadcast_to(cache_index + jnp.arange(s), (b, s))
            kv_pos = jnp.broadcast_to(jnp.arange(ck.shape[1]), (b, ck.shape[1]))
            out = dot_product_attention(q, ck.astype(dt), cv.astype(dt), q_segment_ids=segment_ids,
                                        kv_segment_ids=cache_segment_ids, causal=True, q_positions=q_pos,
                                        kv_positions=kv_pos, impl=c.attention_impl)
            new_cache = dict(k=ck, v=cv)
        out = out.reshape(b, s, t.num_heads * hd)
        out = layers.Dense(t.hidden_size, ("heads", "embed"), use_bias=False, dtype=dt, param_dtype=pdt,
                           name="o_proj")(out)
        return out, new_cache


class MLP(nn.Module):
    config: mlc.ConfigDict

    @nn.compact
    def __call__(self, x):
        c, t = self.config, self.config.text
        dt, pdt = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        dense = lambda n, axes, name: layers.Dense(n, axes, use_bias=False, dtype=dt, param_dtype=pdt, name=name)
        h = jax.nn.silu(dense(t.intermediate_size, ("embed", "mlp"), "gate_proj")(x))
        h = h * dense(t.intermediate_size, ("embed", "mlp"), "up_proj")(x)
        h = layers.constrain(h, ("batch", "seq", "mlp"))
        return dense(t.hidden_size, ("mlp", "embed"), "down_proj")(h)


class DecoderLayer(nn.Module):
    """One layer; the scan carry is the hidden state, `layer_index` comes in as a scanned input."""

    config: mlc.ConfigDict

    @nn.compact
    def __call__(self, x, layer_index, cache, cos, sin, segment_ids, cache_index, cache_segment_ids, deepstack,
                 visual_index, visual_mask):
        c, t = self.config, self.config.text
        pdt = layers.dtype_of(c.param_dtype)
        h = layers.RMSNorm(t.rms_norm_eps, "embed", pdt, name="input_norm")(x)
        h, new_cache = Attention(c, name="attn")(h, cos, sin, segment_ids, cache, cache_index, cache_segment_ids)
        x = x + h
        h = layers.RMSNorm(t.rms_norm_eps, "embed", pdt, name="post_attn_norm")(x)
        if t.num_experts:
            valid = jnp.ones(x.shape[:2], bool) if segment_ids is None else segment_ids != 0
            h, stats = MoE(c, name="moe")(h, valid)
        else:
            h, stats = MLP(c, name="mlp")(h), None
        x = layers.constrain(x + h, ("batch", "seq", "embed"))

        if deepstack is not None:
            levels = deepstack.shape[0]

            def inject(x):
                feats = jax.lax.dynamic_index_in_dim(deepstack, jnp.minimum(layer_index, levels - 1), 0, False)
                return x + jnp.where(visual_mask[..., None], feats[visual_index], 0).astype(x.dtype)

            x = jax.lax.cond(layer_index < levels, inject, lambda x: x, x)
        return x, (new_cache, stats)


class Decoder(nn.Module):
    """The stack of decoder layers (one nn.scan) and the final norm.

    `cache` (decoding): {"k", "v": [L, B, S_max, K, head_dim], "segment_ids": [B, S_max]}; the
    block is written at `cache_index` and the updated cache is returned.
    """

    config: mlc.ConfigDict

    @nn.compact
    def __call__(self, x, position_ids, segment_ids=None, deepstack=None, visual_index=None, visual_mask=None,
                 cache=None, cache_index=None):
        c, t = self.config, self.config.text
        cos, sin = rope.mrope_cos_sin(position_ids, t.head_dim, t.rope_theta, t.mrope_section, t.mrope_layout,
                                      t.rope_scaling)
        dt = layers.dtype_of(c.dtype)
        cos, sin = cos.astype(dt), sin.astype(dt)
        kv_cache, cache_seg = None, None
        if cache is not None:
            if segment_ids is None:
                segment_ids = jnp.ones(x.shape[:2], jnp.int32)
            cache_seg = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids.astype(jnp.int32),
                                                     (0, cache_index))
            kv_cache = dict(k=cache["k"], v=cache["v"])
        # Load-balanced context parallelism: the layers see each row in `reorder_sequence` order, so every
        # shard of the sequence axis holds an early and a late chunk; the output goes back to row order.
        # Here rather than in the pipeline: the visual tokens were spliced in row order (k-th placeholder).
        cp = 1
        if cache is None and c.context_parallel_load_balance:
            cp = context.sequence_shards(c.context_parallel)
        if cp > 1:
            x, cos, sin, segment_ids, visual_index, visual_mask = (
                None if a is None else context.reorder_sequence(a, cp)
                for a in (x, cos, sin, segment_ids, visual_index, visual_mask))
            x = layers.constrain(x, ("batch", "seq", "embed"))
        layer = layers.maybe_remat(DecoderLayer, c.remat_policy)
        stack = nn.scan(
            layer, variable_axes={"params": 0}, split_rngs={"params": True},
            in_axes=(0, 0) + (nn.broadcast,) * 8,
            length=t.num_layers, unroll=min(c.scan_unroll, t.num_layers), metadata_params={nn.PARTITION_NAME: "layers"})
        x, (new_cache, stats) = stack(c, name="layers")(
            x, jnp.arange(t.num_layers), kv_cache, cos, sin, segment_ids, cache_index, cache_seg, deepstack,
            visual_index, visual_mask)
        if new_cache is not None:
            new_cache = dict(new_cache, segment_ids=cache_seg)
        x = layers.RMSNorm(t.rms_norm_eps, "embed", layers.dtype_of(c.param_dtype), name="final_norm")(x)
        if cp > 1:
            x = layers.constrain(context.inverse_reorder_sequence(x, cp), ("batch", "seq", "embed"))
        if stats is not None:
            stats = jax.tree.map(lambda a: jnp.sum(a, axis=0), stats)
        return x, new_cache, stats

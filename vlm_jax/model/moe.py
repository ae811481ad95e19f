"""Mixture-of-experts SwiGLU layer: softmax router, top-k, (re)normalised weights, experts.

`ragged` sorts the token copies by expert and runs the experts as grouped matmuls
(`jax.lax.ragged_dot`), so compute scales with k, not with the number of experts.
`dense` runs every expert on every token and is the simple reference used in tests.
`expert_parallel` sends the token copies to the devices holding their experts and back
(`vlm_jax/parallel/expert.py`), optionally bounded by a capacity factor.
The grouped matmul of `ragged` and `expert_parallel` is `text.moe_gmm` (`grouped_matmul.py`).
The layer also returns the statistics of the Switch-style load-balancing loss, summed over
valid tokens, so the loss can be formed over all layers at once (`load_balancing_loss`), and
the number of valid token copies dropped by the capacity bound (`dropped_copies`, 0 when dropless).
Routing and statistics run on the whole (globally sharded) batch under every implementation.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc

from vlm_jax.model import layers
from vlm_jax.model.grouped_matmul import grouped_matmul
from vlm_jax.parallel import expert


class MoE(nn.Module):
    config: mlc.ConfigDict

    @nn.compact
    def __call__(self, x: jnp.ndarray, valid: jnp.ndarray):
        c, t = self.config, self.config.text
        dt, pdt = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        e, k, inter, d = t.num_experts, t.num_experts_per_tok, t.moe_intermediate_size, t.hidden_size
        shape = x.shape
        tokens = x.reshape(-1, d)
        router = self.param("router", layers.param_init(layers.DEFAULT_INIT, ("embed", None)), (d, e), pdt)
        logits = jnp.einsum("td,de->te", tokens, router.astype(dt))
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        top_w, top_i = jax.lax.top_k(probs, k)
        if t.norm_topk_prob:
            top_w = top_w / jnp.sum(top_w, axis=-1, keepdims=True)
        top_w = top_w.astype(dt)

        init = layers.DEFAULT_INIT
        wi_gate = self.param("wi_gate", layers.param_init(init, ("expert", "embed", "mlp")), (e, d, inter), pdt)
        wi_up = self.param("wi_up", layers.param_init(init, ("expert", "embed", "mlp")), (e, d, inter), pdt)
        wo = self.param("wo", layers.param_init(init, ("expert", "mlp", "embed")), (e, inter, d), pdt)
        wi_gate, wi_up, wo = (w.astype(dt) for w in (wi_gate, wi_up, wo))
        dropped = jnp.zeros((), jnp.int32)
        if t.moe_impl == "dense":
            out = _dense_experts(tokens, top_i, top_w, wi_gate, wi_up, wo)
        elif t.moe_impl == "ragged":
            out = _ragged_experts(tokens, top_i, top_w, wi_gate, wi_up, wo, t.moe_gmm)
        else:
            rows = shape[:-1] + (k,)
            out, dropped = expert.expert_parallel_ffn(
                x, valid.astype(bool), top_i.reshape(rows), top_w.reshape(rows), wi_gate, wi_up, wo,
                gmm_impl=t.moe_gmm, capacity_factor=t.moe_capacity_factor)

        v = valid.reshape(-1).astype(jnp.float32)
        counts = jnp.sum(jax.nn.one_hot(top_i, e, dtype=jnp.float32).sum(1) * v[:, None], axis=0)
        prob_sum = jnp.sum(probs * v[:, None], axis=0)
        stats = dict(expert_counts=counts, router_prob_sum=prob_sum, tokens=jnp.sum(v),
                     dropped_copies=dropped.astype(jnp.float32))
        return out.reshape(shape), stats


def _dense_experts(x, top_i, top_w, wi_gate, wi_up, wo):
    e = wi_gate.shape[0]
    combine = jnp.sum(jax.nn.one_hot(top_i, e, dtype=x.dtype) * top_w[..., None], axis=1)  # [T, E]
    h = jax.nn.silu(jnp.einsum("td,edi->tei", x, wi_gate)) * jnp.einsum("td,edi->tei", x, wi_up)
    return jnp.einsum("tei,eid,te->td", h, wo, combine)


def _ragged_experts(x, top_i, top_w, wi_gate, wi_up, wo, gmm_impl="ragged_dot"):
    t, k = top_i.shape
    e = wi_gate.shape[0]
    flat_expert = top_i.reshape(-1)
    order = jnp.argsort(flat_expert, stable=True)
    xs = x[order // k]
    group_sizes = jnp.bincount(flat_expert, length=e).astype(jnp.int32)
    gmm = lambda a, w: grouped_matmul(a, w, group_sizes, gmm_impl)
    h = jax.nn.silu(gmm(xs, wi_gate)) * gmm(xs, wi_up)
    ys = gmm(h, wo)
    ys = jnp.zeros_like(ys).at[order].set(ys).reshape(t, k, -1)
    return jnp.sum(ys * top_w[..., None], axis=1)


def load_balancing_loss(stats: dict, num_experts: int) -> jnp.ndarray:
    """Switch-Transformer auxiliary loss from statistics summed over layers:
    E * sum_e (fraction of routed copies to e) * (mean router probability of e)."""
    n = jnp.maximum(stats["tokens"], 1.0)
    return num_experts * jnp.sum((stats["expert_counts"] / n) * (stats["router_prob_sum"] / n))

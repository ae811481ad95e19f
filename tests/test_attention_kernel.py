"""The fused attention (custom VJP, recomputed probabilities) against the plain-jnp reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.kernels import attention as attn


def _inputs(b, t, s, h, kh, d, seed=0):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(b, t, h, d)), jnp.float32)
    k = jnp.asarray(r.normal(size=(b, s, kh, d)), jnp.float32)
    v = jnp.asarray(r.normal(size=(b, s, kh, d)), jnp.float32)
    w = jnp.asarray(r.normal(size=(b, t, h, d)), jnp.float32)
    return q, k, v, w


def _segments(b, t):
    seg = np.ones((b, t), np.int32)
    seg[0, 7:] = 2   # a boundary inside a row
    seg[0, 23:] = 3
    seg[0, 31:] = 0  # trailing padding: fully masked query rows
    seg[1, :5] = 0   # leading padding
    return jnp.asarray(seg)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
def test_values_and_gradients_match_reference(causal, heads):
    h, kh = heads
    b, t, d = 2, 37, 8
    q, k, v, w = _inputs(b, t, t, h, kh, d)
    mask = attn.attention_mask(_segments(b, t), None, causal=causal, t=t, s=t)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * w)

    chex.assert_trees_all_close(attn._fused_attention(q, k, v, mask), attn.reference_attention(q, k, v, mask),
                                atol=1e-5)
    got = jax.grad(loss(attn._fused_attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(attn.reference_attention), argnums=(0, 1, 2))(q, k, v)
    chex.assert_trees_all_close(got, want, atol=1e-5)


def test_kv_cache_shape_and_no_mask():
    # Decoding: a short query block against a longer key buffer, and the unmasked case.
    q, k, v, w = _inputs(2, 3, 11, 4, 2, 8, seed=1)
    for mask in (None, attn.attention_mask(None, None, causal=True, t=3, s=11)):
        loss = lambda fn, mask=mask: lambda q, k, v: jnp.sum(fn(q, k, v, mask) * w)
        chex.assert_trees_all_close(attn._fused_attention(q, k, v, mask), attn.reference_attention(q, k, v, mask),
                                    atol=1e-5)
        chex.assert_trees_all_close(jax.grad(loss(attn._fused_attention), argnums=(0, 1, 2))(q, k, v),
                                    jax.grad(loss(attn.reference_attention), argnums=(0, 1, 2))(q, k, v), atol=1e-5)


def test_fully_masked_rows_average_values_like_the_reference():
    q, k, v, _ = _inputs(1, 4, 4, 2, 2, 8, seed=2)
    mask = jnp.zeros((1, 4, 4), bool)
    out = attn._fused_attention(q, k, v, mask)
    np.testing.assert_allclose(out[0, 0], jnp.mean(v[0], axis=0), atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda v: jnp.sum(attn._fused_attention(q, k, v, mask)))(v))))


def test_dot_product_attention_matches_reference():
    # The public entry point (impl "xla", the fused kernel) gives the reference values.
    q, k, v, _ = _inputs(2, 9, 9, 4, 2, 8, seed=3)
    seg = jnp.asarray([[1] * 5 + [2] * 4, [1] * 9])
    got = attn.dot_product_attention(q, k, v, q_segment_ids=seg, causal=True)
    mask = attn.attention_mask(seg, None, causal=True, t=9, s=9)
    chex.assert_trees_all_close(got, attn.reference_attention(q, k, v, mask), atol=1e-5)


def test_causal_chunks_skip_only_masked_blocks():
    # Long enough for the query-chunked causal path (rows cut off chunk edges, GQA, padding).
    b, t, h, kh, d = 2, 2 * attn.CAUSAL_CHUNK + 45, 4, 2, 8
    q, k, v, w = _inputs(b, t, t, h, kh, d, seed=4)
    seg = np.ones((b, t), np.int32)
    seg[0, 100:] = 2
    seg[0, 200:] = 3
    seg[1, t - 30:] = 0
    seg = jnp.asarray(seg)
    mask = attn.attention_mask(seg, None, causal=True, t=t, s=t)

    def chunked(q, k, v):
        return attn.dot_product_attention(q, k, v, q_segment_ids=seg, causal=True)

    def reference(q, k, v):
        return attn.reference_attention(q, k, v, mask)

    chex.assert_trees_all_close(chunked(q, k, v), reference(q, k, v), atol=1e-5)
    grads = [jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * w), argnums=(0, 1, 2))(q, k, v)
             for f in (chunked, reference)]
    chex.assert_trees_all_close(grads[0], grads[1], atol=1e-5)

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


@pytest.mark.slow  # 15 s on 2 cores; `pytest -m slow` runs it
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


def _packed_rows(b, t, lengths, seed):
    """Rows packed with samples of the given lengths (cycled), then trailing padding."""
    seg = np.zeros((b, t), np.int32)
    r = np.random.default_rng(seed)
    for row in range(b):
        pos, sid = 0, 1
        while pos < t - 20:
            n = int(r.choice(lengths))
            seg[row, pos:min(pos + n, t - 20)] = sid
            pos, sid = pos + n, sid + 1
    return jnp.asarray(seg)


@pytest.mark.parametrize("lengths,fits", [((5, 40, 90), True), ((5, 40, 150), False)])
def test_packed_rows_look_back_one_window_only(lengths, fits):
    # Packed samples no longer than the window minus a chunk take the windowed path; one longer
    # sample sends the batch down the causal-chunked path. Both equal the reference, gradients too.
    b, t, h, kh, d = 2, 3 * attn.PACKED_WINDOW + 17, 4, 2, 8
    q, k, v, w = _inputs(b, t, t, h, kh, d, seed=5)
    seg = _packed_rows(b, t, lengths, seed=6)
    assert bool(attn._packed_fits(seg, attn.PACKED_CHUNK, attn.PACKED_WINDOW)) == fits
    mask = attn.attention_mask(seg, None, causal=True, t=t, s=t)
    # Padding queries (segment 0) attend to nothing useful and their outputs are never read, so
    # they are compared as the model uses them: not at all (each path averages a different span).
    valid = (seg != 0)[:, :, None, None]

    def packed(q, k, v):
        return attn.dot_product_attention(q, k, v, q_segment_ids=seg, causal=True) * valid

    def reference(q, k, v):
        return attn.reference_attention(q, k, v, mask) * valid

    chex.assert_trees_all_close(jax.jit(packed)(q, k, v), reference(q, k, v), atol=1e-5)
    grads = [jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * w), argnums=(0, 1, 2)))(q, k, v)
             for f in (packed, reference)]
    chex.assert_trees_all_close(grads[0], grads[1], atol=1e-5)


def test_packed_fits_checks_where_each_chunks_sample_began():
    c, win = attn.PACKED_CHUNK, attn.PACKED_WINDOW
    t = 8 * c
    # Chunk i (first query at i*c) sees keys from (i+1)*c - win on. A sample that covers chunk 4's
    # first query (4c) fits when it began at 5c - win or later, one token earlier it does not.
    edge = 5 * c - win

    def row(begin, end):
        seg = np.full((1, t), 3, np.int32)
        seg[0, :begin] = 1
        seg[0, begin:end] = 2
        return jnp.asarray(seg)

    assert bool(attn._packed_fits(row(edge, 4 * c + 1), c, win))
    assert not bool(attn._packed_fits(row(edge - 1, 4 * c + 1), c, win))
    # Padding queries attend to nothing useful: a long run of padding is never a reason to fall back.
    assert bool(attn._packed_fits(jnp.zeros((1, t), jnp.int32), c, win))

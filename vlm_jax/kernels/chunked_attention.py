"""Flash-style attention in plain JAX: memory linear in the sequence length, on any platform.

Queries are cut into chunks of `block_q` rows and keys/values into blocks of `block_kv`; each
query chunk runs a `lax.scan` over the key blocks with an online softmax (running max, running
sum and float32 output accumulators), so no [T, S] buffer is ever built. The custom VJP keeps only
q, k, v, the output and each row's logsumexp, and the backward recomputes the probabilities block
by block (FlashAttention-2), accumulating dk/dv over query chunks in float32.

A block pair whose mask is empty (future keys under `causal`, or no shared segment in packed rows)
is skipped by a `lax.cond`, in both passes: causal self-attention does about half the work, and
packing many short samples makes the work nearly block-diagonal.

Semantics are `attention.attention_mask`'s (segment 0 is padding and is never attended; positions
default to the query block ending where the keys end), except that a query that can attend to
nothing (a padding query) outputs zeros rather than `reference_attention`'s uniform average, and
passes no gradient. GQA is native: query heads are grouped [K, G] against K key/value heads, so
K/V are never repeated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vlm_jax.kernels.padding import pad_sequence

# Block sizes along the query and key sequences (clipped to the lengths). Per block pair the
# buffers are [B, H, block_q, block_kv] float32; 512 keeps the scans short on CPU and TPU alike.
BLOCK_Q = 512
BLOCK_KV = 512


def chunked_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    q_segment_ids: jnp.ndarray | None = None,
    kv_segment_ids: jnp.ndarray | None = None,
    causal: bool = False,
    q_positions: jnp.ndarray | None = None,
    kv_positions: jnp.ndarray | None = None,
    block_q: int = BLOCK_Q,
    block_kv: int = BLOCK_KV,
) -> jnp.ndarray:
    """Attention of q [B, T, H, D] over k/v [B, S, K, D] (H a multiple of K), [B, T, H, D] out.

    Segment ids [B, T] / [B, S] (kv defaults to q's, which then needs T == S); positions [B or 1, T]
    / [B or 1, S] are used when `causal` (defaults: `arange(S - T, S)` and `arange(S)`). Lengths
    need not be multiples of the blocks (they are padded internally with segment 0)."""
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k {k.shape} and v {v.shape} must both be [B={b}, S, K, D={d}]")
    if h % kh:
        raise ValueError(f"{h} query heads is not a multiple of {kh} key/value heads")
    if block_q < 1 or block_kv < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_kv={block_kv}")
    if q_segment_ids is None:
        if kv_segment_ids is not None:
            raise ValueError("kv_segment_ids given without q_segment_ids")
        q_seg, kv_seg = jnp.ones((b, t), jnp.int32), jnp.ones((b, s), jnp.int32)
    else:
        if kv_segment_ids is None and t != s:
            raise ValueError(f"q_segment_ids alone need T == S (self-attention), got T={t}, S={s}")
        q_seg = q_segment_ids
        kv_seg = q_segment_ids if kv_segment_ids is None else kv_segment_ids
    q_pos = jnp.arange(s - t, s)[None] if q_positions is None else q_positions
    kv_pos = jnp.arange(s)[None] if kv_positions is None else kv_positions
    q_pos, kv_pos = jnp.broadcast_to(q_pos, (b, t)), jnp.broadcast_to(kv_pos, (b, s))

    bq, bk = min(block_q, t), min(block_kv, s)
    nq, nk = -(-t // bq), -(-s // bk)
    g = h // kh
    # Block-major layouts: [nq, B, K, G, bq, D] queries, [nk, B, K, bk, D] keys/values, [n, B, blk] ids.
    qb = pad_sequence(q, nq * bq).reshape(b, nq, bq, kh, g, d).transpose(1, 0, 3, 4, 2, 5)
    kb, vb = (pad_sequence(x, nk * bk).reshape(b, nk, bk, kh, d).transpose(1, 0, 3, 2, 4) for x in (k, v))
    rows = lambda x, n, blk: pad_sequence(x.astype(jnp.int32), n * blk).reshape(b, n, blk).transpose(1, 0, 2)
    out = _flash(qb, kb, vb, rows(q_seg, nq, bq), rows(kv_seg, nk, bk), rows(q_pos, nq, bq),
                 rows(kv_pos, nk, bk), causal)
    return out.transpose(1, 0, 4, 2, 3, 5).reshape(b, nq * bq, h, d)[:, :t]


def _block_mask(qs, qp, ks, kp, causal):
    """[B, 1, 1, bq, bk]: same non-zero segment, and (causal) the key not after the query."""
    m = (qs[:, :, None] == ks[:, None, :]) & (ks[:, None, :] != 0)
    if causal:
        m &= kp[:, None, :] <= qp[:, :, None]
    return m[:, None, None]


def _logits(qc, kbj, mask):
    s = jnp.einsum("bkgtd,bksd->bkgts", qc, kbj, preferred_element_type=jnp.float32) * (qc.shape[-1] ** -0.5)
    return jnp.where(mask, s, -jnp.inf)


def _forward(qb, kb, vb, qs, ks, qp, kp, causal):
    """(out [nq, B, K, G, bq, D], logsumexp [nq, B, K, G, bq] float32; 0 on rows that attend to nothing)."""

    def chunk(xs):
        qc, qsc, qpc = xs
        stats = qc.shape[:-1]

        def block(carry, ys):
            kbj, vbj, ksj, kpj = ys
            mask = _block_mask(qsc, qpc, ksj, kpj, causal)

            def update(carry):
                m, row_sum, acc = carry
                s = _logits(qc, kbj, mask)
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                # A row with nothing attended so far keeps max -inf: shift by 0 so exp gives 0, not NaN.
                m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
                p = jnp.exp(s - m_safe[..., None])
                alpha = jnp.exp(m - m_safe)
                pv = jnp.einsum("bkgts,bksd->bkgtd", p.astype(vbj.dtype), vbj, preferred_element_type=jnp.float32)
                return m_new, alpha * row_sum + jnp.sum(p, axis=-1), alpha[..., None] * acc + pv

            return jax.lax.cond(jnp.any(mask), update, lambda c: c, carry), None

        init = (jnp.full(stats, -jnp.inf, jnp.float32), jnp.zeros(stats, jnp.float32),
                jnp.zeros(qc.shape, jnp.float32))
        (m, row_sum, acc), _ = jax.lax.scan(block, init, (kb, vb, ks, kp))
        empty = row_sum == 0.0
        row_sum = jnp.where(empty, 1.0, row_sum)
        return (acc / row_sum[..., None]).astype(qc.dtype), jnp.where(empty, 0.0, m + jnp.log(row_sum))

    return jax.lax.map(chunk, (qb, qs, qp))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _flash(qb, kb, vb, qs, ks, qp, kp, causal):
    return _forward(qb, kb, vb, qs, ks, qp, kp, causal)[0]


def _flash_fwd(qb, kb, vb, qs, ks, qp, kp, causal):
    out, lse = _forward(qb, kb, vb, qs, ks, qp, kp, causal)
    return out, (qb, kb, vb, qs, ks, qp, kp, out, lse)


def _flash_bwd(causal, res, dout):
    qb, kb, vb, qs, ks, qp, kp, out, lse = res
    scale = qb.shape[-1] ** -0.5
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

    def chunk(dkv, xs):
        qc, qsc, qpc, doc, lsec, dc = xs

        def block(dq, ys):
            kbj, vbj, ksj, kpj = ys
            mask = _block_mask(qsc, qpc, ksj, kpj, causal)

            def grads(dq):
                p = jnp.exp(_logits(qc, kbj, mask) - lsec[..., None])  # masked logits are -inf: p = 0
                dv = jnp.einsum("bkgts,bkgtd->bksd", p.astype(vbj.dtype), doc, preferred_element_type=jnp.float32)
                dp = jnp.einsum("bkgtd,bksd->bkgts", doc, vbj, preferred_element_type=jnp.float32)
                ds = (p * (dp - dc[..., None]) * scale).astype(qc.dtype)
                dq = dq + jnp.einsum("bkgts,bksd->bkgtd", ds, kbj, preferred_element_type=jnp.float32)
                dk = jnp.einsum("bkgts,bkgtd->bksd", ds, qc, preferred_element_type=jnp.float32)
                return dq, (dk, dv)

            def skip(dq):
                zeros = jnp.zeros(kbj.shape, jnp.float32)
                return dq, (zeros, zeros)

            return jax.lax.cond(jnp.any(mask), grads, skip, dq)

        dq, (dk, dv) = jax.lax.scan(block, jnp.zeros(qc.shape, jnp.float32), (kb, vb, ks, kp))
        return (dkv[0] + dk, dkv[1] + dv), dq.astype(qc.dtype)

    zeros = jnp.zeros(kb.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(chunk, (zeros, zeros), (qb, qs, qp, dout, lse, delta))
    return dq, dk.astype(kb.dtype), dv.astype(vb.dtype), None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)

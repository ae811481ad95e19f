"""Dot-product attention with segment ids (packing) and causal masks.

`xla` is the reference: plain einsums, float32 softmax, runs everywhere (CPU tests).
`cudnn` hands the same mask to `jax.nn.dot_product_attention`'s cuDNN path on GPUs.
All implementations take q [B, T, H, D], k/v [B, S, K, D] with H a multiple of K (GQA).

`segment_attention` is the ViT's: one flat sequence of many short segments (frames), where a
dense [P, P] mask spends almost all its work on pairs that are masked out. With `block` > 0 it
attends each block of `block` queries to its own and the two neighbouring key blocks, which is
exact whenever no segment is longer than `block` (a segment that holds a query then lies within
those three blocks); when some segment is longer, a `lax.cond` takes the dense path instead, so
the result is exact either way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn")


def attention_mask(
    q_segment_ids: jnp.ndarray | None,
    kv_segment_ids: jnp.ndarray | None,
    *,
    causal: bool,
    q_positions: jnp.ndarray | None = None,
    kv_positions: jnp.ndarray | None = None,
    t: int,
    s: int,
) -> jnp.ndarray | None:
    """Boolean [B or 1, T, S]: same non-zero segment, and kv before q when causal.

    Positions are indices into the key/value sequence (the KV cache slot when decoding);
    they default to `arange`, i.e. the query block ends where the keys end.
    """
    mask = None
    if q_segment_ids is not None:
        kv = q_segment_ids if kv_segment_ids is None else kv_segment_ids
        mask = (q_segment_ids[:, :, None] == kv[:, None, :]) & (kv[:, None, :] != 0)
    if causal:
        qp = jnp.arange(s - t, s)[None] if q_positions is None else q_positions
        kp = jnp.arange(s)[None] if kv_positions is None else kv_positions
        c = kp[:, None, :] <= qp[:, :, None]
        mask = c if mask is None else mask & c
    return mask


def dot_product_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    q_segment_ids: jnp.ndarray | None = None,
    kv_segment_ids: jnp.ndarray | None = None,
    causal: bool = False,
    q_positions: jnp.ndarray | None = None,
    kv_positions: jnp.ndarray | None = None,
    mask: jnp.ndarray | None = None,
    impl: str = "xla",
) -> jnp.ndarray:
    """Scaled dot-product attention, [B, T, H, D] out. `mask` [B, T, S] overrides the segment mask."""
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    if h % kh:
        raise ValueError(f"{h} query heads is not a multiple of {kh} key/value heads")
    if mask is None:
        mask = attention_mask(q_segment_ids, kv_segment_ids, causal=causal, q_positions=q_positions,
                              kv_positions=kv_positions, t=t, s=s)
    if impl == "xla":
        return _xla_attention(q, k, v, mask)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(
            q, k, v, mask=None if mask is None else mask[:, None], implementation="cudnn")
    raise ValueError(f"unknown attention impl {impl!r}; choose from {IMPLS}")


def _xla_attention(q, k, v, mask):
    b, t, h, d = q.shape
    kh = k.shape[2]
    g = h // kh
    qg = q.reshape(b, t, kh, g, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    logits = logits * (d ** -0.5)
    if mask is not None:
        # A large finite negative keeps fully masked rows (padding queries) finite.
        logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def segment_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segment_ids: jnp.ndarray, *,
                      block: int = 0, impl: str = "xla") -> jnp.ndarray:
    """Bidirectional attention within segments of one flat sequence: q/k/v [P, H, D], segment_ids
    [P] (0 = padding, attends to nothing useful). Returns [P, H, D]. See the module docstring for `block`."""
    if not block or block >= q.shape[0]:
        return _dense_segment_attention(q, k, v, segment_ids, impl)
    return _blocked_segment_attention(q, k, v, segment_ids, block, impl)


def _dense_segment_attention(q, k, v, seg, impl):
    return dot_product_attention(q[None], k[None], v[None], q_segment_ids=seg[None], impl=impl)[0]


def _local_segment_attention(q, k, v, seg, block, impl):
    p, h, d = q.shape
    n = -(-p // block)
    pad = n * block - p
    q, k, v = (jnp.pad(a, ((0, pad), (0, 0), (0, 0))) for a in (q, k, v))
    seg = jnp.pad(seg, (0, pad))

    def neighbours(a):
        # Block i's keys: blocks i-1, i, i+1 of `a` (zero / segment-0 blocks beyond the ends).
        a = jnp.pad(a, ((block, block),) + ((0, 0),) * (a.ndim - 1))
        parts = [a[j * block:(j + n) * block].reshape(n, block, *a.shape[1:]) for j in range(3)]
        return jnp.concatenate(parts, axis=1)

    seg_q, seg_k = seg.reshape(n, block), neighbours(seg)
    mask = (seg_q[:, :, None] == seg_k[:, None, :]) & (seg_k[:, None, :] != 0)
    out = dot_product_attention(q.reshape(n, block, h, d), neighbours(k), neighbours(v), mask=mask, impl=impl)
    return out.reshape(n * block, h, d)[:p]


def _fits(seg, block):
    """Whether no non-padding segment (a run of equal ids) is longer than `block`."""
    starts = jnp.concatenate([jnp.ones((1,), bool), seg[1:] != seg[:-1]])
    run_id = jnp.cumsum(starts) - 1
    # Padding (segment 0) attends to nothing useful, so its runs may be any length.
    lengths = jnp.zeros_like(seg).at[run_id].add((seg != 0).astype(seg.dtype))
    return jnp.max(lengths) <= block


def _branches(block, impl):
    return (lambda q, k, v, s: _dense_segment_attention(q, k, v, s, impl),
            lambda q, k, v, s: _local_segment_attention(q, k, v, s, block, impl))


# A custom VJP, because differentiating a `lax.cond` makes both branches' residuals outputs of
# the forward pass: the dense branch's [P, P] buffers would be allocated (zero-filled) on every
# step even when the blocked branch runs. Here the forward keeps only q, k, v and the backward
# recomputes the taken branch (as flash attention does).
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blocked_segment_attention(q, k, v, seg, block, impl):
    return jax.lax.cond(_fits(seg, block), _branches(block, impl)[1], _branches(block, impl)[0], q, k, v, seg)


def _blocked_fwd(q, k, v, seg, block, impl):
    return _blocked_segment_attention(q, k, v, seg, block, impl), (q, k, v, seg)


def _blocked_bwd(block, impl, res, g):
    q, k, v, seg = res

    def grad_of(fn):
        return lambda q, k, v, seg: jax.vjp(lambda q, k, v: fn(q, k, v, seg), q, k, v)[1](g)

    dense, local = _branches(block, impl)
    dq, dk, dv = jax.lax.cond(_fits(seg, block), grad_of(local), grad_of(dense), q, k, v, seg)
    return dq, dk, dv, None


_blocked_segment_attention.defvjp(_blocked_fwd, _blocked_bwd)

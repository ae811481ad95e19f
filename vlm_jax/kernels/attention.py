"""Dot-product attention with segment ids (packing) and causal masks.

`xla` is the reference: plain einsums, float32 softmax, runs everywhere (CPU tests).
`cudnn` hands the same mask to `jax.nn.dot_product_attention`'s cuDNN path on GPUs.
All implementations take q [B, T, H, D], k/v [B, S, K, D] with H a multiple of K (GQA).
"""

from __future__ import annotations

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

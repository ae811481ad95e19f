"""The Pallas Triton flash-attention kernel (`pallas/ops/gpu/attention.mha`) behind
`dot_product_attention`'s signature.

The kernel takes one segment-id array for queries and keys, so only self-attention with shared
segment ids runs here; `attention.dot_product_attention` sends anything else to the chunked XLA
kernel. It has no GQA and does not check head counts (fewer K/V heads silently give wrong
values), so K/V are repeated to the query heads first. Segment 0 (padding) attends to padding
keys (at least itself, even when causal), so no row is empty; its output is zeroed afterwards, as
`chunked_attention` gives. Lengths are padded to a block multiple with more padding.
`interpret=True` runs the kernel in Pallas interpret mode (CPU tests).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as triton_attention

from vlm_jax.kernels.padding import pad_sequence, self_segment_ids, zero_padding_rows

# The kernel's default forward block; its backward blocks (32) divide it.
BLOCK = 128


def gpu_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    segment_ids: jnp.ndarray | None = None,
    causal: bool = False,
    interpret: bool = False,
) -> jnp.ndarray:
    """Self-attention of q [B, L, H, D] over k/v [B, L, K, D] (H a multiple of K), [B, L, H, D] out."""
    b, t, h, d = q.shape
    kh = k.shape[2]
    if k.shape[1] != t:
        raise ValueError(f"gpu attention is self-attention: queries ({t}) and keys ({k.shape[1]}) differ in length")
    if h % kh:
        raise ValueError(f"{h} query heads is not a multiple of {kh} key/value heads")
    seg = self_segment_ids(segment_ids, b, t)
    n = -(-t // BLOCK) * BLOCK
    pad = lambda x: pad_sequence(x, n)
    # Query head j reads K/V head j // (H / K), as the grouped layout of `reference_attention`.
    k, v = (jnp.repeat(x, h // kh, axis=2) for x in (k, v))
    out = triton_attention.mha(pad(q), pad(k), pad(v), pad(seg), sm_scale=d ** -0.5, causal=causal,
                               interpret=interpret)[:, :t]
    return zero_padding_rows(out, seg, q.dtype)

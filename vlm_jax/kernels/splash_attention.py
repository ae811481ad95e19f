"""Splash attention (the Pallas TPU kernel) behind `dot_product_attention`'s signature.

Self-attention with shared segment ids only (queries and keys at the same positions):
`attention.dot_product_attention` sends anything else (decoding with a KV cache, keys of another
length or with their own segment ids) to the chunked XLA kernel.
The kernel is unbatched, so it is `vmap`ped over the batch; it takes GQA natively and has no
softmax scale, so q is scaled first. Segment 0 (padding) keeps its own id: a padding query then
attends to padding keys (at least itself, even when causal), never to an empty row, which the
kernel's softmax cannot take; its output is zeroed afterwards, as `chunked_attention` gives.
Lengths are padded to a block multiple with more padding. `interpret=True` runs the kernel in
Pallas interpret mode (CPU tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

from vlm_jax.kernels.padding import pad_sequence, self_segment_ids, zero_padding_rows

# Block size along both sequences (clipped to the padded length); MaxText's default. Blocks are
# multiples of 128, the TPU lane width.
BLOCK = 512
LANES = 128


def splash_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    segment_ids: jnp.ndarray | None = None,
    causal: bool = False,
    block: int = BLOCK,
    interpret: bool = False,
) -> jnp.ndarray:
    """Self-attention of q [B, L, H, D] over k/v [B, L, K, D] (H a multiple of K), [B, L, H, D] out."""
    b, t, h, d = q.shape
    if k.shape[1] != t:
        raise ValueError(f"splash attention is self-attention: queries ({t}) and keys ({k.shape[1]}) differ in length")
    if block < 1 or block % LANES:
        raise ValueError(f"block={block} must be a positive multiple of {LANES}")
    seg = self_segment_ids(segment_ids, b, t)
    blk = min(block, -(-t // LANES) * LANES)
    n = -(-t // blk) * blk
    pad = lambda x: pad_sequence(x, n)
    # [B, L, H, D] -> [B, H, L, D], the kernel's layout.
    heads_major = lambda x: pad(x).transpose(0, 2, 1, 3)
    kernel = _kernel(n, h, causal, blk, interpret)
    ids = splash.SegmentIds(q=pad(seg), kv=pad(seg))
    out = jax.vmap(kernel)(heads_major(q * jnp.asarray(d ** -0.5, q.dtype)), heads_major(k), heads_major(v), ids)
    out = out.transpose(0, 2, 1, 3)[:, :t]
    return zero_padding_rows(out, seg, q.dtype)


def _kernel(length, heads, causal, block, interpret):
    shape = (length, length)
    masks = [mask_lib.CausalMask(shape) if causal else mask_lib.FullMask(shape) for _ in range(heads)]
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mha(mask_lib.MultiHeadMask(masks), block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)

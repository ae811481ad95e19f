"""Context parallelism: causal self-attention with the sequence split over the `sequence` mesh axis.

Activations outside attention are already split over `sequence` by the rules ("seq" -> "sequence");
only attention needs the other shards' keys and values. Two strategies (MaxText's names):

- `all_gather`: each shard keeps its queries and gathers every shard's keys, values and kv segment
  ids, then runs the ordinary attention with explicit token positions for the causal mask.
- `ring`: keys, values and kv segment ids travel around the ring (`lax.ppermute`), one shard's
  block per step, merged into the local queries' result with an online softmax (float32 max/sum);
  no shard ever holds more than two blocks of keys. The backward pass (a custom VJP) sends the blocks
  around again with their dk/dv accumulators, so it keeps only the local blocks too. Its blocks are
  its own einsums (the merge needs each block's softmax statistics), so `attention_impl` applies to
  `all_gather` only.

Causal load balancing: with the sequence split in order, the last shard's queries see every key
and the first shard's see only their own. Splitting each row into 2*cp chunks and giving shard i
chunks i and 2cp-1-i (`reorder_sequence`, MaxText's `reorder_sequence`) evens out the visible keys
per shard. The attention functions here only need to know the layout (token positions follow from
it); they compute whole blocks, so the balance pays off with kernels that skip masked blocks. The
model takes batches in row order: the decoder reorders its input (after the visual tokens are
spliced in) and restores row order at its output, one permutation each way per forward pass.
`reorder_batch` applies the same permutation to the CONTRACTS.md batch arrays (the batch as the
layers see it); feeding such a batch to the model would reorder it twice.

Results equal single-device attention, padding queries (segment id 0, every key masked) included:
masked logits take the same finite value, so such a row averages all values uniformly either way.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as P

from vlm_jax.kernels.attention import attention_mask, dot_product_attention

AXIS = "sequence"
STRATEGIES = ("none", "all_gather", "ring")

# The sequence axis of each CONTRACTS.md batch array that has one (position_ids is [3, B, S]).
BATCH_SEQ_AXIS: dict[str, int | None] = {
    "input_ids": 1, "segment_ids": 1, "targets": 1, "loss_weights": 1, "task_ids": 1, "position_ids": 2,
    "pixel_values": None, "grid_thw": None,
}

# The value of a masked logit, as in vlm_jax.kernels.attention: finite, so a fully masked row
# (a padding query) averages the values uniformly, like the single-device kernels do.
_MASKED = float(jnp.finfo(jnp.float32).min)


# ---------------------------------------------------------------------------------------------
# Load-balanced layout.


def chunk_order(cp: int) -> tuple[int, ...]:
    """The 2*cp chunks of a row in load-balanced order: shard i holds chunks i and 2cp-1-i."""
    if cp < 1:
        raise ValueError(f"context parallelism needs cp >= 1 shards, got {cp}")
    return tuple(c for i in range(cp) for c in (i, 2 * cp - 1 - i))


def _permute_chunks(x, order: tuple[int, ...], axis: int):
    """Chunks of `x` along `axis` in `order`: static slices and a concat, which the SPMD partitioner
    turns into collective permutes (a gather with an index array would not be)."""
    n = x.shape[axis]
    if n % len(order):
        raise ValueError(f"load-balanced context parallelism splits the sequence into {len(order)} chunks: "
                         f"length {n} (axis {axis}) is not divisible by {len(order)}")
    xp = jnp if isinstance(x, jax.Array) else np
    parts = xp.split(x, len(order), axis=axis)
    return xp.concatenate([parts[c] for c in order], axis=axis)


def reorder_sequence(x, cp: int, axis: int = 1):
    """Natural order -> load-balanced order along `axis` (numpy in, numpy out; jax in, jax out)."""
    return _permute_chunks(x, chunk_order(cp), axis)


def inverse_reorder_sequence(x, cp: int, axis: int = 1):
    """Load-balanced order -> natural order along `axis`: the inverse of `reorder_sequence`."""
    return _permute_chunks(x, tuple(int(i) for i in np.argsort(chunk_order(cp))), axis)


def _reorder_batch(batch: Mapping, cp: int, seq_axes: Mapping[str, int | None], fn) -> dict:
    unknown = sorted(set(batch) - set(seq_axes))
    if unknown:
        raise ValueError(f"batch keys {unknown} have no known sequence axis; pass seq_axes "
                         f"(known: {sorted(seq_axes)})")
    return {k: v if seq_axes[k] is None else fn(v, cp, seq_axes[k]) for k, v in batch.items()}


def reorder_batch(batch: Mapping, cp: int, seq_axes: Mapping[str, int | None] = BATCH_SEQ_AXIS) -> dict:
    """Every array of `batch` that has a sequence axis (`seq_axes`, None = none) in load-balanced order."""
    return _reorder_batch(batch, cp, seq_axes, reorder_sequence)


def inverse_reorder_batch(batch: Mapping, cp: int, seq_axes: Mapping[str, int | None] = BATCH_SEQ_AXIS) -> dict:
    """The inverse of `reorder_batch`."""
    return _reorder_batch(batch, cp, seq_axes, inverse_reorder_sequence)


def token_positions(shard: jax.Array | int, local_len: int, cp: int, load_balanced: bool) -> jax.Array:
    """Row indices [local_len] (int32) of the tokens shard `shard` holds: a contiguous block, or chunks
    `shard` and 2cp-1-`shard` when load balanced."""
    if not load_balanced:
        return shard * local_len + jnp.arange(local_len, dtype=jnp.int32)
    half = local_len // 2
    ar = jnp.arange(half, dtype=jnp.int32)
    return jnp.concatenate([shard * half + ar, (2 * cp - 1 - shard) * half + ar])


# ---------------------------------------------------------------------------------------------
# The mesh.


def sequence_shards(strategy: str, mesh: Mesh | AbstractMesh | None = None) -> int:
    """How many shards context parallelism splits attention over: the `sequence` axis of `mesh` (default:
    the abstract mesh of `rules.sharding_context`), or 1 (attention runs as usual) for strategy "none",
    no mesh, or a mesh without that axis."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown context_parallel strategy {strategy!r}; choose from {STRATEGIES}")
    if strategy == "none":
        return 1
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty or AXIS not in mesh.axis_names:
        return 1
    return int(mesh.shape[AXIS])


# ---------------------------------------------------------------------------------------------
# Per-shard attention (runs inside shard_map, manual over `sequence` only).


def _gather(x):
    return jax.lax.all_gather(x, AXIS, axis=1, tiled=True)


def _all_gather_shard(q, k, v, seg, *, cp: int, load_balanced: bool, impl: str, kernel_options: Mapping):
    """Local queries against every shard's keys, put back in row order."""
    k, v = _gather(k), _gather(v)
    kv_seg = None if seg is None else _gather(seg)
    if load_balanced:
        k, v = inverse_reorder_sequence(k, cp), inverse_reorder_sequence(v, cp)
        kv_seg = None if kv_seg is None else inverse_reorder_sequence(kv_seg, cp)
    q_pos = token_positions(jax.lax.axis_index(AXIS), q.shape[1], cp, load_balanced)
    kv_pos = jnp.arange(k.shape[1], dtype=jnp.int32)
    return dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=kv_seg, causal=True,
                                 q_positions=q_pos[None], kv_positions=kv_pos[None], impl=impl, **kernel_options)


def _heads_major(x, kv_heads):
    """[B, T, H, D] (queries, outputs or their cotangents) -> [B, K, G, T, D] with G = H / K."""
    b, t, h, d = x.shape
    return x.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)


def _tokens_major(x):
    """[B, K, G, T, D] -> [B, T, H, D]: the inverse of `_heads_major`."""
    b, kh, g, t, d = x.shape
    return x.transpose(0, 3, 1, 2, 4).reshape(b, t, kh * g, d)


def _logits(qg, k, mask):
    """Scaled logits [B, K, G, T, S] (float32) of queries qg [B, K, G, T, D] and keys k [B, S, K, D]."""
    s = jnp.einsum("bkgtd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * (qg.shape[-1] ** -0.5)
    return s if mask is None else jnp.where(mask[:, None, None], s, _MASKED)


def _merge_block(state, qg, k, v, mask):
    """One kv block into the online-softmax state (m, row_sum, acc) of queries qg [B, K, G, T, D].

    Masked logits are the finite `_MASKED`: a row masked so far has m = _MASKED and sums every value
    with weight 1, which the first real logit then rescales to 0 (exp(_MASKED - m) == 0)."""
    m, row_sum, acc = state
    s = _logits(qg, k, mask)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
    p = jnp.exp(s - m_new)
    scale = jnp.exp(m - m_new)
    row_sum = row_sum * scale + jnp.sum(p, axis=-1, keepdims=True)
    acc = acc * scale + jnp.einsum("bkgts,bskd->bkgtd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, row_sum, acc


def _block_mask(seg, kv_seg, step, t, cp, load_balanced):
    """Mask [B or 1, T, T] of the local queries against the block the ring brings at `step`: the one
    shard idx - step holds."""
    idx = jax.lax.axis_index(AXIS)
    q_pos = token_positions(idx, t, cp, load_balanced)[None]
    kv_pos = token_positions((idx - step) % cp, t, cp, load_balanced)[None]
    return attention_mask(seg, kv_seg, causal=True, q_positions=q_pos, kv_positions=kv_pos, t=t, s=t)


def _ring_perm(cp):
    return [(i, (i + 1) % cp) for i in range(cp)]


def _ring_shard(q, k, v, seg, *, cp: int, load_balanced: bool):
    """Local queries against each shard's block in turn (block j of the ring comes from shard idx - j)."""
    return _ring_attention(q, k, v, seg, cp, load_balanced)


# A custom VJP so that each shard keeps only its own q, k, v and the softmax statistics for the backward
# pass, which sends the blocks around the ring again with their dk/dv accumulators (autodiff through
# the forward scan would keep every block the shard saw, i.e. all keys and values).
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_attention(q, k, v, seg, cp, load_balanced):
    return _ring_fwd(q, k, v, seg, cp, load_balanced)[0]


def _ring_fwd(q, k, v, seg, cp, load_balanced):
    t, kh = q.shape[1], k.shape[2]
    qg = _heads_major(q, kh)

    def body(carry, step):
        state, (kb, vb, kv_seg) = carry
        state = _merge_block(state, qg, kb, vb, _block_mask(seg, kv_seg, step, t, cp, load_balanced))
        return (state, jax.lax.ppermute((kb, vb, kv_seg), AXIS, _ring_perm(cp))), None

    acc = jnp.zeros(qg.shape, jnp.float32)
    row_sum = acc[..., :1]
    state = (row_sum + _MASKED, row_sum, acc)
    # cp - 1 steps that pass the block on, then the last block without a final (wasted) permute.
    (state, (kb, vb, kv_seg)), _ = jax.lax.scan(body, (state, (k, v, seg)), jnp.arange(cp - 1))
    m, row_sum, acc = _merge_block(state, qg, kb, vb, _block_mask(seg, kv_seg, cp - 1, t, cp, load_balanced))
    out = _tokens_major((acc / row_sum).astype(q.dtype))
    # m and 1/sum rather than the logsumexp: m + log(sum) rounds back to m on fully masked rows.
    return out, (q, k, v, seg, out, m, 1.0 / row_sum)


def _ring_bwd(cp, load_balanced, res, dout):
    """The flash-attention backward per block, with dk/dv travelling with their block and arriving
    back at its shard after cp hops."""
    q, k, v, seg, out, m, inv_sum = res
    t, kh = q.shape[1], k.shape[2]
    qg, dog = _heads_major(q, kh), _heads_major(dout, kh)
    delta = jnp.sum(dog.astype(jnp.float32) * _heads_major(out, kh).astype(jnp.float32), axis=-1, keepdims=True)

    def block_grads(kb, vb, kv_seg, step):
        mask = _block_mask(seg, kv_seg, step, t, cp, load_balanced)
        p = jnp.exp(_logits(qg, kb, mask) - m) * inv_sum
        dv = jnp.einsum("bkgts,bkgtd->bskd", p.astype(vb.dtype), dog, preferred_element_type=jnp.float32)
        dp = jnp.einsum("bkgtd,bskd->bkgts", dog, vb, preferred_element_type=jnp.float32)
        ds = p * (dp - delta) * (q.shape[-1] ** -0.5)
        if mask is not None:
            ds = jnp.where(mask[:, None, None], ds, 0.0)  # masked logits are constants
        ds = ds.astype(q.dtype)
        dq = jnp.einsum("bkgts,bskd->bkgtd", ds, kb, preferred_element_type=jnp.float32)
        dk = jnp.einsum("bkgts,bkgtd->bskd", ds, qg, preferred_element_type=jnp.float32)
        return dq, dk, dv

    def body(carry, step):
        dq, (kb, vb, kv_seg, dk, dv) = carry
        dq_b, dk_b, dv_b = block_grads(kb, vb, kv_seg, step)
        moving = (kb, vb, kv_seg, dk + dk_b, dv + dv_b)
        return (dq + dq_b, jax.lax.ppermute(moving, AXIS, _ring_perm(cp))), None

    dq, dkv = jnp.zeros(qg.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32)
    (dq, (kb, vb, kv_seg, dk, dv)), _ = jax.lax.scan(body, (dq, (k, v, seg, dkv, dkv)), jnp.arange(cp - 1))
    dq_b, dk_b, dv_b = block_grads(kb, vb, kv_seg, cp - 1)
    # The last hop takes each block's dk/dv home (the block itself is no longer needed).
    dk, dv = jax.lax.ppermute((dk + dk_b, dv + dv_b), AXIS, _ring_perm(cp))
    dq = _tokens_major((dq + dq_b).astype(q.dtype))
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), None


_ring_attention.defvjp(_ring_fwd, _ring_bwd)


# ---------------------------------------------------------------------------------------------
# Entry point.


def context_parallel_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    *,
    strategy: str,
    load_balanced: bool = False,
    impl: str = "xla",
    mesh: Mesh | AbstractMesh | None = None,
    **kernel_options,
) -> jax.Array:
    """Causal self-attention of q [B, L, H, D] over k/v [B, L, K, D] (GQA), segment_ids [B, L] (0 = padding),
    split over the `sequence` axis of `mesh` (default: the abstract mesh of `rules.sharding_context`).

    With `load_balanced`, the L axis of every input (and of the output) is in `reorder_sequence` order.
    Without context parallelism (strategy "none", no mesh, sequence axis 1) this is exactly
    `dot_product_attention(q, k, v, q_segment_ids=segment_ids, causal=True, impl=impl, **kernel_options)`;
    `kernel_options` (further dot_product_attention arguments) apply wherever it runs (not in `ring`).
    """
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    cp = sequence_shards(strategy, mesh)
    if cp == 1:
        return dot_product_attention(q, k, v, q_segment_ids=segment_ids, causal=True, impl=impl, **kernel_options)
    length = q.shape[1]
    if k.shape[1] != length or v.shape[1] != length:
        raise ValueError(f"context-parallel attention is self-attention: q has {length} tokens, k {k.shape[1]}, "
                         f"v {v.shape[1]}")
    parts = 2 * cp if load_balanced else cp
    if length % parts:
        raise ValueError(f"context parallelism over {cp} shards{' (load balanced)' if load_balanced else ''} "
                         f"splits the sequence into {parts} parts: length {length} is not divisible by {parts}")
    if strategy == "all_gather":
        shard_fn = functools.partial(_all_gather_shard, cp=cp, load_balanced=load_balanced, impl=impl,
                                     kernel_options=kernel_options)
    else:
        shard_fn = functools.partial(_ring_shard, cp=cp, load_balanced=load_balanced)
    spec = P(None, AXIS)
    if segment_ids is None:
        fn = lambda q, k, v: shard_fn(q, k, v, None)  # noqa: E731
        args, specs = (q, k, v), (spec,) * 3
    else:
        fn, args, specs = shard_fn, (q, k, v, segment_ids), (spec,) * 4
    # Manual over `sequence` only: the batch and head dims stay with the compiler's partitioner. No
    # replication checks (as MaxText's check_rep=False): every input and output is split over the axis,
    # and attention kernels (lax.cond / Pallas inside) need not track which values vary over it.
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=spec, axis_names={AXIS}, check_vma=False)(*args)

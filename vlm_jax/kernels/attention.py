"""Dot-product attention with segment ids (packing) and causal masks.

`xla` is the reference: plain einsums, float32 softmax, runs everywhere (CPU tests).
`xla_chunked` (kernels/chunked_attention.py) is flash attention in plain JAX: memory linear in the
length, on any platform. `splash` (TPU, kernels/splash_attention.py) and `gpu` (the Pallas Triton
kernel, kernels/gpu_attention.py) are Pallas kernels for self-attention; what they cannot express
(decoding against a KV cache, keys with their own segment ids) runs `xla_chunked`. These three mask
by segment ids and positions only, and give padding queries (segment 0) zeros where `xla` averages
the values. `cudnn` hands the same mask to `jax.nn.dot_product_attention`'s cuDNN path on GPUs.
All implementations take q [B, T, H, D], k/v [B, S, K, D] with H a multiple of K (GQA).

`segment_attention` is the ViT's: one flat sequence of many short segments (frames), where a
dense [P, P] mask spends almost all its work on pairs that are masked out. With `block` > 0 a
`lax.switch` picks the cheapest exact path per batch:
- a block per segment: patches are gathered into `ceil(P / block)` blocks, each segment (found by
  its id, so windows work too) alone in one, and each block attends to itself, as Hugging Face's
  per-image attention does. Exact when no segment is longer than `block` and there are no more
  segments than blocks (always true when frames tile whole blocks, as the main job's images do);
- neighbouring blocks: each block of `block` queries attends to its own and the two neighbouring
  key blocks, exact whenever no segment is longer than `block` (three times the work);
- dense, when some segment is longer than `block`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vlm_jax.kernels.chunked_attention import chunked_attention

IMPLS = ("xla", "xla_chunked", "splash", "gpu", "cudnn")
# The platform each Pallas kernel compiles for; elsewhere it runs only in interpret mode (tests).
KERNEL_PLATFORMS = {"splash": "tpu", "gpu": "cuda"}


def current_platform() -> str:
    """The default backend as the kernels need it named: 'cpu', 'tpu', 'cuda' or 'rocm'."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    try:
        jax.devices("cuda")
        return "cuda"
    except RuntimeError:
        return "rocm"


def platform_problem(impl: str) -> str | None:
    """Why `impl` cannot run natively on this platform (None when it can): names impl and platform."""
    need = KERNEL_PLATFORMS.get(impl)
    here = current_platform() if need else None
    if need is None or here == need:
        return None
    return f"attention impl {impl!r} needs a {need.upper()} device, but this platform is {here!r}"


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
    interpret: bool | None = None,
) -> jnp.ndarray:
    """Scaled dot-product attention, [B, T, H, D] out. `mask` [B, T, S] overrides the segment mask
    (`xla` and `cudnn` only). `interpret` runs the Pallas kernels (`splash`, `gpu`) in interpret mode;
    None: exactly when this platform cannot compile them (config validation has already refused
    that unless `attention_interpret` is set)."""
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    if h % kh:
        raise ValueError(f"{h} query heads is not a multiple of {kh} key/value heads")
    if impl in ("xla_chunked", "splash", "gpu"):
        if mask is not None:
            raise ValueError(f"attention impl {impl!r} masks by segment ids and positions; it takes no dense mask")
        return _kernel_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, q_positions, kv_positions, impl,
                                 interpret)
    if mask is None:
        mask = attention_mask(q_segment_ids, kv_segment_ids, causal=causal, q_positions=q_positions,
                              kv_positions=kv_positions, t=t, s=s)
    if impl == "xla":
        if causal and q_positions is None and kv_positions is None and t == s and t >= 2 * CAUSAL_CHUNK:
            if q_segment_ids is not None and kv_segment_ids is None and t > PACKED_WINDOW:
                return _packed_causal_attention(q, k, v, q_segment_ids, PACKED_CHUNK, PACKED_WINDOW)
            return _causal_chunked_attention(q, k, v, mask, CAUSAL_CHUNK)
        return _fused_attention(q, k, v, mask)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(
            q, k, v, mask=None if mask is None else mask[:, None], implementation="cudnn")
    raise ValueError(f"unknown attention impl {impl!r}; choose from {IMPLS}")


def _kernel_attention(q, k, v, q_seg, kv_seg, causal, q_pos, kv_pos, impl, interpret):
    """`xla_chunked`, or a Pallas kernel when the call is self-attention with shared segment ids."""
    self_attention = q.shape[1] == k.shape[1] and kv_seg is None and q_pos is None and kv_pos is None
    if impl in KERNEL_PLATFORMS and self_attention:
        interpret = platform_problem(impl) is not None if interpret is None else interpret
        # Imported here: the Pallas op modules are only needed by the runs that choose them.
        if impl == "splash":
            from vlm_jax.kernels.splash_attention import splash_attention

            return splash_attention(q, k, v, segment_ids=q_seg, causal=causal, interpret=interpret)
        from vlm_jax.kernels.gpu_attention import gpu_attention

        return gpu_attention(q, k, v, segment_ids=q_seg, causal=causal, interpret=interpret)
    return chunked_attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=causal,
                             q_positions=q_pos, kv_positions=kv_pos)


def reference_attention(q, k, v, mask):
    """The plain-jnp oracle: masked logits, float32 softmax, weighted values; autodiff backward.

    Kept as the reference the fused implementation is tested against (values and gradients)."""
    b, t, h, d = q.shape
    kh = k.shape[2]
    g = h // kh
    qg = q.reshape(b, t, kh, g, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    logits = logits * (d ** -0.5)
    if mask is not None:
        # A large finite negative keeps fully masked rows (padding queries) finite.
        logits = jnp.where(mask[:, None, None], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


# Masked logits take this value: finite, so a fully masked row (a padding query) averages the
# values uniformly instead of producing NaN, exactly as the reference does.
_MASKED = float(jnp.finfo(jnp.float32).min)


def _query_heads_major(x, kv_heads):
    """[B, T, H, D] (queries, outputs or their cotangents) -> [B, K, G, T, D] with G = H / K."""
    b, t, h, d = x.shape
    return x.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)


def _heads_major(q, k, v):
    """[B, T, H, D] q and [B, S, K, D] k/v -> [B, K, G, T, D], [B, K, S, D], [B, K, S, D]: the
    layout in which every attention matmul has its batch axes leading and contracts the last axis."""
    return _query_heads_major(q, k.shape[2]), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _masked_logits(qg, kt, mask):
    s = jnp.einsum("bkgtd,bksd->bkgts", qg, kt, preferred_element_type=jnp.float32) * (qg.shape[-1] ** -0.5)
    return s if mask is None else jnp.where(mask[:, None, None], s, _MASKED)


def _fused_attention(q, k, v, mask):
    """`_heads_major_attention` on [B, T, H, D] q and [B, S, K, D] k/v; [B, T, H, D] out."""
    b, t, h, d = q.shape
    out = _heads_major_attention(*_heads_major(q, k, v), mask)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


@jax.custom_vjp
def _heads_major_attention(qg, kt, vt, mask):
    """Masked softmax attention in the heads-major layout: qg [B, K, G, T, D], kt/vt [B, K, S, D],
    mask [B or 1, T, S] or None; out [B, K, G, T, D]."""
    return _heads_major_fwd(qg, kt, vt, mask)[0]


def _heads_major_fwd(qg, kt, vt, mask):
    # Flash-attention arithmetic on whole rows: the [T, S] probabilities are never normalised in
    # place (the output is divided instead) and are not kept for the backward pass, which
    # recomputes them from q, k and each row's max and sum. On CPU this removes most passes over
    # [T, S] buffers, the scan's stacked per-layer probabilities and the softmax-backward
    # reductions over S; the result equals `reference_attention` to float rounding.
    s = _masked_logits(qg, kt, mask)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    row_sum = jnp.sum(e, axis=-1, keepdims=True)
    o = jnp.einsum("bkgts,bksd->bkgtd", e.astype(vt.dtype), vt, preferred_element_type=jnp.float32) / row_sum
    out = o.astype(qg.dtype)
    # m and 1/sum rather than the logsumexp: m + log(sum) rounds back to m on fully masked rows.
    return out, (qg, kt, vt, mask, out, m, 1.0 / row_sum)


def _heads_major_bwd(res, dog):
    qg, kt, vt, mask, og, m, inv_l = res
    p = jnp.exp(_masked_logits(qg, kt, mask) - m) * inv_l
    delta = jnp.sum(dog.astype(jnp.float32) * og.astype(jnp.float32), axis=-1, keepdims=True)
    dv_t = _contract_queries(dog, p.astype(vt.dtype))
    dp = jnp.einsum("bkgtd,bksd->bkgts", dog, vt, preferred_element_type=jnp.float32)
    ds = p * (dp - delta) * (qg.shape[-1] ** -0.5)
    if mask is not None:
        ds = jnp.where(mask[:, None, None], ds, 0.0)  # masked logits are constants
    ds = ds.astype(qg.dtype)
    dq = jnp.einsum("bkgts,bksd->bkgtd", ds, kt, preferred_element_type=jnp.float32)
    dk_t = _contract_queries(qg, ds)
    return (dq.astype(qg.dtype), dk_t.astype(kt.dtype).transpose(0, 1, 3, 2),
            dv_t.astype(vt.dtype).transpose(0, 1, 3, 2), None)


def _contract_queries(x, big):
    """[B, K, D, S]: x [B, K, G, T, D] contracted with big [B, K, G, T, S] over (G, T).

    Written as x^T big rather than big^T x, so the transposed operand is the small [T, D] one:
    XLA:CPU feeds its matmuls non-transposed left operands and would otherwise copy the
    [T, S] probabilities into a transposed layout (twice per layer, the costliest part of the
    backward pass on CPU)."""
    return jax.lax.dot_general(x, big, (((2, 3), (2, 3)), ((0, 1), (0, 1))), preferred_element_type=jnp.float32)


_heads_major_attention.defvjp(_heads_major_fwd, _heads_major_bwd)


# Query rows per chunk of causal self-attention: chunk i attends only to the keys up to its own
# end, so the all-masked upper blocks of the [T, T] logits are never computed (about half of
# them for long rows). Smaller chunks skip more but run more, smaller ops.
CAUSAL_CHUNK = 128


def _causal_chunked_attention(q, k, v, mask, chunk):
    """Causal self-attention (queries and keys at the same positions) one query chunk at a time.
    Each chunk is sliced in the [B, T, H, D] layout and transposed on its own: slicing one
    heads-major copy along T instead measured 10% slower on CPU (strided slices)."""
    t = q.shape[1]
    outs = []
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        m = None if mask is None else mask[:, start:end, :end]
        outs.append(_fused_attention(q[:, start:end], k[:, :end], v[:, :end], m))
    return jnp.concatenate(outs, axis=1)


# Packed rows (many short samples, told apart by segment ids): a query attends only to its own
# sample, which began at most a few dozen tokens back. Query chunks of PACKED_CHUNK rows then look
# at the PACKED_WINDOW keys that end with the chunk, instead of every key before it: exact when
# every sample holding a chunk's first query began inside that window, which `_packed_fits`
# checks per batch (otherwise the causal-chunked path runs).
PACKED_CHUNK = 32
PACKED_WINDOW = 128  # a multiple of PACKED_CHUNK


def _packed_fits(seg, chunk, window):
    """Whether, in every row, the segment of each chunk's first query starts inside the chunk's key window."""
    b, t = seg.shape
    idx = jnp.arange(t)
    starts = jnp.concatenate([jnp.ones((b, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    run_start = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)  # where each position's run began
    first = jnp.arange(0, t, chunk)
    window_start = jnp.maximum(jnp.minimum(first + chunk, t) - window, 0)
    return jnp.all((run_start[:, first] >= window_start) | (seg[:, first] == 0))


def _windowed_causal(q, k, v, seg, chunk, window):
    """Every query chunk against the `window` keys that end with it, as one batched attention
    over [B * chunks] (`window` a multiple of `chunk`)."""
    b, t, h, d = q.shape
    n = -(-t // chunk)
    tail = n * chunk - t

    def windows(a, fill):
        # a [B, T, ...] -> [B, n, window, ...]: chunk i's keys are positions (i+1)*chunk - window ...
        a = jnp.pad(a, ((0, 0), (window - chunk, tail)) + ((0, 0),) * (a.ndim - 2), constant_values=fill)
        parts = [a[:, j * chunk:(j + n) * chunk].reshape(b, n, chunk, *a.shape[2:]) for j in range(window // chunk)]
        return jnp.concatenate(parts, axis=2)

    def chunks(a):
        a = jnp.pad(a, ((0, 0), (0, tail)) + ((0, 0),) * (a.ndim - 2))
        return a.reshape(b, n, chunk, *a.shape[2:])

    flat = lambda a: a.reshape(b * n, *a.shape[2:])
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = attention_mask(flat(chunks(seg)), flat(windows(seg, 0)), causal=True, q_positions=flat(chunks(pos)),
                          kv_positions=flat(windows(pos, -1)), t=chunk, s=window)
    out = _fused_attention(flat(chunks(q)), flat(windows(k, 0)), flat(windows(v, 0)), mask)
    return out.reshape(b, n * chunk, h, d)[:, :t]


def _full_causal(q, k, v, seg):
    t = q.shape[1]
    mask = attention_mask(seg, None, causal=True, t=t, s=t)
    return _causal_chunked_attention(q, k, v, mask, CAUSAL_CHUNK)


def _packed_branches(chunk, window):
    return (_full_causal, lambda q, k, v, s: _windowed_causal(q, k, v, s, chunk, window))


# The same custom-VJP pattern as `_blocked_segment_attention`: the backward recomputes only the
# branch that ran, so the other branch's residuals are never materialised.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _packed_causal_attention(q, k, v, seg, chunk, window):
    index = _packed_fits(seg, chunk, window).astype(jnp.int32)
    return jax.lax.switch(index, _packed_branches(chunk, window), q, k, v, seg)


def _packed_fwd(q, k, v, seg, chunk, window):
    index = _packed_fits(seg, chunk, window).astype(jnp.int32)
    out = jax.lax.switch(index, _packed_branches(chunk, window), q, k, v, seg)
    return out, (q, k, v, seg, index)


def _packed_bwd(chunk, window, res, g):
    q, k, v, seg, index = res
    return (*_switch_vjp(index, _packed_branches(chunk, window), q, k, v, seg, g), None)


_packed_causal_attention.defvjp(_packed_fwd, _packed_bwd)


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
    q, k, v, seg = (_pad_to_blocks(a, block) for a in (q, k, v, seg))
    n = q.shape[0] // block

    def neighbours(a):
        # Block i's keys: blocks i-1, i, i+1 of `a` (zero / segment-0 blocks beyond the ends).
        a = jnp.pad(a, ((block, block),) + ((0, 0),) * (a.ndim - 1))
        parts = [a[j * block:(j + n) * block].reshape(n, block, *a.shape[1:]) for j in range(3)]
        return jnp.concatenate(parts, axis=1)

    out = dot_product_attention(q.reshape(n, block, h, d), neighbours(k), neighbours(v),
                                q_segment_ids=seg.reshape(n, block), kv_segment_ids=neighbours(seg), impl=impl)
    return out.reshape(n * block, h, d)[:p]


def segments_fit_blocks(seg: jnp.ndarray, block: int) -> jnp.ndarray:
    """Whether no non-padding segment (a run of equal ids) is longer than `block` (a traced bool):
    then the blocked path of `segment_attention`, which looks one block either side, is exact."""
    starts = jnp.concatenate([jnp.ones((1,), bool), seg[1:] != seg[:-1]])
    run_id = jnp.cumsum(starts) - 1
    # Padding (segment 0) attends to nothing useful, so its runs may be any length.
    lengths = jnp.zeros_like(seg).at[run_id].add((seg != 0).astype(seg.dtype))
    return jnp.max(lengths) <= block


def segments_within_blocks(seg: jnp.ndarray, block: int) -> jnp.ndarray:
    """Whether every non-padding segment lies inside one block of `block` positions (a traced
    bool): each segment id forms one contiguous run (window ids need not), and no run continues
    across a block boundary. Then `segment_attention`'s own-block path is exact. `seg` must be
    padded to a multiple of `block`."""
    starts = jnp.concatenate([jnp.ones((1,), bool), seg[1:] != seg[:-1]])
    runs = jnp.sum(starts & (seg != 0))
    ids = jnp.sort(seg)
    distinct = jnp.sum(jnp.concatenate([jnp.ones((1,), bool), ids[1:] != ids[:-1]]) & (ids != 0))
    after, before = seg[block::block], seg[block - 1:-1:block]
    return (runs == distinct) & jnp.all((after != before) | (after == 0))


def segment_blocks(seg: jnp.ndarray, block: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Where each patch goes when every segment gets a block of its own: (dest [P], fits).

    Segments are grouped by a stable sort of their ids, so a segment need not be one contiguous run
    (window ids are not). Segment j (in id order) takes positions [j * block, j * block + len_j) of a
    buffer of `ceil(P / block)` blocks; padding patches (segment 0) go nowhere (dest = buffer size).
    `fits` (a traced bool) says the layout is exact: no segment is longer than `block` and there are
    no more segments than blocks. When every segment already lies inside one block
    (`segments_within_blocks`, e.g. frames packed from block boundaries, several to a block), the
    patches stay where they are instead."""
    p = seg.shape[0]
    n = -(-p // block)
    order = jnp.argsort(seg, stable=True)
    s = seg[order]
    idx = jnp.arange(p)
    starts = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    blk = jnp.cumsum(starts & (s != 0)) - 1
    offset = idx - jax.lax.cummax(jnp.where(starts, idx, 0))
    real = s != 0
    fits = jnp.all(~real | ((offset < block) & (blk < n)))
    sorted_dest = jnp.where(real, blk * block + offset, n * block)
    dest = jnp.zeros_like(seg).at[order].set(sorted_dest)
    aligned = segments_within_blocks(_pad_to_blocks(seg, block), block)
    return jnp.where(aligned, jnp.where(seg != 0, idx, n * block), dest), aligned | fits


def _segment_block_attention(q, k, v, seg, block, impl):
    """Each segment attends within its own block of a gathered [ceil(P / block), block] buffer;
    padding patches get zeros. Exact when `segment_blocks(seg, block)` fits."""
    p, h, d = q.shape
    n = -(-p // block)
    dest, _ = segment_blocks(seg, block)
    # Which patch fills each buffer slot (P: an empty slot, read from an appended zero row).
    source = jnp.full((n * block,), p, dest.dtype).at[dest].set(jnp.arange(p, dtype=dest.dtype), mode="drop")
    gather = lambda a: jnp.concatenate([a, jnp.zeros_like(a[:1])])[source].reshape(n, block, *a.shape[1:])
    out = dot_product_attention(gather(q), gather(k), gather(v), q_segment_ids=gather(seg), impl=impl)
    out = jnp.concatenate([out.reshape(n * block, h, d), jnp.zeros_like(out[0, :1])])
    return out[dest]  # dest <= n * block: padding patches read the appended zero row


def _pad_to_blocks(a, block):
    pad = -a.shape[0] % block
    return jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)) if pad else a


def _path_index(seg, block):
    """0: dense, 1: neighbouring blocks, 2: a block per segment (the cheapest exact path)."""
    return jnp.where(segment_blocks(seg, block)[1], 2, jnp.where(segments_fit_blocks(seg, block), 1, 0))


def _branches(block, impl):
    return (lambda q, k, v, s: _dense_segment_attention(q, k, v, s, impl),
            lambda q, k, v, s: _local_segment_attention(q, k, v, s, block, impl),
            lambda q, k, v, s: _segment_block_attention(q, k, v, s, block, impl))


# A custom VJP, because differentiating a `lax.switch` makes every branch's residuals outputs of
# the forward pass: the dense branch's [P, P] buffers would be allocated (zero-filled) on every
# step even when a blocked branch runs. Here the forward keeps only q, k, v and the backward
# recomputes the taken branch (as flash attention does).
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blocked_segment_attention(q, k, v, seg, block, impl):
    return jax.lax.switch(_path_index(seg, block), _branches(block, impl), q, k, v, seg)


def _blocked_fwd(q, k, v, seg, block, impl):
    index = _path_index(seg, block)
    return jax.lax.switch(index, _branches(block, impl), q, k, v, seg), (q, k, v, seg, index)


def _blocked_bwd(block, impl, res, g):
    q, k, v, seg, index = res
    return (*_switch_vjp(index, _branches(block, impl), q, k, v, seg, g), None)


def _switch_vjp(index, branches, q, k, v, seg, g):
    """(dq, dk, dv) of the branch `index` selects, recomputed from q, k, v: cotangent `g`."""

    def grad_of(fn):
        return lambda q, k, v, seg: jax.vjp(lambda q, k, v: fn(q, k, v, seg), q, k, v)[1](g)

    return jax.lax.switch(index, [grad_of(f) for f in branches], q, k, v, seg)


_blocked_segment_attention.defvjp(_blocked_fwd, _blocked_bwd)

"""Expert parallelism of the MoE experts: tokens go to the devices that hold their experts and back.

Inside `jax.shard_map` over the model's mesh, each device holds a block of tokens (split like the batch:
(data, fsdp, expert) and `sequence`) and E / ep experts (the expert weights split over the mesh axes the
rules give the logical axis "expert"; the "mlp" dim stays split over `tensor`). Per device:
  1. plan: order the token copies (token x top-k slot) by destination shard, valid tokens first;
  2. dispatch: each destination gets a fixed buffer of `cap` rows from each sender;
  3. the local experts run as grouped matmuls on the received rows, sorted by local expert;
     partial sums over the `tensor` shards of the expert width are added (psum);
  4. return: the results go back the same way and are weighted by the router.
The exchange is a padded `all_to_all` (what XLA:CPU can run) or, on TPU and GPU, `ragged_all_to_all`,
which sends only the filled rows; both fill the same receive layout. Tokens that cannot be split over the
expert axes (fewer rows than shards, e.g. decoding one row) are held whole by every expert shard.

Dropless by default: `cap` is every local copy (the worst case: all of them to one shard). A capacity
factor c > 0 bounds it to ceil(c * copies / ep); copies past the bound are dropped (the token gets no
output from that expert) and counted, padding copies last so they are dropped first and never counted.
Routing and the load-balancing statistics stay outside, in `MoE`, on the globally sharded arrays.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from vlm_jax.model.grouped_matmul import grouped_matmul
from vlm_jax.parallel import rules as rules_lib

EXCHANGES = ("padded", "ragged")


class Plan(NamedTuple):
    """Where each token copy goes, in send order (copies sorted by destination shard, valid first)."""
    order: jnp.ndarray  # [N] copy index (token * k + slot) of each send position
    dest: jnp.ndarray  # [N] destination shard
    local_expert: jnp.ndarray  # [N] expert index on that shard
    rank: jnp.ndarray  # [N] position within the destination's block
    counts: jnp.ndarray  # [ep] copies per destination
    start: jnp.ndarray  # [ep] first send position of each destination
    kept: jnp.ndarray  # [N] bool: within capacity
    dropped: jnp.ndarray  # () int32: valid copies past capacity


class Layout(NamedTuple):
    """How the layer's arrays are split over the mesh: shard_map specs and the collective axes."""
    tokens: P  # [B, S] arrays (add None for trailing dims)
    token_axes: tuple[str, ...]  # mesh axes splitting the tokens
    expert_axes: tuple[str, ...]  # mesh axes splitting the experts (the exchange axes)
    mlp_axes: tuple[str, ...]  # mesh axes splitting the expert width (partial sums)
    ep: int  # expert shards


def capacity(copies: int, ep: int, capacity_factor: float) -> int:
    """Rows each sender may put in each destination's buffer: all `copies` when dropless
    (capacity_factor <= 0), else ceil(capacity_factor * copies / ep), at least 1 and at most `copies`."""
    if capacity_factor <= 0:
        return copies
    return min(copies, max(1, math.ceil(capacity_factor * copies / ep)))


def exchange_for_platform(platform: str) -> str:
    """XLA:CPU has no ragged_all_to_all: pad there, send ragged blocks elsewhere."""
    return "padded" if platform == "cpu" else "ragged"


def plan_dispatch(expert_ids: jnp.ndarray, valid_copy: jnp.ndarray, experts_per_shard: int, ep: int,
                  cap: int) -> Plan:
    """expert_ids, valid_copy [N] (global expert of each copy, whether its token is real) -> Plan."""
    n = expert_ids.shape[0]
    dest = expert_ids // experts_per_shard
    order = jnp.argsort(dest * 2 + (~valid_copy).astype(dest.dtype), stable=True)
    dest_s = dest[order]
    counts = jnp.sum(jax.nn.one_hot(dest, ep, dtype=jnp.int32), axis=0)
    start = jnp.cumsum(counts) - counts
    rank = jnp.arange(n) - start[dest_s]
    kept = rank < cap
    dropped = jnp.sum(valid_copy[order] & ~kept, dtype=jnp.int32)
    local = expert_ids[order] - dest_s * experts_per_shard
    return Plan(order, dest_s, local, rank, counts, start, kept, dropped)


def dispatch_padded(rows: jnp.ndarray, plan: Plan, cap: int, experts_per_shard: int, axes: tuple[str, ...]):
    """rows [N, D] in send order -> (received rows [ep*cap, D], their local experts [ep*cap]; empty
    slots hold expert `experts_per_shard`, after every real one)."""
    ep = plan.counts.shape[0]
    slot = jnp.arange(cap)
    src = (plan.start[:, None] + slot).reshape(-1)
    filled = (slot < jnp.minimum(plan.counts, cap)[:, None]).reshape(-1)
    src = jnp.minimum(src, rows.shape[0] - 1)
    x = jnp.where(filled[:, None], rows[src], 0)
    ids = jnp.where(filled, plan.local_expert[src], experts_per_shard)
    return _all_to_all(x, axes, ep), _all_to_all(ids, axes, ep)


def return_padded(out: jnp.ndarray, plan: Plan, cap: int, axes: tuple[str, ...]) -> jnp.ndarray:
    """Expert outputs [ep*cap, D] in receive layout -> [N, D] in send order (dropped copies: 0)."""
    back = _all_to_all(out, axes, plan.counts.shape[0])
    pos = plan.dest * cap + jnp.minimum(plan.rank, cap - 1)
    return jnp.where(plan.kept[:, None], back[pos], 0)


def dispatch_ragged(rows: jnp.ndarray, plan: Plan, cap: int, experts_per_shard: int, axes: tuple[str, ...]):
    """`dispatch_padded` with `ragged_all_to_all`: only the filled rows travel; same receive layout."""
    ep = plan.counts.shape[0]
    sizes = jnp.minimum(plan.counts, cap).astype(jnp.int32)
    start = plan.start.astype(jnp.int32)
    recv_sizes = _all_to_all(sizes, axes, ep)
    at_receiver = jnp.full((ep,), _axis_index(axes) * cap, jnp.int32)  # this sender's block on each receiver

    def send(operand, fill):
        out = jnp.full((ep * cap,) + operand.shape[1:], fill, operand.dtype)
        return ragged_all_to_all(operand, out, start, sizes, at_receiver, recv_sizes, axis_name=axes)

    return send(rows, 0), send(plan.local_expert.astype(jnp.int32), experts_per_shard)


def return_ragged(out: jnp.ndarray, plan: Plan, cap: int, axes: tuple[str, ...]) -> jnp.ndarray:
    """`return_padded` with `ragged_all_to_all`: each sender's block goes back to its send positions."""
    ep = plan.counts.shape[0]
    sizes = jnp.minimum(plan.counts, cap).astype(jnp.int32)
    recv_sizes = _all_to_all(sizes, axes, ep)  # rows received from each sender
    sender_start = _all_to_all(plan.start.astype(jnp.int32), axes, ep)  # their send positions
    blocks = jnp.arange(ep, dtype=jnp.int32) * cap
    back = jnp.zeros((plan.order.shape[0],) + out.shape[1:], out.dtype)
    return ragged_all_to_all(out, back, blocks, recv_sizes, sender_start, sizes, axis_name=axes)


# The collective `dispatch_ragged` and `return_ragged` call (tests swap in an emulation: XLA:CPU lacks it).
ragged_all_to_all = jax.lax.ragged_all_to_all

_EXCHANGE = {"padded": (dispatch_padded, return_padded), "ragged": (dispatch_ragged, return_ragged)}


def local_experts(x: jnp.ndarray, ids: jnp.ndarray, wi_gate, wi_up, wo, gmm_impl: str,
                  mlp_axes: tuple[str, ...]) -> jnp.ndarray:
    """SwiGLU of the received rows x [M, D] by their local expert ids [M] (ids past the local experts:
    empty slots, output 0); sums the partial outputs of the expert width split over `mlp_axes`."""
    e_local = wi_gate.shape[0]
    order = jnp.argsort(ids, stable=True)
    sizes = jnp.sum(jax.nn.one_hot(ids, e_local, dtype=jnp.int32), axis=0)
    xs = x[order]
    h = jax.nn.silu(grouped_matmul(xs, wi_gate, sizes, gmm_impl)) * grouped_matmul(xs, wi_up, sizes, gmm_impl)
    ys = grouped_matmul(h, wo, sizes, gmm_impl)
    if mlp_axes:
        ys = jax.lax.psum(ys, mlp_axes)
    return ys[_inverse(order)]


def shard_ffn(x, valid, top_i, top_w, wi_gate, wi_up, wo, *, num_experts: int, layout: Layout, cap: int,
              gmm_impl: str, exchange: str):
    """One device's part: tokens x [b, s, D], valid [b, s], routing top_i / top_w [b, s, k]; local
    expert weights. Returns (output [b, s, D], dropped copies summed over the token shards)."""
    shape, k = x.shape, top_i.shape[-1]
    rows = x.reshape(-1, shape[-1])
    valid_copy = jnp.repeat(valid.reshape(-1), k)
    e_local = num_experts // layout.ep
    plan = plan_dispatch(top_i.reshape(-1), valid_copy, e_local, layout.ep, cap)
    dispatch, send_back = _EXCHANGE[exchange]
    recv_x, recv_ids = dispatch(rows[plan.order // k], plan, cap, e_local, layout.expert_axes)
    out = local_experts(recv_x, recv_ids, wi_gate, wi_up, wo, gmm_impl, layout.mlp_axes)
    y = send_back(out, plan, cap, layout.expert_axes)[_inverse(plan.order)]
    y = jnp.sum(y.reshape(*top_w.shape, -1) * top_w[..., None], axis=-2)
    dropped = jax.lax.psum(plan.dropped, layout.token_axes) if layout.token_axes else plan.dropped
    return y.reshape(shape), dropped


def layout_for(mesh: AbstractMesh, tokens_shape: tuple[int, ...], weight_shapes: tuple[tuple[int, ...], ...],
               rules: rules_lib.Rules) -> Layout:
    """Specs of the layer's arrays on `mesh` from the logical-axis `rules` (axes that do not divide a dim
    are dropped, as in `rules.logical_spec`); ValueError when the experts cannot be split evenly."""
    num_experts = weight_shapes[0][0]
    wanted = _axes(rules_lib.logical_spec(None, ("expert",), mesh, rules))
    if num_experts % math.prod(mesh.shape[a] for a in wanted):
        raise ValueError(f"expert parallelism: {num_experts} experts do not split over the mesh axes {wanted} "
                         f"({math.prod(mesh.shape[a] for a in wanted)} shards)")
    tokens = rules_lib.logical_spec(tokens_shape, ("batch", "seq"), mesh, rules)
    wi = rules_lib.logical_spec(weight_shapes[0], ("expert", None, "mlp"), mesh, rules, what="expert weights")
    token_axes, expert_axes, mlp_axes = (_axes(s) for s in (tokens, (wi[0],), (wi[2],)))
    clash = set(mlp_axes) & set(token_axes)
    if clash:
        raise ValueError(f"expert parallelism: mesh axes {sorted(clash)} split both the tokens and the expert "
                         "width; the rules must keep them apart")
    return Layout(tokens, token_axes, expert_axes, mlp_axes, math.prod(mesh.shape[a] for a in expert_axes))


def expert_parallel_ffn(x: jnp.ndarray, valid: jnp.ndarray, top_i: jnp.ndarray, top_w: jnp.ndarray,
                        wi_gate: jnp.ndarray, wi_up: jnp.ndarray, wo: jnp.ndarray, *, gmm_impl: str = "ragged_dot",
                        capacity_factor: float = 0.0, exchange: str | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The experts of an MoE layer with expert parallelism over the current (abstract) mesh.

    x [B, S, D], valid [B, S] bool, top_i / top_w [B, S, k] (router choices and weights), expert weights
    wi_gate / wi_up [E, D, I] and wo [E, I, D]. Returns (output [B, S, D], dropped valid token copies, int32).
    Without a mesh (or with one shard) it runs the same dispatch on one device. `exchange`: "padded" or
    "ragged" (None: by platform, `exchange_for_platform`).
    """
    if x.ndim != 3 or valid.shape != x.shape[:2] or top_i.shape[:2] != x.shape[:2]:
        raise ValueError(f"expert parallelism takes x [B, S, D], valid [B, S], top_i [B, S, k]; got "
                         f"{x.shape}, {valid.shape}, {top_i.shape}")
    exchange = exchange or exchange_for_platform(jax.default_backend())
    if exchange not in EXCHANGES:
        raise ValueError(f"unknown exchange {exchange!r}; expected one of {', '.join(EXCHANGES)}")
    num_experts, k = wi_gate.shape[0], top_i.shape[-1]
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:  # one device: the same dispatch, the exchange is the identity
        cap = capacity(x.shape[0] * x.shape[1] * k, 1, capacity_factor)
        return shard_ffn(x, valid, top_i, top_w, wi_gate, wi_up, wo, num_experts=num_experts,
                         layout=Layout(P(), (), (), (), 1), cap=cap, gmm_impl=gmm_impl, exchange="padded")

    layout = layout_for(mesh, x.shape[:2], (wi_gate.shape,), nn.get_logical_axis_rules() or rules_lib.RULES)
    cap = capacity(_local_size(mesh, x.shape[:2], layout.tokens) * k, layout.ep, capacity_factor)
    tok, e, m = layout.tokens, layout.expert_axes or None, layout.mlp_axes or None
    row3 = P(*tok, None)
    # check_vma=False: the megablox Pallas call declares no varying mesh axes (MaxText does the same);
    # tests/test_expert_parallel.py checks the gradients on each kind of mesh layout.
    body = jax.shard_map(
        lambda *a: shard_ffn(*a, num_experts=num_experts, layout=layout, cap=cap, gmm_impl=gmm_impl,
                             exchange=exchange),
        mesh=mesh, in_specs=(row3, tok, row3, row3, P(e, None, m), P(e, None, m), P(e, m, None)),
        out_specs=(row3, P()), check_vma=False)
    return body(x, valid, top_i, top_w, wi_gate, wi_up, wo)


def _all_to_all(x: jnp.ndarray, axes: tuple[str, ...], ep: int) -> jnp.ndarray:
    """Block i of x's leading dim (ep equal blocks) goes to shard i; block j of the result came from j."""
    if not axes or ep == 1:
        return x
    return jax.lax.all_to_all(x, axes, 0, 0, tiled=True)


def _axis_index(axes: tuple[str, ...]) -> jnp.ndarray:
    return jax.lax.axis_index(axes) if axes else jnp.zeros((), jnp.int32)


def _inverse(perm: jnp.ndarray) -> jnp.ndarray:
    return jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))


def _axes(spec) -> tuple[str, ...]:
    out: list[str] = []
    for part in spec:
        if part is not None:
            out.extend((part,) if isinstance(part, str) else part)
    return tuple(out)


def _local_size(mesh: AbstractMesh, shape: tuple[int, ...], spec: P) -> int:
    """Elements of one device's block of an array of `shape` split by `spec`."""
    return math.prod(n // math.prod(mesh.shape[a] for a in _axes((part,))) for n, part in zip(shape, spec))

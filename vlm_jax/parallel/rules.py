"""The one table that maps logical axis names (carried by params and activation constraints in
the model) to mesh axes, and the shardings derived from it.

Default layout: FSDP + data parallel on the batch, optional tensor / expert / sequence
parallelism. Changing the parallelism means changing `RULES` (or passing another table), never
the model code.

Rules are resolved with flax's priority semantics (`nn.logical_to_mesh_axes`): rules are tried
in order and a mesh axis is used at most once per array. Activation names come first so that
the batch claims (data, fsdp, expert); an activation's `embed` dim then stays unsharded, while
a param's `embed` dim (no batch dim present) is sharded over `fsdp`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# Mesh axes that split the batch (and the vision patch buffer). The expert axis also carries
# data parallelism outside the expert layers, as is usual for expert parallelism.
BATCH_AXES = ("data", "fsdp", "expert")

RULES: tuple[tuple[str, MeshAxes], ...] = (
    # Activations / inputs.
    ("batch", BATCH_AXES),
    ("vision_seq", BATCH_AXES),  # the flat patch sequence of the ViT: split like the batch
    ("vision_tokens", BATCH_AXES),  # merged visual tokens
    ("vision_grid", BATCH_AXES),  # grid_thw rows (per-process blocks in multi-host runs)
    ("seq", "sequence"),
    # Params: FSDP on the model width, tensor parallelism on heads / MLP / vocabulary.
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("vision_merged", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("vision_qkv", "tensor"),
    ("vision_mlp", "tensor"),
    ("vision_merged_mlp", "tensor"),
    ("expert", "expert"),
    # Never sharded.
    ("layers", None),
    ("head_dim", None),
    ("vision_patch", None),
    ("vision_pos", None),
    ("vision_queries", None),
    ("norm", None),
)

# Logical names of the CONTRACTS.md batch arrays.
BATCH_LOGICAL: dict[str, tuple[str | None, ...]] = {
    "input_ids": ("batch", "seq"),
    "segment_ids": ("batch", "seq"),
    "targets": ("batch", "seq"),
    "loss_weights": ("batch", "seq"),
    "task_ids": ("batch", "seq"),
    "position_ids": (None, "batch", "seq"),
    "pixel_values": ("vision_seq", None),
    "grid_thw": ("vision_grid", None),
}


def row_logical(rank: int | None) -> tuple[str | None, ...]:
    """Logical names of an extra per-row batch array (post-training: old_logp [B, S], advantages [B],
    teacher_logits [B, S, V], ...): the leading dim is the batch, the rest is replicated. rank None (shape
    unknown): only the leading dim is named, a shorter PartitionSpec replicates the trailing dims."""
    if rank is None:
        return ("batch",)
    if rank < 1:
        raise ValueError(f"an extra batch array needs a leading batch axis; got rank {rank}")
    return ("batch",) + (None,) * (rank - 1)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_spec(shape: Sequence[int] | None, names: Sequence[str | None], mesh: Mesh, rules: Rules = RULES,
                 *, strict: bool = False, what: str = "array") -> P:
    """Mesh PartitionSpec for an array of `shape` whose dims carry logical `names`
    (`shape` None: no divisibility check).

    Mesh axes of size 1 are dropped. A mesh axis that does not divide its dim is dropped too
    (that dim is then split over fewer devices, or replicated), e.g. 2 kv heads on tensor=4,
    so any mesh works with any model size; `strict` raises instead (for batch inputs, where
    replicating would silently break data parallelism).
    """
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    if shape is None:
        shape = (0,) * len(names)  # 0 is divisible by anything
    out: list[MeshAxes] = []
    for dim, (size, axes) in enumerate(zip(shape, spec)):
        kept: list[str] = []
        for a in _as_tuple(axes):
            n = mesh.shape[a]
            if n == 1:
                continue
            split = int(np.prod([mesh.shape[k] for k in kept])) * n
            if size % split:
                if strict:
                    raise ValueError(f"{what}: dim {dim} ({names[dim]}) has size {size}, not divisible by "
                                     f"the mesh axes {(*kept, a)} ({split} devices)")
                log.info("%s: dim %d (%s) of size %d not divisible by mesh axes %s; not sharded over %r",
                         what, dim, names[dim], size, (*kept, a), a)
                continue
            kept.append(a)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*out)


def logical_sharding(shape: Sequence[int] | None, names: Sequence[str | None], mesh: Mesh, rules: Rules = RULES,
                     **kw) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(shape, names, mesh, rules, **kw))


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_shardings(abstract_tree, mesh: Mesh, rules: Rules = RULES):
    """NamedShardings for a tree whose leaves are `nn.Partitioned` boxes (params, or optimizer
    state built from boxed params, whose moments inherit the boxes) or plain arrays/shape structs
    (replicated: step counters, scalars). The result has the *unboxed* tree's structure."""

    def one(path, leaf):
        if _is_box(leaf):
            return logical_sharding(leaf.value.shape, leaf.names, mesh, rules, what=_path_name(path))
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, abstract_tree, is_leaf=_is_box)


def batch_shardings(shapes: Mapping[str, Sequence[int] | None], mesh: Mesh, rules: Rules = RULES,
                    *, microbatched: bool = False, extra_keys: Sequence[str] = ()) -> dict[str, NamedSharding]:
    """Shardings of the CONTRACTS.md batch arrays given their (global) shapes (None: unknown,
    must divide evenly); with `microbatched`, every array has a leading micro-batch axis (not
    sharded). `extra_keys`: further per-row arrays of any rank (`row_logical`), split like `targets`.

    Token arrays (and extra arrays) must divide evenly over the batch axes. The vision buffers may
    fall back to replication in a single process, but not across processes, where each process
    contributes its own block of patches and grid rows.
    """
    clash = sorted(set(extra_keys) & set(BATCH_LOGICAL))
    if clash:
        raise ValueError(f"extra batch keys {clash} are CONTRACTS.md keys, which are always carried")
    strict_vision = jax.process_count() > 1
    out = {}
    for key, shape in shapes.items():
        if key in extra_keys:
            rank = None if shape is None else len(shape) - int(microbatched)
            if rank is not None and rank < 1:
                raise ValueError(f"batch[{key!r}] has shape {tuple(shape)}: an extra batch array needs a leading "
                                 f"batch axis{' after the micro-batch axis' if microbatched else ''}")
            logical = row_logical(rank)
        elif key in BATCH_LOGICAL:
            logical = BATCH_LOGICAL[key]
        else:
            raise ValueError(f"unknown batch key {key!r}; expected {sorted(BATCH_LOGICAL)} or one of "
                             f"extra_keys={list(extra_keys)}")
        names = ((None,) if microbatched else ()) + logical
        if shape is not None and len(names) != len(shape):
            raise ValueError(f"batch[{key!r}] has shape {tuple(shape)}, expected dims {names}")
        strict = strict_vision or key not in ("pixel_values", "grid_thw")
        out[key] = logical_sharding(shape, names, mesh, rules, strict=strict, what=f"batch[{key!r}]")
    return out


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules = RULES) -> Iterator[None]:
    """Makes the model's `nn.with_logical_constraint` calls effective: the rules table plus the
    mesh (as the abstract mesh flax reads). Enter it inside the traced function."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield

"""Grouped matmul of the MoE experts: rows of `lhs` sorted by group, group g multiplied by `rhs[g]`.

Three implementations (`text.moe_gmm`):
  ragged_dot  `jax.lax.ragged_dot`: native on TPU and GPU; XLA:CPU expands it to a dense [g, m, k]
              product, so its cost grows with the number of experts (32 experts, top 2: a zoo train
              step 4x slower than the dense model's).
  tiled       megablox's layout in plain XLA, for CPU: each group's rows padded to whole tiles of
              at most `TILED_ROWS` (fewer when the groups average fewer rows), one batched matmul over
              the tiles, each with its group's weights gathered. Dropless; the work is at most
              m + g * tile rows, whatever g is.
  megablox    the Pallas TPU kernel `jax.experimental.pallas.ops.tpu.megablox.gmm` (custom VJP through
              `tgmm`). Mosaic compiles it on TPU only: on CPU it runs in Pallas interpret mode (exact, but
              slow to trace: a test path), and on GPU it falls back to `ragged_dot`.
All return zeros in the rows past `sum(group_sizes)` (megablox leaves them unwritten).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GMM_IMPLS = ("ragged_dot", "megablox", "tiled")

# Megablox tile sizes (m, k, n); a dim smaller than its tile becomes one whole-dim tile.
MEGABLOX_TILING = (128, 128, 128)
# Rows of an m tile are a multiple of the TPU sublane count.
_SUBLANES = 8
# Rows per tile of `tiled`: small enough that padding each group to whole tiles wastes little, large enough
# for an efficient [rows, k] x [k, n] product on CPU.
TILED_ROWS = 64


def grouped_matmul(lhs: jnp.ndarray, rhs: jnp.ndarray, group_sizes: jnp.ndarray,
                   impl: str = "ragged_dot") -> jnp.ndarray:
    """lhs [m, k] (rows sorted by group), rhs [g, k, n], group_sizes [g] int32 -> [m, n] in lhs.dtype."""
    if impl not in GMM_IMPLS:
        raise ValueError(f"unknown grouped matmul {impl!r}; expected one of {', '.join(GMM_IMPLS)}")
    group_sizes = group_sizes.astype(jnp.int32)
    if impl == "megablox" and jax.default_backend() != "gpu":
        return _megablox(lhs, rhs, group_sizes, interpret=jax.default_backend() != "tpu")
    if impl == "tiled":
        return _tiled(lhs, rhs, group_sizes, TILED_ROWS)
    return jax.lax.ragged_dot(lhs, rhs, group_sizes, preferred_element_type=lhs.dtype)


def megablox_tiling(m: int, k: int, n: int) -> tuple[int, int, int]:
    """Tiles for an [m, k] x [k, n] problem; m must already be a multiple of the m tile (`padded_rows`)."""
    tm, tk, tn = MEGABLOX_TILING
    return min(tm, _round_up(m, _SUBLANES)), min(tk, k), min(tn, n)


def padded_rows(m: int) -> int:
    """Rows the kernel needs: m rounded up to a whole number of m tiles."""
    tm = min(MEGABLOX_TILING[0], _round_up(m, _SUBLANES))
    return _round_up(m, tm)


def _megablox(lhs, rhs, group_sizes, *, interpret: bool):
    from jax.experimental.pallas.ops.tpu import megablox  # Pallas TPU import, only when asked for

    m, k = lhs.shape
    mp = padded_rows(m)
    # The kernel leaves rows past the groups unwritten (NaN in interpret mode), in its output and in the
    # lhs gradient: `where` (not a product) selects zeros there, both ways.
    rows = jnp.arange(mp)[:, None] < jnp.sum(group_sizes)
    x = jnp.where(rows, jnp.pad(lhs, ((0, mp - m), (0, 0))), 0)
    out = megablox.gmm(x, rhs, group_sizes, lhs.dtype, megablox_tiling(mp, k, rhs.shape[2]), interpret=interpret)
    return jnp.where(rows, out, 0)[:m]


def _tiled(lhs, rhs, group_sizes, tile_rows: int):
    m, k = lhs.shape
    g = rhs.shape[0]
    # Few rows a group (decoding: a handful of tokens over many experts) take smaller tiles.
    tm = min(tile_rows, _round_up(max(1, m // g), _SUBLANES))
    # Group i starts at a tile boundary: sum_i ceil(size_i / tm) <= m / tm + g tiles hold every group.
    num_tiles = -(-m // tm) + g
    ends = jnp.cumsum(group_sizes)
    padded = -(-group_sizes // tm) * tm
    padded_ends = jnp.cumsum(padded)
    row = jnp.arange(m)
    group = jnp.searchsorted(ends, row, side="right")  # g for the rows past every group
    in_group = group < g
    gi = jnp.minimum(group, g - 1)
    dest = jnp.where(in_group, padded_ends[gi] - padded[gi] + row - (ends[gi] - group_sizes[gi]), num_tiles * tm)
    x = jnp.zeros((num_tiles * tm, k), lhs.dtype).at[dest].set(lhs, mode="drop")
    # Tiles past the last group hold zeros; they take the last group's weights and give zeros.
    tile_group = jnp.minimum(jnp.searchsorted(padded_ends, jnp.arange(num_tiles) * tm, side="right"), g - 1)
    out = jnp.einsum("tmk,tkn->tmn", x.reshape(num_tiles, tm, k), rhs[tile_group],
                     preferred_element_type=lhs.dtype).reshape(num_tiles * tm, -1)
    return jnp.where(in_group[:, None], out.at[dest].get(mode="fill", fill_value=0), 0)


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit

"""Padding shared by the attention kernels: rows padded along the sequence with segment 0 (padding),
and padding queries' outputs set to zero."""

from __future__ import annotations

import jax.numpy as jnp


def pad_sequence(x: jnp.ndarray, n: int) -> jnp.ndarray:
    """`x` [B, L, ...] padded with zeros (segment 0: padding) along axis 1 to length `n`."""
    extra = n - x.shape[1]
    return jnp.pad(x, ((0, 0), (0, extra)) + ((0, 0),) * (x.ndim - 2)) if extra else x


def self_segment_ids(segment_ids: jnp.ndarray | None, batch: int, length: int) -> jnp.ndarray:
    """int32 [B, L] segment ids of a self-attention: the given ones, or one segment per row."""
    return jnp.ones((batch, length), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)


def zero_padding_rows(out: jnp.ndarray, segment_ids: jnp.ndarray, dtype) -> jnp.ndarray:
    """`out` [B, L, H, D] with the rows of segment 0 set to zero, as `dtype`."""
    return jnp.where((segment_ids != 0)[:, :, None, None], out, 0).astype(dtype)

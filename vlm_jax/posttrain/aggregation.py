"""Reduce per-token values [B, T] under a mask [B, T] to one scalar (verl's `agg_loss` modes).

    token_mean            sum_bt m*l / sum_bt m                       DAPO: every valid token weighs the same
    seq_mean_token_mean   mean_i (sum_t m*l / sum_t m)                GRPO, GSPO, SAPO: every sequence weighs the same
    seq_mean_token_sum    mean_i (sum_t m*l)                          sequence sums (Dr.GRPO divides by a constant)

The sequence means run over rows with at least one valid token: an all-masked row (padding) is not a
sequence. The mask may hold weights; 0 means "not trained". `denominator` replaces the outer divisor
(the token count for token_mean, the sequence count for the seq modes) so that each micro-batch of an
optimizer batch can divide by the whole batch's count and the micro-batch losses add up, as
`vlm_jax.train.losses` does. Nothing valid gives 0, not NaN.
"""

from __future__ import annotations

import jax.numpy as jnp

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")

_TINY = 1e-8


def check_aggregation(mode: str) -> None:
    """Raise ValueError naming the valid modes when `mode` is not one of them."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose from {', '.join(AGGREGATIONS)}")


def aggregate(values: jnp.ndarray, mask: jnp.ndarray, mode: str = "token_mean",
              denominator: jnp.ndarray | float | None = None) -> jnp.ndarray:
    """The float32 scalar of `values` [B, T] reduced under `mask` [B, T] by `mode` (module docstring)."""
    check_aggregation(mode)
    if values.shape != mask.shape or values.ndim != 2:
        raise ValueError(f"aggregate needs values and mask of one shape [B, T]; got {values.shape} and {mask.shape}")
    m = mask.astype(jnp.float32)
    # where(): a masked position contributes exactly 0 even when its value is inf or NaN.
    weighted = jnp.where(m != 0, values.astype(jnp.float32) * m, 0.0)
    if mode == "token_mean":
        total, count = jnp.sum(weighted), jnp.sum(m)
    else:
        row_weight = jnp.sum(m, axis=-1)
        row_sum = jnp.sum(weighted, axis=-1)
        if mode == "seq_mean_token_mean":
            row_sum = row_sum / jnp.maximum(row_weight, _TINY)
        total, count = jnp.sum(row_sum), jnp.sum((row_weight > 0).astype(jnp.float32))
    if denominator is not None:
        count = jnp.asarray(denominator, jnp.float32)
    return total / jnp.maximum(count, _TINY)


def masked_mean(values: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Mean of `values` over the valid tokens (token_mean), for metrics."""
    return aggregate(values, mask, "token_mean")

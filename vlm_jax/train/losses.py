"""Training losses as pure functions of arrays.

Definition (shared with `vlm_jax.data.packing`): with per-position weights w (`loss_weights`,
0 = not trained) and per-position cross-entropy ce = logsumexp(logits) - logits[target],

    loss = sum(w * ce) / sum(w)

where both sums run over the whole global batch: all rows, all devices and all micro-batches of
a gradient-accumulation step (numerators and denominators are summed separately and divided
once). The pipeline folds the normalisation mode into w: 'token' w = 1 per supervised position
(mean over tokens), 'sample' w = 1/n_i (mean over samples), 'sqrt' w = 1/sqrt(n_i) (Qwen3-VL
square-root reweighting). A batch with no weighted position gives loss 0, not NaN (the
denominator is clamped to 1e-8).

Optional terms: z-loss coef * sum(w * logsumexp^2) / sum(w), and the MoE load-balancing loss
coef * aux (aux from the model, already averaged over layers' routed tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_TINY = 1e-8


def token_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-position cross-entropy and logsumexp, both float32 [...], from logits [..., V].

    Computed as logsumexp - logit[target] (no [.., V] log-softmax tensor is materialised
    besides what logsumexp needs)."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - picked, lse


def weighted_sums(logits: jnp.ndarray, targets: jnp.ndarray, loss_weights: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """The additive pieces of the loss over one (micro-)batch: {"ce_sum": sum(w*ce),
    "z_sum": sum(w*lse^2), "weight_sum": sum(w), "ce" [..], "weights" [..]}."""
    ce, lse = token_cross_entropy(logits, targets)
    w = loss_weights.astype(jnp.float32)
    # where(): a position with weight 0 contributes exactly 0 even if its logits overflow.
    active = w != 0
    return {
        "ce_sum": jnp.sum(jnp.where(active, w * ce, 0.0)),
        "z_sum": jnp.sum(jnp.where(active, w * jnp.square(lse), 0.0)),
        "weight_sum": jnp.sum(w),
        "ce": ce,
        "weights": w,
    }


def normalize(total: jnp.ndarray, weight_sum: jnp.ndarray) -> jnp.ndarray:
    """total / weight_sum, 0 when nothing is weighted."""
    return total / jnp.maximum(weight_sum, _TINY)


def cross_entropy_loss(logits: jnp.ndarray, targets: jnp.ndarray, loss_weights: jnp.ndarray,
                       z_loss_coef: float = 0.0) -> dict[str, jnp.ndarray]:
    """{"loss": ce + z, "ce_loss": sum(w*ce)/sum(w), "z_loss": coef*sum(w*lse^2)/sum(w), "weight_sum"}."""
    s = weighted_sums(logits, targets, loss_weights)
    ce_loss = normalize(s["ce_sum"], s["weight_sum"])
    z_loss = z_loss_coef * normalize(s["z_sum"], s["weight_sum"])
    return {"loss": ce_loss + z_loss, "ce_loss": ce_loss, "z_loss": z_loss, "weight_sum": s["weight_sum"]}


def moe_aux_loss(aux_loss: jnp.ndarray, coef: float) -> jnp.ndarray:
    """The load-balancing term added to the objective (the model returns it unscaled)."""
    return coef * aux_loss


def per_task_sums(ce: jnp.ndarray, weights: jnp.ndarray, task_ids: jnp.ndarray,
                  num_tasks: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-task sum(w*ce) and sum(w), each [num_tasks + 1] (task id 0 = none / padding; ids
    above num_tasks are counted under 0). Divide with `normalize` after summing over batches."""
    ids = jnp.where((task_ids >= 0) & (task_ids <= num_tasks), task_ids, 0).reshape(-1)
    wce = jnp.where(weights != 0, weights * ce, 0.0).reshape(-1)
    ce_sum = jax.ops.segment_sum(wce, ids, num_segments=num_tasks + 1)
    w_sum = jax.ops.segment_sum(weights.reshape(-1), ids, num_segments=num_tasks + 1)
    return ce_sum, w_sum

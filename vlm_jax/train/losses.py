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

The train step takes its loss as a function (`make_train_step(..., loss_fn=...)`, type `LossFn`):

    loss_fn(model_out, batch, weight_total) -> (objective, stats)

model_out: the model's outputs ({"logits" [B, S, V], "aux_loss"}); batch: one (micro-)batch
(docs/CONTRACTS.md keys); weight_total: sum(loss_weights) over the whole optimizer batch (clamped
to 1e-8). The step differentiates `objective` and adds objectives and stats up over micro-batches, so
both must be additive: a micro-batch's share of the whole batch's value (divide by weight_total, not
by the micro-batch's own weights). A loss whose normaliser is not sum(loss_weights) (a sequence count)
may define `weight_total(batch) -> scalar`, which the step evaluates on the whole optimizer batch instead;
`extra_keys` names batch arrays it needs beyond CONTRACTS.md (`vlm_jax.train.step`). A loss may also
define `metrics(stats, weight_total) -> dict` (with "loss") to turn the summed stats into reported
metrics; without it the step reports "loss" (the summed objective) and the summed stats under their
own names. `NextTokenLoss` is the default: the weighted cross-entropy above, plus z-loss, the MoE
term and per-task sums.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

_TINY = 1e-8


def token_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-position cross-entropy and logsumexp, both float32 [...], from logits [..., V].

    ce = logsumexp - logit[target]. The backward pass is written out (`_ce_lse`): autodiff of
    logsumexp keeps the shifted exponentials and walks the [.., V] logits four more times, which
    on CPU costs more than the LM head's matmul for a 32K vocabulary; here the gradient,
    (g_ce + g_lse) * softmax - g_ce * onehot(target), is one pass over the logits and lse."""
    return _ce_lse(logits, targets.astype(jnp.int32))


@jax.custom_vjp
def _ce_lse(logits, targets):
    return _ce_lse_fwd(logits, targets)[0]


def _ce_lse_fwd(logits, targets):
    x = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(x, axis=-1)
    picked = jnp.take_along_axis(x, targets[..., None], axis=-1)[..., 0]
    return (lse - picked, lse), (logits, targets, lse)


def _ce_lse_bwd(res, cotangents):
    logits, targets, lse = res
    g_ce, g_lse = cotangents
    x = logits.astype(jnp.float32)
    onehot = jnp.arange(x.shape[-1], dtype=jnp.int32) == targets[..., None]
    grad = jnp.exp(x - lse[..., None]) * (g_ce + g_lse)[..., None] - jnp.where(onehot, g_ce[..., None], 0.0)
    # Integer targets get a float0 cotangent, as JAX expects for non-differentiable inputs.
    return grad.astype(logits.dtype), np.zeros(targets.shape, jax.dtypes.float0)


_ce_lse.defvjp(_ce_lse_fwd, _ce_lse_bwd)


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


LossFn = Callable[[Mapping[str, jnp.ndarray], Mapping[str, jnp.ndarray], jnp.ndarray],
                  tuple[jnp.ndarray, dict[str, jnp.ndarray]]]


@dataclasses.dataclass(frozen=True)
class NextTokenLoss:
    """The default `LossFn`: sum(w * (ce + z_loss_coef * lse^2)) / weight_total plus the MoE term
    aux_coef * aux / num_micro (the step sums it over `num_micro` micro-batches: their mean).

    Stats (sums over the micro-batch): ce_sum, z_sum, aux; with num_tasks > 0 also task_ce and
    task_w [num_tasks + 1]. `metrics` turns their totals into loss, ce_loss, z_loss, moe_aux_loss
    (and task_loss, task_weight)."""

    z_loss_coef: float = 0.0
    aux_coef: float = 0.0
    num_micro: int = 1
    num_tasks: int = 0

    @classmethod
    def from_configs(cls, model_config: mlc.ConfigDict, train_config: mlc.ConfigDict) -> NextTokenLoss:
        """The loss a train config asks for (loss.z_loss_coef, loss.num_tasks, grad_accum_steps; the
        model's router_aux_loss_coef for MoE models)."""
        t = model_config.text
        return cls(z_loss_coef=float(train_config.loss.z_loss_coef),
                   aux_coef=float(t.router_aux_loss_coef) if t.num_experts else 0.0,
                   num_micro=int(train_config.grad_accum_steps), num_tasks=int(train_config.loss.num_tasks))

    def __call__(self, model_out: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray],
                 weight_total: jnp.ndarray) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        s = weighted_sums(model_out["logits"], batch["targets"], batch["loss_weights"])
        aux = model_out["aux_loss"].astype(jnp.float32)
        objective = (s["ce_sum"] + self.z_loss_coef * s["z_sum"]) / weight_total + self.aux_coef * aux / self.num_micro
        stats = {"ce_sum": s["ce_sum"], "z_sum": s["z_sum"], "aux": aux}
        if self.num_tasks:
            stats["task_ce"], stats["task_w"] = per_task_sums(s["ce"], s["weights"], batch["task_ids"], self.num_tasks)
        return objective, stats

    def metrics(self, stats: Mapping[str, jnp.ndarray], weight_total: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Reported metrics from the stats summed over the step's micro-batches."""
        ce_loss = stats["ce_sum"] / weight_total
        z_loss = self.z_loss_coef * stats["z_sum"] / weight_total
        moe_aux = self.aux_coef * (stats["aux"] / self.num_micro if self.num_micro > 1 else stats["aux"])
        out = {"loss": ce_loss + z_loss + moe_aux, "ce_loss": ce_loss, "z_loss": z_loss, "moe_aux_loss": moe_aux}
        if self.num_tasks:
            out["task_loss"] = normalize(stats["task_ce"], stats["task_w"])
            out["task_weight"] = stats["task_w"]
        return out

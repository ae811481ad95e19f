"""Distillation losses as pure functions: per-token divergences between a student and a frozen teacher.

Logit losses share one signature:

    loss_fn(student_logits, teacher_logits, mask, *, temperature=1.0, aggregation="token_mean",
            denominator=None, **own options) -> (loss, metrics)

student_logits, teacher_logits [B, T, V] at the same positions (the teacher runs one forward pass over
the same sequence); mask [B, T] marks the trained positions. Both are divided by `temperature` and
turned into log-probs in float32; the teacher is a constant (stop_gradient). There is no T^2 factor
(as TRL's GKD; Hinton-style KD multiplies by T^2 to keep gradient scale, do it outside if wanted).
Per-token divergences are reduced by `aggregation.aggregate`, default token_mean (masked mean).

  forward_kl        KL(p_T || p_S) = sum_v p_T (log p_T - log p_S): off-policy logit KD, mode-covering.
  reverse_kl        KL(p_S || p_T), the full-vocabulary version of on-policy distillation.
  generalized_jsd   GKD's JSD(beta) = beta KL(p_T || M) + (1 - beta) KL(p_S || M), M = beta p_T + (1 - beta) p_S.
                    JSD(beta) itself goes to 0 at both ends; JSD/beta -> forward KL as beta -> 0 and
                    JSD/(1 - beta) -> reverse KL as beta -> 1, so beta = 0 and beta = 1 are defined as
                    those KLs (TRL's special cases).

The sampled form takes log-probs of the tokens the student sampled instead of logits:

  reverse_kl_sampled(student_logp, teacher_logp, mask) with [B, T] log-probs: value = the per-token
  estimate d = log p_S(y_t) - log p_T(y_t) reduced; gradient = sg(d) * grad log p_S(y_t), the
  score-function gradient of KL(p_S || p_T) per position with discount 0 (advantage -d, as the
  Tinker on-policy distillation recipe). Its expectation over y_t ~ p_S equals reverse_kl's gradient;
  the pathwise gradient of d alone (grad log p_S, zero mean) is left out.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vlm_jax.posttrain.aggregation import aggregate, check_aggregation
from vlm_jax.posttrain.registry import lookup

Metrics = dict[str, jnp.ndarray]
DistillLoss = Callable[..., tuple[jnp.ndarray, Metrics]]


def log_probs(logits: jnp.ndarray, temperature: float = 1.0) -> jnp.ndarray:
    """float32 log-softmax of logits / temperature over the last axis."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def kl_divergence(logp: jnp.ndarray, logq: jnp.ndarray) -> jnp.ndarray:
    """KL(p || q) = sum_v p (log p - log q) over the last axis, from log-probs; terms with p = 0 are 0
    (also when log q = -inf there), with finite gradients."""
    p = jnp.exp(logp)
    # Double where: the unselected branch (-inf - x) must not reach the gradient as 0 * inf = NaN.
    diff = jnp.where(p > 0, logp - jnp.where(p > 0, logq, 0.0), 0.0)
    return jnp.sum(p * diff, axis=-1)


def _check(student, teacher, mask, aggregation, logits: bool) -> None:
    what = "[B, T, V] logits" if logits else "[B, T] log-probs"
    if student.shape != teacher.shape or student.ndim != (3 if logits else 2):
        raise ValueError(f"student and teacher must be {what} of one shape; got {student.shape} and {teacher.shape}")
    if mask.shape != student.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} must be [B, T] = {student.shape[:2]}")
    check_aggregation(aggregation)


def _logit_metrics(s_logp, t_logp, mask) -> Metrics:
    agree = jnp.argmax(s_logp, axis=-1) == jnp.argmax(t_logp, axis=-1)
    m = mask.astype(jnp.float32)
    return {"top1_agreement": aggregate(agree, mask), "token_count": jnp.sum(m)}


def _log_probs_pair(student_logits, teacher_logits, temperature):
    return log_probs(student_logits, temperature), log_probs(jax.lax.stop_gradient(teacher_logits), temperature)


def _full_kl_loss(student_logits, teacher_logits, mask, temperature, aggregation, denominator, reverse: bool):
    _check(student_logits, teacher_logits, mask, aggregation, logits=True)
    s, t = _log_probs_pair(student_logits, teacher_logits, temperature)
    per_position = kl_divergence(s, t) if reverse else kl_divergence(t, s)
    return aggregate(per_position, mask, aggregation, denominator), _logit_metrics(s, t, mask)


def forward_kl_loss(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, mask: jnp.ndarray, *,
                    temperature: float = 1.0, aggregation: str = "token_mean",
                    denominator: jnp.ndarray | float | None = None) -> tuple[jnp.ndarray, Metrics]:
    """KL(teacher || student) per position, reduced under the mask (module docstring)."""
    return _full_kl_loss(student_logits, teacher_logits, mask, temperature, aggregation, denominator, reverse=False)


def reverse_kl_loss(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, mask: jnp.ndarray, *,
                    temperature: float = 1.0, aggregation: str = "token_mean",
                    denominator: jnp.ndarray | float | None = None) -> tuple[jnp.ndarray, Metrics]:
    """KL(student || teacher) per position over the full vocabulary, reduced under the mask."""
    return _full_kl_loss(student_logits, teacher_logits, mask, temperature, aggregation, denominator, reverse=True)


def generalized_jsd_loss(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, mask: jnp.ndarray, *,
                         beta: float = 0.5, temperature: float = 1.0, aggregation: str = "token_mean",
                         denominator: jnp.ndarray | float | None = None) -> tuple[jnp.ndarray, Metrics]:
    """GKD's generalized JSD(beta) per position (beta = 0: forward KL, 1: reverse KL), reduced under the mask.

    beta defaults to 0.5 (TRL GKDConfig)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must be in [0, 1]")
    if beta == 0.0:
        return forward_kl_loss(student_logits, teacher_logits, mask, temperature=temperature,
                               aggregation=aggregation, denominator=denominator)
    if beta == 1.0:
        return reverse_kl_loss(student_logits, teacher_logits, mask, temperature=temperature,
                               aggregation=aggregation, denominator=denominator)
    _check(student_logits, teacher_logits, mask, aggregation, logits=True)
    s, t = _log_probs_pair(student_logits, teacher_logits, temperature)
    mixture = jnp.logaddexp(t + jnp.log(beta), s + jnp.log1p(-beta))
    jsd = beta * kl_divergence(t, mixture) + (1.0 - beta) * kl_divergence(s, mixture)
    return aggregate(jsd, mask, aggregation, denominator), _logit_metrics(s, t, mask)


def reverse_kl_sampled_loss(student_logp: jnp.ndarray, teacher_logp: jnp.ndarray, mask: jnp.ndarray, *,
                            aggregation: str = "token_mean",
                            denominator: jnp.ndarray | float | None = None) -> tuple[jnp.ndarray, Metrics]:
    """Per-token reverse KL on the student's own samples from [B, T] log-probs (module docstring)."""
    _check(student_logp, teacher_logp, mask, aggregation, logits=False)
    valid = mask != 0
    s = jnp.where(valid, student_logp.astype(jnp.float32), 0.0)
    t = jnp.where(valid, jax.lax.stop_gradient(teacher_logp).astype(jnp.float32), 0.0)
    d = jax.lax.stop_gradient(s - t)
    per_token = d + d * (s - jax.lax.stop_gradient(s))  # value d, gradient d * grad log p_S
    loss = aggregate(per_token, mask, aggregation, denominator)
    return loss, {"token_count": jnp.sum(mask.astype(jnp.float32))}


DISTILL_LOSSES: dict[str, DistillLoss] = {
    "forward_kl": forward_kl_loss,
    "reverse_kl": reverse_kl_loss,
    "generalized_jsd": generalized_jsd_loss,
    "reverse_kl_sampled": reverse_kl_sampled_loss,
}


def get_distill_loss(name: str, **options) -> DistillLoss:
    """The named distillation loss with `options` (its keyword arguments, e.g. beta=0.9) bound.

    Unknown names or options raise ValueError naming the valid ones."""
    return lookup(DISTILL_LOSSES, "distillation loss", name, options)

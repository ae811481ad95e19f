"""RL policy losses as pure functions of per-token log-probs (loss = minus the objective).

Every loss shares one signature:

    loss_fn(new_logp, old_logp, advantages, mask, *, ref_logp=None, beta=0.0, kl_estimator="k3",
            aggregation=..., denominator=None, **own options) -> (loss, metrics)

new_logp [B, T]: log pi_theta of the sampled tokens (differentiated); old_logp [B, T]: log pi_old from
the rollout policy; ref_logp [B, T]: log pi_ref, needed only when beta > 0; advantages [B] (one per
sequence, e.g. `advantages.group_advantages(...).reshape(-1)`) or [B, T] (per token; not for "gspo");
mask [B, T]: 1 on tokens the policy generated, 0 on prompt, padding and tool-observation tokens.
old_logp, ref_logp and advantages are treated as constants (stop_gradient), so passing
old_logp = new_logp gives the on-policy loss with ratio 1 and the plain policy gradient.
Options (beta, clip eps, tau, ...) are Python numbers and strings: static under jit, checked eagerly.

Log-ratios are taken in float32, zeroed on masked tokens (garbage there cannot reach the loss or the
gradient) and clamped before exp (verl: [-20, 20]; at most 10 for GSPO's sequence ratio). Per-token
losses are reduced by `aggregation.aggregate` (`aggregation`, `denominator`). With beta > 0 the
per-token KL penalty beta * k(new_logp, ref_logp) is added before the reduction (GRPO puts the KL in
the loss, not the reward).

  grpo        -min(r A, clip(r, 1-eps_low, 1+eps_high) A), r = exp(new - old) per token. eps_high
              defaults to eps_low; DAPO = clip_eps_high=0.28, aggregation="token_mean".
  gspo        the same clip on the sequence ratio s_i = exp(mean over valid tokens of (new - old)),
              one value per sequence; defaults eps 3e-4 / 4e-4 (GSPO paper v2).
  gspo_token  s_it = sg(s_i) * exp(new_t - sg(new_t)): value and gradient equal GSPO's when the
              advantages are per sequence, but accepts per-token advantages.
  sapo        -(4/tau) sigmoid(tau (r - 1)) A, tau = tau_pos if A > 0 else tau_neg; no clip. The
              gradient weight d f/d r = 4 s (1 - s), s = sigmoid(tau (r - 1)), is 1 at r = 1 for every
              tau and decays smoothly away from it.

Metrics (per call, means over valid tokens unless said): pg_loss (the policy part, aggregated like the
loss), ratio_mean, approx_kl (k3 estimate of KL(pi_old || pi_theta)), kl (the aggregated penalty
estimate, when ref_logp is given), and clip_fraction (grpo, gspo_token: tokens; gspo: sequences) or
gate_weight_mean (sapo: mean gradient weight, 1 on-policy).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vlm_jax.posttrain.aggregation import aggregate, check_aggregation, masked_mean
from vlm_jax.posttrain.registry import lookup

KL_ESTIMATORS = ("k1", "k2", "k3")

_LOG_RATIO_MIN = -20.0
_LOG_RATIO_MAX = 20.0
_SEQ_LOG_RATIO_MAX = 10.0  # verl's GSPO clamp: a sequence ratio above e^10 is noise, not signal

Metrics = dict[str, jnp.ndarray]
PolicyLoss = Callable[..., tuple[jnp.ndarray, Metrics]]


def kl_penalty(logp: jnp.ndarray, ref_logp: jnp.ndarray, estimator: str = "k3") -> jnp.ndarray:
    """Per-token estimate of KL(pi_theta || pi_ref) from the sampled tokens' log-probs, d = logp - ref_logp.

    k1 = d (unbiased, can be < 0); k2 = d^2 / 2; k3 = exp(-d) + d - 1 (GRPO's "low_var_kl": unbiased,
    >= 0). k1 and k3 have the right expectation, not the KL's gradient."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose from {', '.join(KL_ESTIMATORS)}")
    d = logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * jnp.square(d)
    d = jnp.clip(d, _LOG_RATIO_MIN, _LOG_RATIO_MAX)
    return jnp.exp(-d) + d - 1.0


def _check_inputs(new_logp, old_logp, advantages, mask, ref_logp, beta, kl_estimator, aggregation) -> None:
    if new_logp.ndim != 2:
        raise ValueError(f"new_logp must be [B, T]; got shape {new_logp.shape}")
    for name, x in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp)):
        if x is not None and x.shape != new_logp.shape:
            raise ValueError(f"{name} shape {x.shape} differs from new_logp shape {new_logp.shape}")
    if advantages.shape not in (new_logp.shape[:1], new_logp.shape):
        raise ValueError(f"advantages must be [B] or [B, T] = {new_logp.shape}; got shape {advantages.shape}")
    if beta < 0:
        raise ValueError(f"beta={beta} must be >= 0")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logp (the reference policy's log-probs)")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl_estimator!r}; choose from {', '.join(KL_ESTIMATORS)}")
    check_aggregation(aggregation)


def _check_clip(eps_low: float, eps_high: float | None) -> tuple[float, float]:
    eps_high = eps_low if eps_high is None else eps_high
    if not 0 <= eps_low < 1 or eps_high < 0:
        raise ValueError(f"clip eps must satisfy 0 <= clip_eps_low < 1 and clip_eps_high >= 0; "
                         f"got {eps_low}, {eps_high}")
    return eps_low, eps_high


def _log_ratio(new_logp, old_logp, valid) -> jnp.ndarray:
    """new - old in float32, 0 on masked tokens (before any exp: no inf/NaN from padding)."""
    diff = new_logp.astype(jnp.float32) - jax.lax.stop_gradient(old_logp).astype(jnp.float32)
    return jnp.where(valid, diff, 0.0)


def _token_advantages(advantages, shape) -> jnp.ndarray:
    a = jax.lax.stop_gradient(jnp.asarray(advantages)).astype(jnp.float32)
    return jnp.broadcast_to(a[:, None] if a.ndim == 1 else a, shape)


def _clipped_objective(ratio, adv, eps_low, eps_high) -> tuple[jnp.ndarray, jnp.ndarray]:
    """PPO-clip loss -min(r A, clip(r) A) and where the clipped branch bites (gradient 0 there)."""
    loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))
    return loss, clipped


def _finish(pg_token, mask, valid, new_logp, ref_logp, beta, kl_estimator, aggregation, denominator,
            metrics: Metrics) -> tuple[jnp.ndarray, Metrics]:
    """Add the KL penalty, reduce, and complete the metrics."""
    pg_loss = aggregate(pg_token, mask, aggregation, denominator)
    loss = pg_loss
    metrics = {"pg_loss": pg_loss, **metrics}
    if ref_logp is not None:
        # Zero both inputs on masked tokens first: a where() after the exp would still pass 0 * NaN
        # into the gradient when padding holds -inf or NaN log-probs.
        new32 = jnp.where(valid, new_logp.astype(jnp.float32), 0.0)
        ref32 = jnp.where(valid, jax.lax.stop_gradient(ref_logp).astype(jnp.float32), 0.0)
        kl_token = jnp.where(valid, kl_penalty(new32, ref32, kl_estimator), 0.0)
        kl = aggregate(kl_token, mask, aggregation, denominator)
        metrics["kl"] = kl
        if beta > 0:
            loss = loss + beta * kl
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def _approx_kl(log_ratio, mask) -> jnp.ndarray:
    """k3 estimate of KL(pi_old || pi_theta) on tokens sampled from pi_old: (r - 1) - log r, r = new/old."""
    lr = jnp.clip(log_ratio, _LOG_RATIO_MIN, _LOG_RATIO_MAX)
    return masked_mean(jnp.expm1(lr) - lr, mask)


def grpo_loss(new_logp: jnp.ndarray, old_logp: jnp.ndarray, advantages: jnp.ndarray, mask: jnp.ndarray, *,
              ref_logp: jnp.ndarray | None = None, beta: float = 0.0, kl_estimator: str = "k3",
              aggregation: str = "seq_mean_token_mean", denominator: jnp.ndarray | float | None = None,
              clip_eps_low: float = 0.2, clip_eps_high: float | None = None) -> tuple[jnp.ndarray, Metrics]:
    """GRPO / DAPO token-level PPO-clip loss (module docstring); clip_eps_high None = clip_eps_low."""
    _check_inputs(new_logp, old_logp, advantages, mask, ref_logp, beta, kl_estimator, aggregation)
    eps_low, eps_high = _check_clip(clip_eps_low, clip_eps_high)
    valid = mask != 0
    log_ratio = _log_ratio(new_logp, old_logp, valid)
    ratio = jnp.exp(jnp.clip(log_ratio, _LOG_RATIO_MIN, _LOG_RATIO_MAX))
    pg_token, clipped = _clipped_objective(ratio, _token_advantages(advantages, ratio.shape), eps_low, eps_high)
    metrics = {"clip_fraction": masked_mean(clipped, mask), "ratio_mean": masked_mean(ratio, mask),
               "approx_kl": _approx_kl(log_ratio, mask)}
    return _finish(pg_token, mask, valid, new_logp, ref_logp, beta, kl_estimator, aggregation, denominator, metrics)


def _sequence_log_ratio(log_ratio, valid) -> jnp.ndarray:
    """log s_i = mean over the valid tokens of row i of the log-ratio, [B] (0 for an all-masked row)."""
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)
    return jnp.clip(jnp.sum(log_ratio, axis=-1) / jnp.maximum(count, 1.0), _LOG_RATIO_MIN, _SEQ_LOG_RATIO_MAX)


def gspo_loss(new_logp: jnp.ndarray, old_logp: jnp.ndarray, advantages: jnp.ndarray, mask: jnp.ndarray, *,
              ref_logp: jnp.ndarray | None = None, beta: float = 0.0, kl_estimator: str = "k3",
              aggregation: str = "seq_mean_token_mean", denominator: jnp.ndarray | float | None = None,
              clip_eps_low: float = 3e-4, clip_eps_high: float | None = 4e-4) -> tuple[jnp.ndarray, Metrics]:
    """GSPO: PPO-clip on the length-normalised sequence ratio; advantages must be per sequence [B].

    Each sequence's loss is spread over its valid tokens, so seq_mean_token_mean gives the paper's
    1/G sum_i; token_mean weighs sequences by length."""
    _check_inputs(new_logp, old_logp, advantages, mask, ref_logp, beta, kl_estimator, aggregation)
    if advantages.ndim != 1:
        raise ValueError(f"gspo needs per-sequence advantages [B]; got shape {advantages.shape} "
                         "(use gspo_token for per-token advantages)")
    eps_low, eps_high = _check_clip(clip_eps_low, clip_eps_high)
    valid = mask != 0
    log_ratio = _log_ratio(new_logp, old_logp, valid)
    seq_ratio = jnp.exp(_sequence_log_ratio(log_ratio, valid))
    seq_adv = jax.lax.stop_gradient(jnp.asarray(advantages)).astype(jnp.float32)
    seq_loss, seq_clipped = _clipped_objective(seq_ratio, seq_adv, eps_low, eps_high)
    pg_token = jnp.broadcast_to(seq_loss[:, None], new_logp.shape)
    per_seq = lambda x: aggregate(jnp.broadcast_to(x[:, None], new_logp.shape), mask, "seq_mean_token_mean")
    metrics = {"clip_fraction": per_seq(seq_clipped), "ratio_mean": per_seq(seq_ratio),
               "approx_kl": _approx_kl(log_ratio, mask)}
    return _finish(pg_token, mask, valid, new_logp, ref_logp, beta, kl_estimator, aggregation, denominator, metrics)


def gspo_token_loss(new_logp: jnp.ndarray, old_logp: jnp.ndarray, advantages: jnp.ndarray, mask: jnp.ndarray, *,
                    ref_logp: jnp.ndarray | None = None, beta: float = 0.0, kl_estimator: str = "k3",
                    aggregation: str = "seq_mean_token_mean", denominator: jnp.ndarray | float | None = None,
                    clip_eps_low: float = 3e-4, clip_eps_high: float | None = 4e-4) -> tuple[jnp.ndarray, Metrics]:
    """GSPO-token: token ratio s_it = sg(s_i) * pi(y_t) / sg(pi(y_t)), clipped per token; [B] or [B, T] advantages."""
    _check_inputs(new_logp, old_logp, advantages, mask, ref_logp, beta, kl_estimator, aggregation)
    eps_low, eps_high = _check_clip(clip_eps_low, clip_eps_high)
    valid = mask != 0
    log_ratio = _log_ratio(new_logp, old_logp, valid)
    new32 = jnp.where(valid, new_logp.astype(jnp.float32), 0.0)
    # Value: exactly s_i (x - sg(x) is 0); gradient: s_i * d new_t, as in the paper's eq. for GSPO-token.
    log_s = jax.lax.stop_gradient(_sequence_log_ratio(log_ratio, valid))[:, None] + new32 - jax.lax.stop_gradient(new32)
    ratio = jnp.exp(log_s)
    pg_token, clipped = _clipped_objective(ratio, _token_advantages(advantages, ratio.shape), eps_low, eps_high)
    metrics = {"clip_fraction": masked_mean(clipped, mask), "ratio_mean": masked_mean(ratio, mask),
               "approx_kl": _approx_kl(log_ratio, mask)}
    return _finish(pg_token, mask, valid, new_logp, ref_logp, beta, kl_estimator, aggregation, denominator, metrics)


def sapo_gate(ratio: jnp.ndarray, tau: jnp.ndarray | float) -> jnp.ndarray:
    """SAPO's soft gate f(r) = (4 / tau) * sigmoid(tau * (r - 1)); f'(1) = 1 for every tau."""
    return (4.0 / tau) * jax.nn.sigmoid(tau * (ratio - 1.0))


def sapo_loss(new_logp: jnp.ndarray, old_logp: jnp.ndarray, advantages: jnp.ndarray, mask: jnp.ndarray, *,
              ref_logp: jnp.ndarray | None = None, beta: float = 0.0, kl_estimator: str = "k3",
              aggregation: str = "seq_mean_token_mean", denominator: jnp.ndarray | float | None = None,
              tau_pos: float = 1.0, tau_neg: float = 1.05) -> tuple[jnp.ndarray, Metrics]:
    """SAPO: -f(r) A with the soft gate f (`sapo_gate`), tau_pos for A > 0 and tau_neg otherwise.

    Defaults tau_pos = 1.0, tau_neg = 1.05 (verl, TRL); verl and TRL force seq_mean_token_mean."""
    _check_inputs(new_logp, old_logp, advantages, mask, ref_logp, beta, kl_estimator, aggregation)
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"SAPO temperatures must be > 0; got tau_pos={tau_pos}, tau_neg={tau_neg}")
    valid = mask != 0
    log_ratio = _log_ratio(new_logp, old_logp, valid)
    ratio = jnp.exp(jnp.clip(log_ratio, _LOG_RATIO_MIN, _LOG_RATIO_MAX))
    adv = _token_advantages(advantages, ratio.shape)
    tau = jnp.where(adv > 0, tau_pos, tau_neg).astype(jnp.float32)
    pg_token = -sapo_gate(ratio, tau) * adv
    s = jax.nn.sigmoid(tau * (ratio - 1.0))
    metrics = {"gate_weight_mean": masked_mean(4.0 * s * (1.0 - s), mask), "ratio_mean": masked_mean(ratio, mask),
               "approx_kl": _approx_kl(log_ratio, mask)}
    return _finish(pg_token, mask, valid, new_logp, ref_logp, beta, kl_estimator, aggregation, denominator, metrics)


POLICY_LOSSES: dict[str, PolicyLoss] = {
    "grpo": grpo_loss,
    "gspo": gspo_loss,
    "gspo_token": gspo_token_loss,
    "sapo": sapo_loss,
}


def get_policy_loss(name: str, **options) -> PolicyLoss:
    """The named policy loss, with `options` (its keyword arguments, e.g. clip_eps_high=0.28) bound.

    Unknown names or options raise ValueError naming the valid ones."""
    return lookup(POLICY_LOSSES, "policy loss", name, options)

"""RL and distillation objectives for the train step: `make_train_step(loss_fn=PolicyObjective(...))`.

They wrap `policy_losses` / `distill_losses` in the step's LossFn contract (`vlm_jax.train.losses`):
`(model_out, batch, weight_total) -> (objective, stats)`, `metrics(stats, weight_total)`, plus
`extra_keys` (per-row batch arrays beyond CONTRACTS.md, carried by `put_batch(..., extra_keys=...)`)
and `weight_total(batch)`.

Batch layout: one sequence per row (no packing): segment_ids 1 on real tokens, targets the next tokens,
loss_weights > 0 on the tokens being trained (the policy's own tokens; 0 on prompt, padding and tool
observations). Only loss_weights > 0 is used, as a 0/1 mask; the weights' values are not.

Additivity under gradient accumulation: the policy and distillation losses are means (over tokens, or
over sequences of per-sequence means), not sums. `weight_total(batch)` returns the divisor of the
chosen aggregation counted over the whole optimizer batch (tokens with loss_weights > 0 for
token_mean; rows with at least one for the seq modes); the step evaluates it before splitting into
micro-batches, and every micro-batch passes it as the loss's `denominator`. Micro-batch objectives then
add up exactly to the whole batch's loss for any grad_accum_steps. Mean metrics travel as
(value * count) sums with their counts and are divided once in `metrics`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vlm_jax.posttrain import distill_losses, policy_losses

Stats = dict[str, jnp.ndarray]

# Metrics a policy loss reports as means over sequences rather than tokens (gspo clips whole sequences).
_SEQUENCE_METRICS = {"gspo": ("clip_fraction", "ratio_mean")}
_POLICY_MEANS = ("ratio_mean", "approx_kl", "clip_fraction", "gate_weight_mean")


def _aggregation(registry: Mapping[str, Any], name: str, options: Mapping[str, Any]) -> str:
    """The aggregation mode the named loss will use (its option, else its default)."""
    if "denominator" in options:
        raise ValueError("option 'denominator' is set by the objective (the whole optimizer batch's count); "
                         "do not pass it")
    default = inspect.signature(registry[name]).parameters["aggregation"].default
    return options.get("aggregation", default)


def _mask(batch: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
    return batch["loss_weights"] > 0


def _counts(mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(trained tokens, rows with any trained token) as float32, over every axis of `mask` [..., S]."""
    tokens = jnp.sum(mask.astype(jnp.float32))
    rows = jnp.sum(jnp.any(mask, axis=-1).astype(jnp.float32))
    return tokens, rows


def _divisor(batch: Mapping[str, jnp.ndarray], aggregation: str) -> jnp.ndarray:
    tokens, rows = _counts(_mask(batch))
    return tokens if aggregation == "token_mean" else rows


def token_log_probs(logits: jnp.ndarray, targets: jnp.ndarray,
                    temperature: float = 1.0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(log p(target) [B, S], entropy [B, S]) of softmax(logits / temperature), in float32.

    The entropy is a metric: its gradient is stopped."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    sg = jax.lax.stop_gradient(logp)
    entropy = -jnp.sum(jnp.exp(sg) * sg, axis=-1)
    return picked, entropy


class PolicyObjective:
    """An RL policy loss (`policy_losses.get_policy_loss(name, **options)`) as a train-step loss.

    new_logp = log softmax(logits / temperature) at `targets`; old_logp [B, S] (rollout policy, same
    temperature) and advantages [B] or [B, S] come in the batch, ref_logp [B, S] too when `with_ref`
    (default: when options beta > 0; set it to report the KL to the reference without penalising it).

    Metrics: loss, pg_loss, ratio_mean, approx_kl, clip_fraction (grpo, gspo, gspo_token) or
    gate_weight_mean (sapo), kl (with ref), entropy (mean token entropy on the mask),
    response_length_mean (trained tokens per sequence) and num_sequences.
    """

    def __init__(self, name: str, options: Mapping[str, Any] | None = None, *, temperature: float = 1.0,
                 with_ref: bool | None = None):
        options = dict(options or {})
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        self.loss = policy_losses.get_policy_loss(name, **options)  # checks the name and options
        self.aggregation = _aggregation(policy_losses.POLICY_LOSSES, name, options)
        beta = float(options.get("beta", 0.0))
        with_ref = beta > 0 if with_ref is None else with_ref
        if beta > 0 and not with_ref:
            raise ValueError(f"beta={beta} > 0 needs the reference log-probs: with_ref must not be False")
        self.name, self.options, self.temperature, self.with_ref = name, options, temperature, with_ref
        self.extra_keys = ("old_logp", "advantages") + (("ref_logp",) if with_ref else ())

    def __repr__(self) -> str:
        return (f"PolicyObjective({self.name!r}, {self.options}, temperature={self.temperature}, "
                f"with_ref={self.with_ref})")

    def weight_total(self, batch: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
        """The aggregation's divisor over the whole optimizer batch (module docstring)."""
        return _divisor(batch, self.aggregation)

    def __call__(self, model_out: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray],
                 weight_total: jnp.ndarray) -> tuple[jnp.ndarray, Stats]:
        mask = _mask(batch)
        new_logp, entropy = token_log_probs(model_out["logits"], batch["targets"], self.temperature)
        loss, m = self.loss(new_logp, batch["old_logp"], batch["advantages"], mask,
                            ref_logp=batch["ref_logp"] if self.with_ref else None, denominator=weight_total)
        tokens, rows = _counts(mask)
        stats = {"loss": loss, "pg_loss": m["pg_loss"], "tokens": tokens, "sequences": rows,
                 "entropy_sum": jnp.sum(jnp.where(mask, entropy, 0.0))}
        if "kl" in m:
            stats["kl"] = m["kl"]
        by_sequence = _SEQUENCE_METRICS.get(self.name, ())
        for k in _POLICY_MEANS:
            if k in m:
                stats[f"{k}_sum"] = m[k] * (rows if k in by_sequence else tokens)
        return loss, stats

    def metrics(self, stats: Mapping[str, jnp.ndarray], weight_total: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Reported metrics from the stats summed over the step's micro-batches."""
        tokens, rows = jnp.maximum(stats["tokens"], 1.0), jnp.maximum(stats["sequences"], 1.0)
        by_sequence = _SEQUENCE_METRICS.get(self.name, ())
        out = {"loss": stats["loss"], "pg_loss": stats["pg_loss"], "entropy": stats["entropy_sum"] / tokens,
               "response_length_mean": stats["tokens"] / rows, "num_sequences": stats["sequences"]}
        if "kl" in stats:
            out["kl"] = stats["kl"]
        for k in _POLICY_MEANS:
            if f"{k}_sum" in stats:
                out[k] = stats[f"{k}_sum"] / (rows if k in by_sequence else tokens)
        return out


class DistillObjective:
    """A distillation loss (`distill_losses.get_distill_loss(name, **options)`) as a train-step loss.

    forward_kl, reverse_kl, generalized_jsd: the teacher's logits at the same positions come in the
    batch as teacher_logits [B, S, V] (off-policy KD or full-vocabulary on-policy KL).
    reverse_kl_sampled: on-policy distillation, the student sampled the response and the teacher scored
    it: teacher_logp [B, S] at `targets`; the student's log-probs are taken at temperature 1.

    Metrics: loss, top1_agreement (logit losses), response_length_mean, num_sequences.
    """

    def __init__(self, name: str, options: Mapping[str, Any] | None = None):
        options = dict(options or {})
        self.loss = distill_losses.get_distill_loss(name, **options)
        self.aggregation = _aggregation(distill_losses.DISTILL_LOSSES, name, options)
        self.name, self.options = name, options
        self.sampled = name == "reverse_kl_sampled"
        self.extra_keys = ("teacher_logp",) if self.sampled else ("teacher_logits",)

    def __repr__(self) -> str:
        return f"DistillObjective({self.name!r}, {self.options})"

    def weight_total(self, batch: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
        """The aggregation's divisor over the whole optimizer batch (module docstring)."""
        return _divisor(batch, self.aggregation)

    def __call__(self, model_out: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray],
                 weight_total: jnp.ndarray) -> tuple[jnp.ndarray, Stats]:
        mask = _mask(batch)
        if self.sampled:
            student_logp, _ = token_log_probs(model_out["logits"], batch["targets"])
            loss, m = self.loss(student_logp, batch["teacher_logp"], mask, denominator=weight_total)
        else:
            loss, m = self.loss(model_out["logits"], batch["teacher_logits"], mask, denominator=weight_total)
        tokens, rows = _counts(mask)
        stats = {"loss": loss, "tokens": tokens, "sequences": rows}
        if "top1_agreement" in m:
            stats["top1_agreement_sum"] = jax.lax.stop_gradient(m["top1_agreement"]) * tokens
        return loss, stats

    def metrics(self, stats: Mapping[str, jnp.ndarray], weight_total: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Reported metrics from the stats summed over the step's micro-batches."""
        rows = jnp.maximum(stats["sequences"], 1.0)
        out = {"loss": stats["loss"], "response_length_mean": stats["tokens"] / rows,
               "num_sequences": stats["sequences"]}
        if "top1_agreement_sum" in stats:
            out["top1_agreement"] = stats["top1_agreement_sum"] / jnp.maximum(stats["tokens"], 1.0)
        return out

"""Group statistics for GRPO-style RL: advantages and which prompt groups to train on.

Shapes: rewards and correctness are [num_prompts, G], row p holding the G responses sampled for
prompt p. Flatten advantages with `.reshape(-1)` for a batch laid out prompt-major (row p*G + i is
response i of prompt p), which is the [B] per-sequence form the policy losses take.

`group_advantages` is jnp (usable under jit); the selection helpers are host-side numpy, since they
decide which rows make up the next batch (data-dependent shapes).
"""

from __future__ import annotations

from collections.abc import Iterable

import jax.numpy as jnp
import numpy as np


def _check_groups(x, name: str) -> None:
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be [num_prompts, G] with G >= 1; got shape {x.shape}")


def group_advantages(rewards: jnp.ndarray, *, scale_std: bool = True, eps: float = 1e-6,
                     ddof: int = 1) -> jnp.ndarray:
    """(R - group mean) / (group std + eps), float32 [num_prompts, G], from rewards [num_prompts, G].

    scale_std=False drops the division (Dr.GRPO). ddof=1 is the sample std (torch.std's default, as
    TRL and verl use). A group whose rewards are all equal gets exactly 0 (no signal, and no NaN or
    rounding noise blown up by a tiny std); such groups are better dropped (`has_signal`)."""
    rewards = jnp.asarray(rewards, jnp.float32)
    _check_groups(rewards, "rewards")
    if scale_std and rewards.shape[1] <= ddof:
        raise ValueError(f"std with ddof={ddof} needs groups of more than {ddof} responses; G={rewards.shape[1]}")
    if eps < 0:
        raise ValueError(f"eps={eps} must be >= 0")
    centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)
    flat = jnp.max(rewards, axis=1, keepdims=True) == jnp.min(rewards, axis=1, keepdims=True)
    if scale_std:
        std = jnp.std(rewards, axis=1, keepdims=True, ddof=ddof)
        # The inner where keeps 0/0 out of the division for flat groups (eps may be 0).
        centred = centred / jnp.where(flat, 1.0, std + eps)
    return jnp.where(flat, 0.0, centred)


def pass_rates(correct: np.ndarray) -> np.ndarray:
    """Fraction of correct responses per prompt, float [num_prompts], from 0/1 or bool [num_prompts, G]."""
    correct = np.asarray(correct)
    _check_groups(correct, "correct")
    if not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must hold 0/1 or bool values; threshold continuous rewards first")
    return correct.astype(np.float64).mean(axis=1)


def pass_rate_filter(correct: np.ndarray, *, max_pass_rate: float = 0.9, min_pass_rate: float = 0.0) -> np.ndarray:
    """Keep mask [num_prompts]: True where min_pass_rate < pass rate <= max_pass_rate.

    The defaults drop prompts answered correctly by more than 90% of samples and those with none
    right (Qwen3-VL sec 5.4, which takes the two from different samplers: call once per sampler with
    the other bound disabled, max_pass_rate=1.0 or min_pass_rate=-1.0)."""
    if min_pass_rate >= max_pass_rate:
        raise ValueError(f"min_pass_rate={min_pass_rate} must be below max_pass_rate={max_pass_rate}")
    rate = pass_rates(correct)
    return (rate > min_pass_rate) & (rate <= max_pass_rate)


def has_signal(rewards: np.ndarray) -> np.ndarray:
    """Mask [num_prompts]: True where the group's rewards are not all equal (DAPO's 0 < #correct < G
    for 0/1 rewards); flat groups have zero advantage and only dilute the batch."""
    rewards = np.asarray(rewards)
    _check_groups(rewards, "rewards")
    return rewards.max(axis=1) != rewards.min(axis=1)


def select_signal_groups(rewards: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Indices (ascending) of the groups of `rewards` [num_prompts, G] that carry signal, at most `limit`."""
    idx = np.flatnonzero(has_signal(rewards))
    return idx if limit is None else idx[:limit]


def dynamic_sampling(reward_batches: Iterable[np.ndarray], target_groups: int,
                     max_batches: int = 10) -> list[np.ndarray]:
    """DAPO dynamic sampling: take generation batches until `target_groups` groups with signal are kept.

    reward_batches yields rewards [num_prompts, G] of successive generation batches and is consumed
    lazily (a generator that samples on demand generates no more than needed). Returns, for each
    consumed batch, the indices of its kept groups; together exactly `target_groups` (the surplus of
    the last batch is dropped, as verl truncates to the train batch). max_batches = 0 means no limit.
    Raises RuntimeError when the batches run out or max_batches is reached first (verl raises too: the
    data is too easy or too hard)."""
    if target_groups < 1 or max_batches < 0:
        raise ValueError(f"need target_groups >= 1 and max_batches >= 0; got {target_groups}, {max_batches}")
    kept: list[np.ndarray] = []
    total = 0
    for n, rewards in enumerate(reward_batches, start=1):
        idx = select_signal_groups(rewards, limit=target_groups - total)
        kept.append(idx)
        total += len(idx)
        if total == target_groups:
            return kept
        if max_batches and n >= max_batches:
            break
    raise RuntimeError(f"dynamic sampling kept {total} of {target_groups} groups with reward variance after "
                       f"{len(kept)} generation batch(es) (max_batches={max_batches})")

"""RL rollouts: G sampled completions per prompt with the sampler's log-probs, and the train batch
that replays them.

    rollouts = rollout(model_config, params, prompts, group_size=8, sampling=SamplingConfig(temperature=1.0),
                       stop_tokens=[im_end], pad_token_id=pad, rng=0, max_new_tokens=512)
    batch = to_train_batch(rollouts, seq_len=1024)        # BATCH_KEYS + old_logp
    logp = token_logprobs(model_config, params, batch)    # the training forward's log-probs, [B, S]

Every prompt is repeated G times (its images and videos with each copy) and decoded by one
`generate(..., return_logprobs=True)` call. The sampler log-prob of a token is the full-vocabulary
log_softmax(logits / temperature) of the raw logits (see `vlm_jax.inference.generate`): RL samples
with temperature only, so it is the probability the token was drawn with and the one that
`token_logprobs` recomputes from the train batch (equal up to float32 rounding when the params
have not moved). With top-k/top-p/min-p or penalties the draw came from another distribution than
the reported log-prob (off-policy by that much).

`to_train_batch` puts one completion per row (no packing), in the layout of the data pipeline
(`vlm_jax.data.packing.assemble_batch`): the completion tokens are the supervised tokens, so
`loss_weights` is 1 where `targets` is a completion token (the stop token included) and `old_logp`
holds the sampler log-prob of that target.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vlm_jax.data import packing
from vlm_jax.inference import kv_cache
from vlm_jax.inference.generate import generate, resolve_sampling, split_grids, target_logprobs
from vlm_jax.inference.prompt import Prompt, batch_prompts
from vlm_jax.inference.sampling import SamplingConfig
from vlm_jax.model import rope
from vlm_jax.model.vlm import Qwen3VL, llm_grid_thw


@dataclasses.dataclass
class RolloutBatch:
    """N = B * G completions, grouped by prompt (row i comes from prompt `prompt_index[i]`).

    prompt_index int [N]; prompt_ids: each row's prompt tokens; completions: each row's generated
    tokens (the stop token included when `finished`); logprobs: float32 [len(completion)] sampler
    log-probs per row; finished bool [N]: the row hit a stop token (else it ran out of
    max_new_tokens); pixel_values float32 [n_i, patch_dim] and grid_thw int32 [k_i, 3]: the row's
    own visual inputs in placeholder order (a copy of its prompt's, k_i = 0 for text);
    temperature: the temperature of `logprobs`.
    """

    prompt_index: np.ndarray
    prompt_ids: list[list[int]]
    completions: list[list[int]]
    logprobs: list[np.ndarray]
    finished: np.ndarray
    pixel_values: list[np.ndarray]
    grid_thw: list[np.ndarray]
    temperature: float

    def __len__(self) -> int:
        return len(self.completions)


def rollout(
    model_config: mlc.ConfigDict,
    params: dict,
    prompts: Sequence[Prompt],
    *,
    group_size: int,
    max_new_tokens: int,
    sampling: SamplingConfig | str = SamplingConfig(temperature=1.0),
    overrides: Mapping[str, Any] | None = None,
    stop_tokens: Sequence[int] = (),
    pad_token_id: int = 0,
    rng: jax.Array | int = 0,
    **generate_kwargs: Any,
) -> RolloutBatch:
    """`group_size` completions of every prompt from one `generate` call (module docstring).

    sampling: a SamplingConfig or preset name, with `overrides` (SamplingConfig fields) applied;
      RL wants temperature only (no top-k/top-p/min-p/penalties) so the log-probs are on-policy.
    generate_kwargs: passed to `generate` (use_while_loop, initial_capacity, decode_layers, ...).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not prompts:
        raise ValueError("rollout needs at least one prompt")
    scfg = resolve_sampling(sampling, **dict(overrides or {}), max_new_tokens=max_new_tokens)
    rows = [p for p in prompts for _ in range(group_size)]  # each copy carries its prompt's visuals
    out = generate(model_config, params, **batch_prompts(rows), preset=scfg, stop_tokens=stop_tokens,
                   pad_token_id=pad_token_id, rng=rng, return_logprobs=True, **generate_kwargs)
    completions = out.sequences()
    return RolloutBatch(
        prompt_index=np.repeat(np.arange(len(prompts)), group_size),
        prompt_ids=[list(p.input_ids) for p in rows],
        completions=completions,
        logprobs=[out.logprobs[i, :len(c)].astype(np.float32) for i, c in enumerate(completions)],
        finished=np.asarray(out.finished, bool),
        pixel_values=[np.asarray(p.pixel_values, np.float32) for p in rows],
        grid_thw=[np.asarray(p.grid_thw, np.int32).reshape(-1, 3) for p in rows],
        temperature=1.0 if scfg.greedy else float(scfg.temperature),
    )


def _position_ids(config: mlc.ConfigDict, ids: np.ndarray, grid_thw: np.ndarray) -> np.ndarray:
    """MRoPE positions int32 [3, L] of one sequence alone, as the pipeline computes them (images and
    videos passed separately to `get_rope_index`), with the grids the language model sees."""
    images, videos = split_grids([ids], grid_thw if len(grid_thw) else None, config)
    images = None if images is None else llm_grid_thw(images, config)
    videos = None if videos is None else llm_grid_thw(videos, config)
    positions, _ = rope.get_rope_index(ids[None], images, videos, image_token_id=config.image_token_id,
                                       video_token_id=config.video_token_id,
                                       spatial_merge_size=config.vision.spatial_merge_size)
    return np.asarray(positions[:, 0], np.int32)


def to_train_batch(
    rollouts: RolloutBatch,
    seq_len: int,
    model_config: mlc.ConfigDict,
    *,
    pad_id: int = 0,
    task_ids: int | Sequence[int] = 0,
    max_patches: int | None = None,
    max_grids: int | None = None,
) -> dict[str, np.ndarray]:
    """The train batch of the rollouts: one row per completion, right-padded to `seq_len`.

    Keys: `vlm_jax.train.step.BATCH_KEYS` (docs/CONTRACTS.md layout; loss_weights 1.0 on positions
    whose target is a completion token) plus `old_logp` float32 [N, seq_len], the sampler log-prob of
    `targets` on those positions, 0 elsewhere. task_ids: one id for all rows or one per row.
    max_patches / max_grids: vision buffer rows (default: the real counts rounded up to a power of two,
    so batches of similar size share a compile). Raises ValueError when a row does not fit.
    """
    n = len(rollouts)
    row_tasks = [int(task_ids)] * n if isinstance(task_ids, int | np.integer) else [int(t) for t in task_ids]
    if len(row_tasks) != n:
        raise ValueError(f"task_ids has {len(row_tasks)} entries for {n} rollout rows")
    samples = []
    for i in range(n):
        prompt, completion = rollouts.prompt_ids[i], rollouts.completions[i]
        lp = np.asarray(rollouts.logprobs[i], np.float32)
        if len(lp) != len(completion):
            raise ValueError(f"rollout row {i}: {len(completion)} completion tokens but {len(lp)} logprobs")
        if not completion:
            raise ValueError(f"rollout row {i}: empty completion")
        placeholders = sorted({int(t) for t in completion} & {model_config.image_token_id, model_config.video_token_id})
        if placeholders:  # decoded as text embeddings, but a forward would splice visual features there
            raise ValueError(f"rollout row {i}: the completion holds visual placeholder ids {placeholders}; the "
                             "training forward cannot replay it (mask those ids when sampling or drop the row)")
        if len(prompt) + len(completion) > seq_len:
            raise ValueError(f"rollout row {i}: prompt ({len(prompt)} tokens) + completion ({len(completion)} "
                             f"tokens) = {len(prompt) + len(completion)} > seq_len {seq_len}; raise seq_len or "
                             "lower max_new_tokens (completions are never truncated)")
        ids = np.asarray([*prompt, *completion], np.int32)
        loss_mask = np.zeros(len(ids), bool)
        loss_mask[len(prompt):] = True
        samples.append({"input_ids": ids, "loss_mask": loss_mask,
                        "position_ids": _position_ids(model_config, ids, rollouts.grid_thw[i]),
                        "pixel_values": rollouts.pixel_values[i], "grid_thw": rollouts.grid_thw[i],
                        "task_id": row_tasks[i]})
    patches = sum(len(s["pixel_values"]) for s in samples)
    grids = sum(len(s["grid_thw"]) for s in samples)
    cfg = packing.get_config(
        seq_len=seq_len, batch_size=n, pad_id=pad_id, loss_normalization="token",
        patch_dim=int(model_config.vision.in_channels * model_config.vision.temporal_patch_size
                      * model_config.vision.patch_size ** 2),
        max_patches=kv_cache.bucket_count(patches, minimum=64) if max_patches is None else max_patches,
        max_grids=kv_cache.bucket_count(grids) if max_grids is None else max_grids)
    if patches > cfg.max_patches or grids > cfg.max_grids:
        raise ValueError(f"the rollouts hold {patches} patches and {grids} grid rows; the vision buffer has "
                         f"max_patches={cfg.max_patches}, max_grids={cfg.max_grids}")
    batch = packing.assemble_batch([[s] for s in samples], cfg)
    old_logp = np.zeros((n, seq_len), np.float32)
    for i in range(n):
        start = len(rollouts.prompt_ids[i]) - 1  # position whose target is the first completion token
        old_logp[i, start:start + len(rollouts.completions[i])] = rollouts.logprobs[i]
    batch["old_logp"] = old_logp
    return batch


@functools.partial(jax.jit, static_argnames=("cfg",))
def _token_logprobs(params, batch, temperature, *, cfg):
    out = Qwen3VL(cfg).apply({"params": params}, batch["input_ids"], batch["position_ids"], batch["segment_ids"],
                             batch["pixel_values"], batch["grid_thw"])
    return target_logprobs(out["logits"], batch["targets"], temperature)


def token_logprobs(model_config: mlc.ConfigDict, params: dict, batch: Mapping[str, Any],
                   temperature: float = 1.0) -> jax.Array:
    """float32 [B, S]: log_softmax(logits / temperature) at `targets`, from the training forward (the
    model applied to the batch as in `vlm_jax.train.step`). Positions with no target hold the
    log-prob of token 0; mask them with `loss_weights`."""
    keys = ("input_ids", "position_ids", "segment_ids", "pixel_values", "grid_thw", "targets")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}")
    return _token_logprobs(nn.unbox(params), {k: jnp.asarray(batch[k]) for k in keys},
                           jnp.asarray(temperature, jnp.float32), cfg=mlc.FrozenConfigDict(model_config))

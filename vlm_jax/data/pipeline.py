"""Grain input pipelines: source -> decode -> tokenise -> pack -> batch.

Entry point::

    pipe = Pipeline(source, tokenizer, get_config(seq_len=4096, batch_size=8, worker_count=2))
    it = iter(pipe)                  # PipelineIterator
    batch = next(it)                 # dict of numpy arrays, the CONTRACTS.md batch
    state = it.get_state()           # JSON-serialisable; it.set_state(state) resumes exactly
    it.stats                         # cumulative counters: samples, tokens, skipped by reason, ...

``source`` is any random-access source of raw samples (``vlm_jax.data.sources``; a ``MixtureSource``
for a weighted mix, e.g. with text-only data) or a mapping name -> source with
the config's ``weights``. The pipeline, in grain terms:

    MapDataset.range(len(source)) .shuffle(seed) [shard::num_shards] .repeat(num_epochs)
      .map(SampleProcessor)                       # read + decode + tokenise, or a skip marker
      .to_iter_dataset(ReadOptions(read_threads))
    -> PackIterDataset                            # whole batches, checkpointable
    -> .mp_prefetch(worker_count)                 # grain worker processes (if worker_count > 0)

Deterministic given (seed, shard, worker_count): each worker packs its own slice of the stream and
batches come round-robin from the workers, so changing ``worker_count`` changes the batches (grain's
documented behaviour for stateful transforms), a resumed run does not.

Counters: every batch carries, under ``packing.STATS_KEY``, the samples / tokens / patches packed in
it and the samples skipped since the previous batch by reason (``sources.SKIP_REASONS``);
``PipelineIterator`` strips it from the batch, accumulates ``it.stats`` (checkpointed with the state),
logs the first ``log_skipped`` skips with the sample index, id and cause, and keeps the last 50 in
``it.recent_skips``. ``it.packing_efficiency`` is the fraction of token slots holding real tokens.

Sizing the vision buffer: ``max_patches`` is shared by the ``batch_size`` rows; when it is too small
for the data's images-per-token ratio, it (not seq_len) limits how many samples fit and token
efficiency drops. ``suggest_vision_buffer`` measures the ratio on a few samples and proposes sizes
(the synthetic world needs about 2.5 patches per token slot for > 99% token efficiency).

Sharding: every process reads ``1 / shard_count`` of each epoch (equal shares; the last
``len(source) % shard_count`` items of each epoch's order are dropped). Packing makes the number of
batches per epoch differ slightly between processes: for multi-host training use ``num_epochs=None``
and count steps.

``tokenize_sample`` is the pure sample -> tokens function (used by ``SampleProcessor``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import ml_collections as mlc
import numpy as np
import tokenizers
from ml_collections.config_dict import placeholder

from vlm_jax.configs.validate import check_keys, merge
from vlm_jax.data import packing as packing_lib
from vlm_jax.data import processor as processor_lib
from vlm_jax.data import sources as sources_lib
from vlm_jax.data.chat_template import THINKING_FORMATS
from vlm_jax.data.packing import STATS_KEY, PackIterDataset, skip_marker
from vlm_jax.data.sources import SampleError

log = logging.getLogger(__name__)

# Reasons that are policy (the sample is fine but does not fit), counted whatever `on_error` says.
CAPACITY_REASONS = ("too_long", "too_many_patches", "too_many_visuals")

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
END_OF_TEXT = "<|endoftext|>"


class DataError(RuntimeError):
    """A bad sample with ``on_error='raise'``; the message names the sample index, id and source."""


def base_config() -> mlc.ConfigDict:
    """Every pipeline key with its default.

    Packing: the keys of ``packing.base_config()`` (``seq_len``, ``batch_size``, ``max_patches``,
    ``max_grids``, ``loss_normalization``, ``buffer_factor``, ``max_buffer_samples``,
    ``max_consecutive_skips``, ``pad_id``), which the packer reads from here as they are; its
    ``patch_dim`` is the processor's. Batch shapes: ``batch_size`` rows (per process) of ``seq_len``
    tokens; ``max_patches`` x ``patch_dim`` pixel values and ``max_grids`` grid rows shared by the batch.
    ``pad_id`` None = ``<|endoftext|>``.
    Order: ``seed``, ``shuffle``, ``num_epochs`` (None = forever); ``shard_index`` / ``shard_count``
    default to ``jax.process_index()`` / ``jax.process_count()``.
    Parallelism: ``worker_count`` grain processes (0 = in-process), ``worker_buffer_size`` batches
    buffered per worker, ``read_threads`` / ``read_buffer_size`` threads and elements prefetched by
    each process's reader (decoding + tokenising runs on these threads).
    Errors: ``on_error`` 'skip' (count and go on) | 'raise' (``DataError`` naming the sample);
    samples too long for ``seq_len`` or the vision buffer are always skipped and counted.
    Tasks: ``task_names``: task id of a sample = 1 + its position in this list (0 if absent); None
    = the mixture's source names when the source is a ``MixtureSource``, else no task ids (all 0).
    Text: ``thinking`` ('standard' | 'thinking' | 'thinking_all_turns') and ``add_vision_id`` are
    passed to the chat template.
    Video: ``default_video_fps`` for frame lists without a rate; ``video_token_budget`` (visual tokens
    per video, None = the processor's plan); ``fit_videos`` shrinks videos (the processor's
    length-adaptive sampling) so that the sample fits ``seq_len`` and the vision buffer.
    ``processor``: the image/video processor's keys (``processor.base_config()``); its ``video_time_encoding``
    'absolute_time' (the model's key, see vlm_jax/configs/model.py) writes videos without timestamps and
    gives their temporal groups time-proportional MRoPE ids (``model.rope.get_rope_index``); its ``merger``
    'resampler' (the model's key too) gives each image ``resampler_num_queries`` placeholders on the queries'
    position grid (``processor.llm_grids``; pixels unchanged) and refuses videos.
    ``weights``: mixture weights {name: weight} when ``source`` is a mapping of named sources.
    """
    c = packing_lib.base_config()
    del c["patch_dim"]  # the processor's
    c.pad_id = placeholder(int)
    c.seed = 0
    c.shuffle = True
    c.num_epochs = placeholder(int)
    c.shard_index = placeholder(int)
    c.shard_count = placeholder(int)
    c.worker_count = 0
    c.worker_buffer_size = 2
    c.read_threads = 2
    c.read_buffer_size = 32
    c.on_error = "skip"
    c.task_names = placeholder(tuple)
    c.thinking = "standard"
    c.add_vision_id = False
    c.default_video_fps = 2.0
    c.video_token_budget = placeholder(int)
    c.fit_videos = True
    c.processor = processor_lib.base_config()
    c.weights = None
    c.log_skipped = 20
    return c


# A built pipeline config (`get_config`): what the pipeline's functions take.
PipelineConfig = mlc.FrozenConfigDict


def get_config(overrides: Mapping[str, Any] | mlc.ConfigDict | None = None, **kw: Any) -> PipelineConfig:
    """The validated, frozen pipeline config: `base_config()` with `overrides` and `kw` (any subset of
    its keys, `processor` merged key by key; an unknown key fails naming it)."""
    c = merge(merge(base_config(), overrides, "pipeline"), kw, "pipeline")
    validate(c)
    return mlc.FrozenConfigDict(c)


def validate(c: mlc.ConfigDict, where: str = "pipeline") -> None:
    """Fails with a message naming the key (`where.key`) when a key is unknown or missing or a value is invalid."""
    check_keys(c, base_config(), where)
    packing_lib.check_values(c, where)
    processor_lib.validate(c.processor, f"{where}.processor")
    for name in ("worker_count", "read_threads", "log_skipped"):
        if c[name] < 0:
            raise ValueError(f"{where}.{name} must be >= 0, got {c[name]}")
    for name in ("worker_buffer_size", "read_buffer_size"):
        if c[name] < 1:
            raise ValueError(f"{where}.{name} must be >= 1, got {c[name]}")
    if c.on_error not in ("skip", "raise"):
        raise ValueError(f"{where}.on_error must be 'skip' or 'raise', got {c.on_error!r}")
    if c.num_epochs is not None and c.num_epochs <= 0:
        raise ValueError(f"{where}.num_epochs must be positive or None, got {c.num_epochs}")
    if (c.shard_index is None) != (c.shard_count is None):
        raise ValueError(f"{where}.shard_index and shard_count must be given together")
    if c.shard_count is not None and not 0 <= c.shard_index < c.shard_count:
        raise ValueError(f"{where}.shard_index {c.shard_index} not in [0, {c.shard_count})")
    if c.thinking not in THINKING_FORMATS:
        raise ValueError(f"{where}.thinking must be one of {THINKING_FORMATS}, got {c.thinking!r}")
    if c.video_token_budget is not None and c.video_token_budget <= 0:
        raise ValueError(f"{where}.video_token_budget must be positive, got {c.video_token_budget}")
    if c.default_video_fps <= 0:
        raise ValueError(f"{where}.default_video_fps must be positive, got {c.default_video_fps}")


def packing_config(config: PipelineConfig, pad_id: int) -> packing_lib.PackingConfig:
    """The packer's config: the pipeline's packing keys, the processor's ``patch_dim`` and ``pad_id``
    (the resolved ``config.pad_id``)."""
    keys = [k for k in packing_lib.base_config().keys() if k in config and k != "pad_id"]
    return packing_lib.get_config({k: config[k] for k in keys}, pad_id=pad_id, patch_dim=config.processor.patch_dim)


# ----------------------------------------------------------------------------------------------
# Sample -> tokens


def _special_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.token_to_id(token) if hasattr(tokenizer, "token_to_id") else None
    if tid is None:
        raise ValueError(f"tokenizer has no special token {token!r}")
    return int(tid)


def _has_content(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    if isinstance(content, list):
        return any(item.get("type") != "text" or str(item.get("text", "")).strip() for item in content)
    return False


def visual_order(input_ids: np.ndarray, image_id: int, video_id: int, video_t: Sequence[int]) -> list:
    """[('image', i) | ('video', j)] in the order their placeholders appear (a video: its first group)."""
    ids = np.asarray(input_ids)
    prev = np.concatenate([[-1], ids[:-1]])
    run_start = (ids != prev) & ((ids == image_id) | (ids == video_id))
    kinds = ids[run_start] == image_id  # True: an image run, False: one temporal group of a video
    order = []
    n_img = vid = group = 0
    for is_image in kinds.tolist():
        if is_image:
            order.append(("image", n_img))
            n_img += 1
            continue
        if vid >= len(video_t):
            raise SampleError("placeholder_mismatch", "more video placeholder runs than video groups")
        if group == 0:
            order.append(("video", vid))
        group += 1
        if group == video_t[vid]:
            vid, group = vid + 1, 0
    return order


def _check_visual_size(h: int, w: int, where: str, max_ratio: float) -> None:
    if h == 0 or w == 0:
        raise SampleError("empty_image", f"{where}: zero-size ({h}x{w})")
    if max(h, w) / min(h, w) > max_ratio:
        raise SampleError(
            "aspect_ratio", f"{where}: aspect ratio {max(h, w) / min(h, w):.1f} > {max_ratio:g}"
        )


def _tokens_of(grid: Sequence[int], merge: int = 2) -> int:
    t, h, w = (int(v) for v in grid)
    return t * h * w // (merge * merge)


def _empty_vision(patch_dim: int) -> dict[str, np.ndarray]:
    return {"pixel_values": np.zeros((0, patch_dim), np.float32), "grid_thw": np.zeros((0, 3), np.int32)}


def _tokenize_text(text: Any, tokenizer: Any, config: PipelineConfig, sid: Any) -> dict[str, np.ndarray]:
    """A plain-text sample: its tokens + ``<|endoftext|>``, every one supervised, 1-D positions."""
    if not isinstance(text, str) or not text.strip():
        raise SampleError("empty_conversation", f"sample {sid}: empty text")
    ids = np.asarray(list(tokenizer.encode(text)) + [_special_id(tokenizer, END_OF_TEXT)], np.int32)
    if len(ids) > config.seq_len:
        raise SampleError("too_long", f"sample {sid}: {len(ids)} tokens > seq_len {config.seq_len}")
    pos = np.broadcast_to(np.arange(len(ids), dtype=np.int32), (3, len(ids))).copy()
    return {"input_ids": ids, "loss_mask": np.ones(len(ids), bool), "position_ids": pos}


@dataclasses.dataclass(frozen=True)
class _Conversation:
    """A checked conversation sample: messages, decoded visuals, the image grids and the video rates."""

    sid: Any
    messages: list
    tools: Any
    images: list[np.ndarray]
    videos: list[dict]
    image_grids: list[tuple[int, int, int]]
    fps: list[float]


def _check_conversation(sample: Mapping[str, Any], config: PipelineConfig, pcfg: Any, sid: Any) -> _Conversation:
    """The sample's conversation, checked: an assistant turn with content, one visual per placeholder,
    at most ``max_grids`` visuals, no empty or too elongated image / video. Plans the image grids."""
    from vlm_jax.data import processor as proc

    messages = sample.get("messages") or []
    if not messages:
        raise SampleError("empty_conversation", f"sample {sid}: no messages")
    if not any(
        m.get("role") == "assistant"
        and (_has_content(m.get("content")) or m.get("reasoning") or m.get("tool_calls"))
        for m in messages
    ):
        raise SampleError("empty_conversation", f"sample {sid}: no assistant turn with content")
    images = [np.asarray(i) for i in sample.get("images") or []]
    videos = list(sample.get("videos") or [])
    n_img, n_vid = sources_lib.count_visuals(messages)
    if n_img != len(images) or n_vid != len(videos):
        raise SampleError(
            "placeholder_mismatch",
            f"sample {sid}: {n_img} image and {n_vid} video placeholders but {len(images)} images "
            f"and {len(videos)} videos",
        )
    try:
        proc.check_videos_supported(pcfg.merger, len(videos))
    except ValueError as e:
        raise SampleError("processing_error", f"sample {sid}: {e}") from e
    if len(images) + len(videos) > config.max_grids:
        raise SampleError(
            "too_many_visuals",
            f"sample {sid}: {len(images) + len(videos)} images/videos > max_grids {config.max_grids}",
        )
    max_ratio = float(getattr(proc, "MAX_ASPECT_RATIO", 200))
    image_grids = []
    for k, img in enumerate(images):
        _check_visual_size(img.shape[0], img.shape[1], f"sample {sid} image {k}", max_ratio)
        image_grids.append(tuple(int(v) for v in proc.image_grid_thw(img.shape[0], img.shape[1], pcfg)))
    fps = []
    for k, v in enumerate(videos):
        frames = v["frames"]
        _check_visual_size(frames.shape[1], frames.shape[2], f"sample {sid} video {k}", max_ratio)
        fps.append(float(v.get("fps") or config.default_video_fps))
    return _Conversation(sid, messages, sample.get("tools"), images, videos, image_grids, fps)


def _plan_videos(conv: _Conversation, budgets: Sequence[int | None], pcfg: Any) -> tuple[list, list]:
    """(grid, frame timestamps) of every video under its visual-token budget (None: the processor's)."""
    from vlm_jax.data import processor as proc

    grids, stamps = [], []
    for k, (v, budget) in enumerate(zip(conv.videos, budgets)):
        t_, h_, w_ = v["frames"].shape[:3]
        try:
            idx, rh, rw = proc.plan_video(t_, h_, w_, conv.fps[k], pcfg, budget)
        except ValueError as e:
            raise SampleError("too_long", f"sample {conv.sid} video {k}: {e}") from e
        grids.append((-(-len(idx) // pcfg.temporal_patch_size), rh // pcfg.patch_size, rw // pcfg.patch_size))
        stamps.append(proc.frame_timestamps(idx, conv.fps[k], pcfg.temporal_patch_size))
    return grids, stamps


def _tokenize_messages(conv: _Conversation, tokenizer: Any, config: PipelineConfig, pcfg: Any, video_grids: list,
                       video_stamps: list, index: int) -> dict:
    """The chat template's tokens and loss mask for the planned grids, with the placeholder counts the model's
    merger makes of them (``ValueError`` -> ``SampleError``)."""
    from vlm_jax.data.chat_template import tokenize_conversation

    try:
        return tokenize_conversation(
            conv.messages,
            tokenizer,
            processor_lib.config_llm_grids(conv.image_grids, pcfg),
            processor_lib.config_llm_grids(video_grids, pcfg),
            video_stamps,
            config.thinking,
            tools=conv.tools,
            add_vision_id=config.add_vision_id,
            merge_size=pcfg.merge_size,
            timestamp_format=pcfg.timestamp_format,
            rng=np.random.default_rng([config.seed, int(index)]),
            sample_id=str(conv.sid),
            video_time_encoding=pcfg.video_time_encoding,
        )
    except ValueError as e:
        msg = str(e)
        reason = "placeholder_mismatch" if "placeholder" in msg else "bad_format"
        raise SampleError(reason, msg) from e


def _first_video_budgets(config: PipelineConfig, n_videos: int, image_patches: int, merge: int) -> list[int | None]:
    """``video_token_budget`` per video; with ``fit_videos``, at most an equal share of the vision buffer
    left after the images (4 patches per token)."""
    budgets: list[int | None] = [config.video_token_budget] * n_videos
    if n_videos and config.fit_videos:
        room = (config.max_patches - image_patches) // (merge * merge)
        if room >= n_videos:
            share = room // n_videos
            budgets = [min(b, share) if b is not None else share for b in budgets]
    return budgets


def _shrunk_video_budgets(video_grids: Sequence[Sequence[int]], n_tokens: int, seq_len: int, merge: int
                          ) -> list[int] | None:
    """Length-adaptive sampling: budgets that take the overflow over ``seq_len`` out of the videos, in
    proportion to their size; None when the videos cannot give that much."""
    counts = [_tokens_of(g, merge) for g in video_grids]
    total = sum(counts)
    room = total - (n_tokens - seq_len)
    if room < len(video_grids):
        return None
    return [max(1, c * room // total) for c in counts]


def _fit_videos(conv: _Conversation, tokenizer: Any, config: PipelineConfig, pcfg: Any, image_patches: int,
                index: int) -> tuple[list, list, dict]:
    """(video budgets, video grids, tokens): the videos planned, then (``fit_videos``) shrunk up to 4
    times until the sample fits ``seq_len``."""
    budgets = _first_video_budgets(config, len(conv.videos), image_patches, pcfg.merge_size)
    video_grids, video_stamps = _plan_videos(conv, budgets, pcfg)
    tok = _tokenize_messages(conv, tokenizer, config, pcfg, video_grids, video_stamps, index)
    for _ in range(4):
        n = len(tok["input_ids"])
        if not (n > config.seq_len and conv.videos and config.fit_videos):
            break
        shrunk = _shrunk_video_budgets(video_grids, n, config.seq_len, pcfg.merge_size)
        if shrunk is None:
            break
        budgets = shrunk
        video_grids, video_stamps = _plan_videos(conv, budgets, pcfg)
        tok = _tokenize_messages(conv, tokenizer, config, pcfg, video_grids, video_stamps, index)
    return budgets, video_grids, tok


def _check_fits(conv: _Conversation, tok: Mapping, n_patches: int, config: PipelineConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, loss_mask) of a sample within ``seq_len`` and the vision buffer, with supervised tokens."""
    n = len(tok["input_ids"])
    if n > config.seq_len:
        raise SampleError("too_long", f"sample {conv.sid}: {n} tokens > seq_len {config.seq_len}")
    if n_patches > config.max_patches:
        raise SampleError(
            "too_many_patches",
            f"sample {conv.sid}: {n_patches} patches > vision buffer max_patches {config.max_patches}",
        )
    ids = np.asarray(tok["input_ids"], np.int32).reshape(-1)
    loss_mask = np.asarray(tok["loss_mask"], bool).reshape(-1)
    if not loss_mask[1:].any():
        raise SampleError("empty_conversation", f"sample {conv.sid}: no supervised tokens")
    return ids, loss_mask


def _process_visuals(conv: _Conversation, budgets: Sequence[int | None], video_grids: Sequence, pcfg: Any
                     ) -> dict[str, list[dict]]:
    """Pixels of the images and videos ({"image": [...], "video": [...]}), each checked against its planned grid."""
    from vlm_jax.data import processor as proc

    outs = {
        "image": [proc.process_image(img, pcfg) for img in conv.images],
        "video": [proc.process_video(v["frames"], conv.fps[k], pcfg, token_budget=budgets[k])
                  for k, v in enumerate(conv.videos)],
    }
    for kind, grids in (("image", conv.image_grids), ("video", video_grids)):
        for k, (o, g) in enumerate(zip(outs[kind], grids)):
            if tuple(np.asarray(o["grid_thw"]).reshape(3).tolist()) != tuple(g):
                raise SampleError(
                    "processing_error",
                    f"sample {conv.sid} {kind} {k}: planned grid {g} but the "
                    f"processor gave {np.asarray(o['grid_thw']).reshape(3).tolist()}",
                )
    return outs


def video_runs(video_grids: Sequence[Sequence[int]], video_time_encoding: str) -> list[int]:
    """Placeholder runs of each video: one per temporal group with timestamps (Qwen3-VL), one in all
    with absolute time (Qwen2.5-VL)."""
    return [int(g[0]) if video_time_encoding == "timestamps" else 1 for g in video_grids]


def _vision_in_placeholder_order(conv: _Conversation, ids: np.ndarray, outs: Mapping[str, list[dict]],
                                 video_grids: Sequence, image_id: int, video_id: int, pcfg: Any
                                 ) -> dict[str, np.ndarray]:
    """``pixel_values`` and ``grid_thw`` of the visuals in the order their placeholders appear."""
    order = visual_order(ids, image_id, video_id, video_runs(video_grids, pcfg.video_time_encoding))
    expected = [("image", i) for i in range(len(conv.images))] + [("video", j) for j in range(len(conv.videos))]
    if sorted(order) != sorted(expected):
        raise SampleError("placeholder_mismatch", f"sample {conv.sid}: placeholder tokens do not match the visuals")
    if not order:
        return _empty_vision(pcfg.patch_dim)
    return {
        "pixel_values": np.concatenate([np.asarray(outs[kind][i]["pixel_values"], np.float32) for kind, i in order]),
        "grid_thw": np.concatenate([np.asarray(outs[kind][i]["grid_thw"], np.int32).reshape(1, 3)
                                    for kind, i in order]),
    }


def _position_ids(conv: _Conversation, ids: np.ndarray, video_grids: Sequence, image_id: int, video_id: int,
                  pcfg: Any, video_seconds: Sequence[float]) -> np.ndarray:
    """MRoPE positions int32 [3, L] of this sample alone (``get_rope_index`` on the grids the language
    model sees, ``processor.llm_grids``); with absolute time, the videos' temporal ids follow
    ``video_seconds`` (seconds per temporal group of each video)."""
    from vlm_jax.model.rope import get_rope_index

    absolute = pcfg.video_time_encoding == "absolute_time" and bool(conv.videos)
    try:
        position_ids, _ = get_rope_index(
            ids[None],
            processor_lib.config_llm_grids(conv.image_grids, pcfg) if conv.images else None,
            processor_lib.config_llm_grids(video_grids, pcfg) if conv.videos else None,
            image_token_id=image_id,
            video_token_id=video_id,
            spatial_merge_size=pcfg.merge_size,
            second_per_grid_ts=list(video_seconds) if absolute else None,
            tokens_per_second=pcfg.video_tokens_per_second if absolute else None,
        )
    except ValueError as e:
        raise SampleError("placeholder_mismatch", f"sample {conv.sid}: {e}") from e
    return np.asarray(position_ids[:, 0], np.int32)


def tokenize_sample(
    sample: Mapping[str, Any],
    tokenizer: Any,
    config: PipelineConfig,
    *,
    task_id: int = 0,
    index: int = 0,
    processor_config: Any = None,
) -> dict[str, Any]:
    """A decoded sample -> token-side arrays of one sample (the packer's input). Pure function.

    Returns ``input_ids`` int32 [L], ``loss_mask`` bool [L] (the tokens to be predicted: assistant
    responses and their ``<|im_end|>``; every token for a plain-text sample), ``position_ids`` int32
    [3, L] (``get_rope_index`` of this sample alone), ``pixel_values`` float32 [N, 1536] and
    ``grid_thw`` int32 [K, 3] (images and videos in placeholder order), ``task_id``.

    Grids are planned before any pixel work, so a sample that will be skipped costs no resizing.
    With ``config.fit_videos``, videos are re-planned with a smaller visual-token budget (fewer /
    smaller frames, the processor's length-adaptive sampling) until the sample fits ``seq_len`` and the
    vision buffer. ``index`` seeds the random timestamp format (``timestamp_format='random'``).
    Raises ``SampleError`` (a reason of ``sources.SKIP_REASONS``) for a bad or non-fitting sample.
    """
    from vlm_jax.data import processor as proc

    pcfg = processor_config if processor_config is not None else config.processor
    if pcfg is None:
        pcfg = proc.ProcessorConfig()
    sid = sample.get("id", "?")
    if "messages" not in sample and "text" in sample:  # plain text: trained on every token
        text = _tokenize_text(sample["text"], tokenizer, config, sid)
        return {**text, "task_id": int(task_id), **_empty_vision(pcfg.patch_dim)}

    conv = _check_conversation(sample, config, pcfg, sid)
    image_patches = sum(int(np.prod(g)) for g in conv.image_grids)
    budgets, video_grids, tok = _fit_videos(conv, tokenizer, config, pcfg, image_patches, index)
    n_patches = image_patches + sum(int(np.prod(g)) for g in video_grids)
    ids, loss_mask = _check_fits(conv, tok, n_patches, config)
    outs = _process_visuals(conv, budgets, video_grids, pcfg)  # pixels only now that the sample fits
    image_id, video_id = _special_id(tokenizer, IMAGE_PAD), _special_id(tokenizer, VIDEO_PAD)
    vision = _vision_in_placeholder_order(conv, ids, outs, video_grids, image_id, video_id, pcfg)
    seconds = [o["second_per_grid"] for o in outs["video"]]
    return {
        "input_ids": ids,
        "loss_mask": loss_mask,
        "position_ids": _position_ids(conv, ids, video_grids, image_id, video_id, pcfg, seconds),
        **vision,
        "task_id": int(task_id),
    }


# ----------------------------------------------------------------------------------------------
# Index -> tokenised sample (or skip marker)


class SampleProcessor:
    """Callable ``index -> tokenised sample | skip marker``: read, decode, tokenise one sample.

    Picklable (for grain worker processes): ``tokenizer`` may be a path, loaded lazily.
    With ``on_error='raise'`` a bad sample raises ``DataError`` naming the sample index, id, source
    and reason; otherwise it becomes a skip marker counted by the packer.
    """

    def __init__(self, source: Any, tokenizer: Any, config: PipelineConfig, task_names: Sequence[str] = ()):
        self.source = source
        self._tokenizer = tokenizer
        self.config = config
        self.task_ids = {name: k + 1 for k, name in enumerate(task_names)}

    @property
    def tokenizer(self) -> Any:
        from vlm_jax.data.tokenizer import Tokenizer, load_tokenizer

        if isinstance(self._tokenizer, (str, os.PathLike)):
            self._tokenizer = load_tokenizer(self._tokenizer)
        elif isinstance(self._tokenizer, tokenizers.Tokenizer):  # a raw `tokenizers` object: wrap it
            self._tokenizer = Tokenizer(self._tokenizer)
        return self._tokenizer

    def _where(self, index: int, sample: Mapping | None) -> str:
        where = f"sample {index}"
        if isinstance(self.source, sources_lib.MixtureSource):
            k, j = self.source.locate(index)
            where += f" (source {self.source.names[k]!r} item {j})"
        if sample is not None and sample.get("id"):
            where += f" id {sample.get('id')!r}"
        return where

    def __call__(self, index: int) -> dict[str, Any]:
        index = int(index)
        sample = None
        try:
            sample = self.source[index]
            decoded = sources_lib.decode_sample(sample, self.config.default_video_fps)
            task_id = self.task_ids.get(str(decoded.get("task", "")), 0)
            out = tokenize_sample(decoded, self.tokenizer, self.config, task_id=task_id, index=index)
            out["index"] = index
            return out
        except SampleError as e:
            reason, message = e.reason, f"{self._where(index, sample)}: {e}"
        except Exception as e:  # anything else still names the sample
            reason, message = "processing_error", f"{self._where(index, sample)}: {type(e).__name__}: {e}"
            if self.config.on_error == "raise":
                raise DataError(message) from e
        if self.config.on_error == "raise" and reason not in CAPACITY_REASONS:
            raise DataError(message)
        return skip_marker(reason, message, index, str((sample or {}).get("id", "")))


# ----------------------------------------------------------------------------------------------
# Pipeline


def _shard(config: PipelineConfig) -> tuple[int, int]:
    if config.shard_count is not None:
        return int(config.shard_index), int(config.shard_count)
    import jax

    return jax.process_index(), jax.process_count()


def _resolve_source(source: Any, config: PipelineConfig) -> Any:
    if isinstance(source, Mapping):
        weights = config.weights.to_dict() if config.weights is not None else None
        return sources_lib.MixtureSource(source, weights, seed=config.seed)
    if config.weights is not None:
        raise ValueError("pipeline.weights needs a mapping of named sources")
    return source


def _pad_id(tokenizer: Any, config: PipelineConfig) -> int:
    if config.pad_id is not None:
        return int(config.pad_id)
    if isinstance(tokenizer, (str, os.PathLike)):
        from vlm_jax.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    try:
        return _special_id(tokenizer, END_OF_TEXT)
    except ValueError:
        return 0


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app nobody parses them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def default_task_names(source: Any) -> tuple[str, ...]:
    """Task names used when the config's ``task_names`` is None.

    A ``MixtureSource``: its source names followed by the tasks of synthetic worlds inside it;
    a ``SyntheticSource``: its world's tasks; otherwise none (every task id 0).
    """
    if isinstance(source, sources_lib.MixtureSource):
        names = list(source.names)
        for s in source.sources:
            names += [t for t in default_task_names(s) if t not in names]
        return tuple(names)
    world = getattr(source, "world", None)
    return tuple(getattr(world, "task_names", ()) or ())


def build_dataset(source: Any, tokenizer: Any, config: PipelineConfig) -> grain.IterDataset:
    """The grain ``IterDataset`` of packed batches (each with ``batch[STATS_KEY]``)."""
    source = _resolve_source(source, config)
    n = len(source)
    if n == 0:
        raise ValueError("the source is empty")
    task_names = config.task_names
    if task_names is None:
        task_names = default_task_names(source)
    shard_index, shard_count = _shard(config)
    if shard_count > n:
        raise ValueError(f"{shard_count} shards but only {n} samples")
    ds = grain.MapDataset.range(n)
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    if shard_count > 1:
        # Equal shards (the last n % shard_count items of each epoch's order are dropped), so that
        # every process sees the same number of samples per epoch.
        ds = ds[shard_index : (n // shard_count) * shard_count : shard_count]
    ds = ds.repeat(config.num_epochs)
    ds = ds.map(SampleProcessor(source, tokenizer, config, task_names))
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer_size)
    )
    it_ds = PackIterDataset(it_ds, packing_config(config, _pad_id(tokenizer, config)))
    if config.worker_count > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size
            )
        )
    return it_ds


def suggest_vision_buffer(
    source: Any, tokenizer: Any, config: PipelineConfig, num_samples: int = 256, headroom: float = 1.15
) -> dict[str, Any]:
    """Measures patches and images per token on ``num_samples`` samples and proposes buffer sizes.

    Returns the measured ratios and ``max_patches`` / ``max_grids`` (rounded up to multiples of
    1024 / 16) such that a batch full of tokens in the measured proportion fits, times ``headroom``.
    """
    source = _resolve_source(source, config)
    proc = SampleProcessor(source, tokenizer, get_config(config, on_error="skip"), ())
    rng = np.random.default_rng(config.seed)
    idx = rng.choice(len(source), size=min(num_samples, len(source)), replace=False)
    tokens = patches = grids = n = 0
    for i in idx.tolist():
        out = proc(i)
        if packing_lib.is_skip(out):
            continue
        n += 1
        tokens += len(out["input_ids"])
        patches += len(out["pixel_values"])
        grids += len(out["grid_thw"])
    if n == 0:
        raise ValueError("none of the measured samples could be tokenised")
    slots = config.batch_size * config.seq_len * headroom
    return {
        "samples": n,
        "patches_per_token": patches / tokens,
        "visuals_per_token": grids / tokens,
        "max_patches": max(1024, int(np.ceil(slots * patches / tokens / 1024)) * 1024),
        "max_grids": max(16, int(np.ceil(slots * grids / tokens / 16)) * 16),
    }


def empty_totals() -> dict[str, Any]:
    return {
        "batches": 0,
        "samples": 0,
        "tokens": 0,
        "target_tokens": 0,
        "patches": 0,
        "visuals": 0,
        "token_slots": 0,
        "patch_slots": 0,
        "skipped": {},
    }


class PipelineIterator(grain.DatasetIterator):
    """Iterator over packed batches with cumulative ``stats`` and exact ``get_state`` / ``set_state``.

    A grain ``DatasetIterator``, so ``grain.checkpoint.CheckpointHandler`` (orbax) can save and
    restore it with the model; ``get_state()`` is a JSON-serialisable dict for anything else.
    """

    def __init__(self, dataset: grain.IterDataset, config: PipelineConfig):
        super().__init__(dataset.__iter__())
        self.config = config
        self.stats: dict[str, Any] = empty_totals()
        self.recent_skips: collections.deque[str] = collections.deque(maxlen=50)
        self._logged = 0

    def __iter__(self) -> PipelineIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._parent)
        st = batch.pop(STATS_KEY)
        s = self.stats
        s["batches"] += 1
        for key in ("samples", "tokens", "target_tokens", "patches", "visuals"):
            s[key] += int(st[key])
        s["token_slots"] += self.config.batch_size * self.config.seq_len
        s["patch_slots"] += self.config.max_patches
        for reason, count in st["skipped"].items():
            s["skipped"][reason] = s["skipped"].get(reason, 0) + int(count)
        for msg in st.get("skip_messages", ()):
            self.recent_skips.append(msg)
            if self._logged < self.config.log_skipped:
                log.warning("skipped %s", msg)
                self._logged += 1
        return batch

    @property
    def packing_efficiency(self) -> float:
        """Fraction of token slots that held real tokens, so far."""
        return self.stats["tokens"] / max(1, self.stats["token_slots"])

    @property
    def num_skipped(self) -> int:
        return int(sum(self.stats["skipped"].values()))

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state: restoring it replays exactly the batches that would follow."""
        return {"grain": self._parent.get_state(), "stats": _copy_stats(self.stats)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._parent.set_state(state["grain"])
        self.stats = _copy_stats(state["stats"])

    def __enter__(self) -> PipelineIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _copy_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(stats)
    out["skipped"] = dict(stats.get("skipped", {}))
    return out


class Pipeline:
    """The input pipeline: ``iter(Pipeline(source, tokenizer, config))`` yields packed batches.

    ``source``: a random-access source (or a mapping name -> source, mixed by ``config.weights``).
    ``tokenizer``: a ``vlm_jax.data.tokenizer`` Tokenizer or the path of its JSON file.
    ``config``: a pipeline config (``get_config``) or the keys to override in ``base_config()``.
    """

    def __init__(self, source: Any, tokenizer: Any, config: Mapping[str, Any] | mlc.ConfigDict | None = None):
        config = get_config(config)
        self.config = config
        self.dataset = build_dataset(source, tokenizer, config)

    def __iter__(self) -> PipelineIterator:
        return PipelineIterator(self.dataset, self.config)

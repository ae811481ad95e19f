"""Grain input pipelines: source -> decode -> tokenise -> pack -> batch.

Entry point::

    pipe = Pipeline(source, tokenizer, PipelineConfig(seq_len=4096, batch_size=8, worker_count=2))
    it = iter(pipe)                  # PipelineIterator
    batch = next(it)                 # dict of numpy arrays, the CONTRACTS.md batch
    state = it.get_state()           # JSON-serialisable; it.set_state(state) resumes exactly
    it.stats                         # cumulative counters: samples, tokens, skipped by reason, ...

``source`` is any random-access source of raw samples (``vlm_jax.data.sources``; a ``MixtureSource``
for a weighted mix, e.g. with text-only data) or a mapping name -> source with
``PipelineConfig.weights``. The pipeline, in grain terms:

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
import numpy as np
import tokenizers

from vlm_jax.data import packing as packing_lib
from vlm_jax.data import sources as sources_lib
from vlm_jax.data.packing import STATS_KEY, PackingConfig, PackIterDataset, skip_marker
from vlm_jax.data.sources import SampleError

log = logging.getLogger(__name__)

# Reasons that are policy (the sample is fine but does not fit), counted whatever `on_error` says.
CAPACITY_REASONS = ("too_long", "too_many_patches", "too_many_visuals")

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
END_OF_TEXT = "<|endoftext|>"


class DataError(RuntimeError):
    """A bad sample with ``on_error='raise'``; the message names the sample index, id and source."""


@dataclasses.dataclass
class PipelineConfig:
    """Configuration of ``Pipeline`` (validated; ``from_dict`` rejects unknown keys).

    Batch shapes: ``batch_size`` rows (per process) of ``seq_len`` tokens; ``max_patches`` x 1536
    pixel values and ``max_grids`` grid rows shared by the batch. ``loss_normalization``:
    'token' | 'sample' | 'sqrt' (see ``vlm_jax.data.packing``).
    Order: ``seed``, ``shuffle``, ``num_epochs`` (None = forever); ``shard_index`` / ``shard_count``
    default to ``jax.process_index()`` / ``jax.process_count()``.
    Parallelism: ``worker_count`` grain processes (0 = in-process), ``worker_buffer_size`` batches
    buffered per worker, ``read_threads`` / ``read_buffer_size`` threads and elements prefetched by
    each process's reader (decoding + tokenising runs on these threads).
    Packing: ``buffer_factor`` batches' worth of tokens are pooled before packing a batch;
    ``max_buffer_samples`` caps the pool.
    Errors: ``on_error`` 'skip' (count and go on) | 'raise' (``DataError`` naming the sample);
    samples too long for ``seq_len`` or the vision buffer are always skipped and counted.
    Tasks: ``task_names``: task id of a sample = 1 + its position in this list (0 if absent); None
    = the mixture's source names when the source is a ``MixtureSource``, else no task ids (all 0).
    Text: ``thinking`` (False / 'standard', True / 'thinking', 'thinking_all_turns') and
    ``add_vision_id`` are passed to the chat template; ``pad_id`` None = ``<|endoftext|>``.
    Video: ``default_video_fps`` for frame lists without a rate; ``video_token_budget`` (visual tokens
    per video, None = the processor's plan); ``fit_videos`` shrinks videos (the processor's
    length-adaptive sampling) so that the sample fits ``seq_len`` and the vision buffer.
    ``processor``: a ``vlm_jax.data.processor.ProcessorConfig`` (None = its defaults).
    ``weights``: mixture weights when ``source`` is a mapping of named sources.
    """

    seq_len: int = 4096
    batch_size: int = 8
    max_patches: int = 16384
    max_grids: int = 64
    loss_normalization: str = "token"
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    shard_index: int | None = None
    shard_count: int | None = None
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2
    read_buffer_size: int = 32
    buffer_factor: float = 2.0
    max_buffer_samples: int = 1024
    on_error: str = "skip"
    task_names: tuple[str, ...] | None = None
    thinking: bool | str = False
    add_vision_id: bool = False
    pad_id: int | None = None
    default_video_fps: float = 2.0
    video_token_budget: int | None = None
    fit_videos: bool = True
    processor: Any = None
    weights: Any = None
    log_skipped: int = 20

    def __post_init__(self):
        ints = ("seq_len", "batch_size", "max_patches", "max_grids", "max_buffer_samples")
        for name in ints:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"PipelineConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("worker_count", "read_threads", "log_skipped"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"PipelineConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.worker_buffer_size < 1 or self.read_buffer_size < 1:
            raise ValueError("PipelineConfig.worker_buffer_size and read_buffer_size must be >= 1")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"PipelineConfig.on_error must be 'skip' or 'raise', got {self.on_error!r}")
        if self.loss_normalization not in packing_lib.LOSS_NORMALIZATIONS:
            raise ValueError(
                f"PipelineConfig.loss_normalization must be one of {packing_lib.LOSS_NORMALIZATIONS}, "
                f"got {self.loss_normalization!r}"
            )
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError(f"PipelineConfig.num_epochs must be positive or None, got {self.num_epochs}")
        if (self.shard_index is None) != (self.shard_count is None):
            raise ValueError("PipelineConfig.shard_index and shard_count must be given together")
        if self.shard_count is not None and not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"PipelineConfig.shard_index {self.shard_index} not in [0, {self.shard_count})")
        if self.task_names is not None:
            self.task_names = tuple(self.task_names)
        if isinstance(self.processor, Mapping):
            from vlm_jax.data.processor import ProcessorConfig

            self.processor = ProcessorConfig(**dict(self.processor))
        if self.thinking not in (True, False, None, "standard", "thinking", "thinking_all_turns"):
            raise ValueError(
                f"PipelineConfig.thinking must be a bool or 'standard' | 'thinking' | 'thinking_all_turns', "
                f"got {self.thinking!r}"
            )
        if self.video_token_budget is not None and self.video_token_budget <= 0:
            raise ValueError(
                f"PipelineConfig.video_token_budget must be positive, got {self.video_token_budget}"
            )
        if self.default_video_fps <= 0:
            raise ValueError("PipelineConfig.default_video_fps must be positive")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineConfig:
        """From a dict or ml_collections ConfigDict; an unknown key fails, naming it."""
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown PipelineConfig keys {unknown}; valid keys are {sorted(fields)}")
        return cls(**dict(d))

    def packing_config(self, pad_id: int = 0) -> PackingConfig:
        return PackingConfig(
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            max_patches=self.max_patches,
            max_grids=self.max_grids,
            loss_normalization=self.loss_normalization,
            pad_id=pad_id if self.pad_id is None else self.pad_id,
            buffer_factor=self.buffer_factor,
            max_buffer_samples=self.max_buffer_samples,
            patch_dim=int(getattr(self.processor, "patch_dim", 1536)),
        )


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


def _visual_order(input_ids: np.ndarray, image_id: int, video_id: int, video_t: Sequence[int]) -> list:
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
    from vlm_jax.data.chat_template import tokenize_conversation
    from vlm_jax.model.rope import get_rope_index

    pcfg = processor_config if processor_config is not None else config.processor
    if pcfg is None:
        pcfg = proc.ProcessorConfig()
    merge = pcfg.merge_size
    sid = sample.get("id", "?")
    patch_dim = pcfg.patch_dim
    empty_vision = {
        "pixel_values": np.zeros((0, patch_dim), np.float32),
        "grid_thw": np.zeros((0, 3), np.int32),
    }

    if "messages" not in sample and "text" in sample:  # plain text: trained on every token
        text = sample["text"]
        if not isinstance(text, str) or not text.strip():
            raise SampleError("empty_conversation", f"sample {sid}: empty text")
        ids = np.asarray(list(tokenizer.encode(text)) + [_special_id(tokenizer, END_OF_TEXT)], np.int32)
        if len(ids) > config.seq_len:
            raise SampleError("too_long", f"sample {sid}: {len(ids)} tokens > seq_len {config.seq_len}")
        pos = np.broadcast_to(np.arange(len(ids), dtype=np.int32), (3, len(ids))).copy()
        return {
            "input_ids": ids,
            "loss_mask": np.ones(len(ids), bool),
            "position_ids": pos,
            "task_id": int(task_id),
            **empty_vision,
        }

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
    n_img, n_vid = sources_lib._count_visuals(messages)
    if n_img != len(images) or n_vid != len(videos):
        raise SampleError(
            "placeholder_mismatch",
            f"sample {sid}: {n_img} image and {n_vid} video placeholders but {len(images)} images "
            f"and {len(videos)} videos",
        )
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

    def plan(budgets: Sequence[int | None]) -> tuple[list, list]:
        grids, stamps = [], []
        for k, (v, budget) in enumerate(zip(videos, budgets)):
            t_, h_, w_ = v["frames"].shape[:3]
            try:
                idx, rh, rw = proc.plan_video(t_, h_, w_, fps[k], pcfg, budget)
            except ValueError as e:
                raise SampleError("too_long", f"sample {sid} video {k}: {e}") from e
            grids.append(
                (-(-len(idx) // pcfg.temporal_patch_size), rh // pcfg.patch_size, rw // pcfg.patch_size)
            )
            stamps.append(proc.frame_timestamps(idx, fps[k], pcfg.temporal_patch_size))
        return grids, stamps

    def tokens(video_grids, video_stamps) -> dict:
        try:
            return tokenize_conversation(
                messages,
                tokenizer,
                image_grids,
                video_grids,
                video_stamps,
                config.thinking,
                tools=sample.get("tools"),
                add_vision_id=config.add_vision_id,
                merge_size=merge,
                timestamp_format=pcfg.timestamp_format,
                rng=np.random.default_rng([config.seed, int(index)]),
                sample_id=str(sid),
            )
        except ValueError as e:
            msg = str(e)
            reason = "placeholder_mismatch" if "placeholder" in msg else "bad_format"
            raise SampleError(reason, msg) from e

    image_patches = sum(int(np.prod(g)) for g in image_grids)
    budgets: list[int | None] = [config.video_token_budget] * len(videos)
    if videos and config.fit_videos:
        # The vision buffer bounds the video tokens from the start (4 patches per token).
        room = (config.max_patches - image_patches) // (merge * merge)
        if room >= len(videos):
            budgets = [min(b, room // len(videos)) if b is not None else room // len(videos) for b in budgets]
    video_grids, video_stamps = plan(budgets)
    tok = tokens(video_grids, video_stamps)
    n = len(tok["input_ids"])
    for _ in range(4):
        if not (n > config.seq_len and videos and config.fit_videos):
            break
        # Length-adaptive sampling: take the overflow out of the videos, in proportion to their size.
        counts = [_tokens_of(g, merge) for g in video_grids]
        total = sum(counts)
        room = total - (n - config.seq_len)
        if room < len(videos):
            break
        budgets = [max(1, c * room // total) for c in counts]
        video_grids, video_stamps = plan(budgets)
        tok = tokens(video_grids, video_stamps)
        n = len(tok["input_ids"])
    if n > config.seq_len:
        raise SampleError("too_long", f"sample {sid}: {n} tokens > seq_len {config.seq_len}")
    n_patches = image_patches + sum(int(np.prod(g)) for g in video_grids)
    if n_patches > config.max_patches:
        raise SampleError(
            "too_many_patches",
            f"sample {sid}: {n_patches} patches > vision buffer max_patches {config.max_patches}",
        )
    ids = np.asarray(tok["input_ids"], np.int32).reshape(-1)
    loss_mask = np.asarray(tok["loss_mask"], bool).reshape(-1)
    if not loss_mask[1:].any():
        raise SampleError("empty_conversation", f"sample {sid}: no supervised tokens")

    # Pixels, only now that the sample is known to fit.
    image_out = [proc.process_image(img, pcfg) for img in images]
    video_out = [
        proc.process_video(v["frames"], fps[k], pcfg, token_budget=budgets[k]) for k, v in enumerate(videos)
    ]
    for kind, outs, grids in (("image", image_out, image_grids), ("video", video_out, video_grids)):
        for k, (o, g) in enumerate(zip(outs, grids)):
            if tuple(np.asarray(o["grid_thw"]).reshape(3).tolist()) != tuple(g):
                raise SampleError(
                    "processing_error",
                    f"sample {sid} {kind} {k}: planned grid {g} but the "
                    f"processor gave {np.asarray(o['grid_thw']).reshape(3).tolist()}",
                )

    image_id = _special_id(tokenizer, IMAGE_PAD)
    video_id = _special_id(tokenizer, VIDEO_PAD)
    order = _visual_order(ids, image_id, video_id, [g[0] for g in video_grids])
    expected = [("image", i) for i in range(len(images))] + [("video", j) for j in range(len(videos))]
    if sorted(order) != sorted(expected):
        raise SampleError(
            "placeholder_mismatch", f"sample {sid}: placeholder tokens do not match the visuals"
        )
    outs = {"image": image_out, "video": video_out}
    pixel_values = [np.asarray(outs[kind][i]["pixel_values"], np.float32) for kind, i in order]
    grid_thw = [np.asarray(outs[kind][i]["grid_thw"], np.int32).reshape(1, 3) for kind, i in order]
    try:
        position_ids, _ = get_rope_index(
            ids[None],
            np.asarray(image_grids, np.int32).reshape(-1, 3) if images else None,
            np.asarray(video_grids, np.int32).reshape(-1, 3) if videos else None,
            image_token_id=image_id,
            video_token_id=video_id,
            spatial_merge_size=merge,
        )
    except ValueError as e:
        raise SampleError("placeholder_mismatch", f"sample {sid}: {e}") from e
    return {
        "input_ids": ids,
        "loss_mask": loss_mask,
        "position_ids": np.asarray(position_ids[:, 0], np.int32),
        "pixel_values": np.concatenate(pixel_values) if pixel_values else empty_vision["pixel_values"],
        "grid_thw": np.concatenate(grid_thw) if grid_thw else empty_vision["grid_thw"],
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
        return sources_lib.MixtureSource(source, config.weights, seed=config.seed)
    if config.weights is not None:
        raise ValueError("PipelineConfig.weights needs a mapping of named sources")
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
    """Task names used when ``PipelineConfig.task_names`` is None.

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
    it_ds = PackIterDataset(it_ds, config.packing_config(_pad_id(tokenizer, config)))
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
    proc = SampleProcessor(source, tokenizer, dataclasses.replace(config, on_error="skip"), ())
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
    """

    def __init__(self, source: Any, tokenizer: Any, config: PipelineConfig | Mapping[str, Any] | None = None):
        if config is None:
            config = PipelineConfig()
        elif not isinstance(config, PipelineConfig):
            config = PipelineConfig.from_dict(config)
        self.config = config
        self.dataset = build_dataset(source, tokenizer, config)

    def __iter__(self) -> PipelineIterator:
        return PipelineIterator(self.dataset, self.config)

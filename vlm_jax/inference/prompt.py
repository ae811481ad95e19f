"""Generation prompts: chat messages + images/videos -> token ids and vision inputs for `generate`.

    prompt = build_prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
                          [image], [], tokenizer)
    out = generate(config, params, **batch_prompts([prompt, ...]), max_new_tokens=64)

The text is the chat template's generation prompt (`add_generation_prompt=True`; the Thinking template,
which ends in `<think>\\n`, with `thinking=True`), vision placeholders expanded for the processor's
grids exactly as in training (`tokenize_conversation`; with `merger="resampler"`, `resampler_num_queries`
per image), and the pixel values of every image and video in placeholder order (docs/CONTRACTS.md).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections as mlc
import numpy as np
import tokenizers

from vlm_jax.data import processor as proc
from vlm_jax.data.chat_template import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, render_text, tokenize_conversation
from vlm_jax.data.pipeline import video_runs, visual_order
from vlm_jax.data.sources import SampleError
from vlm_jax.data.tokenizer import Tokenizer

DEFAULT_VIDEO_FPS = 2.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """input_ids: the prompt tokens; pixel_values float32 [N, patch_dim] and grid_thw int32 [K, 3]
    of its images and videos in placeholder order (N = K = 0 for text); second_per_grid_ts: seconds per
    temporal group of each video, in order (what a model with `video_time_encoding="absolute_time"` needs)."""

    input_ids: list[int]
    pixel_values: np.ndarray
    grid_thw: np.ndarray
    second_per_grid_ts: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values.shape[0])


def as_tokenizer(tokenizer: Tokenizer | tokenizers.Tokenizer) -> Tokenizer:
    """The `Tokenizer` wrapper (special ids, offsets) of a raw `tokenizers.Tokenizer`, or `tokenizer` itself."""
    return tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)


def as_processor_config(cfg: Mapping[str, Any] | mlc.ConfigDict | None) -> proc.ProcessorConfig:
    """The processor config of `cfg`: a processor config, processor keys to override (as in the pipeline
    config or a `processor_config.json`), or None (the defaults); an unknown key fails naming it."""
    return proc.DEFAULT_CONFIG if cfg is None else proc.get_config(cfg)


def _as_video(video: Any, k: int) -> tuple[np.ndarray, float]:
    """(frames [T, H, W, C], fps) of a `{"frames", "fps"}` dict (the sample format) or a bare array."""
    if isinstance(video, Mapping):
        if "frames" not in video:
            raise ValueError(f"video {k}: a dict video needs 'frames' (and optionally 'fps')")
        frames, fps = video["frames"], video.get("fps") or DEFAULT_VIDEO_FPS
    else:
        frames, fps = video, DEFAULT_VIDEO_FPS
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[0] == 0:
        raise ValueError(f"video {k}: frames must be [T, H, W, 3] with T >= 1, got shape {frames.shape}")
    return frames, float(fps)


def build_prompt(
    messages: Sequence[Mapping],
    images: Sequence[Any],
    videos: Sequence[Any],
    tokenizer: Tokenizer | tokenizers.Tokenizer,
    processor_config: proc.ProcessorConfig | Mapping[str, Any] | None = None,
    thinking: bool = False,
) -> Prompt:
    """The generation prompt of a conversation (see the module docstring).

    images: PIL images or uint8 arrays [H, W, 3] (grey / RGBA accepted), one per image placeholder of
      `messages`, in order. videos: `{"frames": uint8 [T, H, W, 3], "fps": float}` dicts or bare frame
      arrays (at 2 fps), one per video placeholder. Frames are sampled at the processor's fps.
    Raises ValueError when the placeholder and media counts differ, or for an empty or unreadable image
    (the message names which one).
    """
    tok = as_tokenizer(tokenizer)
    pcfg = as_processor_config(processor_config)
    text = render_text(messages, add_generation_prompt=True, thinking=thinking)
    n_img, n_vid = text.count(IMAGE_PLACEHOLDER), text.count(VIDEO_PLACEHOLDER)
    if (n_img, n_vid) != (len(images), len(videos)):
        raise ValueError(f"the messages have {n_img} image and {n_vid} video placeholders but {len(images)} "
                         f"images and {len(videos)} videos were given")
    proc.check_videos_supported(pcfg.merger, len(videos))

    outs = {"image": [], "video": []}
    for k, image in enumerate(images):
        if image is None:
            raise ValueError(f"image {k} is None")
        try:
            outs["image"].append(proc.process_image(image, pcfg))
        except (ValueError, TypeError, OSError) as e:  # empty, wrong shape or dtype, undecodable
            raise ValueError(f"image {k}: {e}") from e
    for k, video in enumerate(videos):
        frames, fps = _as_video(video, k)
        try:
            outs["video"].append(proc.process_video(frames, fps, pcfg))
        except (ValueError, TypeError) as e:
            raise ValueError(f"video {k}: {e}") from e

    tokens = tokenize_conversation(
        messages, tok,
        # The placeholders the model's merger makes of each grid; the pixels stay the real patches.
        image_grids=proc.config_llm_grids([o["grid_thw"] for o in outs["image"]], pcfg),
        video_grids=proc.config_llm_grids([o["grid_thw"] for o in outs["video"]], pcfg),
        video_timestamps=[o["timestamps"] for o in outs["video"]],
        thinking=thinking, add_generation_prompt=True, merge_size=pcfg.merge_size,
        # "random" is a training augmentation; prompts are deterministic.
        timestamp_format="seconds" if pcfg.timestamp_format == "random" else pcfg.timestamp_format,
        video_time_encoding=pcfg.video_time_encoding)
    ids = np.asarray(tokens["input_ids"], np.int32)
    runs = video_runs([np.asarray(o["grid_thw"]).reshape(3) for o in outs["video"]], pcfg.video_time_encoding)
    try:
        order = visual_order(ids, tok.image_pad_id, tok.video_pad_id, runs)
    except SampleError as e:
        raise ValueError(f"placeholder tokens do not match the images and videos: {e.detail}") from e
    pixel_values = [np.asarray(outs[kind][i]["pixel_values"], np.float32) for kind, i in order]
    grid_thw = [np.asarray(outs[kind][i]["grid_thw"], np.int32).reshape(1, 3) for kind, i in order]
    return Prompt(
        input_ids=ids.tolist(),
        pixel_values=np.concatenate(pixel_values) if pixel_values else np.zeros((0, pcfg.patch_dim), np.float32),
        grid_thw=np.concatenate(grid_thw) if grid_thw else np.zeros((0, 3), np.int32),
        second_per_grid_ts=tuple(float(outs["video"][i]["second_per_grid"]) for kind, i in order if kind == "video"),
    )


def batch_prompts(prompts: Sequence[Prompt]) -> dict[str, Any]:
    """`generate`'s inputs for several prompts: `prompts` (token lists) and the rows' vision inputs
    concatenated in row order (None for a text-only batch; `second_per_grid_ts` None without videos).
    Use as `generate(config, params, **batch)`."""
    if not prompts:
        raise ValueError("batch_prompts needs at least one prompt")
    grids = [p.grid_thw for p in prompts if len(p.grid_thw)]
    seconds = [s for p in prompts for s in p.second_per_grid_ts]
    return {
        "prompts": [list(p.input_ids) for p in prompts],
        "pixel_values": np.concatenate([p.pixel_values for p in prompts if len(p.grid_thw)]) if grids else None,
        "grid_thw": np.concatenate(grids) if grids else None,
        "second_per_grid_ts": seconds or None,
    }


def check_budget(prompt_len: int, max_new_tokens: int, config: mlc.ConfigDict) -> None:
    """ValueError when the prompt plus `max_new_tokens` would run past the model's position budget."""
    limit = int(config.text.max_position_embeddings)
    if prompt_len + max_new_tokens > limit:
        raise ValueError(f"the prompt has {prompt_len} tokens; with max_new_tokens={max_new_tokens} it exceeds "
                         f"the model's budget of {limit} positions (text.max_position_embeddings)")


def build_messages(prompt: str, n_images: int, n_videos: int, system: str | None = None) -> list[dict]:
    """Messages of a single user turn: the images, then the videos, then the prompt text (after an
    optional system turn)."""
    content = [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos + [{"type": "text", "text": prompt}]
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": content}]


def load_video(path: str | os.PathLike, fps: float) -> dict:
    """`{"frames": uint8 [T, H, W, 3], "fps": fps}` from a directory of frame images (sorted by name)
    or a .npy file; FileNotFoundError / ValueError naming the problem."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"video directory {path} holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
        frames = [np.asarray(proc.load_image(f)) for f in files]
        if len({f.shape for f in frames}) > 1:
            raise ValueError(f"the frames in {path} differ in size: {sorted({f.shape for f in frames})}")
        frames = np.stack(frames)
    elif path.suffix == ".npy":
        try:
            frames = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read video array {path}: {e}") from e
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not frames.shape[0]:
            raise ValueError(f"{path}: a video array must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    else:
        raise ValueError(f"unsupported video {path}: give a directory of frame images or a .npy [T, H, W, 3] "
                         "array (decode video files to frames first)")
    if not fps > 0:
        raise ValueError(f"video fps must be positive, got {fps}")
    return {"frames": frames, "fps": float(fps)}

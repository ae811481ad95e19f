"""Qwen3-VL vision preprocessing in numpy + Pillow: resize, normalise, patchify, video sampling.

Outputs match the Hugging Face Qwen3-VL processors (`Qwen2VLImageProcessor[Pil]` for images,
`Qwen3VLVideoProcessor` for videos, `Qwen3VLProcessor` for timestamps) value for value:

- `pixel_values`: float32 `[N, C*T*p*p] = [N, 1536]`, each row one patch flattened in
  (channel, temporal, row, col) order; rows ordered (t, merge-block row, merge-block col,
  row in block, col in block), so the 2x2 patches of a merge group are adjacent.
- `grid_thw`: int32 `[1, 3]`, (temporal groups, patch rows, patch cols).

Resampling. Hugging Face resizes with bicubic (a = -0.5) antialiased filtering, but two different
implementations are in use and they differ by one grey level on ~0.3-1% of pixels (up to a few levels
on noise-like content):
- ``"pil"``: Pillow's `Image.resize(BICUBIC)`. This is HF's PIL backend (`Qwen2VLImageProcessorPil`,
  what `AutoImageProcessor` gives without torchvision) and what the official `qwen-vl-utils` uses for
  images (it resizes with Pillow, after which HF's own resize is a no-op).
- ``"torch"``: torch's uint8 antialiased bicubic kernel (what torchvision's `resize` runs on CPU for
  uint8 tensors: HF's default `Qwen2VLImageProcessor` and the only backend of `Qwen3VLVideoProcessor`;
  `qwen-vl-utils` resizes video frames with it too). Reimplemented here in numpy, bit for bit:
  separable, horizontal pass first, int16 fixed-point weights, uint8 intermediate.
The normalisation follows the same backend (HF's two backends round differently in the last ulp).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections as mlc
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlm_jax.configs.validate import check_keys, merge

RESAMPLE_BACKENDS = ("pil", "torch")
TIMESTAMP_FORMATS = ("seconds", "hms", "random")
# How video time reaches the language model (the model config's `video_time_encoding`): "timestamps"
# (Qwen3-VL: a text timestamp before each temporal group) | "absolute_time" (Qwen2.5-VL: no timestamp text,
# MRoPE temporal ids proportional to time, see `model.rope.get_rope_index`).
VIDEO_TIME_ENCODINGS = ("timestamps", "absolute_time")
# The model's connector (the model config's `merger`): "mlp" (2x2 patch merger: t*h*w/merge_size**2 tokens per
# image) | "resampler" (Qwen-VL: `resampler_num_queries` tokens per image). The data side needs it for the
# placeholder count and the MRoPE grid of each image (`llm_grids`).
MERGERS = ("mlp", "resampler")
# Model keys the data side reads through the processor config (experiment configs tie them to the model's).
MERGER_KEYS = ("merger", "resampler_num_queries")
# Qwen-VL rejects images whose long side is more than this many times the short side.
MAX_ASPECT_RATIO = 200


def base_config() -> mlc.ConfigDict:
    """Every processor key, with the released checkpoints' settings.

    `factor` and `patch_dim` are derived (ml_collections references: they follow the patch keys) and
    are not set; `validate` fails when they disagree with the keys they come from.
    """
    c = mlc.ConfigDict()
    c.patch_size = 16
    c.temporal_patch_size = 2
    c.merge_size = 2
    # Image pixel budget (preprocessor_config.json `size`): 256*256 .. 4096*4096 pixels,
    # i.e. 64 .. 16384 visual tokens of 32x32 pixels.
    c.min_pixels = 65536
    c.max_pixels = 16777216
    c.image_mean = (0.5, 0.5, 0.5)
    c.image_std = (0.5, 0.5, 0.5)
    c.rescale_factor = 1 / 255
    c.image_resample = "pil"  # "pil" | "torch" (see the module docstring)
    c.video_resample = "torch"
    # Video pixel budget (video_preprocessor_config.json `size`), over all sampled frames together.
    c.video_min_pixels = 4096
    c.video_max_pixels = 25165824
    c.video_fps = 2.0  # target sampling rate
    c.video_min_frames = 4
    c.video_max_frames = 768
    # HF's `cap_pixels_per_frame` (qwen-vl-utils behaviour): limit each frame to
    # `video_max_tokens_per_frame` tokens and to its share of `video_max_pixels`.
    c.video_cap_pixels_per_frame = False
    c.video_max_tokens_per_frame = 768
    # Length-adaptive sampling (`token_budget`): the per-frame token floor before frames are dropped.
    c.video_min_tokens_per_frame = 128
    # How the pipeline renders video timestamps (`tokenize_conversation(timestamp_format=...)`).
    c.timestamp_format = "seconds"  # "seconds" | "hms" | "random"
    # The model's `video_time_encoding` and `video_tokens_per_second` as the data side needs them (prompt
    # layout, MRoPE temporal ids). Experiment configs make these references to the model's keys, so they
    # are set there, once; see vlm_jax/configs/model.py.
    c.video_time_encoding = "timestamps"  # "timestamps" | "absolute_time"
    c.video_tokens_per_second = 2.0
    # The model's `merger` and `resampler_num_queries` (tied to them the same way): how many placeholder
    # tokens, on which MRoPE grid, each image gets (`llm_grids`). Pixels and patch budgets do not change.
    c.merger = "mlp"  # "mlp" | "resampler"
    c.resampler_num_queries = 256
    c.factor = c.get_ref("patch_size") * c.get_ref("merge_size")  # side of one visual token in pixels (32)
    c.patch_dim = 3 * c.get_ref("temporal_patch_size") * c.get_ref("patch_size") ** 2  # values per patch (1536)
    return c


# A built processor config (`get_config`): what the functions below take.
ProcessorConfig = mlc.FrozenConfigDict


def get_config(overrides: Mapping[str, Any] | mlc.ConfigDict | None = None, **kw: Any) -> ProcessorConfig:
    """The validated, frozen processor config: `base_config()` with `overrides` and `kw` (any subset of
    its keys; an unknown key fails naming it)."""
    c = merge(merge(base_config(), overrides, "processor"), kw, "processor")
    validate(c)
    return mlc.FrozenConfigDict(c)


def validate(c: mlc.ConfigDict, where: str = "processor") -> None:
    """Fails with a message naming the key (`where.key`) when a key is unknown or missing or a value is invalid."""
    check_keys(c, base_config(), where)
    for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels",
                 "video_min_pixels", "video_max_pixels", "video_min_frames", "video_max_frames",
                 "video_max_tokens_per_frame", "video_min_tokens_per_frame"):
        if c[name] <= 0:
            raise ValueError(f"{where}.{name} must be positive, got {c[name]}")
    if c.min_pixels > c.max_pixels:
        raise ValueError(f"{where}.min_pixels ({c.min_pixels}) > max_pixels ({c.max_pixels})")
    if c.video_min_frames > c.video_max_frames:
        raise ValueError(f"{where}.video_min_frames ({c.video_min_frames}) > video_max_frames "
                         f"({c.video_max_frames})")
    if c.video_fps <= 0:
        raise ValueError(f"{where}.video_fps must be positive, got {c.video_fps}")
    for name in ("image_resample", "video_resample"):
        if c[name] not in RESAMPLE_BACKENDS:
            raise ValueError(f"{where}.{name} must be one of {RESAMPLE_BACKENDS}, got {c[name]!r}")
    if c.timestamp_format not in TIMESTAMP_FORMATS:
        raise ValueError(f"{where}.timestamp_format must be one of {TIMESTAMP_FORMATS}, got {c.timestamp_format!r}")
    if c.video_time_encoding not in VIDEO_TIME_ENCODINGS:
        raise ValueError(f"{where}.video_time_encoding must be one of {VIDEO_TIME_ENCODINGS}, "
                         f"got {c.video_time_encoding!r}")
    if not c.video_tokens_per_second > 0:
        raise ValueError(f"{where}.video_tokens_per_second must be positive, got {c.video_tokens_per_second}")
    if c.merger not in MERGERS:
        raise ValueError(f"{where}.merger must be one of {MERGERS}, got {c.merger!r}")
    if c.merger == "resampler":
        side = math.isqrt(max(c.resampler_num_queries, 0))
        if c.resampler_num_queries <= 0 or side * side != c.resampler_num_queries:
            raise ValueError(f"{where}.resampler_num_queries={c.resampler_num_queries} must be a positive square "
                             "(the resampler's queries sit on a side x side grid)")
    if len(c.image_mean) != 3 or len(c.image_std) != 3:
        raise ValueError(f"{where}.image_mean and image_std need 3 values (R, G, B)")
    derived = {"factor": (c.patch_size * c.merge_size, "patch_size * merge_size"),
               "patch_dim": (3 * c.temporal_patch_size * c.patch_size**2, "3 * temporal_patch_size * patch_size**2")}
    for name, (value, rule) in derived.items():
        if c[name] != value:
            raise ValueError(f"{where}.{name}={c[name]} is derived ({rule} = {value}); leave it unset")


DEFAULT_CONFIG = get_config()


# ----------------------------------------------------------------------------------------------
# Target sizes


def _check_size(height: int, width: int, what: str = "image") -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"{what} has zero size (height={height}, width={width})")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"{what} aspect ratio {ratio:.1f} (height={height}, width={width}) exceeds "
                         f"the maximum of {MAX_ASPECT_RATIO}")


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 65536,
                 max_pixels: int = 16777216) -> tuple[int, int]:
    """Target (height, width) of an image: multiples of `factor`, pixel count in [min, max], aspect kept.

    Qwen's rule: round each side to the nearest multiple of `factor` (Python's round-half-even);
    if that overshoots `max_pixels`, scale down by sqrt(area / max_pixels) and floor to multiples;
    if it undershoots `min_pixels`, scale up by sqrt(min_pixels / area) and ceil to multiples.
    Raises ValueError for zero-size images and aspect ratios above 200.
    """
    _check_size(height, width)
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) > max_pixels ({max_pixels})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_smart_resize(num_frames: int, height: int, width: int, temporal_factor: int = 2, factor: int = 32,
                       min_pixels: int = 4096, max_pixels: int = 25165824) -> tuple[int, int]:
    """Target frame (height, width) of a video; the pixel budget counts all `num_frames` frames.

    Same rule as `smart_resize` with the Qwen3-VL video twists: frames smaller than `factor` are first
    scaled up (truncating) so their short side is `factor`, and the budget test uses the frame count
    rounded to a multiple of `temporal_factor`.
    """
    if num_frames < temporal_factor:
        raise ValueError(f"a video needs at least {temporal_factor} frames, got {num_frames}")
    _check_size(height, width, "video frame")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    _check_size(height, width, "video frame")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid_thw(height: int, width: int, cfg: ProcessorConfig = DEFAULT_CONFIG) -> tuple[int, int, int]:
    """(t, h, w) patch grid `process_image` gives an image of this size (visual tokens = t*h*w/4)."""
    h, w = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return 1, h // cfg.patch_size, w // cfg.patch_size


def llm_grids(grid_thw: np.ndarray | Sequence[Sequence[int]], merger: str, resampler_num_queries: int,
              merge_size: int) -> np.ndarray:
    """The (t, h, w) grids the language model sees, int [N, 3]: what sets each visual's placeholder count
    (t*h*w/merge_size**2) and its MRoPE positions (`model.rope.get_rope_index`).

    "mlp": the patch grids themselves. "resampler": each entry becomes the virtual grid (1, side*m, side*m)
    of the side x side queries (m = merge_size), i.e. side*side tokens on a side x side position grid,
    whatever the image's size. Rows with t == 0 (padding) stay 0.
    """
    grid = np.asarray(grid_thw).reshape(-1, 3)
    if merger == "mlp":
        return grid
    if merger != "resampler":
        raise ValueError(f"merger must be one of {MERGERS}, got {merger!r}")
    side = math.isqrt(int(resampler_num_queries))
    if side * side != resampler_num_queries:
        raise ValueError(f"resampler_num_queries={resampler_num_queries} must be a square")
    virtual = np.tile(np.asarray([[1, side * merge_size, side * merge_size]], grid.dtype), (len(grid), 1))
    return np.where(grid[:, :1] > 0, virtual, 0)


def config_llm_grids(grid_thw: np.ndarray | Sequence[Sequence[int]], cfg: ProcessorConfig) -> np.ndarray:
    """`llm_grids` (int32 [N, 3]) under the processor config's `merger`, `resampler_num_queries`, `merge_size`."""
    grid = np.asarray(grid_thw, np.int32).reshape(-1, 3)
    return llm_grids(grid, cfg.merger, cfg.resampler_num_queries, cfg.merge_size)


def check_videos_supported(merger: str, n_videos: int) -> None:
    """ValueError for videos with the resampler: it turns a whole clip into one set of queries, one
    (1, side, side) token grid with no temporal groups, so there is no place for the per-group timestamps
    (or time-scaled temporal ids) the prompt gives a video."""
    if n_videos and merger == "resampler":
        raise ValueError(f"{n_videos} video(s) with merger='resampler': the resampler pools a whole clip into "
                         "one grid of queries without temporal groups, so the prompt's per-group timestamps (or "
                         "time-scaled temporal ids) have no tokens to go with; videos need merger='mlp'")


# ----------------------------------------------------------------------------------------------
# Resampling


def _cubic(x: np.ndarray) -> np.ndarray:
    # torch's aa_filter for bicubic (Keys, a = -0.5), written exactly as torch evaluates it so
    # the double-precision weights agree to the last bit.
    a = -0.5
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _torch_aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """torch's uint8 antialiased bicubic taps: (first input index, int16 weights [out, k], precision)."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    ksize = int(math.ceil(support)) * 2 + 1
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    # static_cast<int64_t> truncates toward zero, as astype does.
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xsize = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    j = np.arange(ksize)
    w = _cubic(((j[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * invscale)
    w = np.where(j[None, :] < xsize[:, None], w, 0.0)
    total = np.zeros(out_size)
    for k in range(ksize):  # sequential sum: the same rounding as torch's loop
        total = total + w[:, k]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    # The largest precision (<= 22 bits) at which the biggest weight still fits int16.
    w_max = w.max()
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = w * (1 << precision)
    k_int = np.where(w < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int32)
    return xmin, k_int, precision


def _torch_resize_axis(a: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    in_size = a.shape[axis]
    if in_size == out_size:
        return a
    xmin, k_int, precision = _torch_aa_weights(in_size, out_size)
    acc = np.full(a.shape[:axis] + (out_size,) + a.shape[axis + 1:], 1 << (precision - 1), np.int32)
    bshape = [1] * a.ndim
    bshape[axis] = out_size
    for j in range(k_int.shape[1]):
        idx = np.minimum(xmin + j, in_size - 1)  # taps past the edge have weight 0
        acc += np.take(a, idx, axis=axis).astype(np.int32) * k_int[:, j].reshape(bshape)
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)


def resize_uint8(frames: np.ndarray, height: int, width: int, backend: str) -> np.ndarray:
    """Bicubic antialiased resize of uint8 `[..., H, W, C]` frames with HF's `backend` ("pil" | "torch")."""
    if frames.dtype != np.uint8:
        raise ValueError(f"resize_uint8 needs uint8 pixels, got {frames.dtype}")
    if frames.shape[-3:-1] == (height, width):
        return frames
    if backend == "torch":
        # Horizontal pass first, then vertical, through a uint8 intermediate: torch's order.
        return _torch_resize_axis(_torch_resize_axis(frames, frames.ndim - 2, width), frames.ndim - 3, height)
    if backend == "pil":
        flat = frames.reshape(-1, *frames.shape[-3:])
        out = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC))
                        for f in flat])
        return out.reshape(*frames.shape[:-3], height, width, frames.shape[-1])
    raise ValueError(f"unknown resample backend {backend!r}; expected one of {RESAMPLE_BACKENDS}")


# ----------------------------------------------------------------------------------------------
# Normalise and patchify


def _normalize(frames: np.ndarray, cfg: ProcessorConfig, backend: str) -> np.ndarray:
    """uint8 `[..., 3]` -> float32, rounded exactly as HF's `backend` rounds (via a 256-entry table)."""
    v = np.arange(256)
    mean = np.asarray(cfg.image_mean, np.float32)
    std = np.asarray(cfg.image_std, np.float32)
    if backend == "torch":
        # HF's torchvision backend fuses rescale into normalise: (x - mean/r) / (std/r) in float32.
        inv = np.float32(1.0 / cfg.rescale_factor)
        lut = (v.astype(np.float32)[:, None] - mean * inv) / (std * inv)
    else:
        # HF's numpy/PIL backend: rescale in float64, cast to float32, then normalise in float32.
        lut = ((v.astype(np.float64) * cfg.rescale_factor).astype(np.float32)[:, None] - mean) / std
    if (lut == lut[:, :1]).all():  # one table for all channels (Qwen's 0.5/0.5): a plain gather
        return lut[:, 0][frames]
    out = np.empty(frames.shape, np.float32)
    for c in range(3):
        out[..., c] = lut[:, c][frames[..., c]]
    return out


def _patchify(frames: np.ndarray, cfg: ProcessorConfig) -> tuple[np.ndarray, np.ndarray]:
    """`[T, H, W, C]` float32 (T a multiple of temporal_patch_size) -> (pixel_values, grid_thw)."""
    t, h, w, c = frames.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gt, gh, gw = t // tp, h // p, w // p
    x = frames.reshape(gt, tp, gh // m, m, p, gw // m, m, p, c)
    # -> (t group, block row, block col, row in block, col in block, channel, frame, y, x)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    pixel_values = np.ascontiguousarray(x).reshape(gt * gh * gw, c * tp * p * p)
    return pixel_values, np.array([[gt, gh, gw]], np.int32)


def _to_rgb(image: Image.Image) -> Image.Image:
    # As HF's convert_to_rgb (and qwen-vl-utils): transparency is composited onto white.
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def _as_rgb_array(image: Image.Image | np.ndarray, what: str = "image") -> np.ndarray:
    """uint8 `[H, W, 3]` (or `[T, H, W, 3]` for videos) from a PIL image or an array."""
    if isinstance(image, Image.Image):
        return np.asarray(_to_rgb(image))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} pixels must be uint8, got {arr.dtype}")
    base = 2 if what == "image" else 3
    if arr.ndim == base:
        arr = arr[..., None]
    if arr.ndim != base + 1 or arr.shape[-1] not in (1, 3, 4):
        expect = "[H, W, 3]" if what == "image" else "[T, H, W, 3]"
        raise ValueError(f"{what} must be {expect} (or grey/RGBA), got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        # HF's convert_to_rgb for arrays: blend onto white in float64, round half to even.
        alpha = arr[..., 3:4] / 255
        arr = np.round(alpha * arr[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return arr


def process_image(image: Image.Image | np.ndarray, cfg: ProcessorConfig = DEFAULT_CONFIG) -> dict:
    """One image -> dict(pixel_values float32 [N, 1536], grid_thw int32 [1, 3]), as HF's processor.

    `image`: a PIL image of any mode or a uint8 `[H, W, 3]` array (`[H, W]`, `[H, W, 1]` and
    `[H, W, 4]` are read as grey / RGBA); transparency is composited onto white, as HF does. The single
    frame is repeated to fill the temporal patch, as Hugging Face does.
    """
    arr = _as_rgb_array(image)
    h, w = smart_resize(arr.shape[0], arr.shape[1], cfg.factor, cfg.min_pixels, cfg.max_pixels)
    arr = resize_uint8(arr, h, w, cfg.image_resample)
    x = _normalize(arr, cfg, cfg.image_resample)
    x = np.broadcast_to(x[None], (cfg.temporal_patch_size, *x.shape))
    pixel_values, grid = _patchify(x, cfg)
    return {"pixel_values": pixel_values, "grid_thw": grid}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to RGB, applying its EXIF orientation (as HF's `load_image` does).

    Transparency is composited onto white (as qwen-vl-utils and HF's processors do; HF's `load_image`
    alone would drop the alpha channel). A missing file raises FileNotFoundError; a corrupt or truncated
    file raises ValueError. Both name the path. (Truncated files are only caught while
    `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is False.)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here rather than later
            return _to_rgb(ImageOps.exif_transpose(im))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


# ----------------------------------------------------------------------------------------------
# Video


def _check_video_args(num_frames: int, video_fps: float) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if not video_fps > 0:
        raise ValueError(f"video_fps must be positive, got {video_fps}")


def _hf_sample_indices(num_frames: int, video_fps: float, cfg: ProcessorConfig) -> np.ndarray:
    # Qwen3VLVideoProcessor.sample_frames: `fps` frames per second, clamped to [min, max] frames and to
    # the video length, spread evenly (rounded linspace) over the whole video.
    n = int(num_frames / video_fps * cfg.video_fps)
    n = min(max(n, cfg.video_min_frames), cfg.video_max_frames, num_frames)
    return np.linspace(0, num_frames - 1, n).round().astype(np.int64)


def _pad_to_multiple(indices: np.ndarray, multiple: int) -> np.ndarray:
    pad = -len(indices) % multiple
    return np.concatenate([indices, np.repeat(indices[-1:], pad)]) if pad else indices


def sample_frame_indices(num_frames: int, video_fps: float,
                         cfg: ProcessorConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Indices (int64) of the frames to keep: `cfg.video_fps` per second, Hugging Face's rule.

    The count is `int(num_frames / video_fps * cfg.video_fps)` clamped to
    [`video_min_frames`, `video_max_frames`] and to `num_frames`, spread evenly over the video; it is
    then padded to a multiple of `temporal_patch_size` by repeating the last index, which is how HF
    fills the last temporal patch (so the count is even).
    """
    _check_video_args(num_frames, video_fps)
    return _pad_to_multiple(_hf_sample_indices(num_frames, video_fps, cfg), cfg.temporal_patch_size)


def _video_resize_hw(n: int, height: int, width: int, cfg: ProcessorConfig) -> tuple[int, int]:
    # Qwen3VLVideoProcessor.resize: the budget counts the (unpadded) sampled frames.
    n = max(n, cfg.temporal_patch_size)  # HF refuses one-frame videos; we pad them like any odd count
    max_pixels = cfg.video_max_pixels
    if cfg.video_cap_pixels_per_frame:
        frame_cap = cfg.video_max_tokens_per_frame * cfg.factor**2
        per_frame = max(min(frame_cap, cfg.video_max_pixels // n), int(cfg.video_min_pixels * 1.05))
        max_pixels = per_frame * n
    return video_smart_resize(n, height, width, cfg.temporal_patch_size, cfg.factor, cfg.video_min_pixels,
                              max_pixels)


def _video_tokens(n: int, h: int, w: int, cfg: ProcessorConfig) -> int:
    return -(-n // cfg.temporal_patch_size) * (h // cfg.factor) * (w // cfg.factor)


def plan_video(num_frames: int, height: int, width: int, video_fps: float,
               cfg: ProcessorConfig = DEFAULT_CONFIG, token_budget: int | None = None,
               sample: bool = True) -> tuple[np.ndarray, int, int]:
    """(frame indices before temporal padding, resized height, resized width) for a video.

    Without a budget (or when it is not binding) this is exactly Hugging Face's plan. With
    `token_budget` (visual tokens, i.e. `<|video_pad|>` count = t*h*w/4, timestamps and
    vision_start/end not included) the video is shrunk until it fits, length-adaptively:
      1. keep the sampled frames and lower the per-frame resolution, sharing the budget evenly over
         the temporal groups, down to a floor of `cfg.video_min_tokens_per_frame` tokens per group
         (or the unshrunk per-group count, if that is lower);
      2. if even the floor does not fit, keep fewer temporal groups (budget // floor), resampled
         evenly over the whole video (a lower effective fps), each at budget // groups tokens.
    The result always equals HF's video processor run on the chosen frames (`do_sample_frames=False`)
    with `size.longest_edge = per-group tokens * 32**2 * frames`. ValueError if no plan fits.
    """
    _check_video_args(num_frames, video_fps)
    tp = cfg.temporal_patch_size
    idx = _hf_sample_indices(num_frames, video_fps, cfg) if sample else np.arange(num_frames, dtype=np.int64)
    h, w = _video_resize_hw(len(idx), height, width, cfg)
    if token_budget is None:
        return idx, h, w
    if token_budget < 1:
        raise ValueError(f"token_budget must be a positive number of visual tokens, got {token_budget}")
    if _video_tokens(len(idx), h, w, cfg) <= token_budget:
        return idx, h, w
    groups0 = -(-len(idx) // tp)
    floor = min(cfg.video_min_tokens_per_frame, (h // cfg.factor) * (w // cfg.factor))
    groups = groups0 if token_budget >= groups0 * floor else max(1, token_budget // floor)
    for g in range(groups, 0, -1):
        if g == groups0:
            chosen = _pad_to_multiple(idx, tp)  # same frames, even count
        else:
            chosen = np.linspace(0, num_frames - 1, g * tp).round().astype(np.int64)
        per_group_pixels = (token_budget // g) * cfg.factor**2
        nh, nw = video_smart_resize(len(chosen), height, width, tp, cfg.factor, cfg.video_min_pixels,
                                    per_group_pixels * len(chosen))
        if _video_tokens(len(chosen), nh, nw, cfg) <= token_budget:
            return chosen, nh, nw
    smallest = video_smart_resize(tp, height, width, tp, cfg.factor, 0, tp * cfg.factor**2)
    raise ValueError(f"token_budget {token_budget} is too small for a {height}x{width} video: one temporal "
                     f"group needs at least {_video_tokens(tp, *smallest, cfg)} visual tokens")


def video_grid_thw(num_frames: int, height: int, width: int, video_fps: float,
                   cfg: ProcessorConfig = DEFAULT_CONFIG, token_budget: int | None = None,
                   sample: bool = True) -> tuple[int, int, int]:
    """(t, h, w) patch grid `process_video` gives such a video, without touching pixels."""
    idx, h, w = plan_video(num_frames, height, width, video_fps, cfg, token_budget, sample)
    return -(-len(idx) // cfg.temporal_patch_size), h // cfg.patch_size, w // cfg.patch_size


def frame_timestamps(indices: np.ndarray | Sequence[int], video_fps: float,
                     temporal_patch_size: int = 2) -> list[float]:
    """Seconds of each temporal group: the mean time of its first and last frame (Qwen3VLProcessor)."""
    idx = [int(i) for i in indices]
    if len(idx) % temporal_patch_size:
        idx.extend([idx[-1]] * (temporal_patch_size - len(idx) % temporal_patch_size))
    ts = [i / video_fps for i in idx]
    return [(ts[i] + ts[i + temporal_patch_size - 1]) / 2 for i in range(0, len(ts), temporal_patch_size)]


def seconds_per_grid(num_sampled: int, num_frames: int, video_fps: float, temporal_patch_size: int = 2) -> float:
    """Seconds one temporal group spans, as Qwen2.5-VL's processor reports them (`second_per_grid_ts`).

    `temporal_patch_size / sampled_fps`, with `sampled_fps = num_sampled / num_frames * video_fps` (HF's
    `VideoMetadata.sampled_fps`, qwen-vl-utils' `sample_fps`): `num_sampled` frames picked from a clip of
    `num_frames` frames at `video_fps`.
    """
    if num_sampled < 1 or num_frames < 1 or not video_fps > 0:
        raise ValueError(f"seconds_per_grid needs num_sampled, num_frames >= 1 and video_fps > 0, got "
                         f"{num_sampled}, {num_frames}, {video_fps}")
    return temporal_patch_size / (num_sampled / num_frames * video_fps)


def process_video(frames: np.ndarray, video_fps: float, cfg: ProcessorConfig = DEFAULT_CONFIG,
                  token_budget: int | None = None, sample: bool = True) -> dict:
    """A decoded video -> dict(pixel_values, grid_thw [1, 3], timestamps, frame_indices, second_per_grid).

    `frames`: uint8 `[T, H, W, 3]` (grey/RGBA accepted), every frame of the clip at `video_fps`, or a lazy
    video of that shape (`sources.VideoFile`), of which only the used frames are decoded.
    With `sample=True` frames are picked by `sample_frame_indices` (`cfg.video_fps` per second);
    with `sample=False` all given frames are used. `token_budget` bounds the visual tokens: see
    `plan_video` for how frames and resolution shrink to fit. `timestamps` (seconds, one per temporal
    group) render as `<t.t seconds>` before each group; `frame_indices` are the frames used, padded
    to a multiple of temporal_patch_size by repeating the last one; `second_per_grid` is the seconds per
    temporal group that Qwen2.5-VL's absolute-time positions use (`seconds_per_grid`).
    """
    # A lazy video (`sources.VideoFile`: a shape, and indexing that decodes) is planned on its shape and
    # only the planned frames are read; an array is checked first.
    lazy = not isinstance(frames, np.ndarray) and hasattr(frames, "shape") and hasattr(frames, "__getitem__")
    arr = frames if lazy else _as_rgb_array(frames, "video")
    idx, h, w = plan_video(arr.shape[0], arr.shape[1], arr.shape[2], video_fps, cfg, token_budget, sample)
    picked = _as_rgb_array(np.asarray(arr[idx]), "video") if lazy else arr[idx]
    # Resize the distinct frames, then pad by repeating the last resized frame (HF's order).
    resized = resize_uint8(picked, h, w, cfg.video_resample)
    padded_idx = _pad_to_multiple(idx, cfg.temporal_patch_size)
    if len(padded_idx) > len(idx):
        resized = np.concatenate([resized, np.repeat(resized[-1:], len(padded_idx) - len(idx), axis=0)])
    pixel_values, grid = _patchify(_normalize(resized, cfg, cfg.video_resample), cfg)
    return {
        "pixel_values": pixel_values,
        "grid_thw": grid,
        "timestamps": frame_timestamps(padded_idx, video_fps, cfg.temporal_patch_size),
        "frame_indices": padded_idx,
        "second_per_grid": seconds_per_grid(len(idx), arr.shape[0], video_fps, cfg.temporal_patch_size),
    }


def format_timestamp(seconds: float, fmt: str = "seconds", rng: np.random.Generator | None = None) -> str:
    """Text timestamp put before a temporal group: "<3.0 seconds>" or "<00:00:03>" (HH:MM:SS).

    "seconds" is Qwen3VLProcessor's `f"<{t:.1f} seconds>"`; "hms" rounds half up to whole seconds;
    "random" picks one of the two with `rng` (Qwen3-VL trains on both formats).
    """
    if fmt == "random":
        rng = rng if rng is not None else np.random.default_rng()
        fmt = "seconds" if rng.random() < 0.5 else "hms"
    if fmt == "seconds":
        return f"<{seconds:.1f} seconds>"
    if fmt == "hms":
        total = int(math.floor(seconds + 0.5))
        return f"<{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}>"
    raise ValueError(f"unknown timestamp format {fmt!r}; expected one of {TIMESTAMP_FORMATS}")

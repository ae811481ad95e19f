"""Decoding of raw samples: image references -> uint8 [H, W, 3], video references -> frames + fps.

Video files stay lazy (``VideoFile``): the processor decodes only the frames it samples."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlm_jax.data.sources.errors import SampleError
from vlm_jax.data.sources.refs import frame_files, resolve_video
from vlm_jax.data.sources.video import VideoFile


def decode_image(ref: Any, where: str = "image") -> np.ndarray:
    """An ImageRef (array, bytes or path) -> uint8 RGB [H, W, 3]; ``SampleError`` if it cannot."""
    from PIL import Image, ImageOps

    if isinstance(ref, np.ndarray):
        arr = ref
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise SampleError("bad_image", f"{where}: array of shape {arr.shape} is not an image [H, W, 3]")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise SampleError("empty_image", f"{where}: zero-size image {arr.shape}")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        elif arr.shape[-1] == 4:
            arr = arr[..., :3]
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)
    if isinstance(ref, dict):
        ref = ref.get("bytes", ref.get("path"))
    if isinstance(ref, str):
        if not os.path.exists(ref):
            raise SampleError("missing_file", f"{where}: file {ref!r} does not exist")
        if os.path.getsize(ref) == 0:
            raise SampleError("empty_image", f"{where}: file {ref!r} is empty (0 bytes)")
        src: Any = ref
        name = ref
    elif isinstance(ref, (bytes, bytearray, memoryview)):
        if len(ref) == 0:
            raise SampleError("empty_image", f"{where}: zero-length image bytes")
        src, name = io.BytesIO(bytes(ref)), f"{len(ref)} bytes"
    else:
        raise SampleError("bad_image", f"{where}: unsupported image reference of type {type(ref).__name__}")
    try:
        with Image.open(src) as pil:
            pil.load()  # decode fully now: truncated files fail here, not later
            pil = ImageOps.exif_transpose(pil)
            if pil.width == 0 or pil.height == 0:
                raise SampleError("empty_image", f"{where}: zero-size image ({name})")
            if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
                rgba = pil.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                pil = Image.alpha_composite(background, rgba)
            arr = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    except SampleError:
        raise
    except Exception as e:
        raise SampleError(
            "bad_image", f"{where}: cannot decode image {name} ({type(e).__name__}: {e})"
        ) from e
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SampleError("empty_image", f"{where}: zero-size image ({name})")
    return arr


def decode_video(ref: Any, default_fps: float = 2.0, where: str = "video") -> dict:
    """A VideoRef -> ``{"frames": uint8 [T, H, W, 3] | VideoFile, "fps": float}``.

    A video file (path or bytes) becomes a ``VideoFile``: a lazy array of the same shape whose frames are
    decoded when indexed; its fps is the container's unless the reference gives one.
    """
    v = resolve_video(ref, None) if not (isinstance(ref, Mapping) and "frames" in ref) else dict(ref)
    frames, fps = v["frames"], v.get("fps")
    if isinstance(frames, Mapping) and "$video_file" in frames:
        frames = VideoFile(frames["$video_file"], where)
    elif isinstance(frames, str):
        if not os.path.exists(frames):
            raise SampleError("missing_file", f"{where}: file {frames!r} does not exist")
        if os.path.isdir(frames):
            files = frame_files(frames)
            if not files:
                raise SampleError("bad_video", f"{where}: directory {frames!r} has no frame images")
            frames = [decode_image(p, f"{where} frame {p}") for p in files]
        elif frames.endswith(".npy"):
            try:
                frames = np.load(frames)
            except Exception as e:
                raise SampleError("bad_video", f"{where}: cannot load {frames!r} ({e})") from e
        else:
            frames = VideoFile(frames, where)
    elif isinstance(frames, (bytes, bytearray)):
        frames = VideoFile(bytes(frames), where)
    if isinstance(frames, VideoFile):
        fps = fps or frames.fps
    elif isinstance(frames, (list, tuple)):
        if not frames:
            raise SampleError("bad_video", f"{where}: video has no frames")
        frames = [decode_image(f, f"{where} frame {t}") for t, f in enumerate(frames)]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise SampleError("bad_video", f"{where}: frames have different sizes {sorted(shapes)}")
        frames = np.stack(frames)
    if not isinstance(frames, VideoFile):  # VideoFile checked its frames when it opened the file
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise SampleError("bad_video", f"{where}: frames of shape {frames.shape} are not [T, H, W, 3]")
        if 0 in frames.shape:
            raise SampleError("empty_image", f"{where}: zero-size video {frames.shape}")
        if frames.dtype != np.uint8:
            frames = np.clip(frames, 0, 255).astype(np.uint8)
    fps = float(fps) if fps else float(default_fps)
    if not math.isfinite(fps) or fps <= 0:
        raise SampleError("bad_video", f"{where}: invalid fps {fps}")
    return {"frames": frames, "fps": fps}


def decode_sample(sample: Mapping, default_video_fps: float = 2.0) -> dict:
    """Raw sample -> decoded sample (images uint8 [H, W, 3], videos {"frames", "fps"}).

    Raises ``SampleError`` naming the sample id and the offending image / video.
    """
    out = dict(sample)
    sid = sample.get("id", "?")
    if "images" in sample:
        out["images"] = [
            decode_image(r, f"sample {sid} image {k}") for k, r in enumerate(sample["images"] or [])
        ]
    if "videos" in sample:
        out["videos"] = [
            decode_video(v, default_video_fps, f"sample {sid} video {k}")
            for k, v in enumerate(sample["videos"] or [])
        ]
    return out

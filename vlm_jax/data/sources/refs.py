"""References to media and data files: paths (relative to a data root), `file://` and `data:` URLs,
video references, glob patterns, frame directories."""

from __future__ import annotations

import base64
import glob as globlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from vlm_jax.data.sources.errors import SampleError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def as_list(x: Any) -> list:
    """None -> [], a list / tuple -> a list, anything else -> [it]."""
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def resolve_path(ref: Any, data_root: str | None) -> Any:
    """Make a string reference an absolute path (relative to data_root); pass other refs through."""
    if isinstance(ref, bytes):
        return ref
    if not isinstance(ref, str):
        return ref
    if ref.startswith("data:"):
        try:
            return base64.b64decode(ref.split(",", 1)[1])
        except Exception as e:
            raise SampleError("bad_format", f"cannot decode data URL ({e})") from e
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", ref):
        raise SampleError("bad_format", f"remote URL {ref!r} is not supported; download the data first")
    if data_root and not os.path.isabs(ref):
        ref = os.path.join(data_root, ref)
    return ref


def resolve_video(ref: Any, data_root: str | None, fps: float | None = None) -> dict:
    """A VideoRef with string paths made absolute (``resolve_path``): ``{"frames", "fps"}``."""
    if isinstance(ref, Mapping):
        frames = ref.get("frames", ref.get("video", ref.get("path")))
        fps = ref.get("fps", fps)
    else:
        frames = ref
    if isinstance(frames, (list, tuple)):
        frames = [resolve_path(f, data_root) for f in frames]
    else:
        frames = resolve_path(frames, data_root)
    return {"frames": frames, "fps": None if fps is None else float(fps)}


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Paths and glob patterns -> existing files (FileNotFoundError naming the missing one)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        matches = sorted(globlib.glob(p)) if any(c in p for c in "*?[") else [p]
        if not matches:
            raise FileNotFoundError(f"no file matches {p!r}")
        out.extend(matches)
    for p in out:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"data file {p!r} does not exist")
    return out


def frame_files(directory: str) -> list[str]:
    """The image files of a frame directory, in name order."""
    files = sorted(f for f in os.listdir(directory) if f.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(directory, f) for f in files]

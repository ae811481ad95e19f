"""The benchmarks' files as they ship: records from JSON, JSONL, parquet and TSV; images from bytes,
base64 text or paths; videos from files, frame folders or .npy arrays.

Media are read when an item is evaluated, not when the records are read (`Media` holds the reference),
so a benchmark of thousands of document images does not sit decoded in memory. Every error names the
file and the record.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import glob
import io
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RECORD_SUFFIXES = (".parquet", ".jsonl", ".json", ".tsv")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv")


def _is_glob(data: str | os.PathLike) -> bool:
    return any(c in str(data) for c in "*?[")


def data_files(data: str | os.PathLike, suffixes: Sequence[str] = RECORD_SUFFIXES) -> list[Path]:
    """The record files of `data`: the file itself, the files with one of `suffixes` directly inside a
    folder, or the matches of a glob pattern (e.g. "MMMU/*/validation-*.parquet", for datasets that keep
    splits or subjects apart), sorted. FileNotFoundError naming the place and the suffixes when none."""
    if _is_glob(data):
        found = sorted(Path(p) for p in glob.glob(str(data), recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in suffixes)
        if not found:
            raise FileNotFoundError(f"no {' / '.join(suffixes)} files match {data}")
        return found
    path = Path(data)
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise ValueError(f"{path}: expected a {' / '.join(suffixes)} file")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"benchmark data not found: {path}")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise FileNotFoundError(f"no {' / '.join(suffixes)} files in {path}")
    return found


def data_root(data: str | os.PathLike) -> Path:
    """The folder that relative media paths start from: `data` itself, the folder of a file, or the
    part of a glob pattern before its first wildcard."""
    if _is_glob(data):
        parts = Path(data).parts
        return Path(*parts[:next(i for i, p in enumerate(parts) if _is_glob(p))] or ("."))
    path = Path(data)
    return path.parent if path.is_file() else path


def read_records(path: Path) -> list[dict]:
    """The records of one file: parquet rows, JSONL lines, a JSON array (or a {"data": [...]} object, as
    DocVQA ships), TSV rows (VLMEvalKit's layout; empty cells become None)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if suffix == ".jsonl":
            out = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            out.append(json.loads(line))
                        except ValueError as e:
                            raise ValueError(f"line {n}: invalid JSON: {e}") from e
            return _dicts(out)
        if suffix == ".json":
            obj = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(obj, Mapping) and isinstance(obj.get("data"), list):
                obj = obj["data"]
            if not isinstance(obj, list):
                raise ValueError("expected a JSON array of records (or an object with a 'data' array)")
            return _dicts(obj)
        if suffix == ".tsv":
            csv.field_size_limit(sys.maxsize)  # base64 images are long cells
            with open(path, encoding="utf-8", newline="") as f:
                rows = csv.DictReader(f, delimiter="\t")
                return [{k: (v if v != "" else None) for k, v in row.items()} for row in rows]
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    raise ValueError(f"{path}: unsupported record file (expected {', '.join(RECORD_SUFFIXES)})")


def _dicts(records: list) -> list[dict]:
    bad = next((k for k, r in enumerate(records) if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise ValueError(f"record {bad + 1} is not a JSON object: {str(records[bad])[:80]!r}")
    return [dict(r) for r in records]


def field(record: Mapping, *names: str, where: str) -> Any:
    """The first of `names` that the record holds (not None); KeyError-free ValueError naming them all."""
    for name in names:
        if record.get(name) is not None:
            return record[name]
    raise ValueError(f"{where}: no {' / '.join(repr(n) for n in names)} field (has {sorted(record)})")


# ----------------------------------------------------------------------------- images


def _rgb(im: Any) -> np.ndarray:
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "P") and (im.mode != "P" or "transparency" in im.info):
        im = im.convert("RGBA")  # transparency onto white, as the processor does for image files
        canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(canvas, im)
    return np.asarray(im.convert("RGB"))


def _resolve_image(value: Any, root: Path, search: Sequence[str]) -> bytes | Path | None:
    """The encoded bytes or the file of an image cell: bytes, a {"bytes", "path"} struct (Hugging Face
    parquet), a path under root or root/<search>, or base64 text (VLMEvalKit TSV); None if none fits."""
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str | os.PathLike) or not str(value):
        return None
    text = str(value)
    if len(text) < 4096:
        for sub in ("", *search):
            if (root / sub / text).is_file():
                return root / sub / text
    if len(text) > 64:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


@dataclasses.dataclass(frozen=True)
class Media:
    """A reference to one image or video of a record, decoded by `load()`: kind "image" (value: bytes,
    a {"bytes", "path"} struct, base64 text or a path under root / root/<search>) or "video" (value: a
    path to a video file, a frame folder or a .npy [T, H, W, 3] array; fps: the rate of frame folders and
    arrays, which carry none)."""

    kind: str
    value: Any
    root: Path
    where: str
    search: tuple[str, ...] = ()
    fps: float = 2.0

    def load(self) -> Any:
        if self.kind == "image":
            return load_image(self.value, self.root, self.where, self.search)
        if Path(self.value).suffix.lower() in VIDEO_SUFFIXES:  # a file: lazily decoded, its own rate
            from vlm_jax.data.sources.video import VideoFile

            video = VideoFile(str(self.value), where=self.where)
            return {"frames": video, "fps": video.fps}
        from vlm_jax.inference.prompt import load_video

        return load_video(self.value, self.fps)

    def size(self) -> tuple[int, int]:
        """(width, height) of an image from its header (nothing else is decoded)."""
        from PIL import Image, UnidentifiedImageError

        src = _resolve_image(self.value, self.root, self.search)
        if src is None:
            raise FileNotFoundError(f"{self.where}: image not found: {_describe(self.value)} "
                                    f"(looked under {self.root})")
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
                w, h = im.size
                return (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)  # EXIF-rotated
        except (UnidentifiedImageError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"{self.where}: cannot decode image: {e}") from e


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"{{path: {value.get('path')!r}, bytes: {'yes' if value.get('bytes') else 'none'}}}"
    return repr(value)[:120]


def load_image(value: Any, root: Path, where: str = "image", search: Sequence[str] = ()) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image cell (see `Media`); FileNotFoundError / ValueError naming `where`."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, np.ndarray):
        return value
    src = _resolve_image(value, root, search)
    if src is None:
        raise FileNotFoundError(f"{where}: image not found: {_describe(value)} (looked under {root})")
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im.load()
            return _rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{where}: cannot decode image {'(bytes)' if isinstance(src, bytes) else src}: {e}") from e


def find_video(root: Path, name: str, folders: Iterable[str], where: str) -> Path:
    """A video called `name` (with or without a suffix) under root/<folder>: a video file, a frame folder
    or a .npy array; FileNotFoundError naming the places looked in."""
    stem = Path(name).stem if Path(name).suffix.lower() in VIDEO_SUFFIXES else name
    looked = []
    for folder in ("", *folders):
        base = root / folder
        for cand in (base / name, base / stem, base / f"{stem}.npy", *(base / f"{stem}{s}" for s in VIDEO_SUFFIXES)):
            if cand.is_dir() or cand.is_file():
                return cand
        looked.append(str(base))
    raise FileNotFoundError(f"{where}: video {name!r} not found (as a file, frame folder or .npy) under "
                            f"{', '.join(dict.fromkeys(looked))}")

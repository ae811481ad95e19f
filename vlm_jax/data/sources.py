"""Random-access data sources of raw vision-language samples, and their decoding.

Every source follows grain's ``RandomAccessDataSource`` protocol (``__len__``, ``__getitem__``)
and returns a *raw sample*: the internal sample form of ``vlm_jax.data.synthetic`` with the
visual inputs not yet decoded::

    {"id": str, "task": str, "source": str,
     "messages": [{"role": "system"|"user"|"assistant"|"tool",
                   "content": str | [{"type": "text", "text": str} | {"type": "image"} | {"type": "video"}],
                   "reasoning": str (assistant, optional)}, ...],
     "images": [ImageRef, ...],          # in the order of the {"type": "image"} items
     "videos": [VideoRef, ...]}          # in the order of the {"type": "video"} items

or, for plain-text (pre-training style) data, ``{"id", "task", "source", "text": str}``.

An ``ImageRef`` is a uint8 array [H, W, 3], encoded image bytes, or a file path.
A ``VideoRef`` is ``{"frames": uint8 [T, H, W, 3] | [ImageRef, ...] | path | bytes, "fps": float | None}``
(a bare path, frame list or array is accepted too). ``decode_sample`` turns a raw sample into a
decoded one (images uint8 [H, W, 3], videos ``{"frames": uint8 [T, H, W, 3], "fps": float}``).

Sources:
- ``QwenJsonlSource``: the official Qwen-VL fine-tuning format
  (``{"image": "a.png" | [...], "video": ..., "conversations": [{"from": "human", "value": "<image>..."}]}``).
- ``MessagesJsonlSource``: OpenAI / Hugging Face style ``{"messages": [...]}`` JSONL, or ``{"text": ...}``.
- ``ArrayRecordSource`` (+ ``write_array_record``): the binary record encoding defined below.
- ``TFDSSource``: any TFDS dataset prepared in ``array_record`` format, via ``tfds.data_source``.
- ``MixtureSource``: a deterministic weighted mixture of sources.

Errors on a sample raise ``SampleError`` (a ``reason`` from ``SKIP_REASONS`` and a message naming
the file / line / path); the pipeline turns them into skip-and-count or a hard error (``on_error``).
"""

from __future__ import annotations

import base64
import glob as globlib
import io
import json
import math
import os
import re
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Reasons a sample can be skipped; the pipeline counts skips under these names.
SKIP_REASONS = (
    "missing_file",  # an image/video/record path that does not exist
    "bad_image",  # corrupt, truncated or undecodable image
    "empty_image",  # zero-size image or video frame
    "aspect_ratio",  # image or video aspect ratio beyond the processor's limit (200:1)
    "bad_video",  # undecodable video, inconsistent frame sizes, no decoder for the file type
    "placeholder_mismatch",  # number of <image>/<video> placeholders != number of images/videos
    "empty_conversation",  # no messages, or no assistant turn with content
    "bad_format",  # malformed record (bad JSON, unknown role, missing fields, remote URL)
    "too_long",  # more tokens than seq_len (never truncated)
    "too_many_patches",  # more vision patches than the batch vision buffer
    "too_many_visuals",  # more images/videos than grid rows in the batch vision buffer
    "processing_error",  # any other exception while turning the sample into tokens
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class SampleError(Exception):
    """A bad sample. ``reason`` is one of ``SKIP_REASONS``; the message names what is wrong."""

    def __init__(self, reason: str, message: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"[{reason}] {message}")
        self.reason = reason
        self.detail = message


# ----------------------------------------------------------------------------------------------
# Conversions to the internal message form


_PLACEHOLDER_RE = re.compile(r"(<image>|<video>)")
_QWEN_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _split_placeholders(text: str) -> list[dict]:
    """'<image>\\nWhat is this?' -> [{"type": "image"}, {"type": "text", "text": "\\nWhat is this?"}]."""
    parts = []
    for piece in _PLACEHOLDER_RE.split(text):
        if piece == "<image>":
            parts.append({"type": "image"})
        elif piece == "<video>":
            parts.append({"type": "video"})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _count_visuals(messages: Sequence[Mapping]) -> tuple[int, int]:
    n_img = n_vid = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for item in content:
                n_img += item.get("type") == "image"
                n_vid += item.get("type") == "video"
    return n_img, n_vid


def _resolve_path(ref: Any, data_root: str | None) -> Any:
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


def _resolve_video(ref: Any, data_root: str | None, fps: float | None = None) -> dict:
    if isinstance(ref, Mapping):
        frames = ref.get("frames", ref.get("video", ref.get("path")))
        fps = ref.get("fps", fps)
    else:
        frames = ref
    if isinstance(frames, (list, tuple)):
        frames = [_resolve_path(f, data_root) for f in frames]
    else:
        frames = _resolve_path(frames, data_root)
    return {"frames": frames, "fps": None if fps is None else float(fps)}


def _check_placeholders(messages: list[dict], n_images: int, n_videos: int, where: str) -> None:
    n_img, n_vid = _count_visuals(messages)
    if n_img != n_images or n_vid != n_videos:
        raise SampleError(
            "placeholder_mismatch",
            f"{where}: {n_img} image and {n_vid} video placeholders but {n_images} images and "
            f"{n_videos} videos",
        )


def qwen_record_to_sample(record: Mapping, data_root: str | None = None, where: str = "record") -> dict:
    """Converts one record of the official Qwen-VL fine-tuning format to a raw sample.

    ``image`` / ``images`` and ``video`` / ``videos`` are a path or a list of paths (relative to the
    record's ``data_path`` if it has one, else ``data_root``; a video may also be a list of frame image
    paths), and each ``<image>`` / ``<video>`` in a user turn is replaced, in order, by the next one.
    As in the official converter (qwen-vl-finetune ``_build_messages``), user text is split at the
    placeholders and each text piece is stripped; other turns keep their text as is (a placeholder
    there is not a vision input, and the count check then fails). ``from`` is human/user,
    gpt/assistant, system or observation/tool. Optional ``video_fps`` gives the rate of frame-list videos.
    """
    if isinstance(record, Mapping) and record.get("data_path"):
        data_root = os.fspath(record["data_path"])
    if not isinstance(record, Mapping):
        raise SampleError(
            "bad_format", f"{where}: a record must be a JSON object, got {type(record).__name__}"
        )
    turns = record.get("conversations", record.get("conversation"))
    if turns is None:
        raise SampleError("bad_format", f"{where}: no 'conversations' field")
    images = [_resolve_path(p, data_root) for p in _as_list(record.get("image", record.get("images")))]
    fps = record.get("video_fps")
    raw_videos = record.get("video", record.get("videos"))
    if isinstance(raw_videos, list) and raw_videos and all(isinstance(v, str) for v in raw_videos):
        # Ambiguous: several video files, or the frames of one video. Frames are image files.
        if all(v.lower().endswith(IMAGE_EXTENSIONS) for v in raw_videos):
            raw_videos = [raw_videos]
    videos = [_resolve_video(v, data_root, fps) for v in _as_list(raw_videos)]
    messages = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or "value" not in turn:
            raise SampleError("bad_format", f"{where}: turn {k} has no 'value'")
        role = _QWEN_ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        if role is None:
            raise SampleError("bad_format", f"{where}: turn {k} has unknown role {turn.get('from')!r}")
        value = turn["value"]
        if not isinstance(value, str):
            raise SampleError("bad_format", f"{where}: turn {k} value must be a string")
        content: str | list = value
        if role == "user":  # as the official converter: split at placeholders, strip the text pieces
            parts = _split_placeholders(value)
            for part in parts:
                if part["type"] == "text":
                    part["text"] = part["text"].strip()
            parts = [p for p in parts if p["type"] != "text" or p["text"]]
            content = parts if any(p["type"] != "text" for p in parts) else value.strip()
        messages.append({"role": role, "content": content})
    _check_placeholders(messages, len(images), len(videos), where)
    return {
        "id": str(record.get("id", "")),
        "task": str(record.get("task", "")),
        "messages": messages,
        "images": images,
        "videos": videos,
    }


_IMAGE_ITEM_TYPES = ("image", "image_url", "input_image")
_VIDEO_ITEM_TYPES = ("video", "video_url", "input_video")


def messages_record_to_sample(record: Mapping, data_root: str | None = None, where: str = "record") -> dict:
    """Converts an OpenAI / Hugging Face style ``{"messages": [...]}`` record to a raw sample.

    Content is a string or a list of items: ``{"type": "text", "text"}``; images as
    ``{"type": "image", "image": ref}`` (also ``"path"``/``"url"`` keys) or OpenAI's
    ``{"type": "image_url", "image_url": {"url": ref}}``; videos as ``{"type": "video", "video": ref,
    "fps": f}``. A ref is a path (relative to ``data_root``), ``file://`` path, or ``data:`` URL.
    Items without a ref take the next entry of a top-level ``images`` / ``videos`` list, and when such
    a list is given, ``<image>`` / ``<video>`` tags in string content are placeholders too
    (LLaMA-Factory style). Assistant ``reasoning`` / ``reasoning_content`` is kept as ``reasoning``.
    A record ``{"text": str}`` is a plain-text sample (trained on every token).
    """
    if not isinstance(record, Mapping):
        raise SampleError(
            "bad_format", f"{where}: a record must be a JSON object, got {type(record).__name__}"
        )
    if "messages" not in record and "text" in record:
        if not isinstance(record["text"], str):
            raise SampleError("bad_format", f"{where}: 'text' must be a string")
        return {"id": str(record.get("id", "")), "task": str(record.get("task", "")), "text": record["text"]}
    msgs = record.get("messages")
    if msgs is None:
        raise SampleError("bad_format", f"{where}: no 'messages' (or 'text') field")
    top_images = [_resolve_path(p, data_root) for p in _as_list(record.get("images", record.get("image")))]
    top_videos = [_resolve_video(v, data_root) for v in _as_list(record.get("videos", record.get("video")))]
    tags = bool(top_images or top_videos)
    next_img, next_vid = iter(top_images), iter(top_videos)
    images, videos, messages = [], [], []

    def take(it, kind):
        try:
            return next(it)
        except StopIteration:
            raise SampleError(
                "placeholder_mismatch", f"{where}: more {kind} items than entries in the '{kind}s' list"
            ) from None

    for k, m in enumerate(msgs):
        if not isinstance(m, Mapping) or "role" not in m:
            raise SampleError("bad_format", f"{where}: message {k} has no 'role'")
        role = m["role"]
        if role not in ("system", "user", "assistant", "tool", "developer"):
            raise SampleError("bad_format", f"{where}: message {k} has unknown role {role!r}")
        role = "system" if role == "developer" else role
        content = m.get("content")
        if content is None:
            content = ""
        out = {"role": role}
        if isinstance(content, str):
            out["content"] = (
                _split_placeholders(content) if tags and _PLACEHOLDER_RE.search(content) else content
            )
            for item in out["content"] if isinstance(out["content"], list) else ():
                if item["type"] == "image":
                    images.append(take(next_img, "image"))
                elif item["type"] == "video":
                    videos.append(take(next_vid, "video"))
        elif isinstance(content, list):
            items = []
            for item in content:
                if isinstance(item, str):
                    items.append({"type": "text", "text": item})
                    continue
                kind = item.get("type")
                if kind in ("text", "input_text", "output_text"):
                    items.append({"type": "text", "text": str(item.get("text", ""))})
                elif kind in _IMAGE_ITEM_TYPES:
                    ref = item.get("image", item.get("path", item.get("url")))
                    if isinstance(ref, Mapping):  # {"image_url": {"url": ...}} nesting under "image"
                        ref = ref.get("url")
                    if ref is None and isinstance(item.get("image_url"), (Mapping, str)):
                        iu = item["image_url"]
                        ref = iu.get("url") if isinstance(iu, Mapping) else iu
                    images.append(
                        _resolve_path(ref, data_root) if ref is not None else take(next_img, "image")
                    )
                    items.append({"type": "image"})
                elif kind in _VIDEO_ITEM_TYPES:
                    ref = item.get("video", item.get("path", item.get("url")))
                    if ref is None and isinstance(item.get("video_url"), (Mapping, str)):
                        vu = item["video_url"]
                        ref = vu.get("url") if isinstance(vu, Mapping) else vu
                    if ref is None:
                        videos.append(take(next_vid, "video"))
                    else:
                        videos.append(_resolve_video(ref, data_root, item.get("fps")))
                    items.append({"type": "video"})
                else:
                    raise SampleError("bad_format", f"{where}: message {k} has unknown content type {kind!r}")
            out["content"] = items
        else:
            raise SampleError("bad_format", f"{where}: message {k} content must be a string or a list")
        reasoning = m.get("reasoning", m.get("reasoning_content"))
        if reasoning:
            out["reasoning"] = str(reasoning)
        if m.get("tool_calls"):
            out["tool_calls"] = m["tool_calls"]
        messages.append(out)
    left_i, left_v = sum(1 for _ in next_img), sum(1 for _ in next_vid)
    if left_i or left_v:
        raise SampleError(
            "placeholder_mismatch",
            f"{where}: {left_i} images and {left_v} videos are not referenced by any placeholder",
        )
    out_sample = {
        "id": str(record.get("id", "")),
        "task": str(record.get("task", "")),
        "messages": messages,
        "images": images,
        "videos": videos,
    }
    if record.get("tools"):
        out_sample["tools"] = record["tools"]
    return out_sample


# ----------------------------------------------------------------------------------------------
# JSONL sources


def _expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
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


def _line_index(path: str, chunk_bytes: int = 1 << 26) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start offsets, lengths, 1-based line numbers) of the non-blank lines of a file, unparsed."""
    newlines = []
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            if not chunk:
                break
            newlines.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + size)
            size += len(chunk)
    nl = np.concatenate(newlines) if newlines else np.zeros(0, np.int64)
    starts = np.concatenate([[0], nl + 1]).astype(np.int64)
    ends = np.concatenate([nl, [size]]).astype(np.int64)
    lengths = ends - starts
    keep = lengths > 0
    short = np.flatnonzero(keep & (lengths <= 8))  # maybe whitespace-only: check those few
    if len(short):
        with open(path, "rb") as f:
            for i in short:
                f.seek(starts[i])
                if not f.read(lengths[i]).strip():
                    keep[i] = False
    return starts[keep], lengths[keep], np.flatnonzero(keep).astype(np.int64) + 1


class _JsonlSource:
    """Random access over the non-blank lines of one or more JSONL files (thread- and fork-safe)."""

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        data_root: str | os.PathLike | None = None,
        name: str | None = None,
    ):
        self.paths = _expand_paths(paths)
        self.data_root = None if data_root is None else os.fspath(data_root)
        self.name = name or os.path.splitext(os.path.basename(self.paths[0]))[0]
        starts, lengths, file_ids, line_nos = [], [], [], []
        for k, p in enumerate(self.paths):
            s, n, ln = _line_index(p)
            starts.append(s)
            lengths.append(n)
            line_nos.append(ln)
            file_ids.append(np.full(len(s), k, np.int32))
        self._starts = np.concatenate(starts)
        self._lengths = np.concatenate(lengths)
        self._file_ids = np.concatenate(file_ids)
        self._line_nos = np.concatenate(line_nos)
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._starts)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Closes the file descriptors this process opened (reopened lazily if used again)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _fd(self, k: int) -> int:
        fd = self._fds.get(k)
        if fd is None:
            with self._lock:
                fd = self._fds.get(k)
                if fd is None:
                    fd = os.open(self.paths[k], os.O_RDONLY)
                    self._fds[k] = fd
        return fd

    def read_record(self, index: int) -> tuple[Any, str]:
        """The parsed JSON of line ``index`` and a 'file:offset' location string."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} of length {len(self)}")
        k = int(self._file_ids[index])
        start, n = int(self._starts[index]), int(self._lengths[index])
        where = f"{self.paths[k]}:{int(self._line_nos[index])} (sample {index})"
        data = os.pread(self._fd(k), n, start)
        try:
            return json.loads(data), where
        except json.JSONDecodeError as e:
            raise SampleError("bad_format", f"{where}: invalid JSON ({e})") from e

    def _root(self, k: int) -> str:
        return (
            self.data_root if self.data_root is not None else os.path.dirname(os.path.abspath(self.paths[k]))
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, files={len(self.paths)}, len={len(self)})"


class QwenJsonlSource(_JsonlSource):
    """JSONL in the official Qwen-VL fine-tuning format; paths relative to ``data_root``.

    ``data_root`` defaults to the directory of each JSONL file.
    """

    def __getitem__(self, index: int) -> dict:
        record, where = self.read_record(index)
        sample = qwen_record_to_sample(record, self._root(int(self._file_ids[index])), where)
        sample["source"] = self.name
        sample["id"] = sample["id"] or f"{self.name}:{index}"
        return sample


class MessagesJsonlSource(_JsonlSource):
    """JSONL of OpenAI / Hugging Face style ``{"messages": [...]}`` records (or ``{"text": ...}``)."""

    def __getitem__(self, index: int) -> dict:
        record, where = self.read_record(index)
        sample = messages_record_to_sample(record, self._root(int(self._file_ids[index])), where)
        sample["source"] = self.name
        sample["id"] = sample["id"] or f"{self.name}:{index}"
        return sample


# ----------------------------------------------------------------------------------------------
# ArrayRecord: record encoding
#
# A record is   b"VLJ1" | uint32 little-endian header length | UTF-8 JSON header | binary payload.
# The JSON header is the raw sample, where every bytes value (encoded images, video files) is replaced
# by {"$blob": [offset, length]} into the payload, and every numpy array by
# {"$ndarray": [offset, length], "dtype": str, "shape": [...]}. Images given as arrays are stored
# PNG-encoded (lossless; or JPEG by `image_format`), image files are stored as their original bytes,
# and video frame arrays as one encoded image per frame. Plain JSON records (starting with "{", bytes
# as {"$b64": base64}) are read as well, for hand-written data.

RECORD_MAGIC = b"VLJ1"


def encode_image(image: np.ndarray, image_format: str = "png", quality: int = 95) -> bytes:
    """uint8 [H, W, 3] (or [H, W]) -> PNG / JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if image_format.lower() in ("jpg", "jpeg"):
        pil.save(buf, format="JPEG", quality=quality)
    else:
        pil.save(buf, format=image_format.upper())
    return buf.getvalue()


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SampleError("missing_file", f"file {path!r} does not exist") from None


def _pack_visuals(sample: Mapping, image_format: str) -> dict:
    """Replace image / video references by bytes (files read, arrays encoded)."""
    out = dict(sample)
    images = []
    for ref in sample.get("images", []) or []:
        if isinstance(ref, np.ndarray):
            ref = encode_image(ref, image_format)
        elif isinstance(ref, str):
            ref = _read_file(ref)
        images.append(ref)
    videos = []
    for v in sample.get("videos", []) or []:
        v = _resolve_video(v, None)
        frames = v["frames"]
        if isinstance(frames, np.ndarray):
            frames = [encode_image(f, image_format) for f in frames]
        elif isinstance(frames, (list, tuple)):
            frames = [
                encode_image(f, image_format)
                if isinstance(f, np.ndarray)
                else _read_file(f)
                if isinstance(f, str)
                else f
                for f in frames
            ]
        elif isinstance(frames, str):
            if os.path.isdir(frames):
                frames = [_read_file(p) for p in _frame_files(frames)]
            elif frames.endswith(".npy"):
                frames = [encode_image(f, image_format) for f in np.load(frames)]
            else:
                frames = {"$video_file": _read_file(frames), "ext": os.path.splitext(frames)[1]}
        videos.append({"frames": frames, "fps": v["fps"]})
    if "images" in sample:
        out["images"] = images
    if "videos" in sample:
        out["videos"] = videos
    return out


def encode_record(sample: Mapping, image_format: str = "png") -> bytes:
    """Serialise a raw or decoded sample (images as arrays, bytes or paths) to one record."""
    payload = bytearray()

    def enc(x):
        if isinstance(x, (bytes, bytearray, memoryview)):
            off = len(payload)
            payload.extend(x)
            return {"$blob": [off, len(x)]}
        if isinstance(x, np.ndarray):
            off = len(payload)
            data = np.ascontiguousarray(x).tobytes()
            payload.extend(data)
            return {"$ndarray": [off, len(data)], "dtype": x.dtype.str, "shape": list(x.shape)}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, Mapping):
            return {str(k): enc(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [enc(v) for v in x]
        return x

    header = json.dumps(enc(_pack_visuals(sample, image_format)), ensure_ascii=False).encode("utf-8")
    return RECORD_MAGIC + struct.pack("<I", len(header)) + header + bytes(payload)


def decode_record(record: bytes) -> dict:
    """Inverse of ``encode_record`` (images come back as encoded bytes); also reads plain JSON records."""
    record = bytes(record)
    if record[:4] == RECORD_MAGIC:
        (n,) = struct.unpack("<I", record[4:8])
        header = json.loads(record[8 : 8 + n].decode("utf-8"))
        payload = memoryview(record)[8 + n :]
    elif record.lstrip()[:1] == b"{":
        header, payload = json.loads(record.decode("utf-8")), memoryview(b"")
    else:
        raise SampleError("bad_format", "record is neither a VLJ1 record nor JSON")

    def dec(x):
        if isinstance(x, dict):
            if "$blob" in x and len(x) == 1:
                off, length = x["$blob"]
                return bytes(payload[off : off + length])
            if "$b64" in x and len(x) == 1:
                return base64.b64decode(x["$b64"])
            if "$ndarray" in x:
                off, length = x["$ndarray"]
                return np.frombuffer(payload[off : off + length], dtype=np.dtype(x["dtype"])).reshape(
                    x["shape"]
                )
            return {k: dec(v) for k, v in x.items()}
        if isinstance(x, list):
            return [dec(v) for v in x]
        return x

    return dec(header)


def write_array_record(
    samples: Iterable[Mapping], path: str | os.PathLike, image_format: str = "png", group_size: int = 1
) -> int:
    """Writes samples (raw or decoded; image paths are read, arrays encoded) to one ArrayRecord file.

    ``group_size=1`` keeps random access cheap (one record per chunk), as grain recommends.
    Returns the number of records written.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(os.fspath(path), f"group_size:{group_size}")
    n = 0
    try:
        for sample in samples:
            writer.write(encode_record(sample, image_format))
            n += 1
    finally:
        writer.close()
    return n


class ArrayRecordSource:
    """Random access over ArrayRecord files of ``encode_record`` records."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], name: str | None = None):
        import grain

        self.paths = _expand_paths(paths)
        self.name = name or os.path.splitext(os.path.basename(self.paths[0]))[0]
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        try:
            sample = decode_record(self._source[index])
        except SampleError as e:
            raise SampleError(e.reason, f"{self.name} record {index}: {e.detail}") from e
        except Exception as e:
            raise SampleError("bad_format", f"{self.name} record {index}: cannot decode ({e})") from e
        sample["source"] = self.name
        sample["id"] = str(sample.get("id") or f"{self.name}:{index}")
        sample.setdefault("task", "")
        return sample

    def __repr__(self) -> str:
        return f"ArrayRecordSource(name={self.name!r}, files={len(self.paths)}, len={len(self)})"


# ----------------------------------------------------------------------------------------------
# TFDS


def _to_str(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, np.ndarray) and x.dtype == object and x.ndim == 0:
        return _to_str(x.item())
    return x


def tfds_example_to_sample(example: Mapping, where: str = "example") -> dict:
    """Default TFDS example -> raw sample conversion.

    Text: ``messages`` (a JSON string, OpenAI style) or ``conversations`` (JSON string, Qwen style) or
    ``text``. Images: ``image`` (uint8 array or encoded bytes) or ``images`` (a sequence of them).
    Videos: ``video`` (uint8 [T, H, W, 3]) with an optional ``fps``. Pass your own ``convert`` to
    ``TFDSSource`` for other feature layouts.
    """
    ex = {k: _to_str(v) for k, v in example.items()}
    record: dict[str, Any] = {"id": ex.get("id", ""), "task": ex.get("task", "")}
    images = ex.get("images", ex.get("image"))
    if images is not None:
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3:
            images = [images]
        record["images"] = [i for i in _as_list(images) if not (isinstance(i, bytes) and not i)]
    if ex.get("video") is not None:
        record["videos"] = [
            {"frames": np.asarray(ex["video"]), "fps": float(ex["fps"]) if "fps" in ex else None}
        ]
    for key, conv in (("messages", messages_record_to_sample), ("conversations", qwen_record_to_sample)):
        if key in ex:
            value = ex[key]
            try:
                record[key] = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError as e:
                raise SampleError("bad_format", f"{where}: feature {key!r} is not valid JSON ({e})") from e
            if key == "conversations":
                record["image"] = record.pop("images", None)
                record["video"] = record.pop("videos", None)
            return conv(record, None, where)
    if "text" in ex:
        return {"id": str(record["id"]), "task": str(record["task"]), "text": str(ex["text"])}
    raise SampleError("bad_format", f"{where}: no 'messages', 'conversations' or 'text' feature")


class TFDSSource:
    """A TFDS dataset (prepared in ``array_record`` file format) through ``tfds.data_source``.

    ``convert`` maps a decoded TFDS example (dict of numpy / bytes) to a raw sample; the default is
    ``tfds_example_to_sample``.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | os.PathLike | None = None,
        convert: Callable[[Mapping], dict] | None = None,
        source_name: str | None = None,
        **data_source_kwargs: Any,
    ):
        import tensorflow_datasets as tfds

        self.tfds_name, self.split = name, split
        self.name = source_name or f"{name}/{split}"
        self._convert = convert
        self._source = tfds.data_source(
            name,
            split=split,
            data_dir=None if data_dir is None else os.fspath(data_dir),
            **data_source_kwargs,
        )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        where = f"tfds {self.name} example {index}"
        try:
            example = self._source[index]
        except Exception as e:
            raise SampleError("bad_format", f"{where}: cannot read ({e})") from e
        sample = (
            self._convert(example) if self._convert is not None else tfds_example_to_sample(example, where)
        )
        sample["source"] = self.name
        sample["id"] = str(sample.get("id") or f"{self.name}:{index}")
        sample.setdefault("task", "")
        return sample

    def __repr__(self) -> str:
        return f"TFDSSource(name={self.name!r}, len={len(self)})"


# ----------------------------------------------------------------------------------------------
# Mixture


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    counts[(weights > 0) & (counts == 0)] = 1
    rest = total - counts.sum()
    if rest > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:rest]] += 1
    while counts.sum() > total:  # only when forcing minimum 1 overshot
        counts[np.argmax(counts)] -= 1
    return counts


_MATERIALISE_BELOW = 1 << 20


class MixtureSource:
    """A deterministic weighted mixture of random-access sources.

    Index ``i`` falls in block ``i // block_size``; each block holds ``round(w_k * block_size)`` items of
    source ``k`` (largest remainders, at least one per positive weight), spread evenly through the block.
    Within source ``k`` the items are taken in a permuted order (seeded by ``seed``, source, cycle),
    re-permuted every time the source is exhausted (a smaller source with a large weight is
    up-sampled; a larger one is sub-sampled). ``length`` defaults to the total length of the sources.
    Each sample gets ``source`` (the source's name) and, if it has none, ``task`` = ``source``.
    """

    def __init__(
        self,
        sources: Mapping[str, Any] | Sequence[Any],
        weights: Mapping[str, float] | Sequence[float] | None = None,
        length: int | None = None,
        seed: int = 0,
        block_size: int = 1000,
        shuffle_within_source: bool = True,
    ):
        if isinstance(sources, Mapping):
            names = list(sources)
            srcs = [sources[n] for n in names]
            if isinstance(weights, Mapping):
                unknown = set(weights) - set(names)
                if unknown:
                    raise ValueError(f"weights name unknown sources {sorted(unknown)}; sources are {names}")
                weights = [weights.get(n, 0.0) for n in names]
        else:
            srcs = list(sources)
            names = [getattr(s, "name", f"source{k}") for k, s in enumerate(srcs)]
            if isinstance(weights, Mapping):
                raise ValueError("weights by name need sources by name (a mapping)")
        if not srcs:
            raise ValueError("a mixture needs at least one source")
        w = np.ones(len(srcs)) if weights is None else np.asarray(list(weights), np.float64)
        if w.shape != (len(srcs),) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(
                f"weights {list(w)} must be {len(srcs)} non-negative numbers with a positive sum"
            )
        for n, s in zip(names, srcs):
            if len(s) == 0 and w[names.index(n)] > 0:
                raise ValueError(f"source {n!r} is empty but has weight > 0")
        self.names, self.sources, self.weights = names, srcs, w / w.sum()
        self.seed, self.shuffle_within_source = int(seed), shuffle_within_source
        self._length = int(length) if length is not None else int(sum(len(s) for s in srcs))
        if self._length <= 0:
            raise ValueError("mixture length must be positive")
        block_size = max(int(block_size), int((w > 0).sum()))
        counts = _largest_remainder(self.weights, block_size)
        self.block_size, self.block_counts = int(counts.sum()), counts
        # Even spread: item r of source k sits at fractional position (r + 0.5) / n_k of the block.
        keys = [((r + 0.5) / c, k) for k, c in enumerate(counts) for r in range(c)]
        keys.sort()
        self._block_source = np.array([k for _, k in keys], np.int32)
        rank = np.zeros(self.block_size, np.int64)
        seen = np.zeros(len(srcs), np.int64)
        for pos, k in enumerate(self._block_source):
            rank[pos] = seen[k]
            seen[k] += 1
        self._block_rank = rank
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self._length

    def locate(self, index: int) -> tuple[int, int]:
        """(source number, index within that source) of mixture item ``index``."""
        if index < 0:
            raise IndexError(index)
        block, pos = divmod(int(index), self.block_size)
        k = int(self._block_source[pos])
        j = block * int(self.block_counts[k]) + int(self._block_rank[pos])
        n = len(self.sources[k])
        cycle, j = divmod(j, n)
        if self.shuffle_within_source and n > 1:
            seed = (self.seed * 1_000_003 + k * 7919 + cycle) % (2**31 - 1)
            if n <= _MATERIALISE_BELOW:  # index_shuffle is slow on small domains
                j = int(self._permutation(n, seed)[j])
            else:
                from grain.experimental import index_shuffle

                j = int(index_shuffle(j, n - 1, seed, 4))
        return k, j

    def _permutation(self, n: int, seed: int) -> np.ndarray:
        key = (n, seed)
        perm = self._perms.get(key)
        if perm is None:
            perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
            if len(self._perms) >= 4 * len(self.sources):
                try:
                    self._perms.pop(next(iter(self._perms)), None)
                except (RuntimeError, StopIteration):  # another reader thread evicted concurrently
                    pass
            self._perms[key] = perm
        return perm

    def __getitem__(self, index: int) -> dict:
        k, j = self.locate(index)
        sample = dict(self.sources[k][j])
        sample["source"] = self.names[k]
        if not sample.get("task"):
            sample["task"] = self.names[k]
        return sample

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {w:.3g}" for n, w in zip(self.names, self.weights))
        return f"MixtureSource({{{parts}}}, len={len(self)})"


# ----------------------------------------------------------------------------------------------
# Decoding


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


def _frame_files(directory: str) -> list[str]:
    files = sorted(f for f in os.listdir(directory) if f.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(directory, f) for f in files]


def _decode_video_file(src: str | bytes, where: str) -> tuple[np.ndarray, float | None]:
    try:
        import av  # optional dependency
    except ImportError:
        name = src if isinstance(src, str) else "video bytes"
        raise SampleError(
            "bad_video",
            f"{where}: cannot decode {name!r}: no video decoder installed (pip install av), "
            "or give the video as a directory / list of frame images or a .npy array",
        ) from None
    try:
        with av.open(src if isinstance(src, str) else io.BytesIO(src)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except Exception as e:
        raise SampleError("bad_video", f"{where}: cannot decode video ({type(e).__name__}: {e})") from e
    if not frames:
        raise SampleError("bad_video", f"{where}: video has no frames")
    return np.stack(frames), fps


def decode_video(ref: Any, default_fps: float = 2.0, where: str = "video") -> dict:
    """A VideoRef -> ``{"frames": uint8 [T, H, W, 3], "fps": float}``."""
    v = _resolve_video(ref, None) if not (isinstance(ref, Mapping) and "frames" in ref) else dict(ref)
    frames, fps = v["frames"], v.get("fps")
    if isinstance(frames, Mapping) and "$video_file" in frames:
        frames, file_fps = _decode_video_file(frames["$video_file"], where)
        fps = fps or file_fps
    elif isinstance(frames, str):
        if not os.path.exists(frames):
            raise SampleError("missing_file", f"{where}: file {frames!r} does not exist")
        if os.path.isdir(frames):
            files = _frame_files(frames)
            if not files:
                raise SampleError("bad_video", f"{where}: directory {frames!r} has no frame images")
            frames = [decode_image(p, f"{where} frame {p}") for p in files]
        elif frames.endswith(".npy"):
            try:
                frames = np.load(frames)
            except Exception as e:
                raise SampleError("bad_video", f"{where}: cannot load {frames!r} ({e})") from e
        else:
            frames, file_fps = _decode_video_file(frames, where)
            fps = fps or file_fps
    elif isinstance(frames, (bytes, bytearray)):
        frames, file_fps = _decode_video_file(bytes(frames), where)
        fps = fps or file_fps
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise SampleError("bad_video", f"{where}: video has no frames")
        frames = [decode_image(f, f"{where} frame {t}") for t, f in enumerate(frames)]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise SampleError("bad_video", f"{where}: frames have different sizes {sorted(shapes)}")
        frames = np.stack(frames)
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

"""Conversions of records to the internal message form: the official Qwen-VL format and OpenAI /
Hugging Face style messages; the placeholder count check."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from vlm_jax.data.sources.errors import SampleError
from vlm_jax.data.sources.refs import IMAGE_EXTENSIONS, as_list, resolve_path, resolve_video

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


def count_visuals(messages: Sequence[Mapping]) -> tuple[int, int]:
    """(image, video) placeholder counts of the messages' content lists."""
    n_img = n_vid = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for item in content:
                n_img += item.get("type") == "image"
                n_vid += item.get("type") == "video"
    return n_img, n_vid


def _check_placeholders(messages: list[dict], n_images: int, n_videos: int, where: str) -> None:
    n_img, n_vid = count_visuals(messages)
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
    images = [resolve_path(p, data_root) for p in as_list(record.get("image", record.get("images")))]
    fps = record.get("video_fps")
    raw_videos = record.get("video", record.get("videos"))
    if isinstance(raw_videos, list) and raw_videos and all(isinstance(v, str) for v in raw_videos):
        # Ambiguous: several video files, or the frames of one video. Frames are image files.
        if all(v.lower().endswith(IMAGE_EXTENSIONS) for v in raw_videos):
            raw_videos = [raw_videos]
    videos = [resolve_video(v, data_root, fps) for v in as_list(raw_videos)]
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
    top_images = [resolve_path(p, data_root) for p in as_list(record.get("images", record.get("image")))]
    top_videos = [resolve_video(v, data_root) for v in as_list(record.get("videos", record.get("video")))]
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
                        resolve_path(ref, data_root) if ref is not None else take(next_img, "image")
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
                        videos.append(resolve_video(ref, data_root, item.get("fps")))
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


def stamp_source(sample: dict, source: str, index: int) -> dict:
    """Names ``source`` in a raw sample, and gives it the id ``source:index`` and task "" where it has none."""
    sample["source"] = source
    sample["id"] = str(sample.get("id") or f"{source}:{index}")
    sample.setdefault("task", "")
    return sample

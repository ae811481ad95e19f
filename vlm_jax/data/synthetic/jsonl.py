"""Writing synthetic samples to disk in the official Qwen-VL fine-tuning JSONL format, and reading back.

Layout under ``out_dir``::

    <split>.jsonl                      one record per line
    images/<id>_<k>.png                k-th image of a sample
    videos/<id>_<k>/<t:04d>.png        frames of the k-th video of a sample (PNG per frame)

A record::

    {"id": ..., "task": ..., "image": "images/x_0.png" | [paths],     (absent without images)
     "video": ["videos/x_0/0000.png", ...] | [[...], ...],             (one video: its frame list;
     "video_fps": 2.0,                                                   several: a list of lists)
     "conversations": [{"from": "human", "value": "<image>\\nQuestion"},
                       {"from": "gpt", "value": "answer"}],
     "answer": {...}, "meta": {...}}

Thinking samples store ``"<think>\\nreasoning\\n</think>\\n\\nanswer"`` as the gpt value. Paths are
relative to ``out_dir``. ``answer`` / ``meta`` are extra keys (ground truth for evaluation).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_TAG_RE = re.compile(r"(<image>|<video>)")
_THINK_RE = re.compile(r"^<think>\n(.*?)\n</think>\n\n(.*)$", re.DOTALL)


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG", compress_level=1)


def sample_to_record(sample: dict, out_dir: str | os.PathLike, include_meta: bool = True) -> dict:
    """Writes a sample's images/frames under ``out_dir`` and returns its Qwen-VL JSONL record."""
    out = Path(out_dir)
    sid = sample["id"]
    rec: dict[str, Any] = {"id": sid, "task": sample["task"]}
    if sample["images"]:
        (out / "images").mkdir(parents=True, exist_ok=True)
        paths = []
        for k, img in enumerate(sample["images"]):
            rel = f"images/{sid}_{k}.png"
            _save_png(img, out / rel)
            paths.append(rel)
        rec["image"] = paths[0] if len(paths) == 1 else paths
    if sample["videos"]:
        vids = []
        for k, v in enumerate(sample["videos"]):
            d = out / "videos" / f"{sid}_{k}"
            d.mkdir(parents=True, exist_ok=True)
            frames = []
            for t, f in enumerate(v["frames"]):
                rel = f"videos/{sid}_{k}/{t:04d}.png"
                _save_png(f, out / rel)
                frames.append(rel)
            vids.append(frames)
        rec["video"] = vids[0] if len(vids) == 1 else vids
        rec["video_fps"] = float(sample["videos"][0]["fps"])
    conv = []
    for m in sample["messages"]:
        c = m["content"]
        if isinstance(c, str):
            value = c
        else:
            value = "\n".join(
                "<" + it["type"] + ">" if it["type"] in ("image", "video") else it["text"] for it in c
            )
        if m.get("reasoning") is not None:
            value = f"<think>\n{m['reasoning']}\n</think>\n\n{value}"
        conv.append({"from": "human" if m["role"] == "user" else "gpt", "value": value})
    rec["conversations"] = conv
    rec["answer"] = sample["answer"]
    if include_meta:
        rec["meta"] = sample["meta"]
    return rec


def write_jsonl(
    world: Any,
    split: str,
    n: int,
    out_dir: str | os.PathLike,
    *,
    start: int = 0,
    task: str | None = None,
    filename: str | None = None,
    include_meta: bool = True,
) -> Path:
    """Writes samples ``start .. start + n - 1`` of ``split`` to ``out_dir`` (see module docstring).

    Returns the path of the JSONL file (``<split>.jsonl`` unless ``filename`` is given).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (filename or f"{split}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for s in world.samples(split, n, start=start, task=task):
            f.write(json.dumps(sample_to_record(s, out, include_meta), ensure_ascii=False) + "\n")
    return path


def _parse_user(value: str) -> list[dict]:
    content = []
    for piece in _TAG_RE.split(value):
        if piece in ("<image>", "<video>"):
            content.append({"type": piece[1:-1]})
        else:
            if content and piece.startswith("\n"):
                piece = piece[1:]
            if piece:
                content.append({"type": "text", "text": piece})
    return content


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Reads a file written by ``write_jsonl`` back into synthetic samples (images as arrays)."""
    root = Path(path).parent
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            imgs = rec.get("image", [])
            imgs = [imgs] if isinstance(imgs, str) else imgs
            vids = rec.get("video", [])
            if vids and isinstance(vids[0], str):
                vids = [vids]
            messages = []
            for turn in rec["conversations"]:
                if turn["from"] == "human":
                    messages.append({"role": "user", "content": _parse_user(turn["value"])})
                else:
                    m = _THINK_RE.match(turn["value"])
                    msg = {"role": "assistant", "content": m.group(2) if m else turn["value"]}
                    if m:
                        msg["reasoning"] = m.group(1)
                    messages.append(msg)
            yield {
                "id": rec.get("id", ""),
                "task": rec.get("task", ""),
                "source": "synthetic",
                "images": [np.array(Image.open(root / p).convert("RGB")) for p in imgs],
                "videos": [
                    {
                        "frames": np.stack([np.array(Image.open(root / p).convert("RGB")) for p in v]),
                        "fps": float(rec.get("video_fps", 2.0)),
                    }
                    for v in vids
                ],
                "messages": messages,
                "answer": rec.get("answer"),
                "meta": rec.get("meta", {}),
            }

"""TFDS: any TFDS dataset prepared in `array_record` format, through `tfds.data_source`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vlm_jax.data.sources.errors import SampleError
from vlm_jax.data.sources.messages import messages_record_to_sample, qwen_record_to_sample, stamp_source
from vlm_jax.data.sources.refs import as_list


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
        record["images"] = [i for i in as_list(images) if not (isinstance(i, bytes) and not i)]
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
        return stamp_source(sample, self.name, index)

    def __repr__(self) -> str:
        return f"TFDSSource(name={self.name!r}, len={len(self)})"

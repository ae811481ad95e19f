"""JSONL sources: random access over the non-blank lines of JSONL files (Qwen-VL or messages format)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlm_jax.data.sources.errors import SampleError
from vlm_jax.data.sources.messages import messages_record_to_sample, qwen_record_to_sample, stamp_source
from vlm_jax.data.sources.refs import expand_paths


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

    # The record format: (parsed line, data root, location for errors) -> raw sample. Set by subclasses.
    _to_sample: Callable[[Any, str | None, str], dict]

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        data_root: str | os.PathLike | None = None,
        name: str | None = None,
    ):
        self.paths = expand_paths(paths)
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

    def __getitem__(self, index: int) -> dict:
        record, where = self.read_record(index)
        sample = self._to_sample(record, self._root(int(self._file_ids[index])), where)
        return stamp_source(sample, self.name, index)

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

    _to_sample = staticmethod(qwen_record_to_sample)


class MessagesJsonlSource(_JsonlSource):
    """JSONL of OpenAI / Hugging Face style ``{"messages": [...]}`` records (or ``{"text": ...}``)."""

    _to_sample = staticmethod(messages_record_to_sample)

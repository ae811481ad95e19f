"""JSON record sources: random access over the records of JSONL files and JSON array files (Qwen-VL or
messages format).

A ``.jsonl`` file holds one record per non-blank line; a ``.json`` file holds one array of records
(the official Qwen-VL fine-tuning files), or JSON lines when its first byte is ``{``. Packed data (a
list of records in place of a record: an array element or a JSONL line) counts each of its records.
Only byte offsets are indexed (numpy arrays, picklable); each read is one ``pread`` + ``json.loads``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlm_jax.data.sources.errors import SampleError
from vlm_jax.data.sources.json_array import array_index, scan_array
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


def _expand_packed_lines(path: str, starts: np.ndarray, lengths: np.ndarray, lines: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """JSONL lines that hold a list of records (packed data) replaced by the spans of their records."""
    if not len(starts):
        return starts, lengths, lines
    first = np.memmap(path, np.uint8, mode="r")[starts]
    maybe = np.flatnonzero(first != ord("{"))  # lists, and lines indented with blanks: look closer
    if not len(maybe):
        return starts, lengths, lines
    parts_s, parts_n, parts_l, done = [], [], [], 0
    with open(path, "rb") as f:
        for i in maybe.tolist():
            f.seek(starts[i])
            if not f.read(lengths[i]).lstrip(b" \t\r\xef\xbb\xbf").startswith(b"["):
                continue
            s, n, _ = scan_array(f, f"{path}:{int(lines[i])}", int(starts[i]), int(starts[i] + lengths[i]))
            parts_s += [starts[done:i], s]
            parts_n += [lengths[done:i], n]
            parts_l += [lines[done:i], np.full(len(s), lines[i], np.int64)]
            done = i + 1
    if not parts_s:
        return starts, lengths, lines
    parts_s.append(starts[done:])
    parts_n.append(lengths[done:])
    parts_l.append(lines[done:])
    return np.concatenate(parts_s), np.concatenate(parts_n), np.concatenate(parts_l)


def _is_array_file(path: str) -> bool:
    """Whether a data file holds one JSON array (else JSON lines): ``.json`` files unless they start with '{'."""
    if path.lower().endswith((".jsonl", ".ndjson")):
        return False
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if not head.startswith(b"{"):
        return True  # an array, or an error that the array scan names
    with open(path, "rb") as f:
        line = f.readline()
    try:
        json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: neither a JSON array of records nor JSON lines (line 1 is not one complete "
                         f"JSON object: {e})") from e
    return False


def record_index(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start offsets, lengths, 1-based line numbers) of the records of a JSONL or JSON array file."""
    if _is_array_file(path):
        return array_index(path)
    return _expand_packed_lines(path, *_line_index(path))


class _JsonlSource:
    """Random access over the records of JSONL / JSON array files (thread- and fork-safe).

    ``sampling_rate`` in (0, 1] keeps ``int(len * sampling_rate)`` records, drawn once with ``seed``
    (the official ``name%50`` takes half of a dataset this way); file order is kept.
    """

    # The record format: (parsed line, data root, location for errors) -> raw sample. Set by subclasses.
    _to_sample: Callable[[Any, str | None, str], dict]

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        data_root: str | os.PathLike | None = None,
        name: str | None = None,
        sampling_rate: float = 1.0,
        seed: int = 0,
    ):
        if not 0 < sampling_rate <= 1:
            raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
        self.paths = expand_paths(paths)
        self.data_root = None if data_root is None else os.fspath(data_root)
        self.name = name or os.path.splitext(os.path.basename(self.paths[0]))[0]
        starts, lengths, file_ids, line_nos = [], [], [], []
        for k, p in enumerate(self.paths):
            s, n, ln = record_index(p)
            starts.append(s)
            lengths.append(n)
            line_nos.append(ln)
            file_ids.append(np.full(len(s), k, np.int32))
        self._starts = np.concatenate(starts)
        self._lengths = np.concatenate(lengths)
        self._file_ids = np.concatenate(file_ids)
        self._line_nos = np.concatenate(line_nos)
        if sampling_rate < 1:
            total = len(self._starts)
            keep = np.sort(np.random.default_rng(seed).choice(total, int(total * sampling_rate), replace=False))
            for attr in ("_starts", "_lengths", "_file_ids", "_line_nos"):
                setattr(self, attr, getattr(self, attr)[keep])
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
        """The parsed JSON of record ``index`` and a 'file:line (sample index)' location string."""
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
    """The official Qwen-VL fine-tuning format, ``.json`` arrays or ``.jsonl``; paths relative to ``data_root``.

    ``data_root`` (the official ``data_path``) defaults to the directory of each file; ``""`` is the
    working directory, as the official loader's empty ``data_path``.
    """

    _to_sample = staticmethod(qwen_record_to_sample)


class MessagesJsonlSource(_JsonlSource):
    """JSONL / JSON arrays of OpenAI / Hugging Face style ``{"messages": [...]}`` records (or ``{"text": ...}``)."""

    _to_sample = staticmethod(messages_record_to_sample)

"""Byte offsets of the records of a JSON array file, found by one streaming scan (nothing parsed).

The official Qwen-VL fine-tuning data is a ``.json`` file holding one array of records, and packed
data (the official ``tools/pack_data.py``) is an array of arrays of records. ``array_index`` finds
where each record's text lies so that a reader can ``seek`` + ``json.loads`` one record at a time;
the index is three numpy arrays, small and picklable, so worker processes never load the whole file.

The scan reads the file in chunks and works on the positions of the bytes that matter
(``" \\ [ ] { } ,``) with numpy: quotes preceded by an odd run of backslashes are escaped, the parity
of the remaining quotes says what lies inside strings, and a running sum of brackets gives each
bracket's and comma's depth. Only the few events at depth 0 and 1 (and 2 inside a packed list) go
through Python. A file that is not an array, is truncated, or holds an element that is neither an
object nor a list of objects raises ``ValueError`` naming the file and the byte (and line).
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

_SPECIAL = np.zeros(256, bool)
_SPECIAL[list(b'"\\[]{},')] = True
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN, _CLOSE, _COMMA = (ord("["), ord("{")), (ord("]"), ord("}")), ord(",")
_DELTA = np.zeros(256, np.int64)
_DELTA[list(b"[{")] = 1
_DELTA[list(b"]}")] = -1
_BLANK = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


def _escaped(pos: np.ndarray, is_bs: np.ndarray) -> np.ndarray:
    """Whether each special byte follows an odd run of backslashes (so a quote there is escaped)."""
    n = len(pos)
    after_bs = np.zeros(n, bool)
    if n > 1:
        after_bs[1:] = is_bs[:-1] & (pos[1:] == pos[:-1] + 1)
    run_start = is_bs & ~after_bs
    idx = np.arange(n)
    last_start = np.maximum.accumulate(np.where(run_start, idx, -1))
    run_len = idx - last_start + 1  # length of the backslash run ending here (backslash entries only)
    out = np.zeros(n, bool)
    if n > 1:
        out[1:] = after_bs[1:] & (run_len[:-1] % 2 == 1)
    return out


class _Scanner:
    """The record spans of one JSON array, fed chunk by chunk (see the module docstring)."""

    def __init__(self, f: BinaryIO, name: str, base: int = 0):
        self.f, self.name, self.base = f, name, base
        self.in_string = 0  # parity of unescaped quotes so far
        self.depth = 0
        self.outer_is_array = False  # is the current depth-1 element a (packed) list?
        self.phase = "before"  # before the array, "in" it, "after" it
        self.close_pos = -1
        # The current depth-1 element: where it starts, its opening bracket (byte, line, kind) or None, and
        # how many elements came before it.
        self.span_start, self.opener, self.elements = 0, None, 0
        # The current record of a packed list: the same, one level down (its bracket is (byte, line)).
        self.sub_start, self.sub_opener, self.sub_elements = 0, None, 0
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.lines: list[int] = []
        self._lines_before = 0  # newlines before the current chunk

    # -- helpers

    def _error(self, p: int, what: str) -> ValueError:
        here = self.f.tell()
        self.f.seek(self.base)
        lines, left = 0, p - self.base
        while left > 0:  # count the lines up to p (only on errors)
            buf = self.f.read(min(left, 1 << 22))
            if not buf:
                break
            lines += buf.count(b"\n")
            left -= len(buf)
        self.f.seek(here)
        return ValueError(f"{self.name}: {what} at byte {p - self.base} (line {lines + 1})")

    def _read(self, start: int, end: int) -> bytes:
        here = self.f.tell()
        self.f.seek(start)
        out = self.f.read(max(0, end - start))
        self.f.seek(here)
        return out

    def _blank(self, start: int, end: int) -> bool:
        return all(not self._read(a, min(a + (1 << 20), end)).strip(_BLANK) for a in range(start, end, 1 << 20))

    def _add(self, opener: tuple[int, int], end: int) -> None:
        self.starts.append(opener[0])
        self.ends.append(end)
        self.lines.append(opener[1])

    # -- the scan

    def feed(self, chunk: bytes, offset: int) -> None:
        """One chunk at absolute ``offset``; it must not end inside a run of backslashes."""
        b = np.frombuffer(chunk, np.uint8)
        pos = np.flatnonzero(_SPECIAL[b])
        ch = b[pos]
        is_bs = ch == _BACKSLASH
        quote = (ch == _QUOTE) & ~_escaped(pos, is_bs)
        inside = (self.in_string + np.cumsum(quote) - quote) % 2 == 1  # within a string, before this byte
        self.in_string = int((self.in_string + quote.sum()) % 2)
        keep = ~is_bs & (ch != _QUOTE) & ~inside
        pos, ch = pos[keep], ch[keep]
        delta = _DELTA[ch]
        depth = self.depth + np.cumsum(delta) - delta  # depth before each bracket / comma
        if len(depth) and (depth + delta).min() < 0:
            k = int(np.flatnonzero(depth + delta < 0)[0])
            raise self._error(offset + int(pos[k]), f"unbalanced {chr(ch[k])!r}")
        self.depth = int(self.depth + delta.sum())
        # Whether the depth-1 element around each byte is a list (a packed list: its records sit at depth 2).
        opens1 = (depth == 1) & (delta == 1)
        last = np.maximum.accumulate(np.where(opens1, np.arange(len(ch)), -1))
        outer_array = np.where(last >= 0, ch[np.maximum(last, 0)] == _OPEN[0], self.outer_is_array)
        if len(ch):
            self.outer_is_array = bool(outer_array[-1])
        events = (depth <= 1) | ((depth == 2) & outer_array)
        newlines = np.flatnonzero(b == 10)
        lines = self._lines_before + np.searchsorted(newlines, pos[events]) + 1
        for p, c, d, line in zip((pos[events] + offset).tolist(), ch[events].tolist(), depth[events].tolist(),
                                 lines.tolist()):
            if d == 0:
                self._top(p, c)
            elif d == 1:
                self._element(p, c, line)
            else:
                self._packed(p, c, line)
        self._lines_before += len(newlines)

    def _top(self, p: int, c: int) -> None:
        if self.phase == "before" and c == _OPEN[0]:
            if self._read(self.base, p).strip(_BLANK).removeprefix(_BOM).strip(_BLANK):
                raise self._error(self.base, "data before the array")
            self.phase, self.span_start = "in", p + 1
            return
        if self.phase == "before":
            hint = " (JSON lines? name the file .jsonl)" if c == _OPEN[1] else ""
            raise self._error(p, f"expected a JSON array of records, found {chr(c)!r}{hint}")
        raise self._error(p, "data after the end of the array")

    def _element(self, p: int, c: int, line: int) -> None:
        """A bracket or comma at depth 1: an element of the array opens or ends."""
        if c in _OPEN:
            if self.opener is not None:
                raise self._error(p, f"missing ',' before {chr(c)!r}")
            self.opener = (p, line, c)
            if c == _OPEN[0]:
                self.sub_start, self.sub_opener, self.sub_elements = p + 1, None, 0
            return
        if c not in (_COMMA, _CLOSE[0]):
            raise self._error(p, "unbalanced '}'")
        if self.opener is None:
            # '[ ]' is an empty array; any other element without a bracket is not a record
            if not (self._blank(self.span_start, p) and c == _CLOSE[0] and self.elements == 0):
                blank = self._blank(self.span_start, p)
                what = "an empty element" if blank else "an element that is neither a JSON object nor a list of them"
                raise self._error(self.span_start, what)
        elif self.opener[2] == _OPEN[1]:
            self._add(self.opener[:2], p)
        self.elements += 1
        if c == _CLOSE[0]:
            self.phase, self.close_pos = "after", p
        self.span_start, self.opener = p + 1, None

    def _packed(self, p: int, c: int, line: int) -> None:
        """A bracket or comma at depth 2 inside a packed list: one of its records opens or ends."""
        if c == _OPEN[1]:
            if self.sub_opener is not None:
                raise self._error(p, "missing ',' before '{'")
            self.sub_opener = (p, line)
            return
        if c == _OPEN[0]:
            raise self._error(p, "a list inside a packed list (its elements must be records: JSON objects)")
        if c not in (_COMMA, _CLOSE[0]):
            raise self._error(p, "unbalanced '}'")
        if self.sub_opener is not None:
            self._add(self.sub_opener, p)
        elif not (self._blank(self.sub_start, p) and c == _CLOSE[0] and self.sub_elements == 0):
            raise self._error(self.sub_start, "an element of a packed list that is not a JSON object")
        self.sub_elements += 1
        self.sub_start, self.sub_opener = p + 1, None

    def finish(self, end: int) -> None:
        """Checks the state at the end of the data (absolute offset ``end``)."""
        if self.phase == "before":
            raise self._error(end, "no JSON array found (empty file?)")
        if self.phase == "in":
            inside = "inside a string, " if self.in_string else ""
            last = (f"the last complete record ends at byte {self.ends[-1] - self.base}" if self.ends
                    else "no record is complete")
            raise self._error(end, f"truncated: the file ends {inside}before the array is closed ({last})")
        if not self._blank(self.close_pos + 1, end):
            raise self._error(self.close_pos + 1, "data after the end of the array")


def scan_array(f: BinaryIO, name: str, start: int = 0, end: int | None = None,
               chunk_bytes: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start offsets, lengths, 1-based line numbers within the scanned bytes) of the records of the JSON
    array in bytes ``[start, end)`` of ``f``; ``ValueError`` naming ``name``, the byte and line if the
    bytes are not such an array. Offsets are absolute (positions in ``f``)."""
    if end is None:
        f.seek(0, os.SEEK_END)
        end = f.tell()
    scanner = _Scanner(f, name, start)
    offset = start
    f.seek(start)
    while offset < end:
        chunk = f.read(min(chunk_bytes, end - offset))
        if not chunk:
            break
        while chunk.endswith(b"\\") and offset + len(chunk) < end:  # keep backslash runs whole
            chunk += f.read(1)
        scanner.feed(chunk, offset)
        offset += len(chunk)
        f.seek(offset)
    scanner.finish(offset)
    starts = np.asarray(scanner.starts, np.int64)
    return starts, np.asarray(scanner.ends, np.int64) - starts, np.asarray(scanner.lines, np.int64)


def array_index(path: str, chunk_bytes: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start offsets, lengths, 1-based line numbers) of the records of a JSON array file: the array's
    objects, and the objects of each list in it (packed data)."""
    with open(path, "rb") as f:
        return scan_array(f, path, chunk_bytes=chunk_bytes)

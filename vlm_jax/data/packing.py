"""Packing tokenised samples into fixed-shape training batches (the CONTRACTS.md batch).

A batch holds ``batch_size`` rows of ``seq_len`` tokens; each row holds several whole samples
(never a split one) and one *vision buffer* is shared by the whole batch:

    input_ids     int32   [B, S]     pad_id on padding
    segment_ids   int32   [B, S]     0 = padding, 1..k = k-th sample of the row
    position_ids  int32   [3, B, S]  MRoPE (t, h, w) ids of each sample (restart at 0), 0 on padding
    targets       int32   [B, S]     next token of the same sample, 0 where none (last token, padding)
    loss_weights  float32 [B, S]     weight of the loss predicting ``targets`` at this position
    task_ids      int32   [B, S]     task id of the sample, 0 on padding
    pixel_values  float32 [P, 1536]  patches of all images/videos, in placeholder order over the
                                     flattened [B, S] grid; zero rows after the real patches
    grid_thw      int32   [M, 3]     one row per image/video, same order; zero rows after

Loss normalisation. The train step computes ``sum(loss_weights * nll) / sum(loss_weights)``, the sums
taken over the whole global batch (all rows, all devices, all gradient-accumulation micro-batches:
sum numerators and denominators separately, divide once). ``loss_weights`` folds in the mode, with
``n_i`` the number of supervised target positions of sample ``i``:

- ``"token"``:  1 per supervised position  -> the mean over all supervised tokens of the batch;
- ``"sample"``: 1 / n_i                   -> every sample weighs the same (mean of per-sample means);
- ``"sqrt"``:   1 / sqrt(n_i)             -> sample ``i`` weighs sqrt(n_i) (Qwen3-VL square-root
  reweighting: between per-token and per-sample, long samples count more but not linearly).

A supervised target position ``t`` of a sample is one whose *next* token ``t + 1`` is marked in the
sample's ``loss_mask`` (``loss_mask`` marks the tokens to be predicted: assistant answers and their
end-of-turn token); ``targets[t] = input_ids[t + 1]``.

The packer (``BatchPacker``) keeps a pool of pending samples and, for each batch, places the oldest
pending sample first (so nothing starves) and then the others longest first, each into the row
with the least free space that still fits (best-fit decreasing), as long as the batch's vision
buffer has room for its patches and grid rows. Samples left over wait for the next batch. A sample
that cannot fit an empty batch (more than ``seq_len`` tokens, more patches than ``max_patches`` or
more images/videos than ``max_grids``) is skipped and counted, never truncated.
``PackIterDataset`` wraps it as a checkpointable grain ``IterDataset``.

Input samples (the output of ``vlm_jax.data.pipeline.tokenize_sample``) are dicts with
``input_ids`` int32 [L], ``loss_mask`` bool [L], ``position_ids`` int32 [3, L], ``pixel_values``
float32 [N, patch_dim], ``grid_thw`` int32 [K, 3], ``task_id`` int; or *skip markers*
``{"skipped": reason, "message": str}`` that are only counted.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping
from typing import Any

import grain
import ml_collections as mlc
import numpy as np

from vlm_jax.configs.validate import merge

LOSS_NORMALIZATIONS = ("token", "sample", "sqrt")
STATS_KEY = "_stats"  # per-batch statistics travel with the batch under this key


def base_config() -> mlc.ConfigDict:
    """Every packing key with its default. The pipeline config holds these same keys (but `patch_dim`,
    its processor's), and the pipeline's packer reads them from it (`pipeline.packing_config`).

    seq_len: tokens per row (S). batch_size: rows per batch (B).
    max_patches: rows of the pixel_values buffer (P), shared by the batch.
    max_grids: rows of the grid_thw buffer (M), shared by the batch.
    patch_dim: values per patch (3 * 2 * 16 * 16 = 1536).
    loss_normalization: 'token' | 'sample' | 'sqrt' (see the module docstring).
    pad_id: input_ids value on padding.
    buffer_factor: the pool is refilled until it holds this many batches' worth of tokens (or of
      patches), before each batch is packed; larger packs tighter but delays samples more.
    max_buffer_samples: hard cap on the pool size.
    max_consecutive_skips: this many skipped samples in a row stop the stream with an error naming
      the last cause (data that is all bad, or a wrong tokenizer, must not spin silently).
    """
    c = mlc.ConfigDict()
    c.seq_len = 4096
    c.batch_size = 8
    c.max_patches = 16384
    c.max_grids = 64
    c.patch_dim = 1536
    c.loss_normalization = "token"
    c.pad_id = 0
    c.buffer_factor = 2.0
    c.max_buffer_samples = 1024
    c.max_consecutive_skips = 1000
    return c


# A built packing config (`get_config`): what the packer takes.
PackingConfig = mlc.FrozenConfigDict


def get_config(overrides: Mapping[str, Any] | mlc.ConfigDict | None = None, **kw: Any) -> PackingConfig:
    """The validated, frozen packing config: `base_config()` with `overrides` and `kw` (any subset of its
    keys; an unknown key fails naming it)."""
    c = merge(merge(base_config(), overrides, "packing"), kw, "packing")
    check_values(c, "packing")
    return mlc.FrozenConfigDict(c)


def check_values(c: mlc.ConfigDict, where: str) -> None:
    """Fails naming `where.key` for an invalid packing value of `c` (a packing or a pipeline config)."""
    # A pipeline config has no patch_dim (its processor's): only the keys present are checked.
    for name in ("seq_len", "batch_size", "max_patches", "max_grids", "patch_dim", "max_buffer_samples",
                 "max_consecutive_skips"):
        if name in c and int(c[name]) <= 0:
            raise ValueError(f"{where}.{name} must be positive, got {c[name]}")
    if c.loss_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"{where}.loss_normalization must be one of {LOSS_NORMALIZATIONS}, "
                         f"got {c.loss_normalization!r}")
    if not c.buffer_factor > 0:
        raise ValueError(f"{where}.buffer_factor must be positive, got {c.buffer_factor}")


def target_weights(loss_mask: np.ndarray, mode: str) -> np.ndarray:
    """Per-position loss weights [L] of one sample from its token ``loss_mask`` [L] (see module doc)."""
    loss_mask = np.asarray(loss_mask, bool)
    w = np.zeros(loss_mask.shape, np.float32)
    if loss_mask.size > 1:
        w[:-1] = loss_mask[1:]
    n = float(w.sum())
    if n == 0 or mode == "token":
        return w
    if mode == "sample":
        return w / np.float32(n)
    if mode == "sqrt":
        return w / np.float32(math.sqrt(n))
    raise ValueError(f"unknown loss normalisation {mode!r}; expected one of {LOSS_NORMALIZATIONS}")


def is_skip(element: Mapping) -> bool:
    """Whether a pipeline element is a skip marker rather than a sample."""
    return "skipped" in element


def skip_marker(reason: str, message: str, index: int | None = None, sample_id: str = "") -> dict:
    return {
        "skipped": reason,
        "message": message,
        "index": -1 if index is None else int(index),
        "id": sample_id,
    }


def _n_patches(sample: Mapping) -> int:
    return int(len(sample["pixel_values"]))


def _n_grids(sample: Mapping) -> int:
    return int(len(sample["grid_thw"]))


def check_fits(sample: Mapping, cfg: PackingConfig) -> tuple[str, str] | None:
    """(reason, message) if the sample cannot fit an empty batch, else None."""
    n = len(sample["input_ids"])
    if n > cfg.seq_len:
        return "too_long", f"{n} tokens > seq_len {cfg.seq_len}"
    if _n_patches(sample) > cfg.max_patches:
        return (
            "too_many_patches",
            f"{_n_patches(sample)} patches > vision buffer max_patches {cfg.max_patches}",
        )
    if _n_grids(sample) > cfg.max_grids:
        return (
            "too_many_visuals",
            f"{_n_grids(sample)} images/videos > vision buffer max_grids {cfg.max_grids}",
        )
    return None


def empty_stats() -> dict[str, Any]:
    return {
        "samples": 0,
        "tokens": 0,
        "target_tokens": 0,
        "patches": 0,
        "visuals": 0,
        "skipped": {},
        "skip_messages": [],
    }


def assemble_batch(rows: list[list[Mapping]], cfg: PackingConfig) -> dict[str, np.ndarray]:
    """Builds the batch arrays from ``rows`` (row r holds the samples listed in rows[r], in order)."""
    b, s = cfg.batch_size, cfg.seq_len
    if len(rows) > b:
        raise ValueError(f"{len(rows)} rows > batch_size {b}")
    input_ids = np.full((b, s), cfg.pad_id, np.int32)
    segment_ids = np.zeros((b, s), np.int32)
    position_ids = np.zeros((3, b, s), np.int32)
    targets = np.zeros((b, s), np.int32)
    loss_weights = np.zeros((b, s), np.float32)
    task_ids = np.zeros((b, s), np.int32)
    pixel_values = np.zeros((cfg.max_patches, cfg.patch_dim), np.float32)
    grid_thw = np.zeros((cfg.max_grids, 3), np.int32)
    p = g = 0
    for r, row in enumerate(rows):
        t = 0
        for k, smp in enumerate(row, start=1):
            ids = np.asarray(smp["input_ids"], np.int32)
            n = len(ids)
            if t + n > s:
                raise ValueError(f"row {r} overflows seq_len {s}")
            sl = slice(t, t + n)
            input_ids[r, sl] = ids
            segment_ids[r, sl] = k
            position_ids[:, r, sl] = np.asarray(smp["position_ids"], np.int32).reshape(3, n)
            targets[r, t : t + n - 1] = ids[1:]
            loss_weights[r, sl] = target_weights(smp["loss_mask"], cfg.loss_normalization)
            task_ids[r, sl] = int(smp.get("task_id", 0))
            npatch, ngrid = _n_patches(smp), _n_grids(smp)
            if p + npatch > cfg.max_patches or g + ngrid > cfg.max_grids:
                raise ValueError("vision buffer overflow")
            if npatch:
                pixel_values[p : p + npatch] = smp["pixel_values"]
            if ngrid:
                grid_thw[g : g + ngrid] = smp["grid_thw"]
            p, g, t = p + npatch, g + ngrid, t + n
    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids,
        "position_ids": position_ids,
        "targets": targets,
        "loss_weights": loss_weights,
        "task_ids": task_ids,
        "pixel_values": pixel_values,
        "grid_thw": grid_thw,
    }


def place(pool: list[Mapping], cfg: PackingConfig) -> list[list[int]]:
    """Chooses which pool samples go into one batch: row r gets pool indices ``result[r]``.

    The oldest sample (pool[0]) is placed first, then the rest longest first, each into the fullest
    row that still has room (best fit), if the batch's vision buffer can take its patches and grids.
    Every sample in ``pool`` must fit an empty batch (``check_fits``).
    """
    free = [cfg.seq_len] * cfg.batch_size
    rows: list[list[int]] = [[] for _ in range(cfg.batch_size)]
    patches_free, grids_free = cfg.max_patches, cfg.max_grids
    if not pool:
        return rows
    order = [0] + sorted(range(1, len(pool)), key=lambda i: (-len(pool[i]["input_ids"]), i))
    min_len = min(len(x["input_ids"]) for x in pool)
    for i in order:
        if max(free) < min_len:
            break
        smp = pool[i]
        n, npatch, ngrid = len(smp["input_ids"]), _n_patches(smp), _n_grids(smp)
        if npatch > patches_free or ngrid > grids_free:
            continue
        best, best_free = -1, cfg.seq_len + 1
        for r, f in enumerate(free):
            if n <= f < best_free:
                best, best_free = r, f
        if best < 0:
            continue
        free[best] -= n
        rows[best].append(i)
        patches_free -= npatch
        grids_free -= ngrid
    return rows


class BatchPacker:
    """Stateful pool packer (no grain): ``add`` samples / skip markers, ``pop_batch`` batches.

    Each emitted batch carries ``batch[STATS_KEY]``: samples, tokens, target_tokens, patches, visuals
    packed in it, and the samples skipped since the previous batch by reason.
    """

    def __init__(self, cfg: PackingConfig):
        self.cfg = cfg
        self.pool: list[Mapping] = []
        self.pool_tokens = 0
        self.pool_patches = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.skip_messages: list[str] = []
        self.max_messages = 8

    def add(self, element: Mapping) -> bool:
        """Adds a sample (True) or counts a skip marker / a sample that can never fit (False)."""
        if is_skip(element):
            self._skip(element["skipped"], element.get("message", ""))
            return False
        bad = check_fits(element, self.cfg)
        if bad is not None:
            self._skip(bad[0], f"sample {element.get('index', '?')}: {bad[1]}")
            return False
        self.pool.append(element)
        self.pool_tokens += len(element["input_ids"])
        self.pool_patches += _n_patches(element)
        return True

    def _skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        self.last_skip = f"{reason}: {message}"
        if len(self.skip_messages) < self.max_messages:
            self.skip_messages.append(message)

    def ready(self) -> bool:
        """Whether the pool holds enough to pack a batch tightly."""
        cfg = self.cfg
        return (
            len(self.pool) >= cfg.max_buffer_samples
            or self.pool_tokens >= cfg.buffer_factor * cfg.batch_size * cfg.seq_len
            or self.pool_patches >= cfg.buffer_factor * cfg.max_patches
        )

    def pop_batch(self) -> tuple[dict[str, Any], list[int]] | None:
        """Packs one batch from the pool; returns (batch, pool indices used) or None if the pool is empty."""
        if not self.pool:
            return None
        rows_idx = place(self.pool, self.cfg)
        used = sorted(i for row in rows_idx for i in row)
        rows = [[self.pool[i] for i in row] for row in rows_idx]
        batch: dict[str, Any] = assemble_batch(rows, self.cfg)
        stats = empty_stats()
        for row in rows:
            for smp in row:
                stats["samples"] += 1
                stats["tokens"] += len(smp["input_ids"])
                stats["target_tokens"] += int(np.count_nonzero(np.asarray(smp["loss_mask"])[1:]))
                stats["patches"] += _n_patches(smp)
                stats["visuals"] += _n_grids(smp)
        stats["skipped"] = dict(self.skipped)
        stats["skip_messages"] = list(self.skip_messages)
        self.skipped.clear()
        self.skip_messages.clear()
        batch[STATS_KEY] = stats
        used_set = set(used)
        self.pool = [x for i, x in enumerate(self.pool) if i not in used_set]
        self.pool_tokens = sum(len(x["input_ids"]) for x in self.pool)
        self.pool_patches = sum(_n_patches(x) for x in self.pool)
        return batch, used


def pack_samples(samples: Iterable[Mapping], cfg: PackingConfig) -> Iterable[dict[str, Any]]:
    """Packs an iterable of samples / skip markers into batches (a generator; no checkpointing)."""
    packer = BatchPacker(cfg)
    for x in samples:
        packer.add(x)
        if packer.ready():
            out = packer.pop_batch()
            if out is not None:
                yield out[0]
    while packer.pool:
        out = packer.pop_batch()
        assert out is not None
        yield out[0]


class _PackIterator(grain.DatasetIterator):
    """Checkpointable packing iterator.

    State: the parent's state just before the oldest pending sample was read (the anchor), the
    sequence number of that sample, the sequence number of the next element to read, and the
    sequence numbers of the pending samples. Restoring rewinds the parent to the anchor and re-reads
    (and re-processes) the elements up to the current position, keeping the pending ones.
    """

    def __init__(self, parent: grain.DatasetIterator, cfg: PackingConfig):
        super().__init__(parent)
        self._cfg = cfg
        self._reset()

    def _reset(self) -> None:
        self._packer = BatchPacker(self._cfg)
        self._seqs: list[int] = []  # sequence number of each pool entry
        self._states: list[Any] = []  # parent state before each pool entry was read
        self._next_seq = 0
        self._exhausted = False
        self._consecutive_skips = 0

    def _read_one(self) -> bool:
        before = self._parent.get_state()
        try:
            element = next(self._parent)
        except StopIteration:
            self._exhausted = True
            return False
        seq = self._next_seq
        self._next_seq += 1
        if self._packer.add(element):
            self._seqs.append(seq)
            self._states.append(before)
            self._consecutive_skips = 0
        else:
            self._consecutive_skips += 1
            if self._consecutive_skips >= self._cfg.max_consecutive_skips:
                # A stream that only skips would otherwise spin forever without a word.
                raise RuntimeError(
                    f"{self._consecutive_skips} consecutive samples were skipped; last: "
                    f"{self._packer.last_skip}")
        return True

    def __next__(self) -> dict[str, Any]:
        self._assert_not_closed()
        while not self._exhausted and not self._packer.ready():
            self._read_one()
        out = self._packer.pop_batch()
        if out is None:
            raise StopIteration
        batch, used = out
        used_set = set(used)
        self._seqs = [s for i, s in enumerate(self._seqs) if i not in used_set]
        self._states = [s for i, s in enumerate(self._states) if i not in used_set]
        return batch

    def get_state(self) -> dict[str, Any]:
        if self._seqs:
            anchor_state, anchor_seq = self._states[0], self._seqs[0]
        else:
            anchor_state, anchor_seq = self._parent.get_state(), self._next_seq
        return {
            "parent": anchor_state,
            "anchor_seq": int(anchor_seq),
            "next_seq": int(self._next_seq),
            "pending": [int(s) for s in self._seqs],
            "exhausted": bool(self._exhausted),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._reset()
        pending = set(state["pending"])
        self._next_seq = int(state["anchor_seq"])
        while self._next_seq < int(state["next_seq"]):
            before = self._parent.get_state()
            try:
                element = next(self._parent)
            except StopIteration as e:
                raise ValueError(
                    "cannot restore packing state: the input ended before the saved position"
                ) from e
            seq = self._next_seq
            self._next_seq += 1
            if seq in pending:
                if is_skip(element) or check_fits(element, self._cfg) is not None:
                    raise ValueError(
                        f"cannot restore packing state: element {seq} is no longer a valid sample"
                    )
                self._packer.add(element)
                self._seqs.append(seq)
                self._states.append(before)
        # Skips among the replayed elements were already reported with earlier batches.
        self._packer.skipped.clear()
        self._packer.skip_messages.clear()
        self._exhausted = bool(state.get("exhausted", False))

    def __str__(self) -> str:
        return f"PackIterator(seq_len={self._cfg.seq_len}, batch_size={self._cfg.batch_size})"


class PackIterDataset(grain.IterDataset):
    """grain ``IterDataset`` of packed batches (see ``BatchPacker``), checkpointable.

    Its parent yields tokenised samples or skip markers; each batch carries ``batch[STATS_KEY]``.
    """

    def __init__(self, parent: grain.IterDataset, cfg: PackingConfig):
        super().__init__(parent)
        self._cfg = cfg

    def __iter__(self) -> grain.DatasetIterator:
        return _PackIterator(self._parent.__iter__(), self._cfg)

    def __str__(self) -> str:
        return f"PackIterDataset(seq_len={self._cfg.seq_len}, batch_size={self._cfg.batch_size})"


def packing_efficiency(batch: Mapping[str, Any]) -> float:
    """Fraction of the batch's token slots holding real tokens."""
    seg = np.asarray(batch["segment_ids"])
    return float(np.count_nonzero(seg)) / float(seg.size)

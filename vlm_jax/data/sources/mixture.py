"""A deterministic weighted mixture of random-access sources."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


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

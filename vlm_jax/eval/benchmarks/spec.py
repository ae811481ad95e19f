"""What a benchmark is: how to read its files into items, the prompt, and how to score and sum up replies."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vlm_jax.eval.benchmarks.files import Media
from vlm_jax.eval.metrics import Score


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """video_fps: the frame rate of videos given as frame folders or .npy arrays (files carry their own)."""

    video_fps: float = 2.0


@dataclasses.dataclass
class Item:
    """One question: the user prompt text (media placed before it, as the Qwen3-VL evaluation does),
    its images / videos (read when evaluated), the ground truth `answer` (JSON-able: it is written with the
    predictions) and `meta` (category, split, ...; `meta["group"]` ties circular copies together)."""

    id: str
    prompt: str
    answer: dict
    images: list[Media] = dataclasses.field(default_factory=list)
    videos: list[Media] = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """name; family: the eval family its items are (`tasks.FAMILIES`); read(data, options) -> items;
    score(answer, final reply) -> Score; metric: the headline's name; proportion: per-item scores are
    0 / 1 (Wilson interval) rather than continuous; headline(records) -> the per-unit values whose mean
    is the headline (default: the items' scores; MMBench: one value per circular group);
    summarize(records) -> further aggregates; max_new_tokens: the default reply budget; prompt_source /
    metric_source: where the prompt and the metric definition come from."""

    name: str
    family: str
    read: Callable[[Path, ReadOptions], list[Item]]
    score: Callable[[Mapping[str, Any], str], Score]
    metric: str
    prompt_source: str
    metric_source: str
    proportion: bool = True
    max_new_tokens: int = 64
    headline: Callable[[Sequence[Mapping]], list[float]] | None = None
    summarize: Callable[[Sequence[Mapping]], dict[str, float]] | None = None

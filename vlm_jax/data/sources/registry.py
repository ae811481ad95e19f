"""Datasets named the official Qwen-VL way: a registry of annotation files and data roots, and
``name%N`` to take N percent of a dataset (``qwen-vl-finetune/qwenvl/data/__init__.py``).

    registry = {"single_images": {"annotation_path": "demo/single_images.json", "data_path": "."},
                "video": {"annotation_path": "demo/video.json", "data_path": "demo/videos"}}
    source = qwen_mixture("single_images,video%50", registry)   # a MixtureSource

As the official loader, the datasets are concatenated: each is mixed in proportion to its (sampled)
size. ``data_path`` is the root its media paths are relative to; ``""`` is the working directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from vlm_jax.data.sources.jsonl import QwenJsonlSource
from vlm_jax.data.sources.mixture import MixtureSource

_RATE = re.compile(r"%(\d+)$")


def parse_dataset_name(name: str) -> tuple[str, float]:
    """``"name%50"`` -> ``("name", 0.5)``; ``"name"`` -> ``("name", 1.0)``. The percentage must be in 1..100."""
    m = _RATE.search(name)
    if not m:
        return name, 1.0
    percent = int(m.group(1))
    if not 1 <= percent <= 100:
        raise ValueError(f"dataset {name!r}: the sampling percentage must be in 1..100, got {percent} "
                         "(to up-sample, give the source a larger mixture weight)")
    return name[: m.start()], percent / 100


def qwen_sources(dataset_use: str | Sequence[str], registry: Mapping[str, Mapping[str, Any]],
                 seed: int = 0) -> dict[str, QwenJsonlSource]:
    """{name: source} of the datasets named in ``dataset_use`` (comma-separated or a list, each
    ``name`` or ``name%N``), looked up in ``registry`` ({name: {"annotation_path", "data_path"}})."""
    names = [n.strip() for n in dataset_use.split(",")] if isinstance(dataset_use, str) else list(dataset_use)
    out: dict[str, QwenJsonlSource] = {}
    for full in names:
        name, rate = parse_dataset_name(full)
        if name not in registry:
            raise ValueError(f"dataset {name!r} is not in the registry; known: {sorted(registry)}")
        if name in out:
            raise ValueError(f"dataset {name!r} is named twice in {dataset_use!r}")
        entry = dict(registry[name])
        unknown = set(entry) - {"annotation_path", "data_path"}
        if unknown or "annotation_path" not in entry:
            raise ValueError(f"registry entry {name!r} needs 'annotation_path' (and optionally 'data_path'), "
                             f"got keys {sorted(entry)}")
        out[name] = QwenJsonlSource(entry["annotation_path"], data_root=entry.get("data_path"), name=name,
                                    sampling_rate=rate, seed=seed)
    if not out:
        raise ValueError("dataset_use names no dataset")
    return out


def qwen_mixture(dataset_use: str | Sequence[str], registry: Mapping[str, Mapping[str, Any]],
                 seed: int = 0) -> MixtureSource:
    """The datasets of ``dataset_use`` concatenated as the official loader does: a ``MixtureSource``
    weighted by their sizes, as long as all of them together."""
    sources = qwen_sources(dataset_use, registry, seed)
    return MixtureSource(sources, {n: float(len(s)) for n, s in sources.items()}, seed=seed)

"""Training data from an experiment config: named sources -> a Grain `Pipeline` of packed batches.

`config.data` (see `vlm_jax/configs/synthetic_tiny.py`):

    data.tokenizer = ""                    # tokenizer.json path; "" = the synthetic world's tokenizer
    data.sources = {name: {kind, weight, ...}, ...}
    data.pipeline = {...}                  # `PipelineConfig` fields (seq_len, batch_size, max_patches, ...)

Source kinds: "synthetic" (`world`: `SyntheticWorld` config overrides, `split`, `length`),
"qwen_jsonl" / "messages_jsonl" (`path`: a file, glob or list; `data_root`), "array_record" (`path`).
One source is used as is; several are mixed by their `weight`s (`MixtureSource`), and each
sample's task id then comes from its source name (then the synthetic tasks inside).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections as mlc

from vlm_jax.data import sources as sources_lib
from vlm_jax.data.pipeline import Pipeline, PipelineConfig, default_task_names
from vlm_jax.data.synthetic import SyntheticSource, SyntheticWorld
from vlm_jax.data.synthetic import load_tokenizer as synthetic_tokenizer
from vlm_jax.data.tokenizer import Tokenizer, load_tokenizer

SOURCE_KINDS = ("synthetic", "qwen_jsonl", "messages_jsonl", "array_record")
_SOURCE_KEYS = {
    "synthetic": {"kind", "weight", "world", "split", "length"},
    "qwen_jsonl": {"kind", "weight", "path", "data_root"},
    "messages_jsonl": {"kind", "weight", "path", "data_root"},
    "array_record": {"kind", "weight", "path"},
}


def _plain(x: Any) -> Any:
    return x.to_dict() if hasattr(x, "to_dict") else x


def make_tokenizer(data_config: mlc.ConfigDict) -> Tokenizer:
    """The configured tokenizer (`data.tokenizer` path), or the synthetic world's."""
    path = data_config.get("tokenizer", "")
    return load_tokenizer(path) if path else Tokenizer(synthetic_tokenizer(), "synthetic world")


def make_source(name: str, spec: Mapping[str, Any]) -> Any:
    """One random-access source from its config entry; unknown kinds / keys fail naming them."""
    spec = dict(_plain(spec))
    kind = spec.get("kind")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"data.sources.{name}.kind={kind!r}; expected one of {SOURCE_KINDS}")
    unknown = sorted(set(spec) - _SOURCE_KEYS[kind])
    if unknown:
        raise ValueError(f"data.sources.{name}: unknown key(s) {unknown} for kind {kind!r} "
                         f"(valid: {sorted(_SOURCE_KEYS[kind])})")
    if kind == "synthetic":
        world = SyntheticWorld(spec.get("world") or None)
        return SyntheticSource(world, spec.get("split", "train"), length=spec.get("length"))
    if not spec.get("path"):
        raise ValueError(f"data.sources.{name}.path is required for kind {kind!r}")
    if kind == "qwen_jsonl":
        return sources_lib.QwenJsonlSource(spec["path"], data_root=spec.get("data_root"), name=name)
    if kind == "messages_jsonl":
        return sources_lib.MessagesJsonlSource(spec["path"], data_root=spec.get("data_root"), name=name)
    return sources_lib.ArrayRecordSource(spec["path"], name=name)


def make_sources(data_config: mlc.ConfigDict) -> tuple[Any, dict[str, float] | None]:
    """(source or {name: source}, weights or None) from `data.sources`."""
    specs = _plain(data_config.sources)
    if not specs:
        raise ValueError("data.sources is empty: nothing to train on")
    built = {name: make_source(name, spec) for name, spec in specs.items()}
    if len(built) == 1:
        return next(iter(built.values())), None
    return built, {name: float(spec.get("weight", 1.0)) for name, spec in specs.items()}


def pipeline_config(data_config: mlc.ConfigDict, seed: int, weights: Mapping[str, float] | None) -> PipelineConfig:
    cfg = dict(_plain(data_config.pipeline))
    cfg.setdefault("seed", seed)
    if weights is not None:
        cfg["weights"] = dict(weights)
    return PipelineConfig.from_dict(cfg)


def make_pipeline(data_config: mlc.ConfigDict, seed: int = 0) -> tuple[Pipeline, Tokenizer, tuple[str, ...]]:
    """(pipeline, tokenizer, task names): task id k > 0 of a batch row is `task_names[k - 1]`."""
    tokenizer = make_tokenizer(data_config)
    source, weights = make_sources(data_config)
    pc = pipeline_config(data_config, seed, weights)
    pipe = Pipeline(source, tokenizer, pc)
    if pc.task_names is not None:
        names = pc.task_names
    else:
        names = default_task_names(sources_lib.MixtureSource(source, weights) if weights else source)
    return pipe, tokenizer, tuple(names)

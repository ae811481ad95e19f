"""Training data from an experiment config: named sources -> a Grain `Pipeline` of packed batches.

`config.data` (see `vlm_jax/configs/synthetic_tiny.py`):

    data.tokenizer = ""                    # tokenizer.json path; "" = the synthetic world's tokenizer
    data.sources = {name: {kind, weight, ...}, ...}
    data.pipeline = {...}                  # `vlm_jax.data.pipeline` keys (seq_len, batch_size, max_patches, ...)
    data.curriculum = ({steps, world}, ...)  # stages before the main data: `world` overrides, `steps` each

Source kinds: "synthetic" (`world`: `SyntheticWorld` config overrides, `split`, `length`),
"qwen_jsonl" / "messages_jsonl" (`path`: `.json` arrays or `.jsonl` files, a glob or list; `data_root`,
the official `data_path`; `sampling_rate` in (0, 1], or the official `name%N` suffix on the source name,
keeps that share of the records), "array_record" (`path`).
One source is used as is; several are mixed by their `weight`s (`MixtureSource`), and each
sample's task id then comes from its source name (then the synthetic tasks inside).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections as mlc

from vlm_jax.configs.validate import check_keys
from vlm_jax.data import pipeline as pipeline_lib
from vlm_jax.data import sources as sources_lib
from vlm_jax.data.pipeline import Pipeline, default_task_names
from vlm_jax.data.synthetic import SyntheticSource, SyntheticWorld
from vlm_jax.data.synthetic import load_tokenizer as synthetic_tokenizer
from vlm_jax.data.synthetic.world import default_config as world_config
from vlm_jax.data.tokenizer import Tokenizer, load_tokenizer

SOURCE_KINDS = ("synthetic", "qwen_jsonl", "messages_jsonl", "array_record")
# Every key of a `data.sources` entry, by kind, with its default (`world`: `SyntheticWorld` overrides).
_SOURCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic": {"kind": "synthetic", "weight": 1.0, "world": {}, "split": "train", "length": None},
    "qwen_jsonl": {"kind": "qwen_jsonl", "weight": 1.0, "path": None, "data_root": None, "sampling_rate": 1.0},
    "messages_jsonl": {"kind": "messages_jsonl", "weight": 1.0, "path": None, "data_root": None,
                       "sampling_rate": 1.0},
    "array_record": {"kind": "array_record", "weight": 1.0, "path": None},
}


def _plain(x: Any) -> Any:
    return x.to_dict() if hasattr(x, "to_dict") else x


def make_tokenizer(data_config: mlc.ConfigDict) -> Tokenizer:
    """The configured tokenizer (`data.tokenizer` path), or the synthetic world's."""
    path = data_config.get("tokenizer", "")
    return load_tokenizer(path) if path else Tokenizer(synthetic_tokenizer(), "synthetic world")


def make_source(name: str, spec: Mapping[str, Any]) -> Any:
    """One random-access source from its config entry; unknown kinds / keys fail naming them. A JSON source
    named `name%N` keeps N percent of its records (the official dataset naming)."""
    spec = source_config(name, spec)
    kind = spec["kind"]
    full_name, (name, rate) = name, sources_lib.parse_dataset_name(name)
    if rate != 1.0 and kind not in ("qwen_jsonl", "messages_jsonl"):
        raise ValueError(f"data.sources.{full_name}: a sampling percentage needs a JSON source, not kind {kind!r}")
    if kind == "synthetic":
        return SyntheticSource(SyntheticWorld(spec["world"] or None), spec["split"], length=spec["length"])
    if not spec["path"]:
        raise ValueError(f"data.sources.{name}.path is required for kind {kind!r}")
    if kind in ("qwen_jsonl", "messages_jsonl"):
        if rate != 1.0 and spec["sampling_rate"] != 1.0:
            raise ValueError(f"data.sources.{name}: give the sampling rate as a name%N suffix or sampling_rate, "
                             "not both")
        cls = sources_lib.QwenJsonlSource if kind == "qwen_jsonl" else sources_lib.MessagesJsonlSource
        return cls(spec["path"], data_root=spec["data_root"], name=name, sampling_rate=rate * spec["sampling_rate"])
    return sources_lib.ArrayRecordSource(spec["path"], name=name)


def source_config(name: str, spec: Mapping[str, Any] | mlc.ConfigDict) -> dict[str, Any]:
    """The `data.sources.<name>` entry with its kind's defaults; an unknown kind or key fails naming it."""
    spec = dict(_plain(spec))
    kind = spec.get("kind")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"data.sources.{name}.kind={kind!r}; expected one of {SOURCE_KINDS}")
    defaults = _SOURCE_DEFAULTS[kind]
    check_keys(spec, defaults, f"data.sources.{name}", partial=True, free=("world",))
    if kind == "synthetic":
        world_free = ("tasks", "eval_splits")  # named by the user; `SyntheticWorld` checks them
        check_keys(spec.get("world") or {}, world_config(), f"data.sources.{name}.world", partial=True, free=world_free)
    return {**defaults, **spec}


def make_sources(data_config: mlc.ConfigDict) -> tuple[Any, dict[str, float] | None]:
    """(source or {name: source}, weights or None) from `data.sources`."""
    specs = _plain(data_config.sources)
    if not specs:
        raise ValueError("data.sources is empty: nothing to train on")
    built, weights = {}, {}
    for full_name, spec in specs.items():
        name = sources_lib.parse_dataset_name(full_name)[0]
        if name in built:
            raise ValueError(f"data.sources names {name!r} twice")
        built[name] = make_source(full_name, spec)
        weights[name] = float(source_config(full_name, spec)["weight"])
    if len(built) == 1:
        return next(iter(built.values())), None
    return built, weights


def pipeline_config(data_config: mlc.ConfigDict, seed: int,
                    weights: Mapping[str, float] | None) -> pipeline_lib.PipelineConfig:
    """The validated pipeline config of `data.pipeline`: its seed None = `seed` (the train seed), mixture
    weights from the sources."""
    cfg = dict(_plain(data_config.pipeline))
    check_keys(cfg, pipeline_lib.base_config(), "data.pipeline", partial=True)
    if cfg.get("seed") is None:
        cfg["seed"] = seed
    if weights is not None:
        cfg["weights"] = dict(weights)
    return pipeline_lib.get_config(cfg)


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


def curriculum_stages(data_config: mlc.ConfigDict) -> tuple[Mapping[str, Any], ...]:
    """The checked `data.curriculum` stages: each a mapping with `steps` > 0 and `world`, the keys of a
    `SyntheticWorld` to merge over every synthetic source's world. Stages may outlast a run (a run stopped
    early with a smaller num_train_steps, then resumed, reads the same streams)."""
    stages = tuple(data_config.get("curriculum") or ())
    if stages and not any(s.get("kind") == "synthetic" for s in data_config.sources.values()):
        raise ValueError("config.data.curriculum needs a synthetic source: its stages override the synthetic world")
    for i, stage in enumerate(stages):
        where = f"config.data.curriculum[{i}]"
        if not isinstance(stage, Mapping):
            raise ValueError(f"{where} must be a mapping {{steps, world}}, got {type(stage).__name__}")
        unknown = sorted(set(stage) - {"steps", "world"})
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; expected steps, world")
        steps = stage.get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"{where}.steps={steps!r} must be an integer >= 1")
        for spec in data_config.sources.values():
            if spec.get("kind") == "synthetic":  # unknown world keys fail here
                SyntheticWorld(**{**dict(spec.get("world") or {}), **dict(stage.get("world") or {})})
    return stages


def curriculum_data_configs(data_config: mlc.ConfigDict, task_names: tuple[str, ...]
                            ) -> list[tuple[int, mlc.ConfigDict]]:
    """(steps, data config) of each curriculum stage: each synthetic world with the stage's `world` merged
    over it, and the main data's task names, so a task keeps its id across stages."""
    out = []
    for stage in curriculum_stages(data_config):
        d = mlc.ConfigDict(data_config.to_dict())
        d.curriculum = ()
        for spec in d.sources.values():
            if spec.get("kind") == "synthetic":
                spec.world = {**dict(spec.get("world") or {}), **dict(stage.get("world") or {})}
        d.pipeline.task_names = tuple(task_names)
        out.append((int(stage["steps"]), d))
    return out


def first_batches(data_config: mlc.ConfigDict, num_samples: int, seed: int) -> list[dict[str, Any]]:
    """One unshuffled pass over the first `num_samples` samples of the (single synthetic) training
    source, packed as in training: a fixed probe set."""
    d = mlc.ConfigDict(data_config.to_dict())
    d.sources.synthetic.length = num_samples
    d.pipeline.shuffle = False
    d.pipeline.num_epochs = 1
    pipe, _, _ = make_pipeline(d, seed=seed)
    return list(iter(pipe))

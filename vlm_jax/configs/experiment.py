"""Experiment config: one ConfigDict with everything a run reads (model, train, data, eval, log).

Experiment files (`vlm_jax/configs/synthetic_tiny.py`, `vlm_jax/configs/recipe/*.py`) build on
`base_config(size)` and change values; every key exists here, so a typo fails early:

    python -m vlm_jax.train --config=vlm_jax/configs/synthetic_tiny.py \\
        --config.train.num_train_steps=200 --config.model.deepstack=False --workdir=/tmp/run

    model      the full model config (`vlm_jax.configs.model`), so any model key is an ablation flag
    train      `vlm_jax.configs.train_base` (optimizer, loss, guard, parallel, checkpoint)
    data       tokenizer, sources {name: {kind, weight, ...}}, pipeline (`PipelineConfig` fields)
    eval       held-out evaluation after training (tasks, split, items per task, decoding)
    log        every_steps, tensorboard, progress bar, per-task losses, peak FLOP/s for MFU
    init_from  params of a previous stage (its workdir or `final/` dir); "" = random init
    stage      a name for the run (recipe stage), shown in the summary
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections as mlc

from vlm_jax.configs import model as model_configs
from vlm_jax.configs import train_base

TOP_KEYS = ("stage", "description", "model", "train", "data", "eval", "log", "init_from")
EVAL_KEYS = ("tasks", "split", "num_per_task", "batch_size", "max_new_tokens", "num_visualizations")
LOG_KEYS = ("every_steps", "tensorboard", "progress", "per_task_loss", "peak_flops_per_device")
DATA_KEYS = ("tokenizer", "sources", "pipeline")


def base_config(size: str = "tiny") -> mlc.ConfigDict:
    """Defaults: the `size` model, base train config, the default synthetic world, eval after training."""
    c = mlc.ConfigDict()
    c.stage = "main"
    c.description = ""
    c.model = mlc.ConfigDict(model_configs.get_config(size).to_dict())
    c.train = train_base.base_config()
    c.init_from = ""

    d = c.data = mlc.ConfigDict()
    d.tokenizer = ""
    d.sources = mlc.ConfigDict({"synthetic": {"kind": "synthetic", "split": "train", "length": 10**7, "weight": 1.0,
                                              "world": {}}})
    d.pipeline = mlc.ConfigDict({"seq_len": 1024, "batch_size": 8, "max_patches": 2048, "max_grids": 64,
                                 "loss_normalization": "token", "thinking": "standard",
                                 "processor": {"min_pixels": 32 * 32, "max_pixels": 256 * 256}})

    e = c.eval = mlc.ConfigDict()
    e.tasks = ("counting", "grounding")
    e.split = "eval"
    e.num_per_task = 200
    e.batch_size = 16
    e.max_new_tokens = 48
    e.num_visualizations = 16

    lg = c.log = mlc.ConfigDict()
    lg.every_steps = 25
    lg.tensorboard = True
    lg.progress = True
    lg.per_task_loss = True
    lg.peak_flops_per_device = 0.0  # 0 = from the device kind (CPUs: a measured matmul)
    return c


def validate(c: mlc.ConfigDict) -> None:
    """Unknown or missing keys fail naming them; model and train configs are validated in full."""
    _exact(c, TOP_KEYS, "config")
    _exact(c.eval, EVAL_KEYS, "config.eval")
    _exact(c.log, LOG_KEYS, "config.log")
    _exact(c.data, DATA_KEYS, "config.data")
    model_config(c)
    train_config(c)
    if c.log.every_steps < 1:
        raise ValueError(f"config.log.every_steps={c.log.every_steps} must be >= 1")
    if c.eval.tasks:
        from vlm_jax.eval import tasks as eval_tasks

        eval_tasks.check_task_names(list(c.eval.tasks))


def _exact(c: mlc.ConfigDict, keys: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(c.keys()) - set(keys))
    missing = sorted(set(keys) - set(c.keys()))
    if unknown or missing:
        raise ValueError(f"{where}: unknown key(s) {unknown}, missing key(s) {missing}")


def model_config(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """The validated, locked model config of the experiment."""
    return _section(c.model, model_configs.base_config(), model_configs.validate, "config.model")


def train_config(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """The validated, locked train config of the experiment."""
    return _section(c.train, train_base.base_config(), train_base.validate, "config.train")


def _section(values: mlc.ConfigDict, base: mlc.ConfigDict, validate_fn, where: str) -> mlc.ConfigDict:
    """`base` updated with `values` (every key must exist in `base`), validated and locked."""
    _check_known(values, base, where)
    base.update(_plain(values))
    validate_fn(base)
    base.lock()
    return base


def with_overrides(train: mlc.ConfigDict, overrides: Mapping[str, Any]) -> mlc.ConfigDict:
    """A copy of a locked train config with dotted-key overrides (unknown keys fail)."""
    t = mlc.ConfigDict(train.to_dict())
    for key, value in overrides.items():
        train_base.set_dotted(t, key, value)
    train_base.validate(t)
    t.lock()
    return t


def eval_world_config(c: mlc.ConfigDict) -> dict[str, Any]:
    """World overrides of the first synthetic training source (held-out items come from the same world)."""
    for spec in _plain(c.data.sources).values():
        if spec.get("kind") == "synthetic":
            return dict(spec.get("world") or {})
    return {}


def processor_config(c: mlc.ConfigDict) -> dict[str, Any] | None:
    """The pipeline's image/video processor settings, for evaluation prompts."""
    return _plain(c.data.pipeline).get("processor")


def _check_known(c: mlc.ConfigDict, ref: mlc.ConfigDict, where: str) -> None:
    for k in c.keys():
        if k not in ref:
            raise ValueError(f"unknown key {where}.{k}")
        if isinstance(ref[k], mlc.ConfigDict):
            if not isinstance(c[k], (mlc.ConfigDict, Mapping)):
                raise ValueError(f"{where}.{k} must be a mapping")
            _check_known(c[k], ref[k], f"{where}.{k}")


def _plain(x: Any) -> Any:
    return x.to_dict() if hasattr(x, "to_dict") else x

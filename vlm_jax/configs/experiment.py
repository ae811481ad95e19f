"""Experiment config: one ConfigDict with everything a run reads (model, train, data, eval, log).

Experiment files (`vlm_jax/configs/synthetic_tiny.py`, `vlm_jax/configs/recipe/*.py`) build on
`base_config(size)` and change values; every key exists here, so a typo fails early:

    python -m vlm_jax.train --config=vlm_jax/configs/synthetic_tiny.py \\
        --config.train.num_train_steps=200 --config.model.deepstack=False --workdir=/tmp/run

    model      the full model config (`vlm_jax.configs.model`), so any model key is an ablation flag
    train      `vlm_jax.configs.train_base` (optimizer, loss, guard, parallel, checkpoint)
    data       tokenizer, sources {name: {kind, weight, ...}}, pipeline (every key of
               `vlm_jax.data.pipeline.base_config`; its seed None = train.seed)
    eval       held-out evaluation after training (tasks, split, items per task (0: the whole split),
               decoding, the vision-off control)
    log        every_steps, tensorboard, progress bar, per-task losses, peak FLOP/s for MFU
    init_from  params of a previous stage (its workdir or `final/` dir); "" = random init
    stage      a name for the run (recipe stage), shown in the summary
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections as mlc
from ml_collections.config_dict import placeholder

from vlm_jax.configs import model as model_configs
from vlm_jax.configs import train_base
from vlm_jax.configs.validate import check_keys, merge, unflatten
from vlm_jax.data import pipeline as pipeline_lib
from vlm_jax.data import processor as processor_lib

# Checked by their own validators, on top of their bases: they may hold a subset of their keys. The
# sources are named by the user (each checked against its kind's keys).
_SECTIONS = ("model", "train", "data.pipeline", "data.sources")
# Model keys the data pipeline reads through its processor config (prompt layout and MRoPE temporal ids) ...
VIDEO_TIME_KEYS = ("video_time_encoding", "video_tokens_per_second")
# ... and the connector's (placeholders per image and their MRoPE grid, `processor.llm_grids`).
MERGER_KEYS = processor_lib.MERGER_KEYS
LINKED_MODEL_KEYS = VIDEO_TIME_KEYS + MERGER_KEYS


def linked_key_mismatch(processor: Mapping[str, Any], model: Mapping[str, Any], processor_name: str,
                        model_name: str) -> str | None:
    """The message for the first of `LINKED_MODEL_KEYS` whose processor value differs from the model's
    (named `<processor_name>.<key>` and `<model_name>.<key>`), or None when all agree."""
    for key in LINKED_MODEL_KEYS:
        if processor[key] != model[key]:
            return (f"{processor_name}.{key}={processor[key]!r} differs from {model_name}.{key}={model[key]!r}: "
                    f"the pipeline would build prompts and positions the model is not configured for; set "
                    f"{model_name}.{key} (base_config ties the processor's to it)")
    return None


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
    p = d.pipeline = pipeline_lib.base_config()
    p.update(seq_len=1024, batch_size=8, max_patches=2048, max_grids=64)
    p.seed = placeholder(int)  # None: train.seed
    p.processor.update(min_pixels=32 * 32, max_pixels=256 * 256)
    # The data side's view of the model's video time encoding and merger: references to the model's keys, so
    # setting e.g. `model.video_time_encoding` or `model.merger` sets both; `validate` checks they agree.
    for key in LINKED_MODEL_KEYS:
        p.processor[key] = c.model.get_ref(key)
    # Curriculum: stages ({"steps": N, "world": {...}}, ...) read in order before the main data; during a
    # stage every synthetic source's world is the stage's `world` merged over its own (same batch shapes,
    # task ids and seed). () = off.
    d.curriculum = ()

    e = c.eval = mlc.ConfigDict()
    e.tasks = ("counting", "grounding")
    e.split = "eval"
    e.num_per_task = 0  # 0: the whole held-out split (a capped subset skews scores and baselines)
    e.batch_size = 16
    e.max_new_tokens = 48
    e.num_visualizations = 16
    e.vision_off_control = False  # also score with each item's image swapped for another item's

    lg = c.log = mlc.ConfigDict()
    lg.every_steps = 25
    lg.tensorboard = True
    lg.progress = True
    lg.per_task_loss = True
    # Every N steps (0 = off): how much the answers of a fixed probe batch depend on their own images
    # (`vlm_jax.train.vision_probe`), so a collapse of the visual pathway shows when it happens.
    lg.vision_probe_every = 0
    lg.peak_flops_per_device = 0.0  # 0 = from the device kind (CPUs: a measured matmul)
    return c


def validate(c: mlc.ConfigDict) -> None:
    """Unknown or missing keys fail naming them; model, train, pipeline and source configs are validated in full."""
    check_keys(c, base_config(), "config", free=_SECTIONS)
    mc = model_config(c)
    train_config(c)
    from vlm_jax.train import data as data_lib

    mismatch = linked_key_mismatch(data_lib.pipeline_config(c.data, c.train.seed, None).processor, mc,
                                   "config.data.pipeline.processor", "config.model")
    if mismatch:
        raise ValueError(mismatch)
    for name, spec in _plain(c.data.sources).items():
        data_lib.source_config(name, spec)
    data_lib.curriculum_stages(c.data)  # checks every stage
    if c.log.every_steps < 1:
        raise ValueError(f"config.log.every_steps={c.log.every_steps} must be >= 1")
    if c.eval.tasks:
        from vlm_jax.data.synthetic import SyntheticWorld
        from vlm_jax.eval import tasks as eval_tasks

        eval_tasks.check_task_names(list(c.eval.tasks))
        splits = SyntheticWorld(eval_world_config(c)).eval_splits  # checked now, not after training
        if c.eval.split not in splits:
            raise ValueError(f"config.eval.split={c.eval.split!r}; the world's held-out splits: {', '.join(splits)}")
    if c.eval.num_per_task < 0:
        raise ValueError(f"config.eval.num_per_task={c.eval.num_per_task} must be >= 0 (0: the whole split)")


def model_config(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """The validated, locked model config of the experiment."""
    return _section(c.model, model_configs.base_config(), model_configs.validate, "config.model")


def train_config(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """The validated, locked train config of the experiment."""
    return _section(c.train, train_base.base_config(), train_base.validate, "config.train")


def _section(values: mlc.ConfigDict, base: mlc.ConfigDict, validate_fn, where: str) -> mlc.ConfigDict:
    """`base` updated with `values` (every key must exist in `base`), validated and locked."""
    merge(base, values, where)
    validate_fn(base)
    base.lock()
    return base


def with_overrides(train: mlc.ConfigDict, overrides: Mapping[str, Any]) -> mlc.ConfigDict:
    """A copy of a locked train config with dotted-key overrides (unknown keys fail)."""
    t = merge(mlc.ConfigDict(train.to_dict()), unflatten(overrides), "config.train")
    train_base.validate(t)
    t.lock()
    return t


def eval_world_config(c: mlc.ConfigDict) -> dict[str, Any]:
    """World overrides of the first synthetic training source (held-out items come from the same world)."""
    for spec in _plain(c.data.sources).values():
        if spec.get("kind") == "synthetic":
            return dict(spec.get("world") or {})
    return {}


def processor_config(c: mlc.ConfigDict) -> dict[str, Any]:
    """The pipeline's image/video processor settings (every key), for exported params and evaluation prompts."""
    return processor_lib.get_config(c.data.pipeline.processor).to_dict()


def _plain(x: Any) -> Any:
    return x.to_dict() if hasattr(x, "to_dict") else x

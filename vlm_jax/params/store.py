"""Params dirs: a model's weights and config on disk, outside training checkpoints.

A params dir holds `model_config.json` (the model config) and `params/` (the params tree, Orbax).
Training exports one to `<workdir>/final` (which may add `tokenizer.json` and
`processor_config.json`, see `vlm_jax.inference.loading`), `python -m vlm_jax.convert hf-to-jax`
writes one from a Hugging Face checkpoint; inference, evaluation and the next training stage
(`init_from`) read them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ml_collections as mlc

from vlm_jax.configs import model as model_configs

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_SUBDIR = "params"


def save_params(params: dict, config: mlc.ConfigDict, out: str | os.PathLike) -> Path:
    """Writes `model_config.json` and the params (Orbax) into `out`; returns its absolute path."""
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / PARAMS_SUBDIR, params, force=True)
    (out / MODEL_CONFIG_FILE).write_text(config.to_json(indent=1))
    return out


def load_config(params_dir: str | os.PathLike) -> mlc.ConfigDict:
    """The validated model config of a params dir."""
    raw = json.loads((Path(params_dir) / MODEL_CONFIG_FILE).read_text())
    c = model_configs.base_config()
    c.update(_tuples(raw))  # JSON has lists where the config has tuples
    model_configs.validate(c)
    return c


def load_params(params_dir: str | os.PathLike, config: mlc.ConfigDict | None = None) -> tuple[mlc.ConfigDict, dict]:
    """(model config, params) of a params dir, restored with the shapes `config` (default: its own) builds."""
    import flax.linen as nn
    import orbax.checkpoint as ocp

    from vlm_jax.model.vlm import param_shapes

    config = config or load_config(params_dir)
    target = nn.unbox(param_shapes(config))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(Path(params_dir).absolute() / PARAMS_SUBDIR, target)
    return config, params


def resolve_params_dir(path: str | os.PathLike) -> Path:
    """`path` if it holds `model_config.json`, else `path/final`; FileNotFoundError naming both otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    for d in (path, path / "final"):
        if (d / MODEL_CONFIG_FILE).is_file():
            if not (d / PARAMS_SUBDIR).is_dir():
                raise FileNotFoundError(f"checkpoint {d} has {MODEL_CONFIG_FILE} but no {PARAMS_SUBDIR}/ directory")
            return d
    raise FileNotFoundError(f"no {MODEL_CONFIG_FILE} in {path} or {path / 'final'} (expected a params dir written "
                            "by save_params, or a training workdir with final/)")


def _tuples(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(x)
    return x

"""Loading a model for inference: (model config, params, tokenizer) from a params dir or a training workdir.

A params dir is what `vlm_jax.params.store.save_params` writes (`model_config.json` + `params/`),
optionally with `tokenizer.json` (without one: the synthetic world's tokenizer) and
`processor_config.json` (the `ProcessorConfig` fields the model was trained with). A training
workdir holds one at `<workdir>/final`. A Hugging Face Qwen3-VL checkpoint dir (`config.json` +
safetensors, as released or as `python -m vlm_jax.convert jax-to-hf` writes it) loads too, converted
on the fly (`vlm_jax.convert.hf`), with the `tokenizer.json` it ships.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections as mlc

from vlm_jax.data import processor as proc
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.data.tokenizer import load_tokenizer as load_tokenizer_file
from vlm_jax.inference.prompt import as_processor_config
from vlm_jax.params.store import MODEL_CONFIG_FILE, load_params, resolve_params_dir

TOKENIZER_FILE = "tokenizer.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"


def load_tokenizer_for(params_dir: str | os.PathLike) -> Tokenizer:
    """The dir's `tokenizer.json`, or the synthetic world's tokenizer when there is none."""
    path = Path(params_dir) / TOKENIZER_FILE
    if path.is_file():
        return load_tokenizer_file(path)
    from vlm_jax.data.synthetic import load_tokenizer as synthetic_tokenizer

    return Tokenizer(synthetic_tokenizer(), source="synthetic world")


def check_compatible(config: mlc.ConfigDict, tokenizer: Tokenizer) -> None:
    """ValueError when the tokenizer's vision ids are not the model's (prompts would be misread)."""
    pairs = (("image_token_id", tokenizer.image_pad_id), ("video_token_id", tokenizer.video_pad_id),
             ("vision_start_token_id", tokenizer.vision_start_id), ("vision_end_token_id", tokenizer.vision_end_id))
    bad = [f"{k}={config[k]} but the tokenizer has {v}" for k, v in pairs if int(config[k]) != v]
    if bad:
        raise ValueError(f"tokenizer {tokenizer.source} does not match the model config: " + "; ".join(bad))
    if tokenizer.vocab_size > config.text.vocab_size:
        raise ValueError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} ids but the model's vocabulary "
                         f"has {config.text.vocab_size}")


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a Hugging Face checkpoint dir: config.json and safetensors, no model_config.json."""
    path = Path(path)
    return ((path / "config.json").is_file() and not (path / MODEL_CONFIG_FILE).is_file()
            and any(path.glob("*.safetensors")))


def load_model(path: str | os.PathLike) -> tuple[mlc.ConfigDict, dict, Tokenizer]:
    """(model config, params, tokenizer) of a params dir, a training workdir or a Hugging Face checkpoint
    dir (see the module docstring)."""
    hf_dir = is_hf_checkpoint(path)
    params_dir = Path(path) if hf_dir else resolve_params_dir(path)
    tokenizer = load_tokenizer_for(params_dir)
    if hf_dir:
        from vlm_jax.convert import hf

        config, params = hf.load_hf_checkpoint(params_dir)
    else:
        config, params = load_params(params_dir)
    check_compatible(config, tokenizer)
    return config, params, tokenizer


def _params_dir(path: str | os.PathLike) -> Path:
    return Path(path) if is_hf_checkpoint(path) else resolve_params_dir(path)


def _read_processor_settings(path: str | os.PathLike) -> dict[str, Any] | None:
    """The keys of the dir's `processor_config.json` as written, or None when it has none."""
    f = _params_dir(path) / PROCESSOR_CONFIG_FILE
    if not f.is_file():
        return None
    try:
        settings = json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"cannot read {f}: {e}") from e
    if not isinstance(settings, dict):
        raise ValueError(f"cannot read {f}: expected a JSON object of processor settings")
    return settings


def load_processor_config(path: str | os.PathLike) -> proc.ProcessorConfig | None:
    """The `processor_config.json` of a params dir (or workdir), or None when it has none. Keys it lacks
    (e.g. `merger` in exports from before it was saved) take the processor defaults."""
    settings = _read_processor_settings(path)
    if settings is None:
        return None
    try:
        return as_processor_config(settings)
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot read {_params_dir(path) / PROCESSOR_CONFIG_FILE}: {e}") from e


def _model_merger_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint model's values of the processor's `MERGER_KEYS`; none for a Hugging Face checkpoint
    (Qwen3-VL: the MLP merger, the processor's default)."""
    if is_hf_checkpoint(path):
        return {}
    from vlm_jax.params.store import load_config

    config = load_config(resolve_params_dir(path))
    return {key: config[key] for key in proc.MERGER_KEYS}


def _with_model_merger(settings: Mapping[str, Any] | None, model: Mapping[str, Any]) -> dict[str, Any] | None:
    """`settings` (processor keys, or None: the defaults) with the model's merger keys (`model`) where they
    do not give them: the model decides how many placeholders an image gets. ValueError naming the key when
    `settings` contradict the model. None when `settings` is None and the model's keys are the defaults."""
    given = dict(settings or {})
    for key, value in model.items():
        if key in given and given[key] != value:
            raise ValueError(f"processor settings {key}={given[key]!r} differ from the model's {key}={value!r}: "
                             "the prompts would not have the model's visual token count")
    defaults = proc.base_config()
    if settings is None and all(defaults[key] == value for key, value in model.items()):
        return None
    return {**given, **{key: value for key, value in model.items() if key not in given}}


def processor_config_for(path: str | os.PathLike,
                         override: Mapping[str, Any] | None = None) -> proc.ProcessorConfig | None:
    """The processor settings for a checkpoint: `override` (`ProcessorConfig` fields, e.g. given on a
    command line), else its `processor_config.json`, else None (the defaults) with a warning on stderr:
    other image sizes than in training change the visual tokens the model sees. The model's `merger` and
    `resampler_num_queries` fill in where the settings lack them (older exports, hand-written settings);
    settings that contradict them fail."""
    if override is not None:
        settings = override.to_dict() if hasattr(override, "to_dict") else dict(override)
    else:
        settings = _read_processor_settings(path)
        if settings is None:
            print(f"warning: no {PROCESSOR_CONFIG_FILE} in the checkpoint and no processor settings given: using "
                  "the processor defaults; pass the settings the model was trained with", file=sys.stderr)
    merged = _with_model_merger(settings, _model_merger_settings(path))
    if merged is None:
        return None
    try:
        return as_processor_config(merged)
    except (ValueError, TypeError) as e:
        if override is not None:
            raise
        raise ValueError(f"cannot read {_params_dir(path) / PROCESSOR_CONFIG_FILE}: {e}") from e

"""Loading a model for inference: (model config, params, tokenizer) from a params dir or a training workdir.

A params dir is what `vlm_jax.params.store.save_params` writes (`model_config.json` + `params/`),
optionally with `tokenizer.json` (without one: the synthetic world's tokenizer) and
`processor_config.json` (the `ProcessorConfig` fields the model was trained with). A training
workdir holds one at `<workdir>/final`.
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
from vlm_jax.params.store import load_params, resolve_params_dir

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


def load_model(path: str | os.PathLike) -> tuple[mlc.ConfigDict, dict, Tokenizer]:
    """(model config, params, tokenizer) of a params dir or a training workdir (see the module docstring)."""
    params_dir = resolve_params_dir(path)
    tokenizer = load_tokenizer_for(params_dir)
    config, params = load_params(params_dir)
    check_compatible(config, tokenizer)
    return config, params, tokenizer


def load_processor_config(path: str | os.PathLike) -> proc.ProcessorConfig | None:
    """The `processor_config.json` of a params dir (or workdir), or None when it has none."""
    f = resolve_params_dir(path) / PROCESSOR_CONFIG_FILE
    if not f.is_file():
        return None
    try:
        return as_processor_config(json.loads(f.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot read {f}: {e}") from e


def processor_config_for(path: str | os.PathLike,
                         override: Mapping[str, Any] | None = None) -> proc.ProcessorConfig | None:
    """The processor settings for a checkpoint: `override` (`ProcessorConfig` fields, e.g. given on a
    command line), else its `processor_config.json`, else None (the defaults) with a warning on stderr:
    other image sizes than in training change the visual tokens the model sees."""
    if override is not None:
        return as_processor_config(override)
    found = load_processor_config(path)
    if found is None:
        print(f"warning: no {PROCESSOR_CONFIG_FILE} in the checkpoint and no processor settings given: using the "
              "processor defaults; pass the settings the model was trained with", file=sys.stderr)
    return found

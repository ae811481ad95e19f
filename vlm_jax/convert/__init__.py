"""Hugging Face safetensors <-> vlm_jax params, both directions, streaming tensor by tensor."""

from vlm_jax.convert.hf import (  # noqa: F401
    config_from_hf,
    hf_config_from,
    hf_tensors_from_params,
    load_hf_checkpoint,
    params_from_hf_tensors,
    save_hf_checkpoint,
)

"""vlm_jax: Qwen3-VL vision-language models in JAX/Flax."""

from vlm_jax import runtime as _runtime

__version__ = "0.1.0"

# Before anything creates JAX's CPU client: see vlm_jax/runtime.py (VLM_JAX_CPU_TUNING=0 skips it).
_runtime.configure_cpu()

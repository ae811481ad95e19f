"""Inference: KV cache, prefill/decode, sampling presets, thinking-mode helpers, weight formats (`quantize`).

The entry point is `vlm_jax.inference.generate.generate` (not re-exported here, so that
`vlm_jax.inference.generate` stays the module and `import ... as` works on it).
"""

from vlm_jax.inference.kv_cache import bucket_length, init_cache
from vlm_jax.inference.quantize import WEIGHTS, prepare_weights
from vlm_jax.inference.sampling import PRESETS, SamplingConfig, get_preset, sample
from vlm_jax.inference.thinking import ThinkingBudget, answer_text, split_thinking

__all__ = [
    "PRESETS", "WEIGHTS", "SamplingConfig", "ThinkingBudget", "answer_text", "bucket_length", "get_preset",
    "init_cache", "prepare_weights", "sample", "split_thinking",
]

"""Fixed-size KV cache and the length buckets that keep the number of compilations small.

The cache is the pytree `Qwen3VL.__call__` reads and returns:
`{"k", "v": [L, B, S_max, K, head_dim], "segment_ids": [B, S_max]}`. A block of S tokens is
written at `[cache_index, cache_index + S)`; slots never written keep segment id 0 and are
masked out of attention, as are left-padding slots of the prompt.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections as mlc

from vlm_jax.model import layers

# Prompt lengths round up to a power of two (at least MIN_BUCKET) up to POW2_LIMIT, then to a
# multiple of POW2_LIMIT: at most ~log2(limit) prefill compiles for short prompts, and at most
# POW2_LIMIT - 1 wasted positions for long ones.
MIN_BUCKET = 16
POW2_LIMIT = 1024
# The decode budget (cache slots after the prompt) rounds up to a multiple of this, so runs that
# differ only a little in max_new_tokens share the compiled decode step.
DECODE_MULTIPLE = 64
# Cache slots for new tokens at the start of decoding; `generate` doubles the cache when a row
# still runs after using them. Every decode step attends over (and copies) the whole cache, so
# sizing it for a 32768-token budget up front would make short answers pay for the budget.
INITIAL_DECODE_CAPACITY = 512


def bucket_length(n: int, *, min_bucket: int = MIN_BUCKET, pow2_limit: int = POW2_LIMIT) -> int:
    """The padded length for a prompt of `n` tokens (see module constants)."""
    if n < 1:
        raise ValueError(f"prompt length must be >= 1, got {n}")
    if n <= pow2_limit:
        return max(min_bucket, 1 << (n - 1).bit_length())
    return -(-n // pow2_limit) * pow2_limit


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bucket_count(n: int, *, minimum: int = 1) -> int:
    """Static-shape size for a count of patches / grid rows: the next power of two (>= minimum)."""
    n = max(n, minimum)
    return 1 << (n - 1).bit_length()


def init_cache(config: mlc.ConfigDict, batch: int, max_len: int, dtype: str | None = None) -> dict:
    """An empty cache for `batch` rows of `max_len` slots, in the compute dtype unless given."""
    t = config.text
    dt = layers.dtype_of(dtype or config.dtype)
    shape = (t.num_layers, batch, max_len, t.num_kv_heads, t.head_dim)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt),
            "segment_ids": jnp.zeros((batch, max_len), jnp.int32)}


def cache_bytes(config: mlc.ConfigDict, batch: int, max_len: int, dtype: str | None = None) -> int:
    """Memory of `init_cache(config, batch, max_len)`, for planning batch sizes."""
    t = config.text
    item = jnp.dtype(layers.dtype_of(dtype or config.dtype)).itemsize
    return 2 * t.num_layers * batch * max_len * t.num_kv_heads * t.head_dim * item + 4 * batch * max_len

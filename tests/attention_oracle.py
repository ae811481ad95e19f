"""Shared by the attention tests (`test_attention_impls.py`, `test_on_gpu.py`): the plain-jnp oracle,
random inputs, packed segment ids with boundaries off block edges, and a model input of two packed samples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers import LAYOUTS, build
from vlm_jax.model import rope
from vlm_jax.model.vlm import llm_grid_thw


def oracle(q, k, v, mask):
    """Plain jnp: K/V repeated to the query heads, masked float32 softmax; a query that attends to
    nothing gives zeros (the contract of the chunked and Pallas implementations)."""
    g = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    m = mask[:, None]
    p = jax.nn.softmax(jnp.where(m, logits, -1e30), axis=-1) * jnp.any(m, axis=-1, keepdims=True)
    return jnp.einsum("bhts,bshd->bthd", p, v)


def attention_inputs(b, t, s, h, kh, d, seed=0):
    r = np.random.default_rng(seed)
    shapes = ((b, t, h, d), (b, s, kh, d), (b, s, kh, d), (b, t, h, d))
    return tuple(jnp.asarray(r.normal(size=x), jnp.float32) for x in shapes)


def packed_segments(b, t):
    """Segments whose boundaries fall off every block edge (blocks are 64 / 128 here), with leading,
    inner and trailing padding (0)."""
    seg = np.ones((b, t), np.int32)
    seg[0, 37:] = 2
    seg[0, 150:] = 3
    seg[0, t - 21:] = 0
    seg[1, :9] = 0
    seg[1, 70:75] = 0
    seg[1, 75:] = 4
    return jnp.asarray(seg)


def model_inputs(c):
    ids, (grid, px), _, _ = build(np.random.default_rng(0), LAYOUTS["two_images"], c)
    ids = ids[None].astype(np.int32)
    pos, _ = rope.get_rope_index(ids, llm_grid_thw(grid, c), None, None, image_token_id=c.image_token_id,
                                 video_token_id=c.video_token_id)
    n = ids.shape[1]
    seg = np.ones((1, n), np.int32)
    seg[0, n // 2:] = 2  # two packed samples (text model), then trailing padding
    seg[0, n - 3:] = 0
    return ids, pos, jnp.asarray(seg), grid.astype(np.int32), px

"""Weight formats for generation (float32, bfloat16, weight-only int8) and their accuracy cost.

`prepare_weights(params, weights)` returns a param tree that `generate.generate` and `Qwen3VL.apply`
take as they are (prepare once, generate many times):
- "float32": the params unchanged.
- "bfloat16": every floating leaf cast to bfloat16. The model still computes in `config.dtype`
  (each layer casts its weights to it), so only storage and the bytes read per token change.
- "int8": weight-only int8. Every Dense kernel (decoder, vision tower, mergers) and the token
  embedding / LM head become an `Int8Weight`: int8 values and one float32 scale per output channel
  (symmetric, absmax / 127). The layer dequantises (int8 -> compute dtype, times the scale) in
  front of its matmul. Norm scales, biases, the vision position table, the resampler queries and
  the MoE router and experts stay as they are (the experts feed `ragged_dot`; dequantising all
  experts to use k of them would read more, not less).

The model code needs no change because `Int8Weight` answers the three ways it uses a weight:
`kernel.astype(dtype)` (layers.Dense, the LM head), `jnp.take(embed, ids, axis=0)` (through
`__jax_array__`; XLA fuses the dequantisation into the gather, so only the looked-up rows are
converted) and `embed.T` (the tied head). Flax's param shape check compares the first leaf of a
param with the initialiser's shape, so `qvalue`, of the float weight's shape, comes first.

Speed: the point is to read fewer weight bytes per decode step, which pays where the compiler fuses
the int8 -> float conversion into the matmul's operand load (XLA:GPU and TPU can; not measured here).
Left alone, XLA hoists the conversion out of the decode `while_loop`, and every step reads a float32
copy of all the weights; so off CPU, `generate` keeps it inside each step (an optimisation barrier in
`_decode_body`). XLA:CPU (jax 0.10.2) does not fuse it: it writes each dequantised kernel out in
float32 and then runs the float matmul, which made per-step conversion 2.7x slower than float32
decoding (100m config, CPU clock). So on CPU `generate` lets XLA convert once per decode loop and
decodes int8 and bfloat16 weights at float32's speed, from a float32 copy (benchmarks/quantized_decode.py;
no XLA:CPU flag tried, oneDNN or YNNPACK, made the int8 matmul faster).

`accuracy_cost` measures what a format costs against float32 on given prompts: greedy-token
agreement and teacher-forced logit errors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vlm_jax.model import rope
from vlm_jax.model.vlm import Qwen3VL, llm_grid_thw

WEIGHTS = ("float32", "bfloat16", "int8")
INT8_MAX = 127


def check_weights(weights: str, name: str = "weights") -> str:
    """`weights` when it names a format, else a ValueError naming the option (`name`) and the formats."""
    if weights not in WEIGHTS:
        raise ValueError(f"{name}={weights!r} is not a weights format; choose from {', '.join(WEIGHTS)}")
    return weights


@flax.struct.dataclass
class Int8Weight:
    """A weight stored as int8 `qvalue` (the float weight's shape) times a float32 `scale` that has
    size 1 on the contracted axis (one scale per output channel, and per layer when stacked)."""

    qvalue: jax.Array
    scale: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.qvalue.shape)

    @property
    def ndim(self) -> int:
        return self.qvalue.ndim

    def astype(self, dtype) -> jax.Array:
        """The dequantised weight in `dtype` (the model calls this in front of each matmul)."""
        return self.qvalue.astype(dtype) * self.scale.astype(dtype)

    def __jax_array__(self) -> jax.Array:
        return self.astype(jnp.float32)

    @property
    def T(self) -> Int8Weight:  # noqa: N802 (numpy's name)
        return Int8Weight(self.qvalue.T, self.scale.T)


@functools.partial(jax.jit, static_argnames="axis")
def quantize_int8(w: jax.Array, axis: int) -> Int8Weight:
    """Symmetric int8 with one scale per slice along `axis` (the contracted axis): scale = max|w| / 127,
    qvalue = round(w / scale). Each entry is then within scale / 2 of `w`; an all-zero slice gets scale 1."""
    w = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=axis, keepdims=True)
    scale = jnp.where(amax > 0, amax / INT8_MAX, 1.0)
    q = jnp.clip(jnp.round(w / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return Int8Weight(q, scale)


def _int8_axis(path: tuple[str, ...], x) -> int | None:
    """The contracted axis of the matmul that weight `path` feeds, or None to keep it as it is."""
    if path == ("embed",):
        return -1  # [V, D]: the tied head contracts D; one scale per token row serves the lookup too
    if path == ("lm_head",) or (path[-1] == "kernel" and np.ndim(x) >= 2):
        return -2  # [..., in, out] (a leading layer axis when stacked by nn.scan)
    return None


def _is_int8(x) -> bool:
    return isinstance(x, Int8Weight)


def prepare_weights(params: dict, weights: str = "float32") -> dict:
    """The params in format `weights` (see the module docstring); float32 returns them unchanged."""
    check_weights(weights)
    params = nn.unbox(params)
    if weights == "float32":
        return params
    if any(_is_int8(x) for x in jax.tree.leaves(params, is_leaf=_is_int8)):
        raise ValueError(f"the params already hold int8 weights; prepare {weights} weights from float params")
    return _convert(params, weights)


@functools.partial(jax.jit, static_argnames="weights")
def _convert(params: dict, weights: str) -> dict:
    """One program for the whole tree (one compile, not one per weight shape)."""
    if weights == "bfloat16":
        return jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    out = {}
    for path, x in flax.traverse_util.flatten_dict(params).items():
        axis = _int8_axis(path, x)
        out[path] = x if axis is None else quantize_int8(x, axis)
    return flax.traverse_util.unflatten_dict(out)


def nbytes(tree) -> int:
    """Bytes held by the arrays of `tree` (int8 values and their scales counted)."""
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def decode_weight_bytes(params: dict, config: mlc.ConfigDict) -> int:
    """Weight bytes one decode step reads at batch 1: the decoder (all layers, final norm) and the LM head
    (the embedding when tied). The embedding lookup (one row) is left out; an MoE layer's experts are
    counted whole, so for MoE this is an upper bound."""
    params = nn.unbox(params)
    head = params["embed"] if config.text.tie_word_embeddings else params["lm_head"]
    return nbytes(params["decoder"]) + nbytes(head)


# ----------------------------------------------------------------------------- accuracy cost


@functools.partial(jax.jit, static_argnames=("config", "last"))
def _forward_logits(params, ids, positions, segment_ids, pixel_values, grid_thw, *, config, last):
    return Qwen3VL(config).apply({"params": params}, ids, positions, segment_ids, pixel_values, grid_thw
                                 )["logits"][:, -last:]


def _teacher_forced_logits(config: mlc.ConfigDict, params: dict, rows: list[np.ndarray], pixel_values, grid_thw,
                           last: int) -> np.ndarray:
    """Float32 logits [B, last, V] at the last `last` positions of the (left-padded) rows, one forward pass."""
    from vlm_jax.inference.generate import left_pad, split_grids

    ids, mask = left_pad(rows, max(len(r) for r in rows), 0)
    igrid, vgrid = split_grids(rows, grid_thw, config)
    llm = lambda g: None if g is None else llm_grid_thw(g, config)
    positions, _ = rope.get_rope_index(ids, llm(igrid), llm(vgrid), mask, image_token_id=config.image_token_id,
                                       video_token_id=config.video_token_id,
                                       spatial_merge_size=config.vision.spatial_merge_size)
    px = None if pixel_values is None else jnp.asarray(pixel_values, jnp.float32)
    grid = None if grid_thw is None else jnp.asarray(grid_thw, jnp.int32)
    out = _forward_logits(params, ids, positions, mask, px, grid, config=mlc.FrozenConfigDict(config), last=last)
    return np.asarray(out, np.float32)


def accuracy_cost(config: mlc.ConfigDict, params: dict, prompts: Sequence[Sequence[int]], *,
                  pixel_values: np.ndarray | None = None, grid_thw: np.ndarray | None = None,
                  weights: Sequence[str] = ("bfloat16", "int8"), max_new_tokens: int = 16) -> dict[str, dict]:
    """What each format in `weights` costs against the float32 `params` on `prompts` (the inputs of
    `generate`), per format:
      greedy_token_agreement: the fraction of the `max_new_tokens` greedy tokens per row equal to
        float32's at the same position (free running: after a first difference the texts part);
      teacher_forced_top1_agreement: on float32's greedy sequence, the fraction of those positions
        where the format's argmax is float32's (a comparison that does not compound after a difference);
      max_abs_logit_error, mean_abs_logit_error: |logits - float32 logits| over those positions and
        the whole vocabulary, teacher forced; float32_logit_std: the float32 logits' spread there, and
        float32_top2_margin_median: the median gap between float32's two largest logits, for scale (a
        logit error near that gap flips greedy tokens).
    """
    from vlm_jax.inference.generate import generate

    for w in weights:
        check_weights(w)
    params = nn.unbox(params)
    run = lambda p: generate(config, p, prompts, pixel_values=pixel_values, grid_thw=grid_thw, preset="greedy",
                             max_new_tokens=max_new_tokens).tokens
    base_tokens = run(params)
    # Inputs that produce the logits of every generated token: the prompt and all but the last token.
    rows = [np.concatenate([np.asarray(p, np.int32).reshape(-1), t[:-1]]) for p, t in zip(prompts, base_tokens)]
    logits = lambda p: _teacher_forced_logits(config, p, rows, pixel_values, grid_thw, max_new_tokens)
    base = logits(params)
    top2 = np.sort(base, axis=-1)[..., -2:]
    scale = {"float32_logit_std": float(base.std()),
             "float32_top2_margin_median": float(np.median(top2[..., 1] - top2[..., 0]))}
    out = {}
    for w in weights:
        prepared = prepare_weights(params, w)
        got = logits(prepared)
        err = np.abs(got - base)
        out[w] = {"greedy_token_agreement": float(np.mean(run(prepared) == base_tokens)),
                  "teacher_forced_top1_agreement": float(np.mean(got.argmax(-1) == base.argmax(-1))),
                  "max_abs_logit_error": float(err.max()), "mean_abs_logit_error": float(err.mean()), **scale}
    return out

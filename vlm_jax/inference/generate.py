"""Prefill + decode with a preallocated KV cache (fixed size, doubled on demand) under `jax.jit`.

Flow of `generate`:
1. Host: left-pad the prompts to a length bucket (`kv_cache.bucket_length`), pad patches and grid
   rows to power-of-two counts, compute MRoPE positions with `get_rope_index` (padding masked).
2. `_prefill` (one compile per prompt bucket / patch bucket): runs the whole prompt (vision tower,
   DeepStack at the visual positions) into an empty cache of `S_max = bucket + capacity` slots and
   samples the first token. `capacity = min(round_up(max_new, 64), initial_capacity)`.
3. Decode, one token per step, at cache slot `cache_index = bucket + n - 1`. Every MRoPE component
   of the new token is `cache_index + rope_delta[row]` with `rope_delta = max(prompt positions) + 1 -
   bucket`: HF's `cache_position + rope_deltas` (HF's delta is relative to its own padded length; both
   give max(prompt positions) + 1 + n). Either a jitted step driven by a host loop (streaming
   callback, early exit when all rows are done) or, without a callback, one jitted `while_loop`.
   The step's shapes depend only on (batch, S_max), so it compiles once per such pair.
4. If rows still run when the capacity is used up (and max_new is not reached), the cache doubles
   (`_grow`, zero slots masked by segment id 0) and decoding continues: at most log2(max_new /
   initial_capacity) extra compiles, and each step costs O(tokens so far), not O(max_new).

Decode layer loop (`decode_layers`): "scan" runs the model as written (one `nn.scan` over stacked
layer params and a stacked cache). "unrolled" runs the same `DecoderLayer` module once per layer
from per-layer copies of the params, with one cache buffer per layer. On XLA:CPU the scan slices
(copies) every layer's weights out of the stack each step and rewrites the stacked cache, which
made decode ~1.6x slower on the 100m config; unrolled costs a second copy of the decoder weights
(made once per params, see `_layer_params`) and a compile that grows with depth. "auto" picks
unrolled on CPU only (accelerators fuse the slices; memory there is scarcer).

Rows stop on any of `stop_tokens` (the stop token is emitted, then the row emits `pad_token_id`).
The PRNG key for the token at output index n is `fold_in(key, n)`, so both decode paths produce the
same tokens.

`return_logprobs=True` also records, for every emitted token, log_softmax(logits / temperature) at
that token in float32 over the full vocabulary of the raw model logits: before penalties and
top-k/top-p/min-p truncation, i.e. the policy log-prob that RL training recomputes with a teacher-forced
forward (`target_logprobs`). It equals the log-prob of the draw only when sampling with temperature
alone (as RL does). Greedy decoding reports it at temperature 1; tokens forced by a thinking budget
get the model's log-prob of the forced token.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import weakref
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vlm_jax.inference import kv_cache
from vlm_jax.inference.sampling import SamplingConfig, get_preset, sample, token_set
from vlm_jax.inference.thinking import ThinkingBudget
from vlm_jax.model import layers, rope
from vlm_jax.model.decoder import DecoderLayer
from vlm_jax.model.vlm import Qwen3VL, check_visual_inputs, llm_grid_thw

# How many times each jitted entry point was traced (a Python side effect: it runs once per
# compilation). Tests use it to check that decoding compiles once.
TRACE_COUNTS: collections.Counter = collections.Counter()

StreamCallback = Callable[[int, np.ndarray], None]


@dataclasses.dataclass
class GenerateOutput:
    """tokens [B, max_new_tokens] int32 (pad_token_id after a row's stop token); lengths [B]: tokens
    generated per row including the stop token; finished [B]: the row hit a stop token;
    prompt_bucket: the padded prompt length that was compiled for; logprobs [B, max_new_tokens]
    float32 (with `return_logprobs`, else None): each emitted token's log-prob (module docstring),
    0 after a row's stop token."""

    tokens: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray
    prompt_bucket: int
    logprobs: np.ndarray | None = None

    def sequences(self) -> list[list[int]]:
        """Each row's generated tokens (stop token included), without the trailing padding."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]


# ----------------------------------------------------------------------------- host-side preparation


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_token_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """ids [B, length] int32 left-padded with `pad_token_id`, and the 0/1 mask of real tokens."""
    ids = np.full((len(prompts), length), pad_token_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, length - len(p):] = p
            mask[i, length - len(p):] = 1
    return ids, mask


def split_grids(prompts: Sequence[Sequence[int]], grid_thw: np.ndarray | None, config: mlc.ConfigDict
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Splits the placeholder-ordered `grid_thw` (docs/CONTRACTS.md) into image and video grids for
    `get_rope_index`: an entry whose next placeholder run is `<|image_pad|>` is an image; a video
    entry with t temporal groups spans t runs of `<|video_pad|>` (one run with
    `video_time_encoding="absolute_time"`)."""
    if grid_thw is None:
        return None, None
    grid = np.asarray(grid_thw).reshape(-1, 3)
    grid = grid[grid[:, 0] > 0]
    runs = []
    for p in prompts:
        types = rope.token_types(np.asarray(p), config.image_token_id, config.video_token_id)
        runs += [kind for kind, _ in itertools.groupby(types.tolist()) if kind != rope.TEXT]
    images, videos, r = [], [], 0
    for row in grid:
        if r >= len(runs):
            raise ValueError(f"grid_thw has {len(grid)} entries but the prompts hold only {len(runs)} "
                             "visual placeholder runs")
        if runs[r] == rope.IMAGE:
            images.append(row)
            r += 1
        else:
            videos.append(row)
            r += int(row[0]) if config.video_time_encoding == "timestamps" else 1
    if r != len(runs):
        raise ValueError(f"the prompts hold {len(runs)} visual placeholder runs but grid_thw covers {r}")
    as_arr = lambda xs: np.asarray(xs, np.int64).reshape(-1, 3) if xs else None
    return as_arr(images), as_arr(videos)


def video_time_args(config: mlc.ConfigDict, second_per_grid_ts: Sequence[float] | None, n_videos: int) -> dict:
    """`get_rope_index`'s absolute-time arguments under `config.video_time_encoding`: none with timestamps;
    with "absolute_time", the seconds per temporal group of each of the `n_videos` videos (required) and
    `config.video_tokens_per_second`."""
    if config.video_time_encoding == "timestamps" or not n_videos:
        return {}
    if second_per_grid_ts is None:
        raise ValueError("video_time_encoding='absolute_time' needs second_per_grid_ts, the seconds per temporal "
                         "group of each video (`Prompt.second_per_grid_ts`, `batch_prompts` passes it)")
    return {"second_per_grid_ts": list(second_per_grid_ts), "tokens_per_second": config.video_tokens_per_second}


def _as_prompt_list(prompts, attention_mask) -> list[np.ndarray]:
    if isinstance(prompts, np.ndarray | jax.Array) and np.ndim(prompts) == 2:
        arr = np.asarray(prompts)
        mask = np.ones(arr.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
        return [row[m].astype(np.int32) for row, m in zip(arr, mask)]
    if attention_mask is not None:
        raise ValueError("attention_mask is only meaningful with a 2D array of prompts")
    out = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    if not out or any(len(p) == 0 for p in out):
        raise ValueError("generate needs at least one prompt and no empty prompts")
    return out


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((n - x.shape[0], *x.shape[1:]), x.dtype)]) if n > x.shape[0] else x


# ----------------------------------------------------------------------------- jitted pieces


def _lm_head(params: dict, cfg: mlc.ConfigDict, h: jnp.ndarray) -> jnp.ndarray:
    """Logits [B, V] float32 of the hidden states h [B, D], as Qwen3VL computes them.

    Tied embeddings are contracted as [V, D] directly: writing `embed.T` makes XLA (CPU) materialise
    the transposed [D, V] table on every decode step, which cost more than the whole layer stack.
    """
    dt = layers.dtype_of(cfg.dtype)
    if cfg.text.tie_word_embeddings:
        return jnp.einsum("bd,vd->bv", h, params["embed"].astype(dt), preferred_element_type=jnp.float32)
    return jnp.einsum("bd,dv->bv", h, params["lm_head"].astype(dt), preferred_element_type=jnp.float32)


_LAYER_SPLITS: dict[int, tuple[weakref.ref, list]] = {}


@functools.partial(jax.jit, static_argnames=("num_layers",))
def _split_layers(stacked: dict, num_layers: int) -> list[dict]:
    # One jitted function (not a fresh jit per call): RL and on-policy distillation split new params after
    # every update, and a fresh lambda recompiled the split each time.
    TRACE_COUNTS["split_layers"] += 1
    return [jax.tree.map(lambda p, i=i: p[i], stacked) for i in range(num_layers)]


def _layer_params(params: dict, num_layers: int) -> list[dict]:
    """Per-layer copies of the stacked decoder-layer params, kept while the stacked arrays live
    (so repeated `generate` calls with the same params split them once)."""
    stacked = params["decoder"]["layers"]
    leaf = jax.tree.leaves(stacked)[0]
    hit = _LAYER_SPLITS.get(id(leaf))
    if hit is not None and hit[0]() is leaf:
        return hit[1]
    per = _split_layers(stacked, num_layers)
    _LAYER_SPLITS.clear()  # one model at a time: a second copy of the weights is enough
    _LAYER_SPLITS[id(leaf)] = (weakref.ref(leaf), per)
    weakref.finalize(leaf, _LAYER_SPLITS.pop, id(leaf), None)
    return per


def _unrolled_decoder(cfg, params, layer_params, tokens, positions, cache, cache_index):
    """`Decoder.__call__` for a text-only block (no DeepStack), as a Python loop over layers with
    per-layer params and caches (`cache["k"]`, `cache["v"]`: lists of [B, S_max, K, head_dim]).
    Returns the final-normed hidden states and the updated cache."""
    t, dt = cfg.text, layers.dtype_of(cfg.dtype)
    x = jnp.take(params["embed"], tokens, axis=0).astype(dt)
    cos, sin = rope.mrope_cos_sin(positions, t.head_dim, t.rope_theta, t.mrope_section, t.mrope_layout,
                                  t.rope_scaling)
    cos, sin = cos.astype(dt), sin.astype(dt)
    seg = jnp.ones(tokens.shape, jnp.int32)
    cache_seg = jax.lax.dynamic_update_slice(cache["segment_ids"], seg, (0, cache_index))
    layer, ks, vs = DecoderLayer(cfg), [], []
    for i, lp in enumerate(layer_params):
        x, (new, _) = layer.apply({"params": lp}, x, i, {"k": cache["k"][i], "v": cache["v"][i]}, cos, sin, seg,
                                  cache_index, cache_seg, None, None, None)
        ks.append(new["k"])
        vs.append(new["v"])
    norm = layers.RMSNorm(t.rms_norm_eps, "embed", layers.dtype_of(cfg.param_dtype))
    x = norm.apply({"params": params["decoder"]["final_norm"]}, x)
    return x, {"k": ks, "v": vs, "segment_ids": cache_seg}


def logprob_temperature(scfg: SamplingConfig) -> float:
    """The temperature of the reported log-probs: the sampling temperature, 1 when greedy."""
    return 1.0 if scfg.greedy else float(scfg.temperature)


def target_logprobs(logits: jnp.ndarray, targets: jnp.ndarray, temperature: float | jnp.ndarray = 1.0
                    ) -> jnp.ndarray:
    """log_softmax(logits / temperature) [..., V] at `targets` [...], float32 over the full vocabulary.
    Shared by the sampler and the teacher-forced recomputation so both do the same arithmetic."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _emit(state: dict, logits: jnp.ndarray, scfg: SamplingConfig, think: ThinkingBudget | None,
          stop_tokens: tuple[int, ...], pad_token_id: int) -> dict:
    """Chooses output token number `state["n"]` from `logits` [B, V] and updates the row state."""
    n, done = state["n"], state["done"]
    key = jax.random.fold_in(state["key"], n)
    tok = sample(key, logits, scfg, state.get("prompt_seen"), state.get("generated"))
    new = dict(state)
    if think is not None:
        end = jnp.asarray(think.end_tokens, jnp.int32)
        force, in_think, count = state["force_pos"], state["in_think"], state["think_count"]
        start_force = (force < 0) & in_think & (count >= think.budget)
        force = jnp.where(start_force, 0, force)
        forced = force >= 0
        tok = jnp.where(forced, end[jnp.clip(force, 0, len(end) - 1)], tok)
        count = count + (in_think & ~forced).astype(jnp.int32)
        force = jnp.where(forced, force + 1, force)
        force = jnp.where(force >= len(end), -1, force)
        in_think = jnp.where(tok == think.end_id, False, in_think)
        if think.start_id is not None:
            in_think = jnp.where(tok == think.start_id, True, in_think)
        new.update(force_pos=force, in_think=in_think, think_count=count)
    tok = jnp.where(done, pad_token_id, tok).astype(jnp.int32)
    if "logprobs" in state:  # raw logits, not the processed ones `sample` drew from (module docstring)
        lp = jnp.where(done, 0.0, target_logprobs(logits, tok, logprob_temperature(scfg)))
        new["logprobs"] = jax.lax.dynamic_update_slice(state["logprobs"], lp[:, None], (0, n))
    if "generated" in state:
        rows = jnp.arange(tok.shape[0])
        new["generated"] = state["generated"].at[rows, tok].max(~done)
    if stop_tokens:
        new["done"] = done | jnp.isin(tok, jnp.asarray(stop_tokens, jnp.int32))
    new["lengths"] = state["lengths"] + (~done).astype(jnp.int32)
    new["out"] = jax.lax.dynamic_update_slice(state["out"], tok[:, None], (0, n))
    new["last"] = tok
    new["n"] = n + 1
    return new


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "think", "stop_tokens", "pad_token_id", "capacity",
                                             "unrolled", "logprobs"))
def _prefill(params, ids, positions, segment_ids, pixel_values, grid_thw, key, in_think, max_new, *,
             cfg, scfg, think, stop_tokens, pad_token_id, capacity, unrolled, logprobs=False):
    """Runs the prompt bucket into a fresh cache with room for `capacity` new tokens and emits the
    first token; returns the decode state."""
    TRACE_COUNTS["prefill"] += 1
    b, length = ids.shape
    cache = kv_cache.init_cache(cfg, b, length + capacity)
    out = Qwen3VL(cfg).apply({"params": params}, ids, positions, segment_ids, pixel_values, grid_thw,
                             cache=cache, cache_index=0, return_hidden=True)
    # Only the last position's logits are needed; the full [B, S, V] logits are dead code under jit.
    logits = _lm_head(params, cfg, out["hidden"][:, -1])
    next_pos = jnp.max(positions, axis=(0, 2)) + 1
    cache = out["cache"]
    if unrolled:  # one buffer per layer, so decode updates each in place
        n_layers = cfg.text.num_layers
        cache = dict(cache, k=[cache["k"][i] for i in range(n_layers)], v=[cache["v"][i] for i in range(n_layers)])
    state = dict(
        cache=cache, key=key, n=jnp.zeros((), jnp.int32), max_new=max_new,
        cache_offset=jnp.asarray(length, jnp.int32), rope_delta=(next_pos - length).astype(jnp.int32),
        done=jnp.zeros((b,), bool), lengths=jnp.zeros((b,), jnp.int32), last=jnp.zeros((b,), jnp.int32),
        out=jnp.full((b, capacity), pad_token_id, jnp.int32))
    if logprobs:  # its presence in the state switches the decode steps' log-prob bookkeeping on
        state["logprobs"] = jnp.zeros((b, capacity), jnp.float32)
    if scfg.uses_prompt_tokens:
        state["prompt_seen"] = token_set(ids, cfg.text.vocab_size, segment_ids != 0)
    if scfg.uses_generated_tokens:
        state["generated"] = jnp.zeros((b, cfg.text.vocab_size), bool)
    if think is not None:
        state.update(in_think=in_think, force_pos=jnp.full((b,), -1, jnp.int32),
                     think_count=jnp.zeros((b,), jnp.int32))
    return _emit(state, logits, scfg, think, stop_tokens, pad_token_id)


def _decode_body(params, layer_params, state, cfg, scfg, think, stop_tokens, pad_token_id):
    """Feeds the last token at slot `cache_offset + n - 1` and emits the next one."""
    if jax.default_backend() != "cpu":
        # A barrier tied to the step counter keeps the conversion of int8 / bfloat16 weights (quantize.py)
        # inside the step, where the compiler can fuse it into the matmuls; otherwise XLA hoists it out
        # of the while_loop and every step reads a float copy of every weight. XLA:CPU does not fuse it
        # (it writes a float copy before each matmul), so there converting once per loop is faster.
        params, layer_params, _ = jax.lax.optimization_barrier((params, layer_params, state["n"]))
    b = state["last"].shape[0]
    cache_index = state["cache_offset"] + state["n"] - 1
    pos = jnp.broadcast_to((cache_index + state["rope_delta"])[None, :, None], (3, b, 1))
    if layer_params is not None:
        hidden, cache = _unrolled_decoder(cfg, params, layer_params, state["last"][:, None], pos, state["cache"],
                                          cache_index)
    else:
        out = Qwen3VL(cfg).apply({"params": params}, state["last"][:, None], pos, jnp.ones((b, 1), jnp.int32),
                                 cache=state["cache"], cache_index=cache_index, return_hidden=True)
        # out["logits"] is dead code under jit; see _lm_head for why the head is applied here.
        hidden, cache = out["hidden"], out["cache"]
    state = dict(state, cache=cache)
    return _emit(state, _lm_head(params, cfg, hidden[:, -1]), scfg, think, stop_tokens, pad_token_id)


_STATIC = ("cfg", "scfg", "think", "stop_tokens", "pad_token_id")


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("state",))
def _decode_step(params, layer_params, state, *, cfg, scfg, think, stop_tokens, pad_token_id):
    """One decode step (the host loop's unit); the donated state is updated in place."""
    TRACE_COUNTS["decode_step"] += 1
    return _decode_body(params, layer_params, state, cfg, scfg, think, stop_tokens, pad_token_id)


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("state",))
def _decode_loop(params, layer_params, state, *, cfg, scfg, think, stop_tokens, pad_token_id):
    """All remaining decode steps in one `while_loop` (stops early when every row is done)."""
    TRACE_COUNTS["decode_loop"] += 1
    cond = lambda s: (s["n"] < jnp.minimum(s["max_new"], s["out"].shape[1])) & ~jnp.all(s["done"])
    body = lambda s: _decode_body(params, layer_params, s, cfg, scfg, think, stop_tokens, pad_token_id)
    return jax.lax.while_loop(cond, body, state)


@functools.partial(jax.jit, static_argnames=("extra", "pad_token_id"))
def _grow(cache, out, logprobs=None, *, extra, pad_token_id):
    """Room for `extra` more tokens: zero cache slots (segment id 0, so masked), pad outputs and
    zero log-probs (None when not recorded).
    (Not donated: the grown arrays cannot reuse the old buffers; the rest of the state stays put.)"""
    TRACE_COUNTS["grow"] += 1
    pad = lambda a, axis, value=0: jnp.pad(a, [(0, extra if i == axis else 0) for i in range(a.ndim)],
                                           constant_values=value)
    # The slot axis is third from last in both layouts: [L, B, S, K, hd] or per layer [B, S, K, hd].
    kv = lambda x: jax.tree.map(lambda a: pad(a, a.ndim - 3), x)
    cache = dict(k=kv(cache["k"]), v=kv(cache["v"]), segment_ids=pad(cache["segment_ids"], 1))
    return cache, pad(out, 1, pad_token_id), None if logprobs is None else pad(logprobs, 1)


# ----------------------------------------------------------------------------- public API


def resolve_sampling(preset: str | SamplingConfig = "greedy", **overrides) -> SamplingConfig:
    """A SamplingConfig from a preset name (or a config) plus overrides (None = keep)."""
    if isinstance(preset, SamplingConfig):
        return preset.replace(**{k: v for k, v in overrides.items() if v is not None})
    return get_preset(preset, **overrides)


def generate(
    config: mlc.ConfigDict,
    params: dict,
    prompts: Sequence[Sequence[int]] | np.ndarray,
    *,
    attention_mask: np.ndarray | None = None,
    pixel_values: np.ndarray | None = None,
    grid_thw: np.ndarray | None = None,
    second_per_grid_ts: Sequence[float] | None = None,
    preset: str | SamplingConfig = "greedy",
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    presence_penalty: float | None = None,
    repetition_penalty: float | None = None,
    stop_tokens: Sequence[int] = (),
    pad_token_id: int = 0,
    rng: jax.Array | int = 0,
    callback: StreamCallback | None = None,
    thinking_budget: ThinkingBudget | None = None,
    use_while_loop: bool | None = None,
    initial_capacity: int | None = kv_cache.INITIAL_DECODE_CAPACITY,
    decode_layers: str = "auto",
    return_logprobs: bool = False,
) -> GenerateOutput:
    """Generates up to `max_new_tokens` tokens for each prompt.

    prompts: a list of token-id sequences (any lengths), or a 2D array with `attention_mask`
      (padding on either side is stripped). Visual inputs follow docs/CONTRACTS.md: `pixel_values`
      [P, 1536] and `grid_thw` [M, 3] for every image/video of the batch, in placeholder order.
    second_per_grid_ts: seconds per temporal group of each video, in order (`batch_prompts` gives it);
      used only by a model with `video_time_encoding="absolute_time"`, which needs it.
    preset: "instruct" | "thinking" | "greedy" or a SamplingConfig; the keyword overrides
      (temperature, top_k, ..., max_new_tokens) replace single fields (None keeps the preset's).
    stop_tokens: ids that end a row (emitted, then `pad_token_id`). rng: a PRNG key or int seed.
    callback(step, tokens [B]): called on the host after every generated token (forces the
      host-loop path). use_while_loop: force a path (default: while_loop unless a callback is set).
    thinking_budget: cap on thinking tokens, see `ThinkingBudget`.
    initial_capacity: new-token slots of the first cache; when a row still runs once they are
      used, the cache doubles (one more decode compile per size) up to max_new_tokens. Decode cost
      per step grows with the cache size, so a 32768-token budget is not paid for on short answers.
      None: one cache sized for max_new_tokens from the start.
    decode_layers: "scan" | "unrolled" | "auto" (unrolled on CPU), see the module docstring.
    return_logprobs: also return each emitted token's float32 log-prob (`GenerateOutput.logprobs`):
      full-vocabulary log_softmax(raw logits / temperature), ignoring penalties and top-k/top-p/min-p
      (the policy log-prob training recomputes; RL samples with temperature only); temperature 1 when
      greedy.
    """
    if decode_layers not in ("scan", "unrolled", "auto"):
        raise ValueError(f"decode_layers={decode_layers!r}; choose from scan, unrolled, auto")
    scfg = resolve_sampling(preset, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            presence_penalty=presence_penalty, repetition_penalty=repetition_penalty,
                            max_new_tokens=max_new_tokens)
    n_new = scfg.max_new_tokens
    scfg_static = scfg.replace(max_new_tokens=1)  # the limit is traced, so it never recompiles
    if pad_token_id in (config.image_token_id, config.video_token_id):
        raise ValueError(f"pad_token_id={pad_token_id} is a visual placeholder id")
    rows = _as_prompt_list(prompts, attention_mask)
    bucket = kv_cache.bucket_length(max(len(r) for r in rows))
    ids, mask = left_pad(rows, bucket, pad_token_id)

    igrid, vgrid = split_grids(rows, grid_thw, config)
    if (pixel_values is None) != (grid_thw is None):
        raise ValueError("pass both pixel_values and grid_thw, or neither")
    if pixel_values is not None:
        grid = np.asarray(grid_thw, np.int32).reshape(-1, 3)
        grid = grid[grid[:, 0] > 0]
        n_patches = int(grid.prod(-1).sum())
        px = np.asarray(pixel_values, np.float32)[:n_patches]
        check_visual_inputs(config, ids, px, grid)
        # Static shapes: power-of-two patch and grid-row counts (padding rows are zeros).
        px = _pad_rows(px, kv_cache.bucket_count(n_patches, minimum=64))
        grid = _pad_rows(grid, kv_cache.bucket_count(len(grid)))
        px, grid = jnp.asarray(px), jnp.asarray(grid)
        igrid = None if igrid is None else llm_grid_thw(igrid, config)
        vgrid = None if vgrid is None else llm_grid_thw(vgrid, config)
    else:
        check_visual_inputs(config, ids, None, None)
        px = grid = None
    video_time = video_time_args(config, second_per_grid_ts, 0 if vgrid is None else len(vgrid))
    positions, _ = rope.get_rope_index(ids, igrid, vgrid, mask, image_token_id=config.image_token_id,
                                       video_token_id=config.video_token_id,
                                       spatial_merge_size=config.vision.spatial_merge_size, **video_time)

    key = jax.random.key(int(rng)) if isinstance(rng, int | np.integer) else rng
    in_think = np.asarray([thinking_budget is not None and thinking_budget.prompt_in_think(r.tolist())
                           for r in rows])
    full = kv_cache.round_up(n_new, kv_cache.DECODE_MULTIPLE)
    capacity = full if initial_capacity is None else min(full, int(initial_capacity))
    if capacity < 1:
        raise ValueError(f"initial_capacity must be >= 1, got {initial_capacity}")
    statics = dict(cfg=mlc.FrozenConfigDict(config), scfg=scfg_static, think=thinking_budget,
                   stop_tokens=tuple(int(t) for t in stop_tokens), pad_token_id=int(pad_token_id))
    params = nn.unbox(params)
    if decode_layers == "auto":
        decode_layers = "unrolled" if jax.default_backend() == "cpu" else "scan"
    unrolled = decode_layers == "unrolled"
    layer_params = _layer_params(params, config.text.num_layers) if unrolled else None
    state = _prefill(params, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask), px, grid, key,
                     jnp.asarray(in_think), jnp.asarray(n_new, jnp.int32), capacity=capacity, unrolled=unrolled,
                     logprobs=bool(return_logprobs), **statics)

    def grow(state, capacity):
        new = min(2 * capacity, full)
        cache, out, logprobs = _grow(state.pop("cache"), state.pop("out"), state.pop("logprobs", None),
                                     extra=new - capacity, pad_token_id=statics["pad_token_id"])
        state = dict(state, cache=cache, out=out)
        if logprobs is not None:
            state["logprobs"] = logprobs
        return state, new

    if use_while_loop is None:
        use_while_loop = callback is None
    if use_while_loop and callback is not None:
        raise ValueError("a streaming callback needs the host loop (use_while_loop=False)")
    if use_while_loop:
        while True:
            state = _decode_loop(params, layer_params, state, **statics)  # until done or out of capacity
            n, done = jax.device_get((state["n"], state["done"]))
            if n >= n_new or done.all():
                break
            state, capacity = grow(state, capacity)
    else:
        step = 0  # == state["n"] - 1: the index of the token just emitted
        while True:
            # Copies: on CPU device_get may alias the buffers that the next (donating) step reuses.
            last, done = (np.array(a, copy=True) for a in jax.device_get((state["last"], state["done"])))
            if callback is not None:
                callback(step, last)
            step += 1
            if step >= n_new or done.all():
                break
            if step >= capacity:
                state, capacity = grow(state, capacity)
            state = _decode_step(params, layer_params, state, **statics)
    tokens, lengths, done, logprobs = jax.device_get((state["out"], state["lengths"], state["done"],
                                                      state.get("logprobs")))
    return GenerateOutput(tokens=np.asarray(tokens)[:, :n_new], lengths=np.asarray(lengths),
                          finished=np.asarray(done), prompt_bucket=bucket,
                          logprobs=None if logprobs is None else np.asarray(logprobs, np.float32)[:, :n_new])

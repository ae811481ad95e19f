"""Rotary position embeddings: 1D, 2D (vision), and MRoPE with interleaved or chunked layout.

Text rope scaling: YaRN (`yarn_frequencies`), selected by `text.rope_scaling`.

Also `get_rope_index`, the pure numpy function that assigns each token its 3-component
(t, h, w) position, following Qwen3-VL: text advances one step per token; a vision block
(an image, or one temporal group of a video) gets t = start, h = start + row, w = start + col
on the merged-token grid; the text after it continues at max(previous positions) + 1.
With `second_per_grid_ts` it follows Qwen2.5-VL instead (the `video_time_encoding="absolute_time"`
ablation): a video is one block whose temporal group g gets t = start + int(g * seconds * tokens_per_second).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2


def inverse_frequencies(dim: int, theta: float) -> np.ndarray:
    """`dim // 2` inverse frequencies theta^(-2i/dim), float32 as the reference computes them."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def yarn_frequencies(dim: int, theta: float, factor: float, original_max_position_embeddings: int, *,
                     beta_fast: float = 32.0, beta_slow: float = 1.0, mscale: float | None = None,
                     mscale_all_dim: float | None = None, attention_factor: float | None = None,
                     truncate: bool = True) -> tuple[np.ndarray, float]:
    """YaRN (arXiv 2309.00071): (`dim // 2` inverse frequencies, float32; attention factor for cos/sin).

    Frequencies that turn more than `beta_fast` times over the original length keep their value, those
    that turn fewer than `beta_slow` times are divided by `factor` (interpolated), with a linear ramp
    between. Mirrors transformers' `_compute_yarn_parameters` op for op, in float32, so the tables agree.
    """
    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        # transformers tests truthiness: an mscale of 0 falls back to the plain factor formula
        both = bool(mscale) and bool(mscale_all_dim)
        attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) if both \
            else get_mscale(factor)

    def correction_dim(rotations: float) -> float:  # the frequency index that turns `rotations` times
        return dim * math.log(original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no division by zero
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    keep = (1 - ramp).astype(np.float32)  # 1: extrapolate (keep the frequency), 0: interpolate
    # The power in float64, rounded once: torch's float32 pow is that accurate, numpy's is not (1 ulp off in
    # ~10% of entries, which large positions turn into visible cos/sin differences).
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    pos_freqs = (np.float64(np.float32(theta)) ** exponents.astype(np.float64)).astype(np.float32)
    inv_extrapolation = np.float32(1.0) / pos_freqs
    inv_interpolation = np.float32(1.0) / (np.float32(factor) * pos_freqs)
    inv = inv_interpolation * (1 - keep) + inv_extrapolation * keep
    return inv.astype(np.float32), float(attention_factor)


def text_rope_frequencies(dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> tuple[np.ndarray, float]:
    """(inverse frequencies, attention factor) of the text rope; `scaling` is `text.rope_scaling`."""
    kind = "default" if scaling is None else scaling["rope_type"]
    if kind == "default":
        return inverse_frequencies(dim, theta), 1.0
    if kind != "yarn":
        raise ValueError(f"unknown text.rope_scaling.rope_type {kind!r} (expected 'default' or 'yarn')")
    return yarn_frequencies(
        dim, theta, scaling["factor"], scaling["original_max_position_embeddings"],
        **{k: scaling[k] for k in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
                                   "truncate")})


@functools.lru_cache(maxsize=32)
def mrope_axis_of_frequency(head_dim: int, section: tuple[int, int, int], layout: str) -> np.ndarray:
    """Which position component (0=t, 1=h, 2=w) drives each of the head_dim // 2 frequencies.

    chunked (Qwen2/2.5-VL):  [t]*s0 + [h]*s1 + [w]*s2: time only gets the high frequencies.
    interleaved (Qwen3-VL):  t h w t h w ...; h and w stop after 3*s1 and 3*s2, the rest is t,
    so every axis spans low and high frequencies.
    """
    n = head_dim // 2
    if sum(section) != n:
        raise ValueError(f"mrope_section {section} must sum to head_dim // 2 = {n}")
    if layout == "chunked":
        return np.repeat(np.arange(3), section).astype(np.int32)
    if layout != "interleaved":
        raise ValueError(f"unknown MRoPE layout {layout!r}")
    j = np.arange(n)
    axis = np.zeros(n, np.int32)
    axis[(j % 3 == 1) & (j < 3 * section[1])] = 1
    axis[(j % 3 == 2) & (j < 3 * section[2])] = 2
    return axis


def mrope_cos_sin(position_ids: jnp.ndarray, head_dim: int, theta: float, section, layout: str,
                  scaling: Mapping[str, Any] | None = None):
    """cos/sin tables [B, S, head_dim] (float32) for 3-component positions [3, B, S].

    `scaling` (`text.rope_scaling`) changes the frequencies every axis shares and scales both tables
    by its attention factor (so q.k by its square), as transformers does.
    """
    inv, attention_factor = text_rope_frequencies(head_dim, theta, scaling)
    inv = jnp.asarray(inv)
    freqs = position_ids.astype(jnp.float32)[..., None] * inv  # [3, B, S, F]
    axis = mrope_axis_of_frequency(head_dim, tuple(int(s) for s in section), layout)
    onehot = jnp.asarray(np.eye(3, dtype=np.float32)[:, axis])  # [3, F]: select, exactly
    freqs = jnp.einsum("absf,af->bsf", freqs, onehot, precision="highest")
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos, sin


def vision_cos_sin(rows: jnp.ndarray, cols: jnp.ndarray, head_dim: int, theta: float):
    """2D RoPE tables [P, head_dim]: a quarter of the frequencies rotate by row, a quarter by column.

    Layout [f(row), f(col), f(row), f(col)] with f of size head_dim // 4, consumed by `apply_rope`.
    """
    inv = jnp.asarray(inverse_frequencies(head_dim // 2, theta))
    fr = rows.astype(jnp.float32)[:, None] * inv
    fc = cols.astype(jnp.float32)[:, None] * inv
    emb = jnp.concatenate([fr, fc, fr, fc], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jnp.ndarray) -> jnp.ndarray:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """x [..., S, H, D] rotated by cos/sin [..., S, D]; math in float32, result in x.dtype."""
    xf = x.astype(jnp.float32)
    cos, sin = cos[..., None, :], sin[..., None, :]
    return (xf * cos + rotate_half(xf) * sin).astype(x.dtype)


def token_types(input_ids: np.ndarray, image_token_id: int, video_token_id: int) -> np.ndarray:
    """0 for text, 1 for image placeholders, 2 for video placeholders."""
    types = np.zeros(input_ids.shape, np.int32)
    types[input_ids == image_token_id] = IMAGE
    types[input_ids == video_token_id] = VIDEO
    return types


def get_rope_index(
    input_ids: np.ndarray,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int = 2,
    second_per_grid_ts: Sequence[float] | np.ndarray | None = None,
    tokens_per_second: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """MRoPE position ids [3, B, S] and rope deltas [B, 1] for a batch of token rows.

    `image_grid_thw` / `video_grid_thw` list the grids (in patches) in the order the
    placeholders appear, row after row. A video is split into its temporal groups, each of
    which must be its own run of `<|video_pad|>` tokens (Qwen3-VL puts a text timestamp and
    vision_start/end around every group). Padding (attention_mask == 0) gets position 0 and
    is skipped. The delta is what decoding adds to the running index: max position + 1 - length.

    Qwen2.5-VL's absolute time (`video_time_encoding="absolute_time"`): give `second_per_grid_ts`, the
    seconds per temporal group of each video (`processor.seconds_per_grid`), and `tokens_per_second`.
    Each video is then one run of `<|video_pad|>` tokens whose group g has temporal id
    start + int(g * tokens_per_second * second_per_grid_ts[video]) (`absolute_time_ids`), and the text
    after any visual block continues at max(positions so far) + 1, as in the released Qwen2.5-VL code
    (transformers 5.24 continues at start + max(h, w) instead, below the later frames' temporal ids).
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    b, s = input_ids.shape
    mask = np.ones((b, s), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    absolute = second_per_grid_ts is not None
    if absolute and not (tokens_per_second is not None and tokens_per_second > 0):
        raise ValueError(f"second_per_grid_ts (absolute time) needs tokens_per_second > 0, got {tokens_per_second}")
    grids = {
        IMAGE: _grid_list(image_grid_thw, split_time=False),
        VIDEO: _grid_list(video_grid_thw, split_time=not absolute),
    }
    video_seconds = _video_seconds(second_per_grid_ts, len(grids[VIDEO])) if absolute else None
    used = {IMAGE: 0, VIDEO: 0}
    names = {IMAGE: "image", VIDEO: "video"}
    merge = spatial_merge_size
    position_ids = np.zeros((3, b, s), np.int32)
    deltas = np.zeros((b, 1), np.int32)
    types_all = token_types(input_ids, image_token_id, video_token_id)
    for row in range(b):
        types = types_all[row][mask[row]]
        pieces, pos = [], 0
        start = 0
        for kind, run in itertools.groupby(types.tolist()):
            n = len(list(run))
            if kind == TEXT:
                pieces.append(np.broadcast_to(np.arange(pos, pos + n, dtype=np.int32), (3, n)))
                pos += n
            else:
                if used[kind] >= len(grids[kind]):
                    raise ValueError(
                        f"row {row}: more {names[kind]} placeholder runs than {names[kind]} grids "
                        f"({len(grids[kind])} given; video grids count one per temporal group)")
                t, h, w = grids[kind][used[kind]]
                times = (absolute_time_ids(t, video_seconds[used[kind]], tokens_per_second)
                         if absolute and kind == VIDEO else np.arange(t))
                used[kind] += 1
                gh, gw = h // merge, w // merge
                if n != t * gh * gw:
                    raise ValueError(
                        f"row {row}, token {start}: a run of {n} {names[kind]} placeholder tokens, but its grid "
                        f"(t={t}, h={h}, w={w}) makes {t * gh * gw} merged tokens")
                tt, hh, ww = np.meshgrid(times, np.arange(gh), np.arange(gw), indexing="ij")
                block = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]).astype(np.int32) + pos
                pieces.append(block)
                # Qwen3-VL's blocks have t = 1, so max + 1 = pos + max(gh, gw); Qwen2.5-VL's may reach further.
                pos = int(block.max()) + 1 if absolute else pos + max(gh, gw)
            start += n
        llm = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int32)
        position_ids[:, row, mask[row]] = llm
        deltas[row, 0] = (llm.max() + 1 - llm.shape[1]) if llm.shape[1] else 0
    for kind in (IMAGE, VIDEO):
        if used[kind] != len(grids[kind]):
            raise ValueError(
                f"{len(grids[kind])} {names[kind]} grids given but only {used[kind]} {names[kind]} placeholder "
                "runs found in input_ids")
    return position_ids, deltas


def absolute_time_ids(t: int, second_per_grid: float, tokens_per_second: float) -> np.ndarray:
    """Qwen2.5-VL temporal ids (from 0) of a video's `t` temporal groups: int(g * tokens_per_second *
    second_per_grid), in float32 and truncated, as transformers computes them."""
    step = np.float32(tokens_per_second) * np.float32(second_per_grid)
    return (np.arange(t, dtype=np.float32) * step).astype(np.int64)


def _video_seconds(second_per_grid_ts, n_videos: int) -> list[float]:
    """`second_per_grid_ts` checked: one finite, positive number of seconds per video grid."""
    seconds = np.asarray(second_per_grid_ts, np.float64).reshape(-1)
    if len(seconds) != n_videos or not np.all(np.isfinite(seconds) & (seconds > 0)):
        raise ValueError(f"second_per_grid_ts needs one positive number of seconds per video: {n_videos} video "
                         f"grids, got {seconds.tolist()}")
    return seconds.tolist()


def _grid_list(grid_thw: np.ndarray | None, split_time: bool) -> list[tuple[int, int, int]]:
    if grid_thw is None:
        return []
    out = []
    for t, h, w in np.asarray(grid_thw).reshape(-1, 3).tolist():
        if t == 0:  # padding rows of a static-shape grid buffer
            continue
        out.extend([(1, h, w)] * t if split_time else [(t, h, w)])
    return out


def sincos_2d(rows: jnp.ndarray, cols: jnp.ndarray, dim: int) -> jnp.ndarray:
    """2D sine-cosine position embedding [N, dim] (half for rows, half for columns), as in Qwen-VL."""
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (np.arange(quarter, dtype=np.float32) / quarter))
    out = []
    for p in (rows, cols):
        ang = p.astype(jnp.float32)[:, None] * omega
        out += [jnp.sin(ang), jnp.cos(ang)]
    return jnp.concatenate(out, axis=-1)

"""Blocked ViT attention (`vision.attention_block`): exact against the dense mask and the HF
reference, on the fast path (every frame fits a block) and the dense fallback (one does not)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import LAYOUTS, TOL, build, positions, small_config
from vlm_jax.kernels import attention as attn
from vlm_jax.kernels.attention import segment_attention, segment_blocks, segments_fit_blocks, segments_within_blocks
from vlm_jax.model.vlm import Qwen3VL


def _flat(lengths, pad, seed=0, heads=2, dim=8):
    rng = np.random.default_rng(seed)
    seg = np.concatenate([np.full(n, i + 1, np.int32) for i, n in enumerate(lengths)] + [np.zeros(pad, np.int32)])
    q, k, v = (jnp.asarray(rng.normal(size=(len(seg), heads, dim)), jnp.float32) for _ in range(3))
    return q, k, v, jnp.asarray(seg)


def _weighted_loss(block, seg, valid):
    w = jnp.asarray(np.random.default_rng(1).normal(size=(len(seg), 2, 8)), jnp.float32) * valid[:, None, None]
    return lambda q, k, v: jnp.sum(segment_attention(q, k, v, seg, block=block) * w)


@pytest.mark.parametrize("block", [16, 20, 7])  # 7: the 16-patch frames do not fit -> dense fallback
def test_blocked_equals_dense_values_and_gradients(block):
    # Frames that straddle block boundaries, a run of padding longer than the block, odd total length.
    _assert_blocked_equals_dense(*_flat([7, 16, 3, 16, 9, 12, 1], pad=37), block)


def _assert_blocked_equals_dense(q, k, v, seg, block):
    valid = np.asarray(seg) != 0
    dense = segment_attention(q, k, v, seg, block=0)
    blocked = jax.jit(lambda q, k, v: segment_attention(q, k, v, seg, block=block))(q, k, v)
    assert np.abs(np.asarray(blocked - dense))[valid].max() < 1e-6
    g_dense = jax.grad(_weighted_loss(0, seg, valid), argnums=(0, 1, 2))(q, k, v)
    g_blocked = jax.jit(jax.grad(_weighted_loss(block, seg, valid), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_dense, g_blocked):
        assert np.abs(np.asarray(a - b)).max() < 1e-5


@pytest.mark.parametrize("lengths,pad,block,path", [
    ([16, 16, 8, 8, 16], 37, 16, 2),  # every frame inside one block: a block per segment
    ([16, 16, 8, 8, 16], 0, 16, 2),   # ... with no padding at all
    ([12, 16, 4, 16], 16, 16, 2),     # frames straddle block boundaries: gathered, a block each
    ([12, 16, 4, 16], 0, 16, 1),      # four misaligned segments, three blocks: the neighbour path
    ([10, 13, 12, 11], 3, 16, 2),     # frames smaller than the block, misaligned (as 196-patch images, block 256)
])
def test_each_path_equals_dense_values_and_gradients(lengths, pad, block, path):
    q, k, v, seg = _flat(lengths, pad=pad)
    assert int(attn._path_index(seg, block)) == path
    _assert_blocked_equals_dense(q, k, v, seg, block)


def test_segment_blocks_layout():
    seg = lambda *xs: jnp.asarray(xs, jnp.int32)
    dest, fits = segment_blocks(seg(1, 1, 1, 2, 2, 0, 0, 0), 4)
    assert bool(fits) and np.asarray(dest).tolist() == [0, 1, 2, 4, 5, 8, 8, 8]  # padding: out of range
    # Windows: id 1 in two runs still shares one block, in patch order.
    dest, fits = segment_blocks(seg(1, 1, 2, 2, 1, 1, 0, 0), 4)
    assert bool(fits) and np.asarray(dest).tolist() == [0, 1, 4, 5, 2, 3, 8, 8]
    assert not bool(segment_blocks(seg(1, 1, 1, 1, 1, 2, 2, 0), 4)[1])  # a segment longer than the block
    assert not bool(segment_blocks(seg(1, 2, 2, 3), 2)[1])  # three misaligned segments, two blocks
    # Aligned frames stay in place, several to a block.
    dest, fits = segment_blocks(seg(1, 1, 2, 3, 4, 4, 0, 0), 4)
    assert bool(fits) and np.asarray(dest).tolist() == [0, 1, 2, 3, 4, 5, 8, 8]


def test_segments_within_blocks():
    seg = lambda *xs: jnp.asarray(xs, jnp.int32)
    assert bool(segments_within_blocks(seg(1, 1, 2, 2, 3, 3, 0, 0), 2))
    assert not bool(segments_within_blocks(seg(1, 2, 2, 3, 3, 3, 0, 0), 2))  # frame 2 crosses a boundary
    assert bool(segments_within_blocks(seg(1, 1, 2, 2, 0, 0, 0, 0), 4))     # padding runs may cross
    assert not bool(segments_within_blocks(seg(1, 1, 2, 2, 1, 1, 0, 0), 2))  # id 1 in two blocks (windows)


def test_windows_split_across_runs_equal_dense():
    # Window ids recur in several runs (patches in merge-block order): the gathered path groups them.
    q, k, v, _ = _flat([8] * 6, pad=5, seed=2)
    seg = jnp.asarray(np.r_[np.tile(np.repeat([1, 2], 4), 3), np.tile(np.repeat([3, 4], 4), 3), np.zeros(5)],
                      jnp.int32)
    assert int(attn._path_index(seg, 16)) == 2
    _assert_blocked_equals_dense(q, k, v, seg, 16)


def test_segments_fit_blocks_ignores_padding_runs():
    _, _, _, seg = _flat([7, 16, 3], pad=100)
    assert bool(segments_fit_blocks(seg, 16)) and not bool(segments_fit_blocks(seg, 15))
    # Two adjacent frames with different ids are separate runs.
    assert bool(segments_fit_blocks(jnp.asarray([1, 1, 2, 2, 2, 0, 0, 0, 0], jnp.int32), 3))


@pytest.fixture(scope="module")
def reference(oracle):
    c = small_config()
    hf = oracle.hf_model(c)
    return c, hf, oracle.params_from(hf, c)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["two_images", "image_and_video"])
@pytest.mark.parametrize("block", [4, 16, 24])  # 4: frames are larger -> the dense fallback
def test_model_with_blocked_vit_attention_matches_reference(oracle, reference, name, block):
    c, hf, params = reference
    rng = np.random.default_rng(7)
    ids, (grid, px), (igrid, ipx), (vgrid, vpx) = build(rng, LAYOUTS[name], c)
    ids = ids[None]
    ref = oracle.hf_logits(hf, c, ids, None, ipx, igrid, vpx, vgrid)
    cb = small_config(**{"vision.attention_block": block})
    pos, _ = positions(cb, ids, None, igrid, vgrid)
    # Padding patches and grid rows, as the training pipeline's static buffers have them.
    px = np.concatenate([px, np.zeros((12, px.shape[1]), np.float32)])
    grid = np.concatenate([grid, np.zeros((2, 3), grid.dtype)])
    out = jax.jit(Qwen3VL(cb).apply)({"params": params}, jnp.asarray(ids), jnp.asarray(pos), None,
                                     jnp.asarray(px), jnp.asarray(grid))
    err = np.max(np.abs(np.asarray(out["logits"]) - ref))
    assert err <= TOL, f"{name}, block {block}: max |logits - reference| = {err:.2e}"


@pytest.mark.slow  # 21 s on 2 cores; `pytest -m slow` runs it
def test_window_attention_ablation_blocked_equals_dense():
    kw = {"vision.attention": "window", "vision.window_size": 64, "vision.full_attention_layers": (2,)}
    c0, cb = small_config(**kw), small_config(**kw, **{"vision.attention_block": 16})
    ids, (grid, px), _, _ = build(np.random.default_rng(3), [("text", 2), ("image", (1, 8, 8)), ("text", 2)], c0)
    ids = ids[None]
    pos, _ = positions(c0, ids, None, grid, None)
    params = jax.jit(lambda r: Qwen3VL(c0).init(r, ids, pos, None, px, grid))(jax.random.key(0))["params"]
    outs = [Qwen3VL(c).apply({"params": params}, ids, pos, None, px, grid)["logits"] for c in (c0, cb)]
    # 64 patches in one frame > block 16, but its 4x4-patch windows fit: window layers go blocked,
    # the full-attention layer falls back to dense.
    assert np.abs(np.asarray(outs[0] - outs[1])).max() < 1e-5

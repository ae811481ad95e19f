"""Each ablation switch changes the computation, in the way the older design did."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import LAYOUTS, TOL, build, positions, small_config
from vlm_jax.model import rope
from vlm_jax.model.vlm import Qwen3VL, init_params, llm_grid_thw, param_shapes


def _logits(c, params, ids, grid, px):
    pos, _ = rope.get_rope_index(ids, llm_grid_thw(grid, c), None, None, image_token_id=c.image_token_id,
                                 video_token_id=c.video_token_id)
    return np.asarray(Qwen3VL(c).apply({"params": params}, jnp.asarray(ids), jnp.asarray(pos), None,
                                       jnp.asarray(px), jnp.asarray(grid))["logits"])


@pytest.mark.parity
def test_no_deepstack_matches_reference_without_deepstack(oracle):
    """deepstack=False equals the reference built with no DeepStack taps, and differs from DeepStack on."""
    c_off = small_config(deepstack=False)
    hf = oracle.hf_model(c_off, seed=1)
    params = oracle.params_from(hf, c_off)
    rng = np.random.default_rng(0)
    ids, (grid, px), (igrid, ipx), _ = build(rng, LAYOUTS["one_image"], c_off)
    ids = ids[None]
    ref = oracle.hf_logits(hf, c_off, ids, None, ipx, igrid)
    ours = _logits(c_off, params, ids, grid, px)
    assert np.max(np.abs(ours - ref)) <= TOL

    c_on = small_config()
    p_on = dict(init_params(c_on, jax.random.key(0)), **params)  # same weights, plus DeepStack mergers
    assert np.max(np.abs(_logits(c_on, p_on, ids, grid, px) - ours)) > 1e-3


@pytest.mark.parity
def test_chunked_mrope_matches_qwen2_vl_layout(oracle):
    """The chunked layout is Qwen2-VL's: sections of the spectrum per axis (reference function)."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl as q2

    torch, transformers = oracle.torch, oracle.transformers
    c = small_config(**{"text.mrope_layout": "chunked"})
    rng = np.random.default_rng(1)
    pos = rng.integers(0, 50, size=(3, 2, 7))
    cos, sin = rope.mrope_cos_sin(jnp.asarray(pos), c.text.head_dim, c.text.rope_theta, c.text.mrope_section,
                                  "chunked")
    tc = transformers.Qwen2VLTextConfig(
        hidden_size=c.text.num_heads * c.text.head_dim, num_attention_heads=c.text.num_heads,
        rope_parameters={"rope_type": "default", "rope_theta": c.text.rope_theta,
                         "mrope_section": list(c.text.mrope_section)})
    ref_cos, ref_sin = q2.Qwen2VLRotaryEmbedding(tc)(torch.zeros(1), torch.as_tensor(pos))
    np.testing.assert_allclose(np.asarray(cos), ref_cos.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(sin), ref_sin.numpy(), atol=1e-6)
    interleaved = rope.mrope_cos_sin(jnp.asarray(pos), c.text.head_dim, c.text.rope_theta, c.text.mrope_section,
                                     "interleaved")[0]
    assert np.max(np.abs(np.asarray(interleaved) - np.asarray(cos))) > 0.1


def test_mrope_layout_changes_logits():
    c_i = small_config()
    c_c = small_config(**{"text.mrope_layout": "chunked"})
    params = init_params(c_i, jax.random.key(1))
    rng = np.random.default_rng(2)
    ids, (grid, px), _, _ = build(rng, LAYOUTS["one_image"], c_i)
    a, b = _logits(c_i, params, ids[None], grid, px), _logits(c_c, params, ids[None], grid, px)
    assert np.max(np.abs(a - b)) > 1e-3


def _tower(c, params, px, grid):
    merged, _ = Qwen3VL(c).apply({"params": params}, jnp.asarray(px), jnp.asarray(grid),
                                 method=Qwen3VL.encode_vision)
    return np.asarray(merged)


@pytest.mark.slow  # 11 s on 2 cores; `pytest -m slow` runs it
def test_window_attention_confines_each_window():
    """With windowed attention in every layer, changing the pixels of one 64x64-pixel window
    changes only that window's merged tokens; with full attention it changes them all."""
    kw = {"vision.attention": "window", "vision.window_size": 64, "vision.full_attention_layers": ()}
    c_win = small_config(deepstack=False, **{"vision.deepstack_layers": ()}, **kw)
    c_full = small_config(deepstack=False, **{"vision.deepstack_layers": ()})
    params = init_params(c_full, jax.random.key(2))
    grid = np.asarray([[1, 8, 8]])  # 128x128 pixels: 2x2 windows of 4x4 patches
    rng = np.random.default_rng(3)
    px = rng.normal(size=(64, 1536)).astype(np.float32)
    px2 = px.copy()
    # Merged tokens are 2x2-patch blocks in raster order of a 4x4 block grid; block (0,0) is
    # patches 0..3 and lies in window (0,0), which holds blocks (0,0),(0,1),(1,0),(1,1).
    px2[0:4] += 1.0
    for c, expect_local in ((c_win, True), (c_full, False)):
        diff = np.abs(_tower(c, params, px2, grid) - _tower(c, params, px, grid)).max(-1)
        inside = [0, 1, 4, 5]
        outside = [i for i in range(16) if i not in inside]
        assert diff[inside].min() > 1e-4
        if expect_local:
            assert diff[outside].max() < 1e-6
        else:
            assert diff[outside].min() > 1e-6


def test_window_attention_with_full_layers_mixes_windows():
    kw = {"vision.attention": "window", "vision.window_size": 64, "vision.full_attention_layers": (1,)}
    c = small_config(deepstack=False, **{"vision.deepstack_layers": ()}, **kw)
    params = init_params(c, jax.random.key(2))
    grid = np.asarray([[1, 8, 8]])
    px = np.random.default_rng(3).normal(size=(64, 1536)).astype(np.float32)
    px2 = px.copy()
    px2[0:4] += 1.0
    diff = np.abs(_tower(c, params, px2, grid) - _tower(c, params, px, grid)).max(-1)
    assert diff.min() > 1e-6  # one full-attention layer spreads the change everywhere


@pytest.mark.slow  # 25 s on 2 cores; `pytest -m slow` runs it
def test_resampler_makes_fixed_token_count_per_image():
    c = small_config(merger="resampler", resampler_num_queries=4, deepstack=False,
                            **{"vision.deepstack_layers": ()})
    params = init_params(c, jax.random.key(3))
    rng = np.random.default_rng(4)
    grid = np.asarray([[1, 4, 6], [1, 8, 2]])
    px = rng.normal(size=(40, 1536)).astype(np.float32)
    merged = _tower(c, params, px, grid)
    assert merged.shape == (2 * 4, c.text.hidden_size)
    px2 = px.copy()
    px2[24:] += 1.0  # only the second image changes
    merged2 = _tower(c, params, px2, grid)
    assert np.abs(merged2[:4] - merged[:4]).max() < 1e-6
    assert np.abs(merged2[4:] - merged[4:]).max() > 1e-4
    # And the whole model runs with 4 placeholders per image at the resampler's virtual grid positions.
    ids = np.asarray([[30, c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id, 31,
                      c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id, 32]])
    logits = _logits(c, params, ids, grid, px)
    assert np.isfinite(logits).all() and logits.shape == (1, ids.shape[1], c.text.vocab_size)


def test_resampler_runs_on_a_pipeline_batch():
    """A packed pipeline batch of a 64-query resampler (images of 4 x 6 patches, 6 MLP tokens) fits the
    model: 64 placeholders per image at the virtual grid's positions, the real patches as pixels."""
    from vlm_jax.data import pipeline
    from vlm_jax.data.synthetic import TOKENIZER_PATH
    from vlm_jax.data.tokenizer import load_tokenizer
    from vlm_jax.model.vlm import check_visual_inputs

    tok = load_tokenizer(TOKENIZER_PATH)
    c = small_config(merger="resampler", resampler_num_queries=64, deepstack=False, image_token_id=tok.image_pad_id,
                     video_token_id=tok.video_pad_id, vision_start_token_id=tok.vision_start_id,
                     vision_end_token_id=tok.vision_end_id,
                     **{"vision.deepstack_layers": (), "text.vocab_size": tok.vocab_size})

    class Images:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            img = np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8)
            return {"id": f"m{i}", "images": [img], "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]},
                {"role": "assistant", "content": f"shape {i}"}]}

    cfg = pipeline.get_config(seq_len=128, batch_size=2, max_patches=64, max_grids=4, read_threads=1,
                              processor={"min_pixels": 32 * 32, "max_pixels": 128 * 128, "merger": "resampler",
                                         "resampler_num_queries": 64})
    batch = next(iter(pipeline.Pipeline(Images(), tok, cfg)))
    ids, grid = batch["input_ids"], batch["grid_thw"]
    real = grid[grid[:, 0] > 0]
    assert len(real) >= 2 and (real == [1, 4, 6]).all()
    assert int((ids == tok.image_pad_id).sum()) == 64 * len(real)
    for r in range(ids.shape[0]):
        for k in range(1, batch["segment_ids"][r].max() + 1):
            seg = ids[r][batch["segment_ids"][r] == k]
            n_img = int((seg == tok.vision_start_id).sum())
            ref, _ = rope.get_rope_index(seg[None], np.tile([[1, 16, 16]], (n_img, 1)), None,
                                         image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id)
            np.testing.assert_array_equal(batch["position_ids"][:, r][:, batch["segment_ids"][r] == k], ref[:, 0])
    check_visual_inputs(c, ids, batch["pixel_values"], grid)  # what the model checks outside jit
    # Random values of the params' shapes and a jitted forward: an eager init and apply cost ~30 s on 2 cores.
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda x: (0.05 * rng.standard_normal(x.shape)).astype(x.dtype),
                                    nn.unbox(param_shapes(c)))
    forward = jax.jit(lambda p, *a: Qwen3VL(c).apply({"params": p}, *a)["logits"])
    logits = np.asarray(forward(params, ids, batch["position_ids"], batch["segment_ids"], batch["pixel_values"], grid))
    assert np.isfinite(logits).all() and logits.shape == (*ids.shape, c.text.vocab_size)


def test_mismatched_placeholders_raise():
    c = small_config()
    params = init_params(c, jax.random.key(0))
    rng = np.random.default_rng(0)
    ids, (grid, px), _, _ = build(rng, LAYOUTS["one_image"], c)
    ids = ids[None]
    extra = np.concatenate([ids, [[c.image_token_id]]], axis=1)
    pos = np.zeros((3, 1, extra.shape[1]), np.int32)
    with pytest.raises(ValueError, match="do not match"):
        Qwen3VL(c).apply({"params": params}, extra, pos, None, px, grid)
    with pytest.raises(ValueError, match="no pixel_values"):
        Qwen3VL(c).apply({"params": params}, ids, np.zeros((3, *ids.shape), np.int32))
    with pytest.raises(ValueError, match="describes"):
        Qwen3VL(c).apply({"params": params}, ids, np.zeros((3, *ids.shape), np.int32), None, px[:10], grid)


def test_position_ids_reject_grid_mismatch():
    c = small_config()
    rng = np.random.default_rng(0)
    ids, _, (igrid, _), _ = build(rng, LAYOUTS["one_image"], c)
    with pytest.raises(ValueError, match="merged tokens"):
        positions(c, ids[None], None, np.asarray([[1, 4, 4]]), None)
    with pytest.raises(ValueError, match="grids given"):
        positions(c, ids[None], None, np.concatenate([igrid, igrid]), None)

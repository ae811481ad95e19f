"""Model properties beyond parity: axis names, remat, jit, MoE implementations, dtypes, padding, KV cache."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import LAYOUTS, build, random_params, small_config
from vlm_jax.configs import model as model_configs
from vlm_jax.model import rope
from vlm_jax.model.vlm import Qwen3VL, init_params


def _inputs(c, layout="one_image", seed=0):
    ids, (grid, px), _, _ = build(np.random.default_rng(seed), LAYOUTS[layout], c)
    ids = ids[None].astype(np.int32)
    pos, _ = rope.get_rope_index(ids, grid, None, None, image_token_id=c.image_token_id,
                                 video_token_id=c.video_token_id)
    return ids, pos, grid.astype(np.int32), px


def _config(size="tiny", **text):
    c = model_configs.get_config(size)
    c.unlock()
    c.text.update(text)
    return c


@pytest.mark.parametrize("size", ["tiny", "tiny-moe"])
def test_every_param_has_logical_axis_names(size):
    c = model_configs.get_config(size)
    boxed = jax.eval_shape(lambda r: init_params(c, r), jax.random.key(0))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for x in leaves:
        assert len(x.names) == len(x.value.shape), x.names
    stacked = [x for x in leaves if x.names[0] == "layers"]
    assert len(stacked) > 10  # the scanned decoder and vision stacks carry the "layers" axis


def _loss(c, params, ids, pos, grid, px):
    out = Qwen3VL(c).apply({"params": params}, ids, pos, None, px, grid)
    return jnp.mean(jax.nn.logsumexp(out["logits"], -1)) + 0.1 * out["aux_loss"]


def test_unrolled_layer_scans_give_the_same_logits_and_gradients():
    # scan_unroll changes only how the layer loops are compiled: same param tree, same numbers.
    c = small_config()
    ids, pos, grid, px = _inputs(c, "two_images")
    params = random_params(c)
    cu = small_config(scan_unroll=3)
    assert jax.tree.structure(params) == jax.tree.structure(random_params(cu))
    (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(lambda p, c=c: _loss(c, p, ids, pos, grid, px)))(params)
                          for c in (c, cu))
    assert float(l0) == pytest.approx(float(l1), abs=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


@pytest.mark.slow  # 27 to 133 s on 2 cores; `pytest -m slow` runs it
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_give_the_same_gradients(policy):
    c = model_configs.get_config("tiny-moe")
    params = nn.unbox(init_params(c, jax.random.key(0)))
    ids, pos, grid, px = _inputs(c)
    g0 = jax.jit(jax.grad(lambda p: _loss(c, p, ids, pos, grid, px)))(params)
    c2 = _config("tiny-moe")
    c2.remat_policy = policy
    g1 = jax.jit(jax.grad(lambda p: _loss(c2, p, ids, pos, grid, px)))(params)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


@pytest.mark.slow  # 38-70 s; the default suite had grown past 15 minutes
def test_ragged_and_dense_moe_agree_and_jit_matches_eager():
    c_r, c_d = _config("tiny-moe", moe_impl="ragged"), _config("tiny-moe", moe_impl="dense")
    params = init_params(c_r, jax.random.key(1))
    ids, pos, grid, px = _inputs(c_r, "two_images")
    eager = Qwen3VL(c_r).apply({"params": params}, ids, pos, None, px, grid)
    jitted = jax.jit(lambda p: Qwen3VL(c_r).apply({"params": p}, ids, pos, None, px, grid))(params)
    dense = Qwen3VL(c_d).apply({"params": params}, ids, pos, None, px, grid)
    np.testing.assert_allclose(np.asarray(jitted["logits"]), np.asarray(eager["logits"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(dense["logits"]), np.asarray(eager["logits"]), atol=1e-5)
    assert float(eager["aux_loss"]) == pytest.approx(float(dense["aux_loss"]), rel=1e-6)
    assert float(eager["aux_loss"]) >= 1.0 - 1e-6  # E * sum(f * p) is >= 1, equal only when balanced


@pytest.mark.slow  # 38-70 s; the default suite had grown past 15 minutes
def test_bfloat16_compute_stays_close_to_float32():
    c32 = model_configs.get_config("tiny")
    c16 = _config("tiny")
    c16.dtype = "bfloat16"
    params = init_params(c32, jax.random.key(2))
    ids, pos, grid, px = _inputs(c32)
    a = Qwen3VL(c32).apply({"params": params}, ids, pos, None, px, grid)["logits"]
    b = Qwen3VL(c16).apply({"params": params}, ids, pos, None, px, grid)["logits"]
    assert b.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    assert float(jnp.max(jnp.abs(a - b))) < 0.1


@pytest.mark.slow  # 26 s on 2 cores; `pytest -m slow` runs it
def test_kv_cache_decoding_matches_full_forward():
    """Prefill 10 tokens, decode 4 one at a time: logits equal the full forward's."""
    c = model_configs.get_config("tiny")
    params = init_params(c, jax.random.key(3))
    ids = np.random.default_rng(0).integers(20, 900, size=(2, 14)).astype(np.int32)
    pos = np.broadcast_to(np.arange(14, dtype=np.int32), (3, 2, 14))
    model = Qwen3VL(c)
    full = model.apply({"params": params}, ids, pos)["logits"]
    L, K, hd = c.text.num_layers, c.text.num_kv_heads, c.text.head_dim
    cache = dict(k=jnp.zeros((L, 2, 16, K, hd)), v=jnp.zeros((L, 2, 16, K, hd)),
                 segment_ids=jnp.zeros((2, 16), jnp.int32))
    out = model.apply({"params": params}, ids[:, :10], pos[:, :, :10], cache=cache, cache_index=0)
    steps = [out["logits"]]
    cache = out["cache"]
    for t in range(10, 14):
        out = model.apply({"params": params}, ids[:, t:t + 1], pos[:, :, t:t + 1], cache=cache, cache_index=t)
        cache = out["cache"]
        steps.append(out["logits"])
    np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1)), np.asarray(full), atol=1e-5)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.slow  # 33 s (dense + moe) on 2 cores; `pytest -m slow` runs it
def test_padding_patches_do_not_change_features(moe):
    """Static-shape padding (extra zero patches and zero grid rows) leaves real features unchanged."""
    c = small_config(moe=moe)
    params = random_params(c)
    rng = np.random.default_rng(5)
    grid = np.asarray([[1, 4, 6], [2, 2, 4]], np.int32)
    n = int(grid.prod(-1).sum())
    px = rng.normal(size=(n, 1536)).astype(np.float32)
    model = Qwen3VL(c)
    a, da = model.apply({"params": params}, jnp.asarray(px), jnp.asarray(grid), method=Qwen3VL.encode_vision)
    px_pad = np.concatenate([px, np.zeros((12, 1536), np.float32)])
    grid_pad = np.concatenate([grid, np.zeros((2, 3), np.int32)])
    b, db = jax.jit(lambda p, g: model.apply({"params": params}, p, g, method=Qwen3VL.encode_vision))(
        jnp.asarray(px_pad), jnp.asarray(grid_pad))
    np.testing.assert_allclose(np.asarray(b)[: n // 4], np.asarray(a), atol=1e-5)
    np.testing.assert_allclose(np.asarray(db)[:, : n // 4], np.asarray(da), atol=1e-5)

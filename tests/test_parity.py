"""Exact parity with the Hugging Face reference (tiny random models, CPU, float32)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tests import hf_oracle as oracle
from tests.helpers import LAYOUTS, TOL, build, positions, small_config
from vlm_jax.model.vlm import Qwen3VL

torch = oracle.torch
pytestmark = pytest.mark.parity


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "moe"])
def models(request):
    c = small_config(moe=request.param)
    hf = oracle.hf_model(c)
    return c, hf, oracle.params_from(hf, c)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_logits_match_reference(models, name):
    c, hf, params = models
    rng = np.random.default_rng(hash(name) % 2**32)
    ids, (grid, px), (igrid, ipx), (vgrid, vpx) = build(rng, LAYOUTS[name], c)
    ids = ids[None]
    ref = oracle.hf_logits(hf, c, ids, None, ipx, igrid, vpx, vgrid)
    pos, _ = positions(c, ids, None, igrid, vgrid)
    out = Qwen3VL(c).apply({"params": params}, jnp.asarray(ids), jnp.asarray(pos), None,
                           None if px is None else jnp.asarray(px), None if grid is None else jnp.asarray(grid))
    err = np.max(np.abs(np.asarray(out["logits"]) - ref))
    assert err <= TOL, f"{name}: max |logits - reference| = {err:.2e}"


def test_padded_batch_matches_reference(models):
    """Two rows of different lengths, left-padded, each with an image; compared on real tokens."""
    c, hf, params = models
    rng = np.random.default_rng(7)
    rows = [build(rng, [("text", 3), ("image", (1, 4, 4)), ("text", 6)], c),
            build(rng, [("text", 2), ("image", (1, 2, 6)), ("text", 2)], c)]
    s = max(len(r[0]) for r in rows)
    ids = np.zeros((2, s), np.int64)
    mask = np.zeros((2, s), np.int64)
    for i, r in enumerate(rows):
        ids[i, s - len(r[0]):] = r[0]
        mask[i, s - len(r[0]):] = 1
    igrid = np.concatenate([r[2][0] for r in rows])
    ipx = np.concatenate([r[2][1] for r in rows])
    ref = oracle.hf_logits(hf, c, ids, mask, ipx, igrid)
    pos, _ = positions(c, ids, mask, igrid, None)
    hf_pos, _ = oracle.hf_positions(hf, ids, mask, igrid, None, c)
    np.testing.assert_array_equal(pos, hf_pos)
    out = Qwen3VL(c).apply({"params": params}, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask, jnp.int32),
                           jnp.asarray(ipx), jnp.asarray(igrid))
    real = mask.astype(bool)
    err = np.max(np.abs(np.asarray(out["logits"])[real] - ref[real]))
    assert err <= TOL, f"padded batch: max |logits - reference| = {err:.2e}"


@pytest.mark.parametrize("grids", [[(1, 4, 6)], [(1, 6, 4), (1, 2, 8)], [(2, 4, 4)], [(1, 4, 4), (3, 2, 4)]],
                         ids=["one_image", "two_images", "video", "image_and_video"])
def test_vision_features_match_reference(models, grids):
    c, hf, params = models
    rng = np.random.default_rng(3)
    grid = np.asarray(grids, np.int64)
    px = rng.normal(size=(int(grid.prod(-1).sum()), 1536)).astype(np.float32)
    with torch.no_grad():
        ref = hf.model.visual(torch.as_tensor(px), grid_thw=torch.as_tensor(grid))
    merged, deepstack = Qwen3VL(c).apply({"params": params}, jnp.asarray(px), jnp.asarray(grid),
                                         method=Qwen3VL.encode_vision)
    assert np.max(np.abs(np.asarray(merged) - ref.pooler_output.numpy())) <= TOL
    assert len(ref.deepstack_features) == deepstack.shape[0] == 2
    for level, feat in enumerate(ref.deepstack_features):
        err = np.max(np.abs(np.asarray(deepstack[level]) - feat.numpy()))
        assert err <= TOL, f"DeepStack level {level}: {err:.2e}"


@pytest.mark.parametrize("name", ["one_image", "two_images", "video", "image_and_video"])
def test_position_ids_match_reference(models, name):
    c, hf, _ = models
    rng = np.random.default_rng(11)
    ids, _, (igrid, _), (vgrid, _) = build(rng, LAYOUTS[name], c)
    ids = np.stack([ids, ids])
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # the second row starts with two padding tokens
    ours, d_ours = positions(c, ids, mask, None if igrid is None else np.concatenate([igrid, igrid]),
                             None if vgrid is None else np.concatenate([vgrid, vgrid]))
    ref, d_ref = oracle.hf_positions(hf, ids, mask, None if igrid is None else np.concatenate([igrid, igrid]),
                                     None if vgrid is None else np.concatenate([vgrid, vgrid]), c)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(d_ours, d_ref)

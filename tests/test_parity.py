"""Exact parity with the Hugging Face reference (tiny random models, CPU, float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import hf_oracle as oracle
from vlm_jax.model import rope
from vlm_jax.model.vlm import Qwen3VL

torch = oracle.torch
pytestmark = pytest.mark.parity
TOL = 1e-4


def build(rng, layout, c):
    """Token ids for a layout like [("text", 5), ("image", (1, 4, 6)), ("video", (2, 4, 4))].

    Returns ids, the grids in placeholder order (ours), and image / video grids and pixels (HF's).
    """
    ids, ours, images, videos = [], [], [], []
    text = lambda n: rng.integers(20, 400, size=n).tolist()
    for kind, arg in layout:
        if kind == "text":
            ids += text(arg)
            continue
        t, h, w = arg
        px = rng.normal(size=(t * h * w, 1536)).astype(np.float32)
        ours.append((arg, px))
        (images if kind == "image" else videos).append((arg, px))
        pad = c.image_token_id if kind == "image" else c.video_token_id
        groups = [1] * t if kind == "video" else [t]
        for g in groups:
            if kind == "video":
                ids += text(3)  # stands for the "<1.5 seconds>" timestamp text
            ids += [c.vision_start_token_id] + [pad] * (g * h * w // 4) + [c.vision_end_token_id]
    def cat(xs):
        if not xs:
            return None, None
        return np.asarray([g for g, _ in xs], np.int64), np.concatenate([p for _, p in xs])

    return np.asarray(ids, np.int64), cat(ours), cat(images), cat(videos)


LAYOUTS = {
    "text": [("text", 12)],
    "one_image": [("text", 4), ("image", (1, 4, 6)), ("text", 5)],
    "two_images": [("text", 3), ("image", (1, 6, 4)), ("text", 2), ("image", (1, 2, 8)), ("text", 4)],
    "video": [("text", 3), ("video", (2, 4, 4)), ("text", 4)],
    "image_and_video": [("text", 2), ("image", (1, 4, 4)), ("text", 2), ("video", (2, 2, 4)), ("text", 3)],
}


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "moe"])
def models(request):
    c = oracle.small_config(moe=request.param)
    hf = oracle.hf_model(c)
    return c, hf, oracle.params_from(hf, c)


def our_logits(c, params, ids, mask, grid, px):
    pos, _ = rope.get_rope_index(ids, None if grid is None else grid, None, mask,
                                 image_token_id=c.image_token_id, video_token_id=c.video_token_id)
    # The combined grid is passed as "images" for positions; split videos per group as HF does.
    out = Qwen3VL(c).apply({"params": params}, jnp.asarray(ids), jnp.asarray(pos),
                           None if mask is None else jnp.asarray(mask, jnp.int32),
                           None if px is None else jnp.asarray(px), None if grid is None else jnp.asarray(grid))
    return np.asarray(out["logits"])


def positions(c, ids, mask, images, videos):
    return rope.get_rope_index(ids, images, videos, mask, image_token_id=c.image_token_id,
                               video_token_id=c.video_token_id)


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


def test_padding_patches_do_not_change_features(models):
    """Static-shape padding (extra zero patches and zero grid rows) leaves real features unchanged."""
    c, _, params = models
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

"""From-scratch switches of the vision side: the position-grid init, the merger output init and per-frame
centring of the visual tokens."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from vlm_jax.configs import experiment as experiment_lib
from vlm_jax.configs.synthetic_tiny import get_config
from vlm_jax.model.vlm import Qwen3VL, init_params
from vlm_jax.train import data as data_lib


def _small_batch():
    c = get_config()
    world = dict(c.data.sources.synthetic.world)
    world["tasks"] = {"count": 1.0}
    c.data.sources.synthetic.world = world
    c.data.pipeline.update(seq_len=96, batch_size=1, max_patches=256, max_grids=8)
    experiment_lib.validate(c)
    pipe, _, _ = data_lib.make_pipeline(c.data, seed=0)
    return experiment_lib.model_config(c), next(iter(pipe))


def _config(**overrides):
    model_config, batch = _small_batch()
    model_config = model_config.copy_and_resolve_references()
    model_config.unlock()
    for key, value in overrides.items():
        target = model_config
        *path, leaf = key.split(".")
        for p in path:
            target = target[p]
        target[leaf] = value
    return model_config, batch


@pytest.mark.slow  # 26 s on 2 cores; `pytest -m slow` runs it
def test_sincos_position_grid_is_a_smooth_linear_code_of_row_and_col():
    config, _ = _config(**{"vision.pos_embed_init": "sincos", "vision.pos_embed_init_scale": 0.5})
    table = np.asarray(nn.unbox(init_params(config, jax.random.key(0)))["vision"]["pos_embed"])
    side = int(round(table.shape[0] ** 0.5))
    rows, cols = np.divmod(np.arange(table.shape[0]), side)
    # Row and column are read back exactly by a linear map (least squares with a bias).
    x = np.c_[table, np.ones(len(table))]
    coef, *_ = np.linalg.lstsq(x, np.c_[rows, cols].astype(float), rcond=None)
    np.testing.assert_allclose(x @ coef, np.c_[rows, cols], atol=1e-3)
    # Neighbours are closer than far cells, and every cell has its own code.
    d = np.linalg.norm(table[:, None] - table[None], axis=-1)
    assert d[0, 1] < d[0, side - 1] and d[0, side] < d[0, (side - 1) * side]
    assert np.all(d[~np.eye(len(d), dtype=bool)] > 1e-3)
    # "normal" (every model config's default; the main job overrides it) keeps Hugging Face's small random init.
    default, _ = _config(**{"vision.pos_embed_init": "normal", "vision.pos_embed_init_scale": 1.0})
    std = float(np.std(np.asarray(nn.unbox(init_params(default, jax.random.key(0)))["vision"]["pos_embed"])))
    assert 0.015 < std < 0.025


def test_unknown_position_grid_init_is_named():
    config, _ = _config(**{"vision.pos_embed_init": "learned"})
    with pytest.raises(ValueError, match="vision.pos_embed_init='learned'"):
        init_params(config, jax.random.key(0))


def _logits(config, params, batch, pixel_values):
    return Qwen3VL(config).apply({"params": params}, batch["input_ids"], batch["position_ids"], batch["segment_ids"],
                                 pixel_values, batch["grid_thw"])["logits"]


@pytest.mark.slow  # 27 to 133 s on 2 cores; `pytest -m slow` runs it
@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_zero_merger_output_starts_blind_but_trainable(scale):
    config, batch = _config(merger_out_init_scale=scale)
    params = nn.unbox(init_params(config, jax.random.key(0)))
    px = np.asarray(batch["pixel_values"])
    noise = np.random.default_rng(0).normal(size=px.shape).astype(px.dtype)
    changed = np.abs(np.asarray(_logits(config, params, batch, px)) - np.asarray(_logits(config, params, batch, noise)))
    if scale == 0.0:
        assert changed.max() == 0.0  # visual tokens and DeepStack features are exactly zero
        grads = jax.grad(lambda p: _logits(config, p, batch, px).sum())(params)
        assert float(np.abs(np.asarray(grads["merger"]["fc2"]["kernel"])).max()) > 0.0
    else:
        assert changed.max() > 1e-3


def test_center_per_frame_removes_each_frames_mean_and_zeroes_padding():
    from vlm_jax.model.vlm import center_per_frame

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(9, 4)).astype(np.float32) + 5.0  # a large shared component, as training grows
    frame = np.array([1, 1, 1, 2, 2, 3, 3, 3, 0])  # three frames of 3, 2 and 3 tokens, one padding row
    out = np.asarray(center_per_frame(tokens, frame))
    for f in (1, 2, 3):
        np.testing.assert_allclose(out[frame == f], tokens[frame == f] - tokens[frame == f].mean(0), atol=1e-5)
    assert np.all(out[frame == 0] == 0.0)


@pytest.mark.slow  # 45 s on 2 cores; `pytest -m slow` runs it
def test_centred_model_tokens_have_zero_mean_per_image_and_a_shared_shift_cannot_reach_the_decoder():
    config, batch = _config(merger_center=True)
    params = nn.unbox(init_params(config, jax.random.key(0)))
    model = Qwen3VL(config)
    tokens, deepstack = model.apply({"params": params}, batch["pixel_values"], batch["grid_thw"],
                                    method=Qwen3VL.encode_vision)
    per_image = int(np.prod(batch["grid_thw"][0])) // config.vision.spatial_merge_size**2
    assert np.abs(np.asarray(tokens[:per_image]).mean(0)).max() < 1e-5
    assert np.abs(np.asarray(deepstack[:, :per_image]).mean(1)).max() < 1e-5
    # The failure it guards against: a bias shared by every merged token. With centring it changes nothing.
    shifted = jax.tree.map(lambda a: a, params)
    shifted["merger"]["fc2"] = dict(shifted["merger"]["fc2"], bias=shifted["merger"]["fc2"]["bias"] + 3.0)
    px = np.asarray(batch["pixel_values"])
    np.testing.assert_allclose(_logits(config, shifted, batch, px), _logits(config, params, batch, px), atol=1e-4)
    plain, _ = _config(merger_center=False)
    moved = np.abs(np.asarray(_logits(plain, shifted, batch, px)) - np.asarray(_logits(plain, params, batch, px)))
    assert moved.max() > 1e-2


def test_centred_model_does_not_export_to_hugging_face():
    from vlm_jax.convert.hf import hf_config_from

    config, _ = _config(merger_center=True)
    with pytest.raises(ValueError, match="merger_center=True"):
        hf_config_from(config)

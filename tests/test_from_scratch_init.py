"""From-scratch init switches of the vision side: the position-grid init and the merger output init."""

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
    # The default keeps Hugging Face's small random init.
    default, _ = _config()
    std = float(np.std(np.asarray(nn.unbox(init_params(default, jax.random.key(0)))["vision"]["pos_embed"])))
    assert 0.015 < std < 0.025


def test_unknown_position_grid_init_is_named():
    config, _ = _config(**{"vision.pos_embed_init": "learned"})
    with pytest.raises(ValueError, match="vision.pos_embed_init='learned'"):
        init_params(config, jax.random.key(0))


def _logits(config, params, batch, pixel_values):
    return Qwen3VL(config).apply({"params": params}, batch["input_ids"], batch["position_ids"], batch["segment_ids"],
                                 pixel_values, batch["grid_thw"])["logits"]


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

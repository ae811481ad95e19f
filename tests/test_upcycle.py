"""Sparse upcycling (`vlm_jax/params/upcycle.py`): the MoE model made from a dense one computes the dense
model's logits exactly, through every MoE implementation, and the CLI writes a complete export."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tests.helpers import LAYOUTS, build, random_params, small_config
from vlm_jax.model import rope
from vlm_jax.model.vlm import Qwen3VL, llm_grid_thw
from vlm_jax.params import upcycle


def _logits(c, params, ids, pos, grid, px):
    return np.asarray(Qwen3VL(c).apply({"params": params}, ids, pos, None, px, grid)["logits"])


@pytest.fixture(scope="module")
def dense():
    c = small_config()
    rng = np.random.default_rng(0)
    ids, (grid, px), _, _ = build(rng, LAYOUTS["one_image"], c)
    ids = ids[None].astype(np.int32)
    pos, _ = rope.get_rope_index(ids, llm_grid_thw(grid, c), None, None, image_token_id=c.image_token_id,
                                 video_token_id=c.video_token_id)
    inputs = (ids, pos, grid.astype(np.int32), px)
    params = random_params(c, seed=3)
    return c, params, inputs, _logits(c, params, *inputs)


@pytest.mark.parametrize("experts_per_tok, impl", [(1, "ragged"), (2, "dense"), (2, "ragged")])
def test_upcycled_model_computes_the_dense_model(dense, experts_per_tok, impl):
    c, params, inputs, want = dense
    moe = upcycle.upcycle_config(c, num_experts=4, experts_per_tok=experts_per_tok)
    moe.text.moe_impl = impl
    moe.text.moe_gmm = "tiled"
    # A router far from uniform, so tokens really go to different experts.
    got = _logits(moe, upcycle.upcycle_params(params, moe, jax.random.key(1), router_std=1.0), *inputs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert moe.text.moe_intermediate_size == c.text.intermediate_size and moe.text.norm_topk_prob


def test_upcycle_refuses_what_it_cannot_convert(dense):
    c = dense[0]
    with pytest.raises(ValueError, match="already a mixture of 4 experts"):
        upcycle.upcycle_config(small_config(moe=True), 4, 1)
    with pytest.raises(ValueError, match="num_experts_per_tok=5 must be in"):
        upcycle.upcycle_config(c, 4, 5)
    moe = upcycle.upcycle_config(c, 4, 1)
    with pytest.raises(ValueError, match="no dense decoder MLP"):
        upcycle.upcycle_params({"decoder": {"layers": {}}}, moe, jax.random.key(0))


def test_cli_writes_a_complete_export(tmp_path, dense):
    from vlm_jax.inference.loading import PROCESSOR_CONFIG_FILE
    from vlm_jax.params.store import load_params, save_params

    c, params, inputs, want = dense
    src = save_params(params, c, tmp_path / "dense")
    (src / PROCESSOR_CONFIG_FILE).write_text(json.dumps({"min_pixels": 4096}))
    assert upcycle.main([f"--src={src}", f"--dst={tmp_path / 'moe'}", "--num_experts=3",
                         "--experts_per_tok=2"]) == 0
    moe, moe_params = load_params(tmp_path / "moe")
    assert (moe.text.num_experts, moe.text.num_experts_per_tok) == (3, 2) and moe.name.endswith("upcycled-3x2")
    assert json.loads((tmp_path / "moe" / PROCESSOR_CONFIG_FILE).read_text()) == {"min_pixels": 4096}
    np.testing.assert_allclose(_logits(moe, moe_params, *inputs), want, rtol=1e-5, atol=1e-5)

"""YaRN rope scaling: config keys and their validation, frequencies, attention factor and cos/sin tables
equal to transformers' (plain text rope and interleaved MRoPE), the converter reading and writing it,
and the model's logits equal to the Hugging Face reference with it."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import LAYOUTS, TOL, build, positions, small_config
from vlm_jax.configs import model as model_configs
from vlm_jax.convert import hf
from vlm_jax.model import rope
from vlm_jax.model.vlm import Qwen3VL, param_shapes

# (rope_theta, head_dim, rope_scaling keys): the released theta and head_dim at several factors and
# training lengths, the untruncated ramp, DeepSeek-style mscale, an explicit attention factor with other
# betas, and a tiny head whose training length (8) the test positions run far past.
CASES = {
    "qwen3vl-x4": (5e6, 128, dict(factor=4.0, original_max_position_embeddings=262144)),
    "x2-32k": (5e6, 128, dict(factor=2.0, original_max_position_embeddings=32768)),
    "x8-4k-untruncated": (1e6, 128, dict(factor=8.0, original_max_position_embeddings=4096, truncate=False)),
    "x1.5-mscale": (1e4, 64, dict(factor=1.5, original_max_position_embeddings=2048, mscale=1.0,
                                  mscale_all_dim=0.707)),
    "x3-attention-factor": (5e6, 128, dict(factor=3.0, original_max_position_embeddings=262144,
                                           attention_factor=1.3, beta_fast=16.0, beta_slow=2.0)),
    "tiny-head-x4-len8": (5e6, 16, dict(factor=4.0, original_max_position_embeddings=8)),
}
SECTIONS = {128: (24, 20, 20), 64: (12, 10, 10), 16: (2, 3, 3)}


def _scaling(**keys):
    """Our `text.rope_scaling` with yarn and `keys`."""
    r = model_configs.base_config().text.rope_scaling
    r.update(rope_type="yarn", **keys)
    return r


def _yarn_overrides(**keys) -> dict:
    return {f"text.rope_scaling.{k}": v for k, v in {"rope_type": "yarn", **keys}.items()}


def _hf_text_config(transformers, theta, head_dim, keys):
    return transformers.Qwen3VLTextConfig(
        head_dim=head_dim, hidden_size=256, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=int(keys["original_max_position_embeddings"] * keys["factor"]),
        rope_parameters=dict(rope_type="yarn", rope_theta=theta, mrope_section=list(SECTIONS[head_dim]),
                             mrope_interleaved=True, **keys))


# ----------------------------------------------------------------------------- equal to transformers


@pytest.mark.parametrize("case", list(CASES))
def test_frequencies_and_attention_factor_match_transformers(oracle, case):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    theta, dim, keys = CASES[case]
    ref_inv, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](_hf_text_config(oracle.transformers, theta, dim, keys))
    inv, factor = rope.text_rope_frequencies(dim, theta, _scaling(**keys))
    assert inv.dtype == np.float32 and inv.shape == (dim // 2,)
    np.testing.assert_allclose(inv, ref_inv.numpy(), rtol=1e-6, atol=0)
    assert factor == pytest.approx(ref_factor, rel=1e-12)
    # The scaling does something: some frequencies moved, and the plain rope is the untouched base.
    plain = rope.inverse_frequencies(dim, theta)
    assert np.max(np.abs(inv / plain - 1)) > 0.1
    assert rope.text_rope_frequencies(dim, theta, model_configs.base_config().text.rope_scaling)[1] == 1.0


@pytest.mark.parametrize("kind, span", [("text", 512), ("mrope", 512), ("mrope", 1 << 20)])
@pytest.mark.parametrize("case", list(CASES))
def test_cos_sin_match_transformers(oracle, case, kind, span):
    """Qwen3-VL's text rotary embedding with yarn set, for 1D text positions (t = h = w) and for
    independent (t, h, w) positions over the interleaved sections, in [0, span).

    Up to 512 the tables agree to 1e-6. Further out they agree as well as a float32 angle can: torch's
    float32 pow is off by an ulp in a few frequencies (ours is correctly rounded), an error that grows with
    the position, so the bound there is 1e-6 plus 2^-22 of the angle."""
    torch = oracle.torch
    theta, dim, keys = CASES[case]
    cfg = _hf_text_config(oracle.transformers, theta, dim, keys)
    module = oracle.transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding(cfg)
    rng = np.random.default_rng(dim)
    pos = rng.integers(0, span, size=(1 if kind == "text" else 3, 2, 24))
    pos = np.broadcast_to(pos, (3, 2, 24)).copy()
    with torch.no_grad():
        ref_cos, ref_sin = module(torch.zeros(1, dtype=torch.float32), torch.as_tensor(pos))
    cos, sin = rope.mrope_cos_sin(jnp.asarray(pos), dim, theta, SECTIONS[dim], "interleaved", _scaling(**keys))
    axis = rope.mrope_axis_of_frequency(dim, SECTIONS[dim], "interleaved")
    angle = pos[axis, :, :].transpose(1, 2, 0) * module.inv_freq.numpy()  # [B, S, dim // 2]
    bound = 1e-6 if span <= 512 else 1e-6 + 2.0**-22 * np.concatenate([angle, angle], -1)
    assert np.all(np.abs(np.asarray(cos) - ref_cos.numpy()) <= bound)
    assert np.all(np.abs(np.asarray(sin) - ref_sin.numpy()) <= bound)


@pytest.mark.parity
def test_logits_match_reference_with_yarn(oracle):
    """A tiny model trained for 8 positions, run past them: HF builds its rotary embedding with yarn from
    our exported config, and the logits agree."""
    c = small_config(**_yarn_overrides(factor=4.0, original_max_position_embeddings=8))
    model = oracle.hf_model(c)
    rotary = model.model.language_model.rotary_emb
    assert rotary.rope_type == "yarn"
    assert rotary.attention_scaling == pytest.approx(0.1 * np.log(4.0) + 1.0)
    params = oracle.params_from(model, c)
    rng = np.random.default_rng(1)
    ids, (grid, px), (igrid, ipx), _ = build(rng, LAYOUTS["one_image"] + [("text", 20)], c)
    ids = ids[None]
    ref = oracle.hf_logits(model, c, ids, None, ipx, igrid)
    pos, _ = positions(c, ids, None, igrid, None)
    assert pos.max() > 3 * 8
    out = Qwen3VL(c).apply({"params": params}, jnp.asarray(ids), jnp.asarray(pos), None, jnp.asarray(px),
                           jnp.asarray(grid))
    err = np.max(np.abs(np.asarray(out["logits"]) - ref))
    assert err <= TOL, f"max |logits - reference| = {err:.2e}"


# ----------------------------------------------------------------------------- config


def test_yarn_config_validates_and_default_keeps_plain_rope():
    c = small_config(**_yarn_overrides(factor=4.0, original_max_position_embeddings=1024, mscale=1.0,
                                       mscale_all_dim=1.0))
    assert c.text.rope_scaling.rope_type == "yarn" and c.text.rope_scaling.factor == 4.0
    assert model_configs.get_config("tiny").text.rope_scaling.rope_type == "default"


@pytest.mark.parametrize("overrides, message", [
    ({"text.rope_scaling.rope_type": "linear"}, r"rope_scaling.rope_type='linear' \(expected one of default, yarn"),
    ({"text.rope_scaling.low_freq_factor": 1.0}, r"unknown config key\(s\) model.text.rope_scaling.low_freq_factor"),
    ({"text.rope_scaling.factor": 4.0}, r"text.rope_scaling.factor=4.0 is only used with text.rope_scaling.rope_type"),
    (_yarn_overrides(factor=4.0), r"original_max_position_embeddings=None must be a positive int"),
    (_yarn_overrides(factor=0.5, original_max_position_embeddings=64), r"factor=0.5 must be >= 1"),
    (_yarn_overrides(factor=4.0, original_max_position_embeddings=64.0), "original_max_position_embeddings=64.0 must"),
    (_yarn_overrides(factor=4.0, original_max_position_embeddings=64, mscale="1"), "mscale='1' must be a number"),
    (_yarn_overrides(factor=4.0, original_max_position_embeddings=64, beta_fast=0.5),
     r"beta_fast=0.5 and beta_slow=1.0 must satisfy"),
    (_yarn_overrides(factor=4.0, original_max_position_embeddings=64, attention_factor=0.0),
     r"attention_factor=0.0 must be > 0"),
    (_yarn_overrides(factor=4.0, original_max_position_embeddings=64, mscale=-1.0), r"mscale=-1.0 must be >= 0"),
])
def test_bad_rope_scaling_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


# ----------------------------------------------------------------------------- converter


@pytest.mark.parametrize("keys", [
    dict(factor=4.0, original_max_position_embeddings=32768),
    dict(factor=2.0, original_max_position_embeddings=8192, beta_fast=16.0, beta_slow=2.0, mscale=1.0,
         mscale_all_dim=0.707, truncate=False),
    dict(factor=3.0, original_max_position_embeddings=262144, attention_factor=1.25),
], ids=["plain", "mscale-untruncated", "attention-factor"])
def test_config_round_trip_with_yarn(keys):
    c = small_config(**_yarn_overrides(**keys))
    cfg = hf.hf_config_from(c)
    rp = cfg["text_config"]["rope_parameters"]
    assert rp["rope_type"] == "yarn" and rp["factor"] == keys["factor"]
    assert "attention_factor" in rp if "attention_factor" in keys else "attention_factor" not in rp
    c2 = hf.config_from_hf(json.loads(json.dumps(cfg)))
    assert c2.text.to_dict() == c.text.to_dict()


def test_checkpoint_round_trip_with_yarn(tmp_path):
    c = small_config(**_yarn_overrides(factor=4.0, original_max_position_embeddings=64))
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nn.unbox(param_shapes(c)))  # traced, not compiled
    out = hf.save_hf_checkpoint(zeros, c, tmp_path)
    assert json.loads((out / "config.json").read_text())["text_config"]["rope_parameters"]["rope_type"] == "yarn"
    c2, _ = hf.load_hf_checkpoint(out)
    assert c2.text.rope_scaling.to_dict() == c.text.rope_scaling.to_dict()


def _hf_with_rope(rope_scaling: dict, **text) -> dict:
    """A config.json in the transformers-4.57 layout: theta at text_config level, scaling in `rope_scaling`."""
    cfg = hf.hf_config_from(small_config())
    rp = cfg["text_config"].pop("rope_parameters")
    cfg["text_config"].update(rope_theta=rp["rope_theta"], **text, rope_scaling={
        "mrope_section": rp["mrope_section"], "mrope_interleaved": True, **rope_scaling})
    return cfg


def test_released_style_yarn_config_is_read():
    """Qwen's long-context recipe edits `rope_scaling` to type yarn; `type` is the legacy spelling."""
    c = hf.config_from_hf(_hf_with_rope({"type": "yarn", "factor": 3, "original_max_position_embeddings": 262144},
                                        max_position_embeddings=1_000_000))
    r = c.text.rope_scaling
    assert (r.rope_type, r.factor, r.original_max_position_embeddings) == ("yarn", 3.0, 262144)
    assert (r.beta_fast, r.beta_slow, r.truncate, r.attention_factor) == (32.0, 1.0, True, None)


def test_yarn_defaults_follow_transformers():
    """No factor: max_position_embeddings / original; no original length: max_position_embeddings; a
    top-level original_max_position_embeddings wins over the one in the dict."""
    r = hf.config_from_hf(_hf_with_rope({"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 4096},
                                        max_position_embeddings=16384)).text.rope_scaling
    assert (r.factor, r.original_max_position_embeddings) == (4.0, 4096)
    r = hf.config_from_hf(_hf_with_rope({"rope_type": "yarn", "factor": 2.0},
                                        max_position_embeddings=16384)).text.rope_scaling
    assert (r.factor, r.original_max_position_embeddings) == (2.0, 16384)
    r = hf.config_from_hf(_hf_with_rope({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096},
                                        max_position_embeddings=16384,
                                        original_max_position_embeddings=8192)).text.rope_scaling
    assert r.original_max_position_embeddings == 8192


@pytest.mark.parametrize("rope_scaling, message", [
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}, "text_config.rope_type='longrope'"),
    ({"rope_type": "linear", "factor": 2.0}, "text_config.rope_type='linear'"),
    ({"type": "dynamic", "factor": 2.0}, "text_config.rope_type='dynamic'"),
    ({"rope_type": "yarn", "factor": 2.0, "low_freq_factor": 1.0}, r"keys \['low_freq_factor'\]"),
    ({"rope_type": "yarn", "factor": 2.0, "partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
])
def test_unsupported_rope_scaling_is_named(rope_scaling, message):
    with pytest.raises(ValueError, match=message):
        hf.config_from_hf(_hf_with_rope(rope_scaling))

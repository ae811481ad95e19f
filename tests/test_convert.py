"""Checkpoint conversion: round trips through files and transformers, and clear errors."""

from __future__ import annotations

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.helpers import LAYOUTS, TOL, build, positions, small_config
from vlm_jax.convert import hf
from vlm_jax.convert.command import main as convert_main
from vlm_jax.model.vlm import Qwen3VL, init_params


def _ours(c, params, ids, grid, px, igrid, vgrid):
    pos, _ = positions(c, ids, None, igrid, vgrid)
    return np.asarray(Qwen3VL(c).apply({"params": params}, jnp.asarray(ids), jnp.asarray(pos), None,
                                       jnp.asarray(px), jnp.asarray(grid))["logits"])


@pytest.mark.parity
@pytest.mark.parametrize("moe_layout", [None, "released", "transformers"], ids=["dense", "moe-released",
                                                                               "moe-transformers"])
def test_export_loads_in_transformers_with_equal_logits(oracle, tmp_path, moe_layout):
    transformers = oracle.transformers
    c = small_config(moe=moe_layout is not None)
    params = init_params(c, jax.random.key(0))
    out = hf.save_hf_checkpoint(params, c, tmp_path / "hf", max_shard_bytes=200_000,
                                moe_layout=moe_layout or "released")
    assert (out / "model.safetensors.index.json").exists()  # small shards force an index
    cls = (transformers.Qwen3VLMoeForConditionalGeneration if moe_layout
           else transformers.Qwen3VLForConditionalGeneration)
    model = cls.from_pretrained(out, attn_implementation="eager").eval()
    rng = np.random.default_rng(0)
    ids, (grid, px), (igrid, ipx), (vgrid, vpx) = build(rng, LAYOUTS["image_and_video"], c)
    ids = ids[None]
    ref = oracle.hf_logits(model, c, ids, None, ipx, igrid, vpx, vgrid)
    assert np.max(np.abs(_ours(c, params, ids, grid, px, igrid, vgrid) - ref)) <= TOL

    c2, back = hf.load_hf_checkpoint(out)
    assert c2.text.to_dict() == c.text.to_dict() | {"moe_impl": c2.text.moe_impl}
    flat = jax.tree_util.tree_leaves_with_path
    for (pa, a), (pb, b) in zip(flat(nn.unbox(params)), flat(back)):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_round_trip(tmp_path):
    c = small_config()
    params = init_params(c, jax.random.key(1))
    hf.save_hf_checkpoint(params, c, tmp_path / "hf")
    assert convert_main(["hf-to-jax", "--hf_dir", str(tmp_path / "hf"), "--out", str(tmp_path / "jax")]) == 0
    assert convert_main(["jax-to-hf", f"--ckpt={tmp_path / 'jax'}", f"--out={tmp_path / 'hf2'}"]) == 0
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert json.loads((tmp_path / "hf2" / "config.json").read_text()) == json.loads(
        (tmp_path / "hf" / "config.json").read_text())


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one command, one of hf-to-jax, jax-to-hf"),
    (["to-jax", "--out=x"], "give exactly one command"),
    (["hf-to-jax", "--out=x"], "hf-to-jax needs --hf_dir"),
    (["jax-to-hf", "--ckpt=x", "--out=y", "--dtype=bfloat16"], "jax-to-hf does not take --dtype"),
    (["jax-to-hf", "--ckpt=x", "--out=y", "--moe_layout=sideways"], "--moe_layout"),
    (["jax-to-hf", "--ckpt=x", "--out=y", "--max_shard_gb=big"], "--max_shard_gb"),
    (["hf-to-jax", "--hf_dir={missing}", "--out=x"], "no config.json in"),
])
def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys, args, message):
    rc = convert_main([a.format(missing=tmp_path / "missing") for a in args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def _exported_once(tmp_path_factory):
    c = small_config()
    path = tmp_path_factory.mktemp("exported")
    hf.save_hf_checkpoint(init_params(c, jax.random.key(2)), c, path)
    return path


@pytest.fixture
def exported(_exported_once, tmp_path):
    """A fresh copy of one small HF export per test (tests edit it; the init compiles once)."""
    return shutil.copytree(_exported_once, tmp_path / "exported")


def _edit_tensors(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_tensor_is_named(exported):
    _edit_tensors(exported, lambda t: t.pop("model.language_model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(ValueError, match=r"missing.*attn/k_proj/kernel layers \[1\]"):
        hf.load_hf_checkpoint(exported)


def test_unexpected_tensor_is_named(exported):
    extra = {"model.visual.blocks.0.attn.extra.weight": np.zeros(3, np.float32)}
    _edit_tensors(exported, lambda t: t.update(extra))
    with pytest.raises(ValueError, match=r"unexpected tensors.*blocks\.0\.attn\.extra\.weight"):
        hf.load_hf_checkpoint(exported)


def test_shape_mismatch_is_named(exported):
    name = "model.language_model.layers.0.mlp.up_proj.weight"

    def shrink(t):
        t[name] = t[name][:-1]

    _edit_tensors(exported, shrink)
    with pytest.raises(ValueError, match=r"shape mismatch for model\.language_model\.layers\.0\.mlp\.up_proj\.weight"):
        hf.load_hf_checkpoint(exported)


@pytest.mark.parametrize("edit,key", [
    (lambda cfg: cfg["text_config"]["rope_parameters"].update(rope_type="linear", factor=2.0), "rope_type='linear'"),
    (lambda cfg: cfg["text_config"].update(hidden_act="gelu"), "text_config.hidden_act"),
    (lambda cfg: cfg["text_config"].update(attention_bias=True), "attention_bias"),
    (lambda cfg: cfg.update(model_type="llava"), "model_type"),
])
def test_unsupported_config_value_is_named(exported, edit, key):
    cfg = json.loads((exported / "config.json").read_text())
    edit(cfg)
    (exported / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=key):
        hf.load_hf_checkpoint(exported)


def test_missing_shard_is_named(tmp_path):
    c = small_config()
    out = hf.save_hf_checkpoint(init_params(c, jax.random.key(3)), c, tmp_path, max_shard_bytes=200_000)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        hf.load_hf_checkpoint(out)


def test_legacy_rope_scaling_config_is_read():
    """Released config.json files (transformers 4.57 era) keep MRoPE in `rope_scaling`."""
    c = small_config()
    cfg = hf.hf_config_from(c)
    rp = cfg["text_config"].pop("rope_parameters")
    cfg["text_config"]["rope_scaling"] = {"rope_type": "default", "mrope_section": rp["mrope_section"],
                                          "mrope_interleaved": True}
    cfg["text_config"]["rope_theta"] = rp["rope_theta"]
    c2 = hf.config_from_hf(cfg)
    assert tuple(c2.text.mrope_section) == tuple(c.text.mrope_section)
    assert c2.text.rope_theta == c.text.rope_theta and c2.text.mrope_layout == "interleaved"

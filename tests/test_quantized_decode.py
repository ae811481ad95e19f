"""Weight formats for generation (`vlm_jax.inference.quantize`): int8 weights are int8 and within the
per-channel rounding bound, bfloat16 weights are bfloat16, greedy generation with either agrees with
float32 on a tiny random model, and the generate CLI's --weights flag (tiny random models, CPU)."""

from __future__ import annotations

import json

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import build, small_config
from vlm_jax.configs.model import get_config, validate
from vlm_jax.generate import __main__ as generate_cli
from vlm_jax.inference import generate as generate_lib
from vlm_jax.inference import quantize
from vlm_jax.inference.generate import GenerateOutput
from vlm_jax.inference.quantize import Int8Weight, accuracy_cost, prepare_weights, quantize_int8
from vlm_jax.model.vlm import Qwen3VL, param_shapes
from vlm_jax.params.store import save_params


def _small(**overrides):
    """small_config cut to 2 text layers and a 2-block vision tower: each generate compiles in seconds."""
    return small_config(**{"text.num_layers": 2, "vision.depth": 2, "vision.deepstack_layers": (0,), **overrides})


def _flat(tree):
    return flax.traverse_util.flatten_dict(tree)


def _random_params(c, seed: int = 0):
    """Random values from the param shapes (no jitted init), spread like `tests.helpers.random_params`:
    norm scales around 1, every tensor perturbed so that every parameter matters."""
    rng = np.random.default_rng(seed)

    def value(path, s):
        name = getattr(path[-1], "key", None)
        x = rng.normal(size=s.shape) * (0.5 if name in ("scale", "bias") else 0.1) + (name == "scale")
        return jnp.asarray(x, s.dtype)

    return jax.tree_util.tree_map_with_path(value, nn.unbox(param_shapes(c)))


@pytest.fixture(scope="module")
def model():
    c = _small()
    return c, _random_params(c)


# ----------------------------------------------------------------------------- the param trees


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_int8_params_are_int8(moe):
    c = _small(moe=moe)
    params = _random_params(c)
    qtree = prepare_weights(params, "int8")
    q, flat = _flat(qtree), _flat(params)
    quantised = {p for p, x in q.items() if isinstance(x, Int8Weight)}
    # Every Dense kernel (text, vision, mergers) and the embedding / LM head; nothing else.
    expected = {p for p in flat if p[-1] == "kernel"} | {("embed",), ("lm_head",)}
    assert quantised == expected
    for p in quantised:
        w, x = q[p], flat[p]
        assert w.qvalue.dtype == jnp.int8 and w.qvalue.shape == x.shape and w.scale.dtype == jnp.float32
        axis = -1 if p == ("embed",) else -2  # the contracted axis has one scale
        assert w.scale.shape == tuple(1 if i == x.ndim + axis else n for i, n in enumerate(x.shape)), p
    for p in set(flat) - quantised:  # norms, biases, position table, MoE router and experts: as they were
        assert q[p] is flat[p] or np.array_equal(q[p], flat[p]), p
    if moe:
        assert any(p[-2:] == ("moe", "wi_gate") for p in set(flat) - quantised)
    f32 = quantize.nbytes([flat[p] for p in quantised])
    i8 = quantize.nbytes([q[p] for p in quantised])
    # 1 byte per weight, plus one float32 scale per output channel (1/in of the weights: in >= 32 here).
    assert 0.25 < i8 / f32 < 0.25 * (1 + 4 / 32) + 1e-9
    ratio = quantize.decode_weight_bytes(qtree, c) / quantize.decode_weight_bytes(params, c)
    assert (0.3 < ratio < 1) if moe else (ratio < 0.3)  # MoE experts stay float32


def test_int8_by_hand():
    w = np.asarray([[1.0, -0.5, 0.0],
                    [0.25, 2.0, 0.0],
                    [-1.27, 0.3, 0.0]], np.float32)  # [in=3, out=3]; the last output channel is all zero
    q = quantize_int8(w, axis=-2)
    np.testing.assert_allclose(q.scale, [[0.01, 2.0 / 127, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(q.qvalue, [[100, -32, 0],  # -0.5 / (2/127) = -31.75
                                             [25, 127, 0],
                                             [-127, 19, 0]])  # 0.3 / (2/127) = 19.05
    assert q.qvalue.dtype == jnp.int8
    np.testing.assert_allclose(q.astype(jnp.float32), q.qvalue * np.asarray(q.scale), rtol=1e-7)
    # The tied embedding [V, D] gets one scale per row (the vocabulary is the head's output channel).
    e = quantize_int8(w.T, axis=-1)
    np.testing.assert_array_equal(e.qvalue, np.asarray(q.qvalue).T)
    np.testing.assert_allclose(np.asarray(e.T.astype(jnp.float32)), np.asarray(q.astype(jnp.float32)))


def test_int8_within_the_rounding_bound():
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(4, 64, 48)) * rng.uniform(0.01, 3, size=(4, 1, 48))).astype(np.float32)  # stacked
    q = quantize_int8(w, axis=-2)
    scale = np.abs(w).max(axis=-2, keepdims=True) / 127
    np.testing.assert_allclose(q.scale, scale, rtol=1e-6)
    err = np.abs(np.asarray(q.astype(jnp.float32)) - w)
    assert (err <= scale / 2 * (1 + 1e-5)).all()  # round to nearest: at most half a step per channel
    assert err.max() > 0.3 * scale.max() / 2  # and not exact: it did round
    # Each layer of the stack has its own scales, so a layer with small weights keeps its precision.
    assert not np.allclose(q.scale[0], q.scale[1])


def test_bfloat16_and_float32_params(model):
    _, params = model
    assert prepare_weights(params, "float32") is params or jax.tree.all(
        jax.tree.map(lambda a, b: a is b, prepare_weights(params, "float32"), params))
    b = prepare_weights(params, "bfloat16")
    assert {x.dtype for x in jax.tree.leaves(b)} == {jnp.dtype(jnp.bfloat16)}
    assert quantize.nbytes(b) * 2 == quantize.nbytes(params)


def test_bad_weights_are_named(model):
    _, params = model
    with pytest.raises(ValueError, match=r"weights='int4' is not a weights format; choose from float32, bfloat16"):
        prepare_weights(params, "int4")
    with pytest.raises(ValueError, match="already hold int8 weights"):
        prepare_weights(prepare_weights(params, "int8"), "bfloat16")


# ----------------------------------------------------------------------------- generation


def _prompts(c):
    rng = np.random.default_rng(0)
    a, (grid, px), _, _ = build(rng, [("text", 4), ("image", (1, 4, 6)), ("text", 5)], c)
    b, _, _, _ = build(rng, [("text", 9)], c)
    return [a, b], px, grid


# (mean, max) bounds on |logits - float32 logits| as fractions of the float32 logits' spread (std ~1
# here). bfloat16 keeps 8 bits of mantissa (a relative error of at most 2^-9 per weight); int8 rounds each
# weight by at most half a step, max|w| / 254 of its output channel. Through 2 layers and the head that
# gives logit errors of a few percent of the spread on average, well under most top-1 / top-2 gaps.
BOUNDS = {"bfloat16": (0.02, 0.1), "int8": (0.05, 0.4)}


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_generation_agrees_with_float32(model, weights):
    c, params = model
    prompts, px, grid = _prompts(c)
    r = accuracy_cost(c, params, prompts, pixel_values=px, grid_thw=grid, weights=(weights,), max_new_tokens=8)[weights]
    mean_bound, max_bound = BOUNDS[weights]
    spread = r["float32_logit_std"]
    assert 0 < r["mean_abs_logit_error"] < mean_bound * spread, r
    assert r["max_abs_logit_error"] < max_bound * spread, r
    assert r["greedy_token_agreement"] >= 0.8 and r["teacher_forced_top1_agreement"] >= 0.9, r


@pytest.mark.slow
def test_int8_scan_decode_matches_unrolled(model):
    """The int8 tree through nn.scan (stacked int8 values and scales sliced per layer) and through the
    per-layer copies gives the same tokens."""
    c, params = model
    prompts, px, grid = _prompts(c)
    q = prepare_weights(params, "int8")
    run = lambda layers: generate_lib.generate(c, q, prompts, pixel_values=px, grid_thw=grid, max_new_tokens=8,
                                               decode_layers=layers).tokens
    np.testing.assert_array_equal(run("scan"), run("unrolled"))


def test_int8_forward_uses_the_dequantised_weights(model):
    """One forward pass with the int8 tree equals the float forward with the dequantised weights put back."""
    c, params = model
    q = prepare_weights(params, "int8")
    deq = jax.tree.map(lambda x: x.astype(jnp.float32) if isinstance(x, Int8Weight) else x, q,
                       is_leaf=lambda x: isinstance(x, Int8Weight))
    ids = np.random.default_rng(1).integers(20, 400, (1, 12)).astype(np.int32)
    pos = np.broadcast_to(np.arange(12, dtype=np.int32), (3, 1, 12))
    fwd = jax.jit(lambda p: Qwen3VL(c).apply({"params": p}, ids, pos)["logits"])
    a, b, f = fwd(q), fwd(deq), fwd(params)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert float(jnp.max(jnp.abs(a - f))) > 1e-3  # and they are not the float weights


# ----------------------------------------------------------------------------- the CLI flag


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    c = get_config("tiny")
    c.vision.update(depth=2, deepstack_layers=(0,), full_attention_layers=(0, 1))
    c.text.update(num_layers=2)
    validate(c)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (np.ones(s.shape, s.dtype) if "scale" in jax.tree_util.keystr(path)
                         else (0.05 * rng.standard_normal(s.shape)).astype(s.dtype)), nn.unbox(param_shapes(c)))
    out = tmp_path_factory.mktemp("qckpt") / "final"
    save_params(params, c, out)
    (out / "processor_config.json").write_text(json.dumps({"min_pixels": 64 * 64, "max_pixels": 64 * 64}))
    return out


def test_cli_weights_flag(ckpt, capsys, monkeypatch):
    seen = []

    def fake_generate(config, params, **kw):  # records the params the CLI generates with
        seen.append(params)
        return GenerateOutput(tokens=np.asarray([[40, 41]]), lengths=np.asarray([2]), finished=np.asarray([False]),
                              prompt_bucket=16)

    monkeypatch.setattr(generate_lib, "generate", fake_generate)
    base = [f"--checkpoint={ckpt}", "--prompt=hi", "--max_new_tokens=2"]
    for weights in ("float32", "bfloat16", "int8"):
        assert generate_cli.main(base + [f"--weights={weights}"]) == 0
    assert generate_cli.main(base) == 0  # the default
    f32, bf16, int8, default = seen
    assert {x.dtype for x in jax.tree.leaves(f32)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
    assert isinstance(int8["decoder"]["layers"]["mlp"]["up_proj"]["kernel"], Int8Weight)
    assert isinstance(int8["embed"], Int8Weight)
    assert jax.tree.structure(default) == jax.tree.structure(f32)
    capsys.readouterr()
    for bad in ("int4", "fp8", ""):
        assert generate_cli.main(base + [f"--weights={bad}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --weights=") and "choose from float32, bfloat16, int8" in err, err
        assert len(err.strip().splitlines()) == 1
    assert len(seen) == 4  # a bad value fails before generating


@pytest.mark.slow
def test_cli_int8_end_to_end(ckpt, capsys, monkeypatch):
    """The real generate with int8 weights from the CLI on an image prompt (random weights: the reply may
    be empty text, so the generated tokens are checked)."""
    from PIL import Image

    real, outs = generate_lib.generate, []

    def spy(config, params, **kw):
        assert isinstance(params["embed"], Int8Weight)
        outs.append(real(config, params, **kw))
        return outs[-1]

    monkeypatch.setattr(generate_lib, "generate", spy)
    img = ckpt.parent / "a.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(img)
    rc = generate_cli.main([f"--checkpoint={ckpt}", "--prompt=How many circles?", f"--image={img}",
                            "--max_new_tokens=3", "--weights=int8"])
    assert rc == 0 and len(outs) == 1 and 1 <= outs[0].lengths[0] <= 3
    assert ((outs[0].tokens >= 0) & (outs[0].tokens < 1024)).all()

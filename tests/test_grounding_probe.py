"""The grounding diagnosis: its config options and the generated-box correlation it reports."""

import importlib.util
import json
from pathlib import Path

import pytest

from vlm_jax.configs import experiment as experiment_lib
from vlm_jax.configs import grounding_probe

_SPEC = importlib.util.spec_from_file_location(
    "probe_grounding", Path(__file__).resolve().parents[1] / "experiments" / "probe_grounding.py")
probe_grounding = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe_grounding)


def test_options_reach_the_config_and_unknown_ones_are_named():
    c = grounding_probe.get_config("objs=1,tasks=ground_box,pos=0.5,mz=0,merger=0.003,steps=70")
    experiment_lib.validate(c)
    world = c.data.sources.synthetic.world
    assert (world["max_objects"], world["max_distractors"], dict(world["tasks"])) == (1, 0, {"ground_box": 1.0})
    assert (c.model.vision.pos_embed_init, c.model.vision.pos_embed_init_scale) == ("sincos", 0.5)
    assert c.model.merger_out_init_scale == 0.0 and c.train.optimizer.merger_lr == 0.003
    assert c.train.num_train_steps == 70
    with pytest.raises(ValueError, match="unknown options \\['lr'\\]"):
        grounding_probe.get_config("lr=1")


def _results(tmp_path, boxes):
    preds = [{"family": "grounding", "reply": json.dumps([{"bbox_2d": p, "label": "x"}]), "answer": {"bbox_2d": t}}
             for p, t in boxes]
    preds.append({"family": "counting", "reply": "3", "answer": {"count": 3}})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"predictions": preds}))
    return path


def test_generated_correlation_tells_image_reading_from_a_constant_box(tmp_path):
    truth = [[100 * i, 50 * i, 100 * i + 200, 50 * i + 300] for i in range(6)]
    tracked = probe_grounding.generated_correlation(_results(tmp_path, [(t, t) for t in truth]))
    assert tracked == {"n": 6, "corr": [1.0, 1.0, 1.0, 1.0]}
    flipped = [[500 - t[0], t[1], t[2], t[3]] for t in truth]
    out = probe_grounding.generated_correlation(_results(tmp_path, list(zip(flipped, truth))))
    assert out["corr"][0] == -1.0
    constant = probe_grounding.generated_correlation(_results(tmp_path, [([1, 2, 3, 4], t) for t in truth]))
    assert constant["corr"] == [0.0, 0.0, 0.0, 0.0]
    assert probe_grounding.generated_correlation(tmp_path / "missing.json") is None


@pytest.fixture(scope="module")
def tiny_box_batch():
    import flax.linen as nn
    import jax

    from vlm_jax.model.vlm import init_params
    from vlm_jax.train import data as data_lib

    c = grounding_probe.get_config("objs=1,tasks=ground_box")  # the tiny model with 8-pixel patches
    c.data.pipeline.batch_size = 2
    batch = data_lib.first_batches(c.data, 4, seed=0)[0]
    return c.model, jax.device_get(nn.unbox(init_params(c.model, jax.random.key(0)))), batch


@pytest.mark.slow  # 27 to 133 s on 2 cores; `pytest -m slow` runs it
def test_attention_probe_reproduces_the_model_attention_output(tiny_box_batch):
    # The host-side softmax(q k / sqrt(d)) over captured q, k, times captured v, must equal what the
    # model fed to o_proj: masks, RoPE, GQA grouping and layer order are then all right.
    import numpy as np

    config, params, b = tiny_box_batch
    got = probe_grounding.capture_attention_inputs(config, params, b)
    t = config.text
    assert len(got["q_norm"]) == len(got["o_proj"]) == t.num_layers
    where = probe_grounding.first_digit_positions(probe_grounding.load_tokenizer(), b)
    assert [k for _, _, k in where][:4] == [0, 1, 2, 3]
    for layer in (0, t.num_layers - 1):
        v = got["v_proj"][layer].reshape(*b["input_ids"].shape, t.num_kv_heads, t.head_dim)
        v = np.repeat(v, t.num_heads // t.num_kv_heads, axis=2)
        for r, c, _ in where[:4]:
            p = probe_grounding.attention_probs(config, got["q_norm"][layer], got["k_norm"][layer], b, r, c)
            out = np.einsum("hs,shd->hd", p, v[r]).reshape(-1)
            np.testing.assert_allclose(out, got["o_proj"][layer][r, c], atol=2e-5, rtol=1e-4)


@pytest.mark.slow  # 36 s on 2 cores; `pytest -m slow` runs it
def test_attention_probe_reads_a_uniform_head_as_the_uniform_share(tiny_box_batch):
    import jax

    config, params, b = tiny_box_batch
    uniform = jax.tree.map(lambda a: a, params)  # a copy of the nesting; q_norm scale 0 gives zero logits
    attn = uniform["decoder"]["layers"]["attn"]
    attn["q_norm"] = {"scale": 0 * attn["q_norm"]["scale"]}
    for row in probe_grounding.attention_to_image(config, uniform, [b]):
        assert row["image_mass_mean"] == pytest.approx(row["uniform_share"], abs=1e-4)
        assert row["top_token_share_best_head"] == pytest.approx(1 / row["image_tokens"], abs=1e-4)
    trained_like = probe_grounding.attention_to_image(config, params, [b])
    assert any(abs(r["image_mass_mean"] - r["uniform_share"]) > 1e-3 for r in trained_like)


def test_head_dim_option_keeps_mrope_sections_consistent():
    for hd in (32, 64, 128):
        c = grounding_probe.get_config(f"hd={hd}")
        experiment_lib.validate(c)
        assert sum(c.model.text.mrope_section) == hd // 2

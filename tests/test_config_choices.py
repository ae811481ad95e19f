"""Configs accept only what exists: every value of an enumerated key is implemented (the model traces
forward and backward with it), and any other value fails validation naming the key."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import LAYOUTS, build, small_config
from vlm_jax.configs import experiment, train_base
from vlm_jax.configs import model as model_configs
from vlm_jax.kernels import attention
from vlm_jax.model import layers, rope
from vlm_jax.model.vlm import Qwen3VL, llm_grid_thw, param_shapes
from vlm_jax.train import optimizer

# What else a value needs to be valid (the resampler changes the visual token count, so no DeepStack).
NEEDS = {("merger", "resampler"): {"deepstack": False, "vision.deepstack_layers": (), "resampler_num_queries": 4},
         ("attention_impl", "cudnn"): {"dtype": "bfloat16"},
         # The Pallas kernels trace in interpret mode off their platform (validation refuses them otherwise).
         ("attention_impl", "splash"): {"attention_interpret": True},
         ("attention_impl", "gpu"): {"attention_interpret": True},
         ("text.moe_gmm", "megablox"): {"text.moe_impl": "ragged"},
         ("text.moe_gmm", "tiled"): {"text.moe_impl": "ragged"},
         ("text.rope_scaling.rope_type", "yarn"): {"text.rope_scaling.factor": 4.0,
                                                   "text.rope_scaling.original_max_position_embeddings": 64}}


def _config(key, value):
    return small_config(moe=key.startswith("text.moe_"), **{key: value, **NEEDS.get((key, value), {})})


def _inputs(c):
    rng = np.random.default_rng(0)
    if c.merger == "resampler":  # one image: resampler_num_queries placeholders
        ids = np.asarray([30, c.vision_start_token_id, *[c.image_token_id] * c.resampler_num_queries,
                          c.vision_end_token_id, 31])
        grid = np.asarray([[1, 4, 6]])
        px = rng.normal(size=(24, 1536)).astype(np.float32)
    else:
        ids, (grid, px), _, _ = build(rng, LAYOUTS["one_image"], c)
    ids = ids[None].astype(np.int32)
    pos, _ = rope.get_rope_index(ids, llm_grid_thw(grid, c), None, None, image_token_id=c.image_token_id,
                                 video_token_id=c.video_token_id)
    return ids, pos, grid.astype(np.int32), px


@pytest.mark.parametrize("key, value", [(k, v) for k, vs in model_configs.CHOICES.items() for v in vs])
def test_every_model_choice_traces_forward_and_backward(key, value):
    if value == "cudnn" and jax.default_backend() != "gpu":
        pytest.skip("cuDNN attention needs a GPU")
    c = _config(key, value)
    model_configs.validate(c)
    ids, pos, grid, px = _inputs(c)
    shapes = nn.unbox(param_shapes(c))

    def loss(params):
        out = Qwen3VL(c).apply({"params": params}, ids, pos, None, px, grid)
        return jnp.mean(jax.nn.logsumexp(out["logits"].astype(jnp.float32), -1)) + out["aux_loss"], out["logits"]

    # Tracing (no compute) runs every code path the value selects: an unimplemented one raises here.
    grads, logits = jax.eval_shape(jax.grad(loss, has_aux=True), shapes)
    assert logits.shape == (1, ids.shape[1], c.text.vocab_size)
    assert jax.tree.map(lambda x: x.shape, grads) == jax.tree.map(lambda x: x.shape, shapes)


def test_model_choices_match_the_implementations():
    assert set(model_configs.CHOICES["attention_impl"]) == set(attention.IMPLS)
    assert set(model_configs.CHOICES["remat_policy"]) == set(layers.REMAT_POLICIES)
    assert train_base.REMAT_POLICIES == ("model", *model_configs.CHOICES["remat_policy"])


@pytest.mark.parametrize("key", list(model_configs.CHOICES))
def test_model_rejects_values_outside_the_choices(key):
    with pytest.raises(ValueError, match=f"invalid model config: {key}='bogus' \\(expected one of"):
        _config(key, "bogus")


def test_unimplemented_attention_impl_and_combination_are_rejected():
    with pytest.raises(ValueError, match="attention_impl='pallas'"):
        small_config(attention_impl="pallas")  # listed once, never implemented
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs dtype bfloat16 or float16, got 'float32'"):
        small_config(attention_impl="cudnn")
    assert small_config(attention_impl="cudnn", dtype="float16").attention_impl == "cudnn"


def test_every_schedule_is_implemented_and_distinct():
    """Warmup 10 steps to the peak, then each schedule's own decay to 0 at step 100."""
    frac = (33 - 10) / 90  # step 33: a quarter of the decay
    expect = {"constant": 1.0, "linear": 1 - frac, "cosine": 0.5 * (1 + np.cos(np.pi * frac))}
    assert set(expect) == set(train_base.SCHEDULES)
    for schedule, at_33 in expect.items():
        t = train_base.get_config(**{"optimizer.schedule": schedule, "optimizer.warmup_steps": 10,
                                     "num_train_steps": 100})
        lr = optimizer.lr_schedule(1.0, t)
        assert [float(lr(s)) for s in (5, 10, 33)] == pytest.approx([0.5, 1.0, at_33], abs=1e-6), schedule


@pytest.mark.parametrize("key, good, bad", [
    ("optimizer.schedule", train_base.SCHEDULES, "exponential"),
    ("remat_policy", train_base.REMAT_POLICIES, "offload"),
    ("optimizer.mu_dtype", ("float32", "bfloat16"), "int8"),
])
def test_train_choices(key, good, bad):
    for value in good:
        train_base.get_config(**{key: value})
    with pytest.raises(ValueError, match=f"{key}={bad!r}"):
        train_base.get_config(**{key: bad})


def test_experiment_eval_split_must_be_a_held_out_split():
    c = experiment.base_config()
    c.eval.split = "test"
    experiment.validate(c)
    c.eval.split = "heldout"
    with pytest.raises(ValueError, match="config.eval.split='heldout'; the world's held-out splits: eval, test"):
        experiment.validate(c)

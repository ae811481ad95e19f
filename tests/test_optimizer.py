"""Optimizer: groups, freezing (no state), weight-decay mask, schedules, clipping, layer decay."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlm_jax.configs import train_base
from vlm_jax.configs.model import get_config
from vlm_jax.model.vlm import param_shapes
from vlm_jax.train import optimizer as opt_lib
from vlm_jax.train.state import unbox

MODEL = get_config("tiny")
LRS = {"optimizer.llm_lr": 1e-2, "optimizer.vision_lr": 1e-3, "optimizer.merger_lr": 1e-4}


def _cfg(**kw):
    base = {"optimizer.warmup_steps": 0, "optimizer.schedule": "constant", **LRS}
    base.update(kw)
    return train_base.get_config(**base)


def _tree():
    """A small param tree with the model's naming (depth 4 ViT split into blocks_0_2 / blocks_2_4)."""
    r = np.random.default_rng(0)
    a = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
    return {
        "vision": {"patch_embed": {"kernel": a(6, 3), "bias": a(3)}, "pos_embed": a(4, 3),
                   "blocks_0_2": {"fc1": {"kernel": a(2, 3, 5)}, "norm1": {"scale": a(2, 3)}},
                   "blocks_2_4": {"fc1": {"kernel": a(2, 3, 5)}}},
        "merger": {"fc1": {"kernel": a(3, 4), "bias": a(4)}, "norm": {"scale": a(3), "bias": a(3)}},
        "deepstack_mergers_0": {"fc2": {"kernel": a(4, 2)}},
        "embed": a(7, 2),
        "decoder": {"layers": {"attn": {"q_proj": {"kernel": a(2, 2, 4)}, "q_norm": {"scale": a(2, 4)}}},
                    "final_norm": {"scale": a(2)}},
        "lm_head": a(2, 7),
    }


def _flat(tree):
    return {opt_lib.path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_groups_and_labels():
    labels = _flat(opt_lib.param_labels(_tree(), _cfg()))
    assert labels["vision/blocks_0_2/fc1/kernel"] == "vision"
    assert labels["merger/fc1/kernel"] == labels["deepstack_mergers_0/fc2/kernel"] == "merger"
    assert labels["embed"] == labels["decoder/layers/attn/q_proj/kernel"] == labels["lm_head"] == "llm"
    frozen = _flat(opt_lib.param_labels(_tree(), _cfg(**{"optimizer.freeze_vision": True})))
    assert {k for k, v in frozen.items() if v == "frozen"} == {k for k in labels if k.startswith("vision/")}
    with pytest.raises(ValueError, match="no optimizer group"):
        opt_lib.param_labels({"mystery": jnp.zeros(2)}, _cfg())


def test_every_model_param_has_a_group():
    for size in ("tiny", "tiny-moe"):
        labels = _flat(opt_lib.param_labels(unbox(param_shapes(get_config(size))), _cfg()))
        assert set(labels.values()) == {"vision", "merger", "llm"}


def test_decay_mask():
    mask = _flat(opt_lib.decay_mask(_tree(), _cfg()))
    no_decay = {k for k, v in mask.items() if not v}
    assert no_decay == {"vision/patch_embed/bias", "vision/pos_embed", "vision/blocks_0_2/norm1/scale",
                        "merger/fc1/bias", "merger/norm/scale", "merger/norm/bias", "embed",
                        "decoder/layers/attn/q_norm/scale", "decoder/final_norm/scale"}
    flags = {"optimizer.decay_norms": True, "optimizer.decay_biases": True, "optimizer.decay_embeddings": True}
    everything = _flat(opt_lib.decay_mask(_tree(), _cfg(**flags)))
    assert all(everything.values())


def test_frozen_params_have_no_optimizer_state():
    params = unbox(param_shapes(MODEL))
    sizes = _flat(jax.tree.map(lambda x: int(np.prod(x.shape)), params))
    n_vision = sum(v for k, v in sizes.items() if k.startswith("vision/"))
    n_merger = sum(v for k, v in sizes.items() if k.startswith(("merger/", "deepstack_mergers_")))
    n_total = sum(sizes.values())

    def state_size(**kw):
        tx = opt_lib.build_optimizer(_cfg(**kw), MODEL)
        return opt_lib.state_size(jax.eval_shape(tx.init, params))

    full = state_size()
    # Adam: mu and nu per trained param, plus a few scalar counters.
    assert 2 * n_total <= full < 2 * n_total + 32
    assert full - state_size(**{"optimizer.freeze_vision": True}) == 2 * n_vision
    s0 = state_size(**{"optimizer.freeze_vision": True, "optimizer.freeze_llm": True})  # stage S0: merger only
    assert 2 * n_merger <= s0 < 2 * n_merger + 32


def test_per_group_learning_rates_and_freezing():
    params = _tree()
    grads = jax.tree.map(jnp.ones_like, params)
    cfg = _cfg(**{"optimizer.weight_decay": 0.0, "optimizer.freeze_merger": True})
    tx = opt_lib.build_optimizer(cfg, MODEL)
    updates, _ = tx.update(grads, tx.init(params), params)
    u = _flat(updates)
    # First Adam step: m_hat / sqrt(v_hat) = 1 for a gradient of ones, so |update| = lr.
    for k, x in u.items():
        want = {"vision": 1e-3, "merger": 0.0, "deepstack_mergers_0": 0.0}.get(k.split("/")[0], 1e-2)
        np.testing.assert_allclose(np.abs(np.asarray(x)), want, rtol=1e-4, err_msg=k)


def test_weight_decay_applies_only_to_masked_params():
    params = _tree()
    zero = jax.tree.map(jnp.zeros_like, params)
    cfg = _cfg(**{"optimizer.weight_decay": 0.5})
    tx = opt_lib.build_optimizer(cfg, MODEL)
    u = _flat(tx.update(zero, tx.init(params), params)[0])
    p, mask = _flat(params), _flat(opt_lib.decay_mask(params, cfg))
    for k in u:
        lr = {"vision": 1e-3, "merger": 1e-4, "deepstack_mergers_0": 1e-4}.get(k.split("/")[0], 1e-2)
        want = -lr * 0.5 * np.asarray(p[k]) if mask[k] else 0.0
        np.testing.assert_allclose(u[k], want, rtol=1e-5, atol=1e-9, err_msg=k)


def test_clipping_uses_global_norm_over_trainable_grads():
    params = _tree()
    grads = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), params)
    cfg = _cfg(**{"optimizer.grad_clip_norm": 1.0, "optimizer.freeze_vision": True})
    tx = opt_lib.build_optimizer(cfg, MODEL)
    _, state = tx.update(grads, tx.init(params), params)
    trained = {k: v for k, v in _flat(grads).items() if not k.startswith("vision/")}
    norm = np.sqrt(sum(float(np.sum(np.square(v))) for v in trained.values()))
    # Adam's first moment after one step is (1 - b1) * clipped grad.
    mus = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
           if any(getattr(k, "name", None) == "mu" for k in path)]
    got = np.sqrt(sum(float(np.sum(np.square(m))) for m in mus)) / (1 - cfg.optimizer.b1)
    np.testing.assert_allclose(got, 1.0, rtol=1e-5)
    assert norm > 100  # clipping really happened (frozen vision grads excluded from the norm)


def test_vision_layer_decay():
    params = _tree()
    grads = jax.tree.map(jnp.ones_like, params)
    decay, depth = 0.5, MODEL.vision.depth  # 4
    cfg = _cfg(**{"optimizer.weight_decay": 0.0, "optimizer.vision_layer_decay": decay})
    tx = opt_lib.build_optimizer(cfg, MODEL)
    u = _flat(tx.update(grads, tx.init(params), params)[0])
    lr = 1e-3
    np.testing.assert_allclose(np.abs(u["vision/blocks_0_2/fc1/kernel"][:, 0, 0]), lr * decay ** (depth - np.arange(2)),
                               rtol=1e-4)
    np.testing.assert_allclose(np.abs(u["vision/blocks_2_4/fc1/kernel"][:, 0, 0]),
                               lr * decay ** (depth - np.arange(2, 4)), rtol=1e-4)
    np.testing.assert_allclose(np.abs(u["vision/patch_embed/kernel"]), lr * decay ** (depth + 1), rtol=1e-4)
    np.testing.assert_allclose(np.abs(u["merger/fc1/kernel"]), 1e-4, rtol=1e-4)  # other groups untouched
    np.testing.assert_allclose(np.abs(u["embed"]), 1e-2, rtol=1e-4)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules(schedule):
    cfg = train_base.get_config(**{"num_train_steps": 100, "optimizer.warmup_steps": 10,
                                   "optimizer.schedule": schedule, "optimizer.min_lr_ratio": 0.1})
    f = opt_lib.lr_schedule(1.0, cfg)
    np.testing.assert_allclose([f(0), f(5), f(10)], [0.0, 0.5, 1.0], atol=1e-6)
    frac = (55 - 10) / 90
    want = {"cosine": 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)), "linear": 1 - 0.9 * frac, "constant": 1.0}[schedule]
    np.testing.assert_allclose(f(55), want, rtol=1e-5)
    np.testing.assert_allclose(f(100), 1.0 if schedule == "constant" else 0.1, rtol=1e-5)


def test_train_config_is_locked_and_validated():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) train\.optimizer\.learning_rate;"):
        train_base.get_config(**{"optimizer.learning_rate": 1.0})
    with pytest.raises(ValueError, match=r"missing config key\(s\) train\.loss\.z_loss_coef"):
        c = train_base.base_config()
        del c.loss["z_loss_coef"]
        train_base.validate(c)
    c = train_base.get_config()
    with pytest.raises(AttributeError):
        c.optimizer.not_a_key = 1
    with pytest.raises(ValueError, match="schedule"):
        train_base.get_config(**{"optimizer.schedule": "step"})
    with pytest.raises(ValueError, match="nothing to train"):
        train_base.get_config(**{"optimizer.freeze_vision": True, "optimizer.freeze_merger": True,
                                 "optimizer.freeze_llm": True})
    c.optimizer.eps = -1.0
    with pytest.raises(ValueError, match="optimizer.eps"):
        train_base.validate(c)


def test_optax_masked_frozen_grads_are_zero():
    params = _tree()
    grads = jax.tree.map(jnp.ones_like, params)
    tx = opt_lib.build_optimizer(_cfg(**{"optimizer.freeze_llm": True}), MODEL)
    u = _flat(tx.update(grads, tx.init(params), params)[0])
    assert all(float(jnp.abs(u[k]).max()) == 0 for k in ("embed", "lm_head", "decoder/final_norm/scale"))
    assert isinstance(optax.set_to_zero().init(params), optax.EmptyState)

"""The train step on one device: overfitting, the non-finite guard, gradient accumulation,
freezing, remat override and per-task metrics."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fake_data import make_fake_batch, merge_process_batches
from vlm_jax.configs import train_base
from vlm_jax.configs.model import get_config
from vlm_jax.model.vlm import Qwen3VL
from vlm_jax.parallel import make_mesh
from vlm_jax.train import check_skips, init_train_state, losses, make_train_step, put_batch, stack_microbatches
from vlm_jax.train.state import train_state_from_params
from vlm_jax.train.step import CPU_FAST_COMPILE as FAST
from vlm_jax.train.step import NonFiniteAbort, global_batch_shapes

MODEL = get_config("tiny")


def _cfg(**kw):
    base = {"optimizer.warmup_steps": 0, "optimizer.schedule": "constant", "optimizer.llm_lr": 3e-3,
            "optimizer.vision_lr": 3e-3, "optimizer.merger_lr": 3e-3, "optimizer.weight_decay": 0.0,
            "loss.num_tasks": 2, "guard.max_consecutive_skips": 2}
    base.update(kw)
    return train_base.get_config(**base)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 1}, jax.devices()[:1])


@pytest.fixture(scope="module")
def setup(mesh):
    cfg = _cfg()
    batch = make_fake_batch(MODEL, 2, 32, 32, 3)
    step = make_train_step(MODEL, cfg, mesh, batch_shapes=global_batch_shapes(batch), compiler_options=FAST)
    return cfg, batch, step


@pytest.fixture(scope="module")
def params0(mesh):
    """Initial params, compiled once for the module (each init is a ~10 s CPU compile)."""
    return _np(init_train_state(MODEL, _cfg(), mesh, compiler_options=FAST).params)


def _fresh(params, cfg, mesh):
    return train_state_from_params(params, MODEL, cfg, mesh, compiler_options=FAST)


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def test_overfits_a_fixed_batch(setup, mesh, params0):
    cfg, batch, step = setup
    state = _fresh(params0, cfg, mesh)
    dev_batch = put_batch(batch, mesh)
    t0, losses = time.time(), []
    for _ in range(300):
        state, m = step(state, dev_batch)
        losses.append(float(m["loss"]))
        if losses[-1] < 0.1:
            break
    print(f"overfit: {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.4f}, {time.time() - t0:.1f}s")
    assert losses[-1] < 0.1, losses[::20]
    assert int(state.step) == len(losses) and int(state.skipped_steps) == 0
    # Per-task breakdown is consistent with the total.
    tw, tl = np.asarray(m["task_weight"]), np.asarray(m["task_loss"])
    assert tw.shape == (3,) and tw.sum() == pytest.approx(float(m["weight_sum"]))
    assert (tl * tw).sum() / tw.sum() == pytest.approx(float(m["ce_loss"]), rel=1e-4)


def test_nonfinite_steps_are_skipped_and_counted(setup, mesh, params0):
    cfg, batch, step = setup
    state = _fresh(params0, cfg, mesh)
    state, m = step(state, put_batch(batch, mesh))
    before = _np(state)
    bad = dict(batch, loss_weights=np.where(batch["loss_weights"] > 0, np.nan, 0).astype(np.float32))
    state, m = step(state, put_batch(bad, mesh))
    assert int(m["skipped"]) == 1 and int(m["consecutive_skips"]) == 1 and int(m["skipped_steps"]) == 1
    after = _np(state)
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)
    assert int(after.step) == int(before.step) + 1
    check_skips(m, cfg)  # 1 < limit 2: no abort
    state, m = step(state, put_batch(bad, mesh))
    with pytest.raises(NonFiniteAbort, match="2 consecutive train steps"):
        check_skips(m, cfg)
    state, m = step(state, put_batch(batch, mesh))
    assert int(m["skipped"]) == 0 and int(m["consecutive_skips"]) == 0 and int(m["skipped_steps"]) == 2
    assert np.isfinite(float(m["loss"]))


def test_grad_accumulation_equals_one_big_batch_with_freezing_and_remat(mesh, params0):
    """Two micro-batches (own vision buffers) == one batch holding both: the loss is normalised
    by the weight sum over the whole step. Also: frozen vision is untouched; remat is exact."""
    mbs = [make_fake_batch(MODEL, 2, 32, 32, seed, loss_normalization="sqrt") for seed in (5, 6)]
    big = merge_process_batches(mbs)
    # lr 1e-3: Adam's first update is lr * g / (|g| + eps), so float noise in near-zero grads
    # (summed in another order over micro-batches) moves params by up to ~lr * 1e-2.
    kw = {"optimizer.freeze_vision": True, "optimizer.llm_lr": 1e-3, "optimizer.merger_lr": 1e-3}
    cfg1 = _cfg(**kw)
    cfg2 = _cfg(grad_accum_steps=2, remat_policy="full", **kw)
    s1, s2 = _fresh(params0, cfg1, mesh), _fresh(params0, cfg2, mesh)
    step1 = make_train_step(MODEL, cfg1, mesh, batch_shapes=global_batch_shapes(big), compiler_options=FAST)
    stacked = stack_microbatches(mbs)
    step2 = make_train_step(MODEL, cfg2, mesh, batch_shapes=global_batch_shapes(stacked), compiler_options=FAST)
    s1, m1 = step1(s1, put_batch(big, mesh))
    s2, m2 = step2(s2, put_batch(stacked, mesh, microbatched=True))
    for k in ("loss", "weight_sum", "grad_norm", "num_tokens"):
        np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(m2["task_loss"], m1["task_loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), _np(s2.params), _np(s1.params))
    jax.tree.map(np.testing.assert_array_equal, _np(s1.params["vision"]), params0["vision"])
    assert np.abs(np.asarray(s1.params["merger"]["fc1"]["kernel"]) - params0["merger"]["fc1"]["kernel"]).max() > 1e-4


def _even_positions_loss(model_out, batch, weight_total):
    """A custom loss: mean cross-entropy over the supervised positions with an even index only."""
    ce, _ = losses.token_cross_entropy(model_out["logits"], batch["targets"])
    keep = (batch["loss_weights"] > 0) & (jnp.arange(ce.shape[-1]) % 2 == 0)
    n = jnp.sum(keep).astype(jnp.float32)
    return jnp.sum(jnp.where(keep, ce, 0.0)) / n, {"kept": n}


@pytest.mark.slow  # 30 s on 2 cores; `pytest -m slow` runs it
def test_custom_loss_plugs_in(mesh, params0):
    """make_train_step(loss_fn=...) optimises that loss: its value, gradient norm and first Adam
    update (lr * g / (|g| + eps), no clipping) match jax.grad of the same loss on the model directly."""
    lr, eps = 1e-3, 1e-6
    cfg = _cfg(**{"optimizer.llm_lr": lr, "optimizer.vision_lr": lr, "optimizer.merger_lr": lr,
                  "optimizer.grad_clip_norm": 0.0, "optimizer.eps": eps, "loss.num_tasks": 0})
    batch = make_fake_batch(MODEL, 2, 32, 32, 3)
    step = make_train_step(MODEL, cfg, mesh, batch_shapes=global_batch_shapes(batch), compiler_options=FAST,
                           loss_fn=_even_positions_loss, donate=False)
    state, m = step(_fresh(params0, cfg, mesh), put_batch(batch, mesh))
    assert set(m) >= {"loss", "kept", "grad_norm", "num_tokens"} and "ce_loss" not in m

    model = Qwen3VL(MODEL)
    jb = jax.tree.map(jnp.asarray, batch)

    def direct(params):
        out = model.apply({"params": params}, jb["input_ids"], jb["position_ids"], jb["segment_ids"],
                          jb["pixel_values"], jb["grid_thw"])
        return _even_positions_loss(out, jb, None)[0]

    loss, grads = jax.jit(jax.value_and_grad(direct))(params0)
    kept = np.sum((batch["loss_weights"] > 0) & (np.arange(batch["targets"].shape[-1]) % 2 == 0))
    assert float(m["kept"]) == kept and 0 < kept < np.sum(batch["loss_weights"] > 0)
    np.testing.assert_allclose(float(m["loss"]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(float(m["grad_norm"]), float(jax.tree.reduce(
        lambda a, g: a + float(jnp.sum(g**2)), grads, 0.0)) ** 0.5, rtol=1e-4)
    # Where |g| is near eps, float noise in g (another summation order) moves lr * g / (|g| + eps) a lot.
    big = jax.tree.map(lambda g: np.abs(g) > 100 * eps, _np(grads))
    assert sum(x.sum() for x in jax.tree.leaves(big)) > 0.5 * sum(x.size for x in jax.tree.leaves(big))
    expect = jax.tree.map(lambda p, g: p - lr * g / (np.abs(g) + eps), params0, _np(grads))
    jax.tree.map(lambda a, b, k: np.testing.assert_allclose(a[k], b[k], rtol=0, atol=lr * 1e-3),
                 _np(state.params), expect, big)
    # The default loss (every supervised position) gives another gradient: the custom one was used.
    default = make_train_step(MODEL, cfg, mesh, batch_shapes=global_batch_shapes(batch), compiler_options=FAST,
                              donate=False)
    _, m_default = default(_fresh(params0, cfg, mesh), put_batch(batch, mesh))
    assert abs(float(m_default["grad_norm"]) / float(m["grad_norm"]) - 1) > 0.01

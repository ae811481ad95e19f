"""Loss functions against straightforward numpy and torch implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.model.moe import load_balancing_loss
from vlm_jax.train import losses


def _np_ce(logits, targets):
    logits = logits.astype(np.float64)
    mx = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - mx).sum(-1)) + mx[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return lse - picked, lse


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    b, s, v = 3, 7, 11
    logits = (rng.standard_normal((b, s, v)) * 3).astype(np.float32)
    targets = rng.integers(0, v, (b, s)).astype(np.int32)
    weights = (rng.random((b, s)) * (rng.random((b, s)) > 0.3)).astype(np.float32)
    task_ids = rng.integers(0, 4, (b, s)).astype(np.int32)
    return logits, targets, weights, task_ids


def test_token_cross_entropy_matches_numpy(data):
    logits, targets, _, _ = data
    ce, lse = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    ref_ce, ref_lse = _np_ce(logits, targets)
    np.testing.assert_allclose(ce, ref_ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=1e-5)


def test_token_cross_entropy_gradient_is_softmax_minus_onehot(data):
    """The written-out backward pass: for loss = sum(a*ce + b*lse) the logits' gradient is
    (a + b) * softmax - a * onehot(target), computed here in float64 numpy."""
    logits, targets, weights, _ = data
    b = np.linspace(-0.5, 0.5, weights.size, dtype=np.float32).reshape(weights.shape)

    def loss(x):
        ce, lse = losses.token_cross_entropy(x, jnp.asarray(targets))
        return jnp.sum(weights * ce + b * lse)

    got = jax.grad(loss)(jnp.asarray(logits))
    x = logits.astype(np.float64)
    softmax = np.exp(x - x.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    onehot = np.eye(x.shape[-1])[targets]
    want = (weights + b)[..., None] * softmax - weights[..., None] * onehot
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # and the same as autodiff of the plain formula, in bfloat16 logits too (gradient in their dtype)
    lb = jnp.asarray(logits).astype(jnp.bfloat16)
    plain = lambda x: jnp.sum(weights * (jax.nn.logsumexp(x.astype(jnp.float32), -1) - jnp.take_along_axis(
        x.astype(jnp.float32), jnp.asarray(targets)[..., None], -1)[..., 0]) + b * jax.nn.logsumexp(
        x.astype(jnp.float32), -1))
    g16 = jax.grad(loss)(lb)
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g16, np.float32), np.asarray(jax.grad(plain)(lb), np.float32),
                               atol=1e-2)


def test_weighted_loss_matches_numpy(data):
    logits, targets, weights, _ = data
    out = losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss_coef=1e-3)
    ce, lse = _np_ce(logits, targets)
    np.testing.assert_allclose(out["ce_loss"], (weights * ce).sum() / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(out["z_loss"], 1e-3 * (weights * lse ** 2).sum() / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(out["loss"], out["ce_loss"] + out["z_loss"], rtol=1e-6)
    np.testing.assert_allclose(out["weight_sum"], weights.sum(), rtol=1e-6)


def test_token_mode_matches_torch(data):
    torch = pytest.importorskip("torch")
    logits, targets, weights, _ = data
    mask = weights > 0  # 'token' mode: weight 1 on supervised positions
    out = losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask.astype(np.float32)))
    t_targets = torch.from_numpy(np.where(mask, targets, -100).astype(np.int64))
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits).reshape(-1, logits.shape[-1]),
                                            t_targets.reshape(-1), ignore_index=-100)
    np.testing.assert_allclose(out["loss"], ref.item(), rtol=1e-5)
    # Per-token values as well (reduction='none').
    per_tok = torch.nn.functional.cross_entropy(torch.from_numpy(logits).permute(0, 2, 1),
                                                torch.from_numpy(targets.astype(np.int64)), reduction="none")
    ce, _ = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(ce, per_tok.numpy(), rtol=1e-5, atol=1e-5)


def test_sample_and_sqrt_weights_are_per_sample_means():
    """The pipeline's 'sample' weights (1/n_i) turn the loss into the mean of per-sample means."""
    rng = np.random.default_rng(1)
    v = 13
    lens = [2, 5, 9]
    logits = rng.standard_normal((1, sum(lens), v)).astype(np.float32)
    targets = rng.integers(0, v, (1, sum(lens))).astype(np.int32)
    ce, _ = _np_ce(logits, targets)
    bounds = np.cumsum([0, *lens])
    for mode, fn in (("sample", lambda n: 1 / n), ("sqrt", lambda n: 1 / np.sqrt(n))):
        w = np.concatenate([np.full(n, fn(n)) for n in lens]).astype(np.float32)[None]
        got = losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(w))["loss"]
        per_sample = np.array([ce[0, a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
        if mode == "sample":
            want = per_sample.mean()
        else:  # sample i weighs sqrt(n_i)
            want = (per_sample * np.sqrt(lens)).sum() / np.sqrt(lens).sum()
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_zero_weights_give_zero_and_ignore_nonfinite_masked_logits():
    logits = jnp.zeros((1, 3, 5)).at[0, 1].set(jnp.inf)
    targets = jnp.zeros((1, 3), jnp.int32)
    out = losses.cross_entropy_loss(logits, targets, jnp.zeros((1, 3)))
    assert float(out["loss"]) == 0.0
    w = jnp.asarray([[1.0, 0.0, 1.0]])
    out = losses.cross_entropy_loss(logits, targets, w)
    np.testing.assert_allclose(out["loss"], np.log(5), rtol=1e-6)
    g = jax.grad(lambda x: losses.cross_entropy_loss(x, targets, w)["loss"])(jnp.zeros((1, 3, 5)))
    assert np.all(np.isfinite(g)) and np.all(g[0, 1] == 0)


def test_per_task_sums_match_numpy(data):
    logits, targets, weights, task_ids = data
    ce, _ = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    ce_sum, w_sum = losses.per_task_sums(ce, jnp.asarray(weights), jnp.asarray(task_ids), num_tasks=2)
    ref_ce, _ = _np_ce(logits, targets)
    ids = np.where(task_ids <= 2, task_ids, 0)  # ids above num_tasks fall into 0
    for t in range(3):
        sel = ids == t
        np.testing.assert_allclose(ce_sum[t], (weights * ref_ce)[sel].sum(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w_sum[t], weights[sel].sum(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ce_sum.sum(), (weights * ref_ce).sum(), rtol=1e-5)


def test_moe_aux_loss_coefficient_and_switch_formula():
    rng = np.random.default_rng(2)
    e, t, k = 4, 10, 2
    probs = rng.dirichlet(np.ones(e), size=t)
    top = np.argsort(-probs, -1)[:, :k]
    counts = np.zeros(e)
    for row in top:
        counts[row] += 1
    stats = {"expert_counts": jnp.asarray(counts, jnp.float32),
             "router_prob_sum": jnp.asarray(probs.sum(0), jnp.float32), "tokens": jnp.asarray(t, jnp.float32)}
    aux = load_balancing_loss(stats, e)
    want = e * np.sum((counts / t) * probs.mean(0))
    np.testing.assert_allclose(aux, want, rtol=1e-5)
    np.testing.assert_allclose(losses.moe_aux_loss(aux, 0.001), 0.001 * want, rtol=1e-5)

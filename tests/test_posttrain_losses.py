"""Post-training losses (policy and distillation) against numpy written from the formulas: values,
gradients (jax.grad vs the analytic gradient), clipping, masks, limits and registries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.posttrain import distill_losses as dl
from vlm_jax.posttrain import policy_losses as pl
from vlm_jax.posttrain.aggregation import AGGREGATIONS, aggregate

# ----------------------------------------------------------------------------- numpy references


def np_agg_weights(mask, mode):
    """d(aggregate)/d(per-token value), [B, T]: the aggregation written as a weighted sum."""
    m = mask.astype(np.float64)
    n = m.sum(1, keepdims=True)
    rows = (n[:, 0] > 0).sum()
    if mode == "token_mean":
        return m / m.sum()
    if mode == "seq_mean_token_mean":
        return np.where(n > 0, m / np.maximum(n, 1) / rows, 0.0)
    return m / rows


def np_aggregate(per_token, mask, mode):
    m = mask.astype(np.float64)
    if mode == "token_mean":
        return (per_token * m).sum() / m.sum()
    rows = m.sum(1) > 0
    sums = (per_token * m).sum(1)[rows]
    if mode == "seq_mean_token_mean":
        sums = sums / m.sum(1)[rows]
    return sums.mean()


def np_log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_kl(logp, logq):
    return (np.exp(logp) * (logp - logq)).sum(-1)


def value_and_grad(fn, new_logp, *args, **kw):
    """(loss, metrics), d loss / d new_logp as float64 numpy."""
    (loss, metrics), grad = jax.value_and_grad(lambda x: fn(x, *args, **kw), has_aux=True)(jnp.asarray(new_logp))
    return float(loss), metrics, np.asarray(grad, np.float64)


@pytest.fixture
def rl():
    """B=4 rows with 6, 4, 2 and 0 valid tokens; old/ref near new; mixed-sign advantages."""
    rng = np.random.default_rng(0)
    b, t = 4, 6
    new = np.log(rng.uniform(0.05, 0.95, (b, t))).astype(np.float32)
    old = (new + rng.normal(0, 0.15, (b, t))).astype(np.float32)
    ref = (new + rng.normal(0, 0.3, (b, t))).astype(np.float32)
    mask = (np.arange(t)[None, :] < np.array([6, 4, 2, 0])[:, None]).astype(np.float32)
    adv = np.array([1.0, -0.7, 0.4, 0.9], np.float32)
    return new, old, ref, mask, adv


# ----------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregate_matches_numpy_and_skips_empty_rows(rl, mode):
    new, _, _, mask, _ = rl
    got = float(aggregate(jnp.asarray(new), jnp.asarray(mask), mode))
    np.testing.assert_allclose(got, np_aggregate(new.astype(np.float64), mask, mode), rtol=1e-6)
    assert float(aggregate(jnp.asarray(new), jnp.zeros_like(mask), mode)) == 0.0


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregate_denominator_makes_micro_batches_add_up(rl, mode):
    new, _, _, mask, _ = rl
    full = float(aggregate(jnp.asarray(new), jnp.asarray(mask), mode))
    count = mask.sum() if mode == "token_mean" else (mask.sum(1) > 0).sum()
    parts = [float(aggregate(jnp.asarray(new[s]), jnp.asarray(mask[s]), mode, denominator=count))
             for s in (slice(0, 1), slice(1, 4))]
    np.testing.assert_allclose(sum(parts), full, rtol=1e-6)


def test_unknown_aggregation_names_choices(rl):
    new, old, _, mask, adv = rl
    with pytest.raises(ValueError, match="seq_mean_token_mean"):
        pl.grpo_loss(new, old, adv, mask, aggregation="sum")


# ----------------------------------------------------------------------------- GRPO


def np_grpo(new, old, ref, mask, adv, mode, eps_low, eps_high, beta, estimator):
    new, old, ref = (x.astype(np.float64) for x in (new, old, ref))
    a = np.broadcast_to(adv[:, None], new.shape).astype(np.float64)
    r = np.exp(new - old)
    pg = -np.minimum(r * a, np.clip(r, 1 - eps_low, 1 + eps_high) * a)
    active = ~(((a > 0) & (r > 1 + eps_high)) | ((a < 0) & (r < 1 - eps_low)))
    d = new - ref
    kl, dkl = {"k1": (d, np.ones_like(d)), "k2": (d * d / 2, d), "k3": (np.exp(-d) + d - 1, 1 - np.exp(-d))}[estimator]
    loss = np_aggregate(pg + beta * kl, mask, mode)
    grad = np_agg_weights(mask, mode) * (-a * r * active + beta * dkl)
    return loss, grad, active


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_grpo_value_and_grad(rl, mode):
    new, old, ref, mask, adv = rl
    # Small eps so that some valid tokens clip for each advantage sign.
    kw = dict(clip_eps_low=0.05, clip_eps_high=0.08, beta=0.04, kl_estimator="k3")
    loss, metrics, grad = value_and_grad(pl.grpo_loss, new, old, adv, mask, ref_logp=ref, aggregation=mode, **kw)
    want, want_grad, active = np_grpo(new, old, ref, mask, adv, mode, 0.05, 0.08, 0.04, "k3")
    valid = mask > 0
    assert 0 < (~active & valid).sum() < valid.sum()  # the data exercises both branches
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics["clip_fraction"]), (~active & valid).sum() / valid.sum(), rtol=1e-6)
    r = np.exp(new.astype(np.float64) - old)
    np.testing.assert_allclose(float(metrics["ratio_mean"]), r[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["approx_kl"]), (r - 1 - np.log(r))[valid].mean(), rtol=1e-4)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_grpo_kl_estimators(rl, estimator):
    new, old, ref, mask, adv = rl
    loss, metrics, grad = value_and_grad(pl.grpo_loss, new, old, adv, mask, ref_logp=ref, beta=0.5,
                                         kl_estimator=estimator, aggregation="token_mean")
    want, want_grad, _ = np_grpo(new, old, ref, mask, adv, "token_mean", 0.2, 0.2, 0.5, estimator)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loss, float(metrics["pg_loss"]) + 0.5 * float(metrics["kl"]), rtol=1e-6)


def test_kl_penalty_values():
    d = np.array([-2.0, -0.3, 0.0, 0.4, 3.0])
    logp, ref = jnp.asarray(d + 0.1, jnp.float32), jnp.full(5, 0.1, jnp.float32)
    np.testing.assert_allclose(pl.kl_penalty(logp, ref, "k1"), d, atol=1e-6)
    np.testing.assert_allclose(pl.kl_penalty(logp, ref, "k2"), d * d / 2, atol=1e-6)
    k3 = np.asarray(pl.kl_penalty(logp, ref, "k3"))
    np.testing.assert_allclose(k3, np.exp(-d) + d - 1, rtol=1e-5)
    assert (k3 >= 0).all() and k3[2] == 0
    with pytest.raises(ValueError, match="k3"):
        pl.kl_penalty(logp, ref, "k4")


def test_grpo_beta_zero_needs_no_reference_and_beta_positive_does(rl):
    new, old, _, mask, adv = rl
    loss, metrics = pl.grpo_loss(new, old, adv, mask)
    assert np.isfinite(float(loss)) and "kl" not in metrics
    with pytest.raises(ValueError, match="ref_logp"):
        pl.grpo_loss(new, old, adv, mask, beta=0.04)


def test_grpo_clipping_zeroes_gradient_on_the_right_side():
    # Ratios 1.5 and 0.5 against eps 0.2: clipped when the advantage pushes further out.
    old = np.zeros((4, 1), np.float32)
    new = np.log(np.array([[1.5], [0.5], [0.5], [1.5]], np.float32))
    adv = np.array([1.0, 1.0, -1.0, -1.0], np.float32)
    mask = np.ones((4, 1), np.float32)
    _, metrics, grad = value_and_grad(pl.grpo_loss, new, old, adv, mask, aggregation="token_mean")
    # d(-r A)/d log r = -A r, / 4 tokens; rows 0 (A > 0, r > 1.2) and 2 (A < 0, r < 0.8) clip.
    np.testing.assert_allclose(grad[:, 0], [0.0, -0.5 / 4, 0.0, 1.5 / 4], rtol=1e-6)
    assert float(metrics["clip_fraction"]) == 0.5


def test_grpo_asymmetric_clip_high():
    new, old = np.log(np.array([[1.25]], np.float32)), np.zeros((1, 1), np.float32)
    adv, mask = np.ones(1, np.float32), np.ones((1, 1), np.float32)
    _, _, symmetric = value_and_grad(pl.grpo_loss, new, old, adv, mask, clip_eps_low=0.2)
    _, _, dapo = value_and_grad(pl.grpo_loss, new, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    assert symmetric[0, 0] == 0.0
    np.testing.assert_allclose(dapo[0, 0], -1.25, rtol=1e-6)


# ----------------------------------------------------------------------------- GSPO


def np_gspo(new, old, mask, adv, mode, eps_low, eps_high):
    m = mask.astype(np.float64)
    n = m.sum(1)
    log_s = ((new.astype(np.float64) - old) * m).sum(1) / np.maximum(n, 1)
    s = np.exp(log_s)
    seq = -np.minimum(s * adv, np.clip(s, 1 - eps_low, 1 + eps_high) * adv)
    active = ~(((adv > 0) & (s > 1 + eps_high)) | ((adv < 0) & (s < 1 - eps_low)))
    loss = np_aggregate(np.broadcast_to(seq[:, None], new.shape), mask, mode)
    # d s_i / d new_it = s_i / n_i; the aggregate weights of row i's tokens sum to its share.
    w = np_agg_weights(mask, mode).sum(1)
    grad = (w * -adv * s * active / np.maximum(n, 1))[:, None] * m
    return loss, grad, active, s


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "token_mean"])
def test_gspo_value_and_grad(rl, mode):
    new, old, _, mask, adv = rl
    kw = dict(clip_eps_low=0.02, clip_eps_high=0.03, aggregation=mode)
    loss, metrics, grad = value_and_grad(pl.gspo_loss, new, old, adv, mask, **kw)
    want, want_grad, active, s = np_gspo(new, old, mask, adv, mode, 0.02, 0.03)
    rows = mask.sum(1) > 0
    assert 0 < (~active[rows]).sum() < rows.sum()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics["clip_fraction"]), (~active[rows]).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["ratio_mean"]), s[rows].mean(), rtol=1e-5)


def test_gspo_rejects_per_token_advantages(rl):
    new, old, _, mask, _ = rl
    with pytest.raises(ValueError, match="gspo_token"):
        pl.gspo_loss(new, old, np.ones_like(new), mask)


@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.02, 0.03), (0.5, 0.5)])
def test_gspo_token_equals_gspo_for_sequence_advantages(rl, eps):
    new, old, _, mask, adv = rl
    kw = dict(clip_eps_low=eps[0], clip_eps_high=eps[1])
    seq_loss, _, seq_grad = value_and_grad(pl.gspo_loss, new, old, adv, mask, **kw)
    for a in (adv, np.broadcast_to(adv[:, None], new.shape)):
        tok_loss, _, tok_grad = value_and_grad(pl.gspo_token_loss, new, old, a, mask, **kw)
        np.testing.assert_allclose(tok_loss, seq_loss, rtol=1e-6)
        np.testing.assert_allclose(tok_grad, seq_grad, rtol=1e-5, atol=1e-8)


def test_gspo_token_with_per_token_advantages(rl):
    new, old, _, mask, _ = rl
    adv = np.random.default_rng(1).normal(size=new.shape).astype(np.float32)
    loss, _, grad = value_and_grad(pl.gspo_token_loss, new, old, adv, mask, clip_eps_low=0.02, clip_eps_high=0.03)
    m = mask.astype(np.float64)
    s = np.exp(((new.astype(np.float64) - old) * m).sum(1) / np.maximum(m.sum(1), 1))[:, None]
    per = -np.minimum(s * adv, np.clip(s, 0.98, 1.03) * adv)
    active = ~(((adv > 0) & (s > 1.03)) | ((adv < 0) & (s < 0.98)))
    w = np_agg_weights(mask, "seq_mean_token_mean")
    np.testing.assert_allclose(loss, np_aggregate(per, mask, "seq_mean_token_mean"), rtol=1e-5)
    # d s_it / d new_it = s_i (this token only).
    np.testing.assert_allclose(grad, w * -adv * s * active, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- SAPO


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("taus", [(1.0, 1.05), (0.5, 3.0)])
def test_sapo_value_and_grad(rl, taus):
    new, old, _, mask, adv = rl
    loss, metrics, grad = value_and_grad(pl.sapo_loss, new, old, adv, mask, tau_pos=taus[0], tau_neg=taus[1])
    a = np.broadcast_to(adv[:, None], new.shape).astype(np.float64)
    tau = np.where(a > 0, taus[0], taus[1])
    r = np.exp(new.astype(np.float64) - old)
    s = np_sigmoid(tau * (r - 1))
    want = np_aggregate(-(4 / tau) * s * a, mask, "seq_mean_token_mean")
    # d loss / d log r = -A * f'(r) * r, f'(r) = 4 s (1 - s).
    want_grad = np_agg_weights(mask, "seq_mean_token_mean") * -a * 4 * s * (1 - s) * r
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(float(metrics["gate_weight_mean"]), (4 * s * (1 - s))[mask > 0].mean(), rtol=1e-5)


@pytest.mark.parametrize("tau", [0.1, 1.0, 1.05, 4.0, 10.0])
def test_sapo_gradient_weight_is_one_on_policy(rl, tau):
    new, _, _, mask, adv = rl
    _, metrics, grad = value_and_grad(pl.sapo_loss, new, new, adv, mask, tau_pos=tau, tau_neg=tau)
    plain = np_agg_weights(mask, "seq_mean_token_mean") * -adv[:, None]  # the plain policy gradient
    np.testing.assert_allclose(grad, plain, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(float(metrics["gate_weight_mean"]), 1.0, rtol=1e-6)
    gate_slope = jax.grad(lambda r: pl.sapo_gate(r, tau))(1.0)
    np.testing.assert_allclose(float(gate_slope), 1.0, rtol=1e-6)


def test_sapo_gate_decays_faster_for_larger_tau():
    slope = lambda r, tau: float(jax.grad(lambda x: pl.sapo_gate(x, tau))(r))
    for r in (0.5, 1.5):
        assert slope(r, 4.0) < slope(r, 1.05) < slope(r, 1.0) < 1.0


# ----------------------------------------------------------------------------- all policy losses


@pytest.mark.parametrize("name", sorted(pl.POLICY_LOSSES))
def test_masked_tokens_do_not_change_loss_or_gradient(rl, name):
    new, old, ref, mask, adv = rl
    fn = pl.get_policy_loss(name, beta=0.1, clip_eps_low=0.1) if name != "sapo" else pl.get_policy_loss(name, beta=0.1)
    loss, metrics, grad = value_and_grad(fn, new, old, adv, mask, ref_logp=ref)
    pad = mask == 0
    for garbage in (50.0, -np.inf, np.nan):
        n2, o2, r2 = (np.where(pad, garbage, x).astype(np.float32) for x in (new, old, ref))
        loss2, metrics2, grad2 = value_and_grad(fn, n2, o2, adv, mask, ref_logp=r2)
        assert loss2 == loss
        np.testing.assert_array_equal(grad2, grad)
        for k in metrics:
            np.testing.assert_array_equal(metrics2[k], metrics[k])
    assert (grad[pad] == 0).all() and np.isfinite(grad).all()


@pytest.mark.parametrize("name", sorted(pl.POLICY_LOSSES))
def test_all_masked_batch_gives_zero(rl, name):
    new, old, _, mask, adv = rl
    loss, _, grad = value_and_grad(pl.POLICY_LOSSES[name], new, old, adv, np.zeros_like(mask))
    assert loss == 0.0 and (grad == 0).all()


@pytest.mark.parametrize("name", sorted(pl.POLICY_LOSSES))
def test_low_precision_inputs_give_float32(rl, name):
    new, old, _, mask, adv = rl
    lo, lo_old = jnp.asarray(new, jnp.bfloat16), jnp.asarray(old, jnp.bfloat16)
    loss, _ = pl.POLICY_LOSSES[name](lo, lo_old, adv, mask)
    ref, _ = pl.POLICY_LOSSES[name](lo.astype(jnp.float32), lo_old.astype(jnp.float32), adv, mask)
    assert loss.dtype == jnp.float32
    assert float(loss) == float(ref)


def test_policy_registry_and_bad_input(rl):
    new, old, _, mask, adv = rl
    assert set(pl.POLICY_LOSSES) == {"grpo", "gspo", "gspo_token", "sapo"}
    with pytest.raises(ValueError, match="grpo, gspo, gspo_token, sapo"):
        pl.get_policy_loss("ppo")
    with pytest.raises(ValueError, match="tau_pos"):
        pl.get_policy_loss("grpo", tau_pos=1.0)
    bound = pl.get_policy_loss("grpo", clip_eps_high=0.28, aggregation="token_mean")
    direct = pl.grpo_loss(new, old, adv, mask, clip_eps_high=0.28, aggregation="token_mean")
    assert float(bound(new, old, adv, mask)[0]) == float(direct[0])
    assert float(direct[0]) != float(pl.grpo_loss(new, old, adv, mask)[0])
    with pytest.raises(ValueError, match="old_logp shape"):
        pl.grpo_loss(new, old[:, :3], adv, mask)
    with pytest.raises(ValueError, match="advantages must be"):
        pl.sapo_loss(new, old, adv[:2], mask)
    with pytest.raises(ValueError, match="must be > 0"):
        pl.sapo_loss(new, old, adv, mask, tau_neg=0.0)


# ----------------------------------------------------------------------------- distillation


@pytest.fixture
def logits():
    rng = np.random.default_rng(2)
    student = rng.normal(0, 2, (2, 3, 5)).astype(np.float32)
    teacher = rng.normal(0, 2, (2, 3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    return student, teacher, mask


def softmax_grad(p, g):
    """d/dz of sum_v g_v * p_v-dependent loss given dL/dp = g: p * (g - sum p g)."""
    return p * (g - (p * g).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_kl_value_and_grad(logits, temperature):
    student, teacher, mask = logits
    loss, _, grad = value_and_grad(dl.forward_kl_loss, student, teacher, mask, temperature=temperature)
    ls, lt = np_log_softmax(student / temperature), np_log_softmax(teacher / temperature)
    w = np_agg_weights(mask, "token_mean")[..., None]
    np.testing.assert_allclose(loss, np_aggregate(np_kl(lt, ls), mask, "token_mean"), rtol=1e-5)
    np.testing.assert_allclose(grad, w * (np.exp(ls) - np.exp(lt)) / temperature, rtol=1e-5, atol=1e-7)


def test_forward_kl_zero_iff_same(logits):
    student, teacher, mask = logits
    same, _ = dl.forward_kl_loss(student, student, mask)
    shifted, _ = dl.forward_kl_loss(student, student + 3.0, mask)  # same softmax
    assert abs(float(same)) < 1e-6 and abs(float(shifted)) < 1e-6
    diff, _ = dl.forward_kl_loss(student, teacher, mask)
    assert float(diff) > 0.01


def test_reverse_kl_value_and_grad(logits):
    student, teacher, mask = logits
    loss, _, grad = value_and_grad(dl.reverse_kl_loss, student, teacher, mask, temperature=1.5)
    ls, lt = np_log_softmax(student / 1.5), np_log_softmax(teacher / 1.5)
    w = np_agg_weights(mask, "token_mean")[..., None]
    np.testing.assert_allclose(loss, np_aggregate(np_kl(ls, lt), mask, "token_mean"), rtol=1e-5)
    # d KL(p||q) / dz_k = p_k (log p_k - log q_k - KL).
    want = np.exp(ls) * (ls - lt - np_kl(ls, lt)[..., None]) / 1.5
    np.testing.assert_allclose(grad, w * want, rtol=1e-5, atol=1e-7)


def test_generalized_jsd_value_and_grad(logits):
    student, teacher, mask = logits
    beta = 0.3
    loss, _, grad = value_and_grad(dl.generalized_jsd_loss, student, teacher, mask, beta=beta)
    ls, lt = np_log_softmax(student), np_log_softmax(teacher)
    p, q = np.exp(ls), np.exp(lt)
    m = beta * q + (1 - beta) * p
    jsd = beta * (q * np.log(q / m)).sum(-1) + (1 - beta) * (p * np.log(p / m)).sum(-1)
    np.testing.assert_allclose(loss, np_aggregate(jsd, mask, "token_mean"), rtol=1e-5)
    # dJSD/dp_k = (1 - beta) log(p_k / m_k) (the other terms cancel), then through the softmax.
    want = softmax_grad(p, (1 - beta) * np.log(p / m))
    np.testing.assert_allclose(grad, np_agg_weights(mask, "token_mean")[..., None] * want, rtol=1e-4, atol=1e-7)


def test_generalized_jsd_limits(logits):
    student, teacher, mask = logits
    fwd = float(dl.forward_kl_loss(student, teacher, mask)[0])
    rev = float(dl.reverse_kl_loss(student, teacher, mask)[0])
    assert abs(fwd - rev) > 0.05  # the two ends differ, so the checks below tell them apart
    assert float(dl.generalized_jsd_loss(student, teacher, mask, beta=0.0)[0]) == fwd
    assert float(dl.generalized_jsd_loss(student, teacher, mask, beta=1.0)[0]) == rev
    # The special cases are the limits of JSD / beta and JSD / (1 - beta).
    # (the gap shrinks linearly in beta: about 1% at 1e-3 here)
    small = 1e-4
    np.testing.assert_allclose(float(dl.generalized_jsd_loss(student, teacher, mask, beta=small)[0]) / small,
                               fwd, rtol=3e-3)
    np.testing.assert_allclose(float(dl.generalized_jsd_loss(student, teacher, mask, beta=1 - small)[0]) / small,
                               rev, rtol=3e-3)
    with pytest.raises(ValueError, match="beta"):
        dl.generalized_jsd_loss(student, teacher, mask, beta=1.5)


def test_sampled_reverse_kl_value_grad_and_expectation(logits):
    student, teacher, mask = logits
    ls, lt = np_log_softmax(student), np_log_softmax(teacher)
    tokens = np.random.default_rng(3).integers(0, 5, mask.shape)
    s_logp = np.take_along_axis(ls, tokens[..., None], -1)[..., 0].astype(np.float32)
    t_logp = np.take_along_axis(lt, tokens[..., None], -1)[..., 0].astype(np.float32)
    loss, _, grad = value_and_grad(dl.reverse_kl_sampled_loss, s_logp, t_logp, mask)
    d = s_logp.astype(np.float64) - t_logp
    np.testing.assert_allclose(loss, np_aggregate(d, mask, "token_mean"), rtol=1e-5)
    np.testing.assert_allclose(grad, np_agg_weights(mask, "token_mean") * d, rtol=1e-5, atol=1e-7)

    # Over every token y of each position, weighted by p_S(y), the gradient wrt the student logits is
    # the exact reverse-KL gradient.
    def sampled(z, y):
        logp = jax.nn.log_softmax(z)
        pick = lambda x: jnp.take_along_axis(x, y[..., None], -1)[..., 0]
        return dl.reverse_kl_sampled_loss(pick(logp), pick(jnp.asarray(lt, jnp.float32)), mask)[0]

    expected = sum(np.exp(ls[..., v])[..., None] * np.asarray(jax.grad(sampled)(jnp.asarray(student),
                                                                                 jnp.full(mask.shape, v)))
                   for v in range(5))
    exact = np.asarray(jax.grad(lambda z: dl.reverse_kl_loss(z, teacher, mask)[0])(jnp.asarray(student)))
    np.testing.assert_allclose(expected, exact, rtol=1e-4, atol=1e-7)


def test_distill_masks_and_frozen_teacher(logits):
    student, teacher, mask = logits
    for name in ("forward_kl", "reverse_kl", "generalized_jsd"):
        fn = dl.DISTILL_LOSSES[name]
        loss = float(fn(student, teacher, mask)[0])
        garbage = np.where(mask[..., None] == 0, 100.0 * np.arange(5), student).astype(np.float32)
        assert float(fn(garbage, teacher, mask)[0]) == loss
        g_teacher = jax.grad(lambda t, f=fn: f(student, t, mask)[0])(jnp.asarray(teacher))
        assert (np.asarray(g_teacher) == 0).all()


def test_distill_handles_impossible_teacher_tokens(logits):
    student, teacher, mask = logits
    teacher = teacher.copy()
    teacher[..., 0] = -np.inf  # e.g. top-k stored teacher logits
    for fn in (dl.forward_kl_loss, dl.generalized_jsd_loss):
        loss, _, grad = value_and_grad(fn, student, teacher, mask)
        assert np.isfinite(loss) and np.isfinite(grad).all()


def test_distill_registry_and_bad_input(logits):
    student, teacher, mask = logits
    assert set(dl.DISTILL_LOSSES) == {"forward_kl", "reverse_kl", "generalized_jsd", "reverse_kl_sampled"}
    with pytest.raises(ValueError, match="forward_kl, reverse_kl"):
        dl.get_distill_loss("kl")
    with pytest.raises(ValueError, match="beta"):
        dl.get_distill_loss("forward_kl", beta=0.5)
    jsd = dl.get_distill_loss("generalized_jsd", beta=0.9)
    assert float(jsd(student, teacher, mask)[0]) == float(dl.generalized_jsd_loss(student, teacher, mask, beta=0.9)[0])
    with pytest.raises(ValueError, match="temperature"):
        dl.forward_kl_loss(student, teacher, mask, temperature=0.0)
    with pytest.raises(ValueError, match="mask shape"):
        dl.forward_kl_loss(student, teacher, mask[:1])
    with pytest.raises(ValueError, match="log-probs"):
        dl.reverse_kl_sampled_loss(student, teacher, mask)

"""RL and distillation objectives in the jitted train step: extra batch keys, the on-policy gradient,
exact additivity over micro-batches, and the sharding of extra keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tests.fake_data import fake_params, make_fake_batch, merge_process_batches
from vlm_jax.configs import train_base
from vlm_jax.configs.model import get_config
from vlm_jax.model.vlm import Qwen3VL
from vlm_jax.parallel import make_mesh, rules
from vlm_jax.posttrain.objectives import DistillObjective, PolicyObjective
from vlm_jax.train import make_train_step, put_batch, stack_microbatches
from vlm_jax.train.state import train_state_from_params
from vlm_jax.train.step import CPU_FAST_COMPILE as FAST
from vlm_jax.train.step import global_batch_shapes

MODEL = get_config("tiny")
ROWS, SEQ = 4, 24
ROWS_BIG = 2 * ROWS
RL_KEYS = ("old_logp", "advantages")
# Adam's first update is -lr * g / (|g| + eps); with lr = eps = 1e6 it is -g up to a relative 1e-6 * |g|,
# so params0 - params1 is the step's gradient (no clipping, no weight decay).
LR = 1e6
CFG_KW = {"optimizer.warmup_steps": 0, "optimizer.schedule": "constant", "optimizer.llm_lr": LR,
          "optimizer.vision_lr": LR, "optimizer.merger_lr": LR, "optimizer.eps": LR,
          "optimizer.weight_decay": 0.0, "optimizer.grad_clip_norm": 0.0}
CFG = train_base.get_config(**CFG_KW)
CFG_ACC = train_base.get_config(grad_accum_steps=2, **CFG_KW)
PARAMS0 = fake_params(MODEL)
_MODEL = Qwen3VL(MODEL)


def _rl_rows(seed: int, padding_rows: int = 0) -> dict[str, np.ndarray]:
    """One sequence per row (prompt then response, then padding), text only: loss weights 1 on the
    targets that are response tokens. The last `padding_rows` rows are empty."""
    g = np.random.default_rng(seed)
    b = make_fake_batch(MODEL, ROWS, SEQ, 16, seed, image_prob=0.0)  # for the empty vision buffers
    for k in ("input_ids", "segment_ids", "position_ids", "targets", "loss_weights", "task_ids"):
        b[k][...] = 0
    for r in range(ROWS - padding_rows):
        n = int(g.integers(SEQ // 2, SEQ + 1))
        prompt = int(g.integers(3, n - 3))
        ids = g.integers(32, MODEL.text.vocab_size, size=n)
        b["input_ids"][r, :n] = ids
        b["segment_ids"][r, :n] = 1
        b["position_ids"][:, r, :n] = np.arange(n)
        b["targets"][r, :n - 1] = ids[1:]
        b["loss_weights"][r, prompt - 1:n - 1] = 1.0
    return b


@jax.jit
def _logits(params, batch):
    return _MODEL.apply({"params": params}, batch["input_ids"], batch["position_ids"], batch["segment_ids"],
                        batch["pixel_values"], batch["grid_thw"])["logits"]


def _token_logp(params, batch):
    logp = jax.nn.log_softmax(_logits(params, batch).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]


@jax.jit
def _pg_loss(params, batch, advantages):
    """The plain policy gradient's loss, written out: -mean over sequences of A_i * mean_t log p(y_it)."""
    m = batch["loss_weights"] > 0
    logp = _token_logp(params, batch)
    per_row = jnp.sum(jnp.where(m, logp, 0.0), -1) / jnp.maximum(jnp.sum(m, -1), 1)
    valid = jnp.any(m, -1)
    return -jnp.sum(jnp.where(valid, advantages * per_row, 0.0)) / jnp.sum(valid)


_token_logp_jit = jax.jit(_token_logp)


def _with_rl(b, seed, off_policy: float = 0.0):
    """Adds old_logp (the current policy's, plus noise of scale `off_policy`) and mixed-sign advantages."""
    g = np.random.default_rng(seed)
    rows = b["targets"].shape[0]
    old = np.asarray(_token_logp_jit(PARAMS0, b))
    return dict(b, old_logp=(old + off_policy * g.standard_normal(old.shape)).astype(np.float32),
                advantages=(np.where(np.arange(rows) % 2, 1.0, -1.0) * g.uniform(0.5, 2, rows)).astype(np.float32))


def _concat(batches):
    """The single-batch equivalent of micro-batches: rows (and vision buffers) joined, extra keys too."""
    return merge_process_batches(batches) | {k: np.concatenate([b[k] for b in batches]) for k in RL_KEYS}


@pytest.fixture(scope="module")
def micro_tokens():
    """Two micro-batches with different token and sequence counts (one has an empty row)."""
    return [_rl_rows(1), _rl_rows(2, padding_rows=1)]


@pytest.fixture(scope="module")
def big_tokens(micro_tokens):
    return merge_process_batches(micro_tokens)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 1}, jax.devices()[:1])


_STEPS: dict = {}


def _step(mesh, objective, cfg, batch):
    """A compiled step per objective and config, shared by the tests (each is a ~20 s CPU compile)."""
    key = (repr(objective), cfg.grad_accum_steps)
    if key not in _STEPS:
        shapes = global_batch_shapes(batch, extra_keys=objective.extra_keys)
        _STEPS[key] = make_train_step(MODEL, cfg, mesh, batch_shapes=shapes, loss_fn=objective,
                                      compiler_options=FAST, donate=False)
    return _STEPS[key]


def _run(mesh, objective, batch, cfg=CFG):
    state = train_state_from_params(PARAMS0, MODEL, cfg, mesh, compiler_options=FAST)
    step = _step(mesh, objective, cfg, batch)
    dev = put_batch(batch, mesh, microbatched=cfg.grad_accum_steps > 1, extra_keys=objective.extra_keys)
    state, m = step(state, dev)
    return jax.tree.map(np.asarray, state.params), {k: np.asarray(v) for k, v in m.items()}


def _delta(params1):
    return jax.tree.map(lambda a, b: a - b, PARAMS0, params1)


def _max_abs(tree) -> float:
    return max(float(np.abs(x).max()) for x in jax.tree.leaves(tree))


@pytest.mark.slow  # 27 to 133 s on 2 cores; `pytest -m slow` runs it
@pytest.mark.parametrize("name", ["sapo", "grpo"])
def test_on_policy_step_is_the_plain_policy_gradient(mesh, big_tokens, name):
    batch = _with_rl(big_tokens, 0)  # old_logp = the current policy's log-probs
    params1, m = _run(mesh, PolicyObjective(name), batch)
    assert abs(float(m["ratio_mean"]) - 1) < 1e-5 and float(m["approx_kl"]) < 1e-6
    if name == "sapo":
        assert abs(float(m["gate_weight_mean"]) - 1) < 1e-5
    else:
        assert float(m["clip_fraction"]) == 0
    # Value at r = 1: -A per token for grpo, -(4 / tau) sigmoid(0) A = -2 A / tau for sapo (tau_pos 1,
    # tau_neg 1.05), averaged over the 7 non-empty sequences (the empty row does not count).
    adv, valid = batch["advantages"], (batch["loss_weights"] > 0).any(-1)
    scale = 1.0 if name == "grpo" else 2.0 / np.where(adv > 0, 1.0, 1.05)
    assert valid.sum() == ROWS_BIG - 1
    np.testing.assert_allclose(float(m["loss"]), np.mean((-scale * adv)[valid]), rtol=1e-5)
    # Gradient: the plain policy gradient, computed here without vlm_jax.posttrain.
    expect = jax.grad(_pg_loss)(PARAMS0, jax.tree.map(jnp.asarray, batch), jnp.asarray(adv))
    assert _max_abs(expect) > 1e-3  # the comparison below is not vacuous
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), _delta(params1),
                 jax.tree.map(np.asarray, expect))
    w = batch["loss_weights"] > 0
    assert float(m["response_length_mean"]) == pytest.approx(w.sum() / valid.sum())
    assert float(m["num_sequences"]) == valid.sum()


def test_off_policy_sapo_step_moves_params_with_finite_metrics(mesh, big_tokens):
    params1, m = _run(mesh, PolicyObjective("sapo"), _with_rl(big_tokens, 3, off_policy=0.3))
    for k in ("loss", "pg_loss", "ratio_mean", "approx_kl", "gate_weight_mean", "entropy", "grad_norm"):
        assert np.isfinite(m[k]), k
    assert int(m["skipped"]) == 0 and float(m["approx_kl"]) > 1e-3 and 0 < float(m["gate_weight_mean"]) < 1
    # Mean token entropy of a near-uniform fresh model: close to, and at most, log V.
    log_v = np.log(MODEL.text.vocab_size)
    assert 0.5 * log_v < float(m["entropy"]) <= log_v + 1e-4
    assert _max_abs(_delta(params1)) > 1e-4


@pytest.mark.slow  # 27 to 133 s on 2 cores; `pytest -m slow` runs it
def test_policy_objective_adds_up_over_micro_batches(mesh, micro_tokens):
    """grad_accum_steps = 2 on two micro-batches with different token and sequence counts (one empty row)
    gives the loss, metrics and update of one step on all rows: `weight_total` counts the whole batch
    (that it is the sequence count is checked by the on-policy test's loss value)."""
    batches = [_with_rl(mb, 10 + i, off_policy=0.3) for i, mb in enumerate(micro_tokens)]
    objective = PolicyObjective("sapo")
    p1, m1 = _run(mesh, objective, _concat(batches))
    p2, m2 = _run(mesh, objective, stack_microbatches(batches, extra_keys=objective.extra_keys), cfg=CFG_ACC)
    for k in ("loss", "pg_loss", "ratio_mean", "approx_kl", "gate_weight_mean", "entropy", "response_length_mean",
              "num_sequences", "grad_norm"):
        np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), p2, p1)


def test_distillation_step_on_teacher_logits(mesh, big_tokens):
    g = np.random.default_rng(5)
    teacher = 3 * g.standard_normal((ROWS_BIG, SEQ, MODEL.text.vocab_size))
    batch = big_tokens | {"teacher_logits": teacher.astype(np.float32)}
    params1, m = _run(mesh, DistillObjective("forward_kl"), batch)
    # The reported loss is KL(teacher || student) averaged over the trained tokens, from the model directly.
    s = np.asarray(jax.nn.log_softmax(_logits(PARAMS0, batch), -1))
    t = np.asarray(jax.nn.log_softmax(batch["teacher_logits"], -1))
    kl = np.sum(np.exp(t) * (t - s), -1)
    np.testing.assert_allclose(float(m["loss"]), kl[batch["loss_weights"] > 0].mean(), rtol=1e-5)
    assert 0 <= float(m["top1_agreement"]) < 0.2
    assert _max_abs(_delta(params1)) > 1e-4


# --- the objectives alone (no model): additivity, options, errors -------------------------------------------

def _fake_inputs(seed, rows=6, seq=10, vocab=16):
    g = np.random.default_rng(seed)
    w = (g.random((rows, seq)) < 0.6).astype(np.float32)
    w[-1] = 0  # an empty row
    batch = {"targets": jnp.asarray(g.integers(0, vocab, (rows, seq))), "loss_weights": jnp.asarray(w),
             "old_logp": jnp.asarray(-g.uniform(1, 4, (rows, seq)), jnp.float32),
             "ref_logp": jnp.asarray(-g.uniform(1, 4, (rows, seq)), jnp.float32),
             "advantages": jnp.asarray(g.standard_normal(rows), jnp.float32),
             "teacher_logits": jnp.asarray(g.standard_normal((rows, seq, vocab)), jnp.float32),
             "teacher_logp": jnp.asarray(-g.uniform(1, 4, (rows, seq)), jnp.float32)}
    return {"logits": jnp.asarray(g.standard_normal((rows, seq, vocab)), jnp.float32)}, batch


def _split(tree, at):
    return jax.tree.map(lambda x: x[:at], tree), jax.tree.map(lambda x: x[at:], tree)


OBJECTIVES = [
    PolicyObjective("sapo", {"beta": 0.1}),
    PolicyObjective("grpo", {"aggregation": "token_mean", "clip_eps_high": 0.28}, temperature=0.7, with_ref=True),
    PolicyObjective("gspo"),
    PolicyObjective("gspo_token", {"aggregation": "seq_mean_token_sum"}),
    DistillObjective("reverse_kl", {"aggregation": "seq_mean_token_mean"}),
    DistillObjective("generalized_jsd", {"beta": 0.5}),
    DistillObjective("reverse_kl_sampled"),
]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=repr)
def test_objectives_are_additive_over_row_splits(objective):
    out, batch = _fake_inputs(0)
    total = objective.weight_total(batch)
    loss, stats = objective(out, batch, total)
    (o1, b1), (o2, b2) = zip(_split(out, 2), _split(batch, 2))
    l1, s1 = objective(o1, b1, total)
    l2, s2 = objective(o2, b2, total)
    np.testing.assert_allclose(float(l1 + l2), float(loss), rtol=1e-5)
    whole, parts = objective.metrics(stats, total), objective.metrics(jax.tree.map(jnp.add, s1, s2), total)
    assert whole.keys() == parts.keys() and "loss" in whole
    for k in whole:
        np.testing.assert_allclose(parts[k], whole[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # Gradients add up too (the step sums micro-batch gradients).
    grad = lambda o, b: jax.grad(lambda z: objective({"logits": z}, b, total)[0])(o["logits"])
    np.testing.assert_allclose(np.concatenate([grad(o1, b1), grad(o2, b2)]), grad(out, batch), rtol=1e-5, atol=1e-7)


def test_policy_objective_options_and_metrics():
    out, batch = _fake_inputs(1)
    with_kl = PolicyObjective("sapo", {"beta": 0.1})
    assert with_kl.extra_keys == ("old_logp", "advantages", "ref_logp")
    assert PolicyObjective("grpo").extra_keys == ("old_logp", "advantages")
    m = with_kl.metrics(with_kl(out, batch, with_kl.weight_total(batch))[1], None)
    assert {"loss", "pg_loss", "kl", "approx_kl", "gate_weight_mean", "ratio_mean", "entropy",
            "response_length_mean"} <= set(m)
    np.testing.assert_allclose(float(m["loss"]), float(m["pg_loss"] + 0.1 * m["kl"]), rtol=1e-5)
    w = np.asarray(batch["loss_weights"]) > 0
    assert float(m["response_length_mean"]) == pytest.approx(w.sum() / w.any(-1).sum())
    assert float(with_kl.weight_total(batch)) == w.any(-1).sum()
    assert float(PolicyObjective("grpo", {"aggregation": "token_mean"}).weight_total(batch)) == w.sum()
    # Temperature: new log-probs are those of logits / T.
    hot = PolicyObjective("grpo", temperature=2.0)
    half = PolicyObjective("grpo")
    m_hot = hot.metrics(hot(out, batch, hot.weight_total(batch))[1], None)
    m_half = half.metrics(half({"logits": out["logits"] / 2}, batch, half.weight_total(batch))[1], None)
    np.testing.assert_allclose(float(m_hot["ratio_mean"]), float(m_half["ratio_mean"]), rtol=1e-6)


def test_objectives_reject_bad_options():
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'"):
        PolicyObjective("ppo")
    with pytest.raises(ValueError, match="no option"):
        PolicyObjective("sapo", {"clip_eps_low": 0.2})
    with pytest.raises(ValueError, match="denominator"):
        PolicyObjective("grpo", {"denominator": 4.0})
    with pytest.raises(ValueError, match="with_ref"):
        PolicyObjective("grpo", {"beta": 0.04}, with_ref=False)
    with pytest.raises(ValueError, match="temperature"):
        PolicyObjective("grpo", temperature=0.0)
    with pytest.raises(ValueError, match="unknown distillation loss 'jsd'"):
        DistillObjective("jsd")


def test_extra_keys_shard_over_the_batch_axes(micro_tokens):
    mesh = make_mesh({"fsdp": 4, "data": 2})
    shapes = {"targets": (8, 16), "advantages": (8,), "teacher_logits": (8, 16, 32)}
    extra = ("advantages", "teacher_logits")
    sh = rules.batch_shardings(shapes, mesh, extra_keys=extra)
    assert sh["advantages"].spec == P(("data", "fsdp"))
    assert sh["teacher_logits"].spec == P(("data", "fsdp"), None, None)
    assert sh["targets"].spec == P(("data", "fsdp"), None)
    micro = rules.batch_shardings({k: (2, *v) for k, v in shapes.items()}, mesh, microbatched=True, extra_keys=extra)
    assert micro["teacher_logits"].spec == P(None, ("data", "fsdp"), None, None)
    assert rules.batch_shardings({"old_logp": None}, mesh, extra_keys=("old_logp",))["old_logp"].spec == \
        P(("data", "fsdp"))
    with pytest.raises(ValueError, match="not divisible"):
        rules.batch_shardings({"advantages": (6,)}, mesh, extra_keys=extra)
    with pytest.raises(ValueError, match="unknown batch key 'advantages'"):
        rules.batch_shardings({"advantages": (8,)}, mesh)
    with pytest.raises(ValueError, match="CONTRACTS"):
        rules.batch_shardings({"targets": (8, 16)}, mesh, extra_keys=("targets",))
    with pytest.raises(ValueError, match="leading batch axis"):
        rules.batch_shardings({"advantages": (2,)}, mesh, microbatched=True, extra_keys=extra)
    # Shapes of a stacked local batch: the extra keys' batch axis follows the micro-batch axis.
    rl = [mb | {"old_logp": np.zeros((ROWS, SEQ), np.float32), "advantages": np.zeros(ROWS, np.float32)}
          for mb in micro_tokens]
    stacked = stack_microbatches(rl, extra_keys=RL_KEYS)
    shapes = global_batch_shapes(stacked, extra_keys=RL_KEYS)
    assert shapes["advantages"] == (2, ROWS) and shapes["old_logp"] == (2, ROWS, SEQ)
    with pytest.raises(ValueError, match="lacks"):
        put_batch(rl[0], make_mesh({"data": 1}, jax.devices()[:1]), extra_keys=("ref_logp",))

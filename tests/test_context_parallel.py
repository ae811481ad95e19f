"""Context parallelism (vlm_jax/parallel/context.py) on 8 simulated CPU devices (tests/conftest.py):
all_gather and ring attention, with and without causal load balancing, equal one device's attention
(outputs and gradients), and the tiny model's logits and gradients with the sequence axis split equal
one device's."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.fake_data import fake_params, make_fake_batch
from vlm_jax.configs import model as model_configs
from vlm_jax.configs import train_base
from vlm_jax.kernels.attention import dot_product_attention
from vlm_jax.model.vlm import Qwen3VL
from vlm_jax.parallel import context, make_mesh, rules
from vlm_jax.train import make_train_step, put_batch
from vlm_jax.train.state import train_state_from_params
from vlm_jax.train.step import CPU_FAST_COMPILE as FAST
from vlm_jax.train.step import global_batch_shapes

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

B, L, H, K, D = 2, 64, 4, 2, 8


def _segments() -> np.ndarray:
    """Packed rows whose boundaries fall inside chunks for every cp <= 8 (chunks of 4..32 tokens),
    with padding (0) at the end of both rows."""
    seg = np.zeros((B, L), np.int32)
    seg[0, :13], seg[0, 13:41], seg[0, 41:59] = 1, 2, 3
    seg[1, :7], seg[1, 7:50] = 1, 2
    return seg


def _inputs(seed: int = 0):
    r = np.random.default_rng(seed)
    q, k, v, ct = (r.normal(size=(B, L, n, D)).astype(np.float32) for n in (H, K, K, H))
    return q, k, v, ct


def _loss_and_grads(attend, q, k, v, ct):
    """(output, d<out, ct>/d(q, k, v)) of `attend(q, k, v)`, jitted."""

    def loss(q, k, v):
        out = attend(q, k, v)
        return jnp.sum(out * ct), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return jax.tree.map(np.asarray, (out, *grads))


@functools.cache
def _reference(with_segments: bool):
    q, k, v, ct = _inputs()
    seg = _segments() if with_segments else None
    attend = lambda q, k, v: dot_product_attention(q, k, v, q_segment_ids=seg, causal=True)  # noqa: E731
    return _loss_and_grads(attend, q, k, v, ct)


def _context_parallel(strategy, cp, load_balanced, with_segments=True):
    """Outputs and grads of context-parallel attention, in row order (inputs permuted outside the jit
    when load balanced, results permuted back)."""
    mesh = make_mesh({"sequence": cp, "data": -1})
    order = (lambda x: context.reorder_sequence(x, cp)) if load_balanced else (lambda x: x)
    back = (lambda x: context.inverse_reorder_sequence(x, cp)) if load_balanced else (lambda x: x)
    q, k, v, ct = _inputs()
    seg = _segments() if with_segments else None
    put = lambda x: jax.device_put(order(x), NamedSharding(mesh, P(None, "sequence")))  # noqa: E731
    seg_dev = None if seg is None else put(seg)

    def attend(q, k, v):
        return context.context_parallel_attention(q, k, v, seg_dev, strategy=strategy, load_balanced=load_balanced,
                                                  mesh=mesh)

    return [back(a) for a in _loss_and_grads(attend, put(q), put(k), put(v), put(ct))]


def _assert_matches(got, ref):
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=name)


CASES = [pytest.param(s, cp, lb, id=f"{s}-cp{cp}{'-lb' if lb else ''}")
         for s in ("all_gather", "ring") for cp in (2, 4, 8) for lb in (False, True)]


@pytest.mark.parametrize("strategy,cp,load_balanced", CASES)
def test_attention_matches_one_device(strategy, cp, load_balanced):
    t0 = time.time()
    got = _context_parallel(strategy, cp, load_balanced)
    print(f"{strategy} cp={cp} lb={load_balanced}: {time.time() - t0:.1f}s")
    _assert_matches(got, _reference(True))
    # Padding queries average every value (as one device does), so the test covers them too.
    assert np.abs(got[0][_segments() == 0]).max() > 0


@pytest.mark.parametrize("strategy", ["all_gather", "ring"])
def test_attention_without_segment_ids(strategy):
    _assert_matches(_context_parallel(strategy, 4, True, with_segments=False), _reference(False))


def test_attention_with_batch_and_heads_sharded_too():
    """Manual over `sequence` only: batch and head dims split over other mesh axes stay correct."""
    mesh = make_mesh({"sequence": 2, "data": 2, "tensor": 2})
    q, k, v, ct = _inputs()
    spec = P("data", "sequence", "tensor")
    put = lambda x, s=spec: jax.device_put(x, NamedSharding(mesh, s))  # noqa: E731
    seg = put(_segments(), P("data", "sequence"))
    for strategy in ("all_gather", "ring"):
        attend = functools.partial(_cp_attend, seg=seg, strategy=strategy, mesh=mesh)
        _assert_matches(_loss_and_grads(attend, put(q), put(k), put(v), put(ct)), _reference(True))


def _cp_attend(q, k, v, *, seg, strategy, mesh):
    with rules.sharding_context(mesh):  # the mesh comes from the context, as in the model
        return context.context_parallel_attention(q, k, v, seg, strategy=strategy)


def test_without_a_sequence_axis_it_is_plain_attention():
    q, k, v, _ = _inputs()
    seg = _segments()
    want = dot_product_attention(q, k, v, q_segment_ids=seg, causal=True)
    for strategy in context.STRATEGIES:  # no mesh in context
        np.testing.assert_array_equal(context.context_parallel_attention(q, k, v, seg, strategy=strategy), want)
    mesh = make_mesh({"data": -1})  # sequence axis of size 1
    assert context.sequence_shards("ring", mesh) == 1
    np.testing.assert_array_equal(context.context_parallel_attention(q, k, v, seg, strategy="ring", mesh=mesh), want)


def test_bad_inputs_raise():
    q, k, v, _ = _inputs()
    mesh = make_mesh({"sequence": 4, "data": -1})
    with pytest.raises(ValueError, match="unknown context_parallel strategy 'ulysses'"):
        context.context_parallel_attention(q, k, v, None, strategy="ulysses", mesh=mesh)
    with pytest.raises(ValueError, match="length 60 is not divisible by 8"):
        context.context_parallel_attention(q[:, :60], k[:, :60], v[:, :60], None, strategy="ring",
                                           load_balanced=True, mesh=mesh)
    with pytest.raises(ValueError, match="q has 64 tokens, k 32"):
        context.context_parallel_attention(q, k[:, :32], v[:, :32], None, strategy="all_gather", mesh=mesh)


# ---------------------------------------------------------------------------------------------
# The load-balanced layout.


def test_chunk_order_is_maxtext_reorder_sequence():
    # KERNELS.md section 3: for cp=2, tokens 0..7 -> [0, 1, 6, 7, 2, 3, 4, 5].
    np.testing.assert_array_equal(context.reorder_sequence(np.arange(8)[None], 2)[0], [0, 1, 6, 7, 2, 3, 4, 5])


@pytest.mark.parametrize("cp", [1, 2, 4, 8])
def test_reorder_and_inverse_are_inverse(cp):
    x = np.random.default_rng(cp).normal(size=(3, 2, 16 * cp, 5)).astype(np.float32)
    y = context.reorder_sequence(x, cp, axis=2)
    assert cp == 1 or not np.array_equal(y, x)
    np.testing.assert_array_equal(context.inverse_reorder_sequence(y, cp, axis=2), x)
    np.testing.assert_array_equal(context.reorder_sequence(context.inverse_reorder_sequence(x, cp, 2), cp, 2), x)
    np.testing.assert_array_equal(context.reorder_sequence(jnp.asarray(x), cp, axis=2), y)  # jax arrays too


@pytest.mark.parametrize("cp", [2, 4, 8])
def test_token_positions_follow_the_layout(cp):
    """Each shard's positions are the row indices its slice of the reordered row holds."""
    n = 4 * cp
    layout = context.reorder_sequence(np.arange(n), cp, axis=0)
    for shard in range(cp):
        local = layout[shard * n // cp:(shard + 1) * n // cp]
        np.testing.assert_array_equal(context.token_positions(shard, n // cp, cp, True), local)
        np.testing.assert_array_equal(context.token_positions(shard, n // cp, cp, False),
                                      np.arange(shard * n // cp, (shard + 1) * n // cp))


def test_reorder_batch_moves_every_sequence_axis():
    model = model_configs.get_config("tiny")
    batch = make_fake_batch(model, 2, 32, 32, 0)
    out = context.reorder_batch(batch, 2)
    for key, axis in context.BATCH_SEQ_AXIS.items():
        if axis is None:
            np.testing.assert_array_equal(out[key], batch[key])
        else:
            np.testing.assert_array_equal(out[key], context.reorder_sequence(batch[key], 2, axis))
            assert not np.array_equal(out[key], batch[key]) or not batch[key].any()
    back = context.inverse_reorder_batch(out, 2)
    jax.tree.map(np.testing.assert_array_equal, back, batch)
    with pytest.raises(ValueError, match=r"batch keys \['old_logp'\] have no known sequence axis"):
        context.reorder_batch({**batch, "old_logp": batch["targets"]}, 2)


# ---------------------------------------------------------------------------------------------
# The model.


def test_config_choices_are_the_strategies():
    assert model_configs.CHOICES["context_parallel"] == context.STRATEGIES
    c = model_configs.base_config()
    c.context_parallel_load_balance = True
    with pytest.raises(ValueError, match="context_parallel_load_balance=True needs context_parallel"):
        model_configs.validate(c)


def _model_config(strategy="none", load_balanced=False):
    c = model_configs.get_config("tiny")
    c.context_parallel, c.context_parallel_load_balance = strategy, load_balanced
    model_configs.validate(c)
    return c


def _logits_and_grads(c, params, batch, mesh):
    """Logits and d(mean token NLL)/d(params) of the model under `mesh` (sharded like a train step)."""
    model = Qwen3VL(c)

    def loss(params, batch):
        with rules.sharding_context(mesh):
            logits = model.apply({"params": params}, batch["input_ids"], batch["position_ids"],
                                 batch["segment_ids"], batch["pixel_values"], batch["grid_thw"])["logits"]
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
        w = batch["loss_weights"]
        return jnp.sum(nll * w) / jnp.sum(w), logits

    shardings = rules.batch_shardings({k: v.shape for k, v in batch.items()}, mesh)
    batch = {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
    params = jax.device_put(params, rules.replicated(mesh))
    lowered = jax.jit(jax.grad(loss, has_aux=True)).lower(params, batch)
    grads, logits = lowered.compile(FAST)(params, batch)
    return np.asarray(logits), jax.tree.map(np.asarray, grads), lowered.as_text()


@functools.cache
def _model_reference():
    c = _model_config()
    params = fake_params(c)
    batch = make_fake_batch(c, 4, 32, 32, 3)
    return params, batch, _logits_and_grads(c, params, batch, make_mesh({"data": 1}, jax.devices()[:1]))[:2]


MODEL_CASES = [
    pytest.param("all_gather", 2, True, id="all_gather-seq2-lb"),
    pytest.param("ring", 2, False, id="ring-seq2"),
    pytest.param("ring", 4, True, id="ring-seq4-lb"),
]


@pytest.mark.parametrize("strategy,cp,load_balanced", MODEL_CASES)
def test_model_logits_and_grads_match_one_device(strategy, cp, load_balanced):
    params, batch, (ref_logits, ref_grads) = _model_reference()
    assert (batch["input_ids"] == model_configs.get_config("tiny").image_token_id).any()  # vision splice covered
    t0 = time.time()
    mesh = make_mesh({"sequence": cp, "data": -1})
    logits, grads, hlo = _logits_and_grads(_model_config(strategy, load_balanced), params, batch, mesh)
    print(f"model {strategy} seq={cp} lb={load_balanced}: {time.time() - t0:.1f}s")
    assert ("collective_permute" if strategy == "ring" else "all_gather") in hlo  # the strategy really ran
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), grads, ref_grads)


def test_train_step_with_context_parallelism_matches_one_device():
    """The whole sharded train step (batch split over sequence, fsdp and data) with ring attention and
    load balancing takes the same step as one device."""
    model, cfg = _model_config(), train_base.get_config(**{"optimizer.warmup_steps": 0,
                                                         "optimizer.schedule": "constant"})
    params = fake_params(model)
    batch = make_fake_batch(model, 4, 32, 32, 5)

    def run(c, mesh):
        state = train_state_from_params(params, c, cfg, mesh, compiler_options=FAST)
        step = make_train_step(c, cfg, mesh, batch_shapes=global_batch_shapes(batch), compiler_options=FAST)
        state, m = step(state, put_batch(batch, mesh))
        return float(m["loss"]), jax.tree.map(np.asarray, state.params)

    ref_loss, ref_params = run(model, make_mesh({"data": 1}, jax.devices()[:1]))
    loss, new_params = run(_model_config("ring", True), make_mesh({"sequence": 2, "fsdp": 2, "data": 2}))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), new_params, ref_params)

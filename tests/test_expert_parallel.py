"""Expert parallelism (`vlm_jax/parallel/expert.py`) and the grouped matmuls (`model/grouped_matmul.py`)
on 8 simulated CPU devices (conftest.py sets XLA_FLAGS before jax is imported).

The MoE layer with `moe_impl="expert_parallel"` on meshes with an expert axis equals the single-device
dense layer: output, load-balancing statistics, loss, gradients w.r.t. params and inputs. A capacity
factor drops token copies, counted exactly; the ragged exchange (ragged_all_to_all, not runnable on
XLA:CPU) is checked through an emulation built from all_to_all, and lowers with the real collective;
megablox (Pallas interpret mode here) equals ragged_dot.
"""

from __future__ import annotations

import contextlib
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from vlm_jax.configs import model as model_configs
from vlm_jax.model import grouped_matmul as gmm_lib
from vlm_jax.model.moe import MoE, load_balancing_loss
from vlm_jax.parallel import expert, make_mesh, rules

E, K, D, INTER = 8, 2, 16, 24
B, S = 8, 6
LENGTHS = np.array([6, 5, 4, 3, 6, 1, 2, 6])  # valid tokens per row; the rest is padding
TOL = 1e-5


def _config(impl: str = "dense", gmm: str = "ragged_dot", capacity_factor: float = 0.0):
    c = model_configs.base_config()
    c.text.update(hidden_size=D, num_experts=E, num_experts_per_tok=K, moe_intermediate_size=INTER, moe_impl=impl,
                  moe_gmm=gmm, moe_capacity_factor=capacity_factor)
    model_configs.validate(c)
    return c


def _inputs(batch: int = B):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, S, D)), jnp.float32)[:batch]
    valid = jnp.asarray(np.arange(S)[None] < LENGTHS[:, None])[:batch]
    cot = jnp.asarray(rng.normal(size=(B, S, D)), jnp.float32)[:batch]
    return x, valid, cot


@pytest.fixture(scope="module")
def boxed_params():
    """Layer params (boxed, for their shardings); a unit-scale router keeps the top-k choices well apart."""
    x, valid, _ = _inputs()
    boxed = MoE(_config()).init(jax.random.key(0), x, valid)["params"]
    router = np.random.default_rng(1).normal(size=(D, E)).astype(np.float32)
    return boxed | {"router": boxed["router"].replace_boxed(jnp.asarray(router))}


def _loss(params, x, valid, cot, config):
    out, stats = MoE(config).apply({"params": params}, x, valid)
    aux = load_balancing_loss(stats, E)
    return jnp.sum(out * cot * valid[..., None]) + aux, (out, stats, aux)


def _run(config, boxed, x, valid, cot, mesh=None):
    """(loss, (out, stats, aux)), (grad params, grad x) of the layer under `mesh` (None: one device),
    params and inputs placed with the model's shardings."""
    params = nn.unbox(boxed)
    if mesh is not None:
        params = jax.device_put(params, rules.param_shardings(boxed, mesh))
        x = jax.device_put(x, NamedSharding(mesh, rules.logical_spec(x.shape, ("batch", "seq", None), mesh)))

    def f(params, x):
        with rules.sharding_context(mesh) if mesh is not None else contextlib.nullcontext():
            return jax.value_and_grad(_loss, (0, 1), has_aux=True)(params, x, valid, cot, config)

    return jax.tree.map(np.asarray, jax.jit(f)(params, x))


@pytest.fixture(scope="module")
def reference(boxed_params):
    return _run(_config("dense"), boxed_params, *_inputs())


def _assert_close(got, want, atol=TOL):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=atol, rtol=TOL, err_msg=jax.tree_util.keystr(path))


MESHES = [
    pytest.param(None, id="one-device"),
    pytest.param({"expert": 4, "data": 2}, id="expert4-data2"),
    pytest.param({"expert": 8}, id="expert8"),
    # More layouts of the same check: slow (each compiles its own shard_map; 5-15 s on 2 cores).
    pytest.param({"expert": 2, "data": 4}, id="expert2-data4", marks=pytest.mark.slow),
    pytest.param({"expert": 2, "fsdp": 2, "tensor": 2}, id="expert2-fsdp2-tensor2"),
    pytest.param({"expert": 4, "sequence": 2}, id="expert4-sequence2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("axes", MESHES)
def test_expert_parallel_equals_single_device_dense(axes, boxed_params, reference):
    mesh = None if axes is None else make_mesh(axes)
    (loss, (out, stats, aux)), grads = _run(_config("expert_parallel"), boxed_params, *_inputs(), mesh=mesh)
    (ref_loss, (ref_out, ref_stats, ref_aux)), ref_grads = reference
    np.testing.assert_allclose(out, ref_out, atol=TOL)  # padding rows too: dropless EP computes them
    _assert_close(grads, ref_grads)
    np.testing.assert_allclose(loss, ref_loss, rtol=TOL)
    np.testing.assert_allclose(aux, ref_aux, rtol=TOL)
    assert aux > 1.0  # E * sum(f * p) > 1 unless perfectly balanced: the statistics are not trivial
    _assert_close({k: stats[k] for k in ref_stats}, ref_stats, atol=1e-6)
    assert stats["tokens"] == LENGTHS.sum() and stats["expert_counts"].sum() == K * LENGTHS.sum()
    assert stats["dropped_copies"] == 0


def test_rows_fewer_than_expert_shards_are_replicated(boxed_params):
    """2 rows on data=2 x expert=4: the tokens cannot split over the expert axis; each expert shard then
    holds every local token, and the result is still the dense one (decoding one row has this layout)."""
    inputs = _inputs(batch=2)
    mesh = make_mesh({"expert": 4, "data": 2})
    layout = expert.layout_for(mesh.abstract_mesh, (2, S), ((E, D, INTER),), rules.RULES)
    assert layout.token_axes == ("data",) and layout.expert_axes == ("expert",) and layout.ep == 4
    got = _run(_config("expert_parallel"), boxed_params, *inputs, mesh=mesh)
    want = _run(_config("dense"), boxed_params, *inputs)
    _assert_close(got, want)


def _all_to_two_experts(boxed):
    """Params whose router sends every token to experts 0 and 1 (both on expert shard 0 when ep >= 2):
    inputs are positive, router column 0 = 1, column 1 = 0.5, the rest 0."""
    router = np.zeros((D, E), np.float32)
    router[:, 0], router[:, 1] = 1.0, 0.5
    return boxed | {"router": boxed["router"].replace_boxed(jnp.asarray(router))}


@pytest.mark.parametrize("axes, capacity_factor", [({"expert": 4, "data": 2}, 0.5), ({"expert": 4, "data": 2}, 1.0),
                                                   (None, 0.5)], ids=["expert4-cf0.5", "expert4-cf1", "one-device"])
def test_capacity_factor_drops_and_counts_copies(axes, capacity_factor, boxed_params):
    """Every copy goes to shard 0. Each sender may put cap = ceil(c * copies / ep) rows there, valid tokens
    first in token order; the rest of its valid copies are dropped and counted."""
    boxed = _all_to_two_experts(boxed_params)
    x, valid, cot = _inputs()
    x = jnp.abs(x) + 0.1
    mesh = None if axes is None else make_mesh(axes)
    (_, (out, stats, _)), _ = _run(_config("expert_parallel", capacity_factor=capacity_factor), boxed, x, valid, cot,
                                   mesh=mesh)
    (_, (dense, _, _)), _ = _run(_config("dense"), boxed, x, valid, cot)

    valid = np.asarray(valid)
    if mesh is None:  # one sender holding all B * S tokens, one destination
        cap = math.ceil(capacity_factor * B * S * K)
        senders = [valid.reshape(-1)]
    else:  # one sender per row (B = data * expert), 4 expert shards
        cap = math.ceil(capacity_factor * S * K / 4)
        senders = list(valid)
    # A sender's i-th valid token keeps copies K*i .. K*i+K-1 of its first `cap` valid copies.
    kept = np.concatenate([np.where(v, np.clip(cap - K * (np.cumsum(v) - 1), 0, K), 0) for v in senders])
    want_dropped = sum(max(K * int(v.sum()) - cap, 0) for v in senders)
    assert want_dropped > 0
    assert stats["dropped_copies"] == want_dropped
    valid = valid.reshape(-1)
    out, dense = out.reshape(B * S, D), dense.reshape(B * S, D)
    full, none = valid & (kept == K), valid & (kept == 0)
    assert full.any() and none.any()
    np.testing.assert_allclose(out[full], dense[full], atol=TOL)
    assert np.all(out[none] == 0)


def _emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                                axis_name):
    """`jax.lax.ragged_all_to_all` as its docstring defines it, from padded all_to_all (XLA:CPU lacks it)."""
    n, ep = operand.shape[0], input_offsets.shape[0]
    r = jnp.arange(n)
    src = jnp.minimum(input_offsets[:, None] + r, n - 1)
    send = (r < send_sizes[:, None]).reshape(ep, n, *([1] * (operand.ndim - 1)))
    blocks = jnp.where(send, operand[src], 0)
    got = jax.lax.all_to_all(blocks, axis_name, 0, 0, tiled=True)
    at = jax.lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)
    dst = jnp.where(r < recv_sizes[:, None], at[:, None] + r, output.shape[0])  # out of range: not written
    return output.at[dst.reshape(-1)].set(got.reshape(ep * n, *operand.shape[1:]), mode="drop")


@pytest.mark.parametrize("capacity_factor", [0.0, 0.5], ids=["dropless", "cf0.5"])
def test_ragged_exchange_equals_padded(capacity_factor, boxed_params, monkeypatch):
    """The offsets and sizes `dispatch_ragged` / `return_ragged` pass give the padded exchange's result."""
    monkeypatch.setattr(expert, "ragged_all_to_all", _emulated_ragged_all_to_all)
    params = {k: v.value for k, v in boxed_params.items()}
    x, valid, cot = _inputs()
    rng = np.random.default_rng(3)
    top_i = jnp.asarray(rng.integers(0, E, size=(B, S, K)), jnp.int32)
    top_w = jnp.asarray(rng.uniform(size=(B, S, K)), jnp.float32)
    mesh = make_mesh({"expert": 4, "data": 2})
    x = jax.device_put(x, NamedSharding(mesh, rules.logical_spec(x.shape, ("batch", "seq", None), mesh)))
    ws = (params["wi_gate"], params["wi_up"], params["wo"])

    def f(exchange):
        def loss(x, w):
            with rules.sharding_context(mesh):
                out, dropped = expert.expert_parallel_ffn(x, valid, top_i, top_w, *w, exchange=exchange,
                                                          capacity_factor=capacity_factor)
            return jnp.sum(out * cot), (out, dropped)
        return jax.tree.map(np.asarray, jax.jit(jax.grad(loss, (0, 1), has_aux=True))(x, ws))

    ragged, padded = f("ragged"), f("padded")
    _assert_close(ragged, padded)
    assert (padded[1][1] > 0) == (capacity_factor > 0)


def test_ragged_exchange_lowers_with_ragged_all_to_all(boxed_params):
    """The TPU / GPU path traces, differentiates and lowers with the real collective (compiling it needs
    TPU or GPU)."""
    w = tuple(boxed_params[k].value for k in ("wi_gate", "wi_up", "wo"))
    x, valid, _ = _inputs()
    top_i = jnp.asarray(np.random.default_rng(3).integers(0, E, size=(B, S, K)), jnp.int32)
    mesh = make_mesh({"expert": 4, "data": 2})

    def loss(x, w):
        with rules.sharding_context(mesh):
            out, _ = expert.expert_parallel_ffn(x, valid, top_i, jnp.ones(top_i.shape), *w, exchange="ragged")
        return jnp.sum(out ** 2)

    text = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).as_text()
    assert text.count("ragged_all_to_all") >= 4  # 3 forward (rows, expert ids, results), transposes backward
    assert expert.exchange_for_platform("cpu") == "padded"
    assert expert.exchange_for_platform("tpu") == expert.exchange_for_platform("gpu") == "ragged"


def test_plan_dispatch_by_hand():
    """6 copies, 4 experts on 2 shards (2 each), capacity 2: valid copies first within each destination."""
    ids = jnp.asarray([3, 0, 1, 2, 0, 3])
    valid = jnp.asarray([True, False, True, True, True, True])
    plan = expert.plan_dispatch(ids, valid, experts_per_shard=2, ep=2, cap=2)
    # shard 0 gets copies 2, 4 (valid) then 1 (padding); shard 1 gets copies 0, 3, 5.
    assert plan.order.tolist() == [2, 4, 1, 0, 3, 5]
    assert plan.dest.tolist() == [0, 0, 0, 1, 1, 1]
    assert plan.local_expert.tolist() == [1, 0, 0, 1, 0, 1]
    assert plan.rank.tolist() == [0, 1, 2, 0, 1, 2]
    assert plan.counts.tolist() == [3, 3] and plan.start.tolist() == [0, 3]
    assert plan.kept.tolist() == [True, True, False, True, True, False]
    assert int(plan.dropped) == 1  # copy 5 (valid); copy 1 is padding and not counted


def test_capacity_bounds():
    assert expert.capacity(96, 4, 0.0) == 96  # dropless: all local copies could go to one shard
    assert expert.capacity(96, 4, 1.0) == 24
    assert expert.capacity(96, 4, 1.3) == 32  # ceil(31.2)
    assert expert.capacity(10, 4, 0.01) == 1
    assert expert.capacity(10, 4, 100.0) == 10


def test_experts_must_split_over_the_expert_axis():
    mesh = make_mesh({"expert": 4, "data": 2}).abstract_mesh
    with pytest.raises(ValueError, match=r"6 experts do not split over the mesh axes \('expert',\) \(4 shards\)"):
        expert.layout_for(mesh, (B, S), ((6, D, INTER),), rules.RULES)


def test_expert_parallel_rejects_flat_tokens():
    x = jnp.zeros((B * S, D))
    w = jnp.zeros((E, D, INTER))
    with pytest.raises(ValueError, match=r"takes x \[B, S, D\]"):
        expert.expert_parallel_ffn(x, jnp.ones((B * S,), bool), jnp.zeros((B * S, K), jnp.int32),
                                   jnp.zeros((B * S, K)), w, w, jnp.zeros((E, INTER, D)))


def test_moe_config_validation():
    assert model_configs.CHOICES["text.moe_gmm"] == gmm_lib.GMM_IMPLS
    assert _config("expert_parallel", capacity_factor=1.25).text.moe_capacity_factor == 1.25
    with pytest.raises(ValueError, match="text.moe_capacity_factor=1.0 needs text.moe_impl='expert_parallel'"):
        _config("ragged", capacity_factor=1.0)
    with pytest.raises(ValueError, match=r"text.moe_capacity_factor=-1.0 must be >= 0"):
        _config("expert_parallel", capacity_factor=-1.0)
    with pytest.raises(ValueError, match="text.moe_gmm='megablox' is a grouped matmul; text.moe_impl='dense'"):
        _config("dense", gmm="megablox")
    with pytest.raises(ValueError, match="unknown grouped matmul 'triton'"):
        gmm_lib.grouped_matmul(jnp.zeros((4, 2)), jnp.zeros((1, 2, 3)), jnp.asarray([4]), "triton")


def test_megablox_tiling_pads_rows():
    assert gmm_lib.padded_rows(13) == 16 and gmm_lib.megablox_tiling(16, 16, 24) == (16, 16, 24)
    assert gmm_lib.padded_rows(300) == 384 and gmm_lib.megablox_tiling(384, 256, 512) == (128, 128, 128)


@pytest.mark.parametrize("impl, sizes", [
    ("megablox", [4, 0, 7]),
    ("tiled", [4, 0, 7]),
    # Groups that straddle, fill and miss tiles (40 rows here), four of them empty: 300 of 310 rows grouped.
    ("tiled", [0, 70, 64, 1, 0, 0, 100, 0, 65]),
], ids=["megablox", "tiled", "tiled-many-tiles"])
def test_grouped_matmul_equals_ragged_dot(impl, sizes):
    """Rows not a tile multiple, an empty group and rows in no group (zeros out): values and grads."""
    rng = np.random.default_rng(4)
    m = sum(sizes) + 2 + 8 * (len(sizes) > 3)
    lhs = jnp.asarray(rng.normal(size=(m, 16)), jnp.float32)
    rhs = jnp.asarray(rng.normal(size=(len(sizes), 16, 24)), jnp.float32)
    sizes = jnp.asarray(sizes, jnp.int32)
    cot = jnp.asarray(rng.normal(size=(m, 24)), jnp.float32)

    def f(impl):
        def loss(lhs, rhs):
            out = gmm_lib.grouped_matmul(lhs, rhs, sizes, impl)
            return jnp.sum(out * cot), out
        return jax.tree.map(np.asarray, jax.jit(jax.grad(loss, (0, 1), has_aux=True))(lhs, rhs))

    (g_got, out_got), (g_rd, out_rd) = f(impl), f("ragged_dot")
    assert np.all(out_got[int(sizes.sum()):] == 0) and np.all(np.isfinite(out_got))
    assert np.all(g_got[0][int(sizes.sum()):] == 0)
    _assert_close((out_got, g_got), (out_rd, g_rd))


@pytest.mark.parametrize("gmm", ["megablox", "tiled"])
@pytest.mark.parametrize("impl, axes", [("ragged", None), ("expert_parallel", {"expert": 8})],
                         ids=["ragged", "expert_parallel-expert8"])
def test_grouped_matmul_moe_equals_dense(impl, axes, gmm, boxed_params, reference):
    mesh = None if axes is None else make_mesh(axes)
    got = _run(_config(impl, gmm=gmm), boxed_params, *_inputs(), mesh=mesh)
    _assert_close(got[1], reference[1])
    np.testing.assert_allclose(got[0][1][0], reference[0][1][0], atol=TOL)


def test_benchmark_cli_smoke(capsys):
    from benchmarks import moe as moe_bench

    assert moe_bench.main(["--tokens=16", "--devices=2", "--reps=1", "--hidden=16", "--inter=16",
                           "--experts=4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["setup"]["mesh"]["expert"] == 2
    row = out["results"]["16"]
    assert set(row["tokens_per_s"]) == {"dense", "ragged", "expert_parallel"}
    assert all(v > 0 for v in row["tokens_per_s"].values())
    assert row["max_abs_diff_vs_dense"]["expert_parallel"] < 1e-4
    assert moe_bench.main(["--tokens=16", "--devices=2", "--experts=3"]) == 2  # bad input: one error line
    assert "--experts=3 must be a multiple of --devices=2" in capsys.readouterr().err

"""Sharded training equals single-device training: data, FSDP, tensor and expert parallelism on
8 simulated CPU devices, and data parallelism across 2 processes (`jax.distributed`)."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import traverse_util

from tests.fake_data import fake_params, make_fake_batch, merge_process_batches
from vlm_jax.configs import train_base
from vlm_jax.configs.model import get_config
from vlm_jax.configs.model import validate as validate_model
from vlm_jax.parallel import make_mesh, rules
from vlm_jax.train import make_train_step, put_batch
from vlm_jax.train.state import train_state_from_params
from vlm_jax.train.step import CPU_FAST_COMPILE as FAST
from vlm_jax.train.step import compact_vision, global_batch_shapes

STEPS = 3
CFG_KW = {"optimizer.warmup_steps": 0, "optimizer.schedule": "constant", "optimizer.llm_lr": 1e-3,
          "optimizer.vision_lr": 1e-3, "optimizer.merger_lr": 1e-3}


def _batches(model, n=STEPS, b=8, s=32, p=32):
    return [make_fake_batch(model, b, s, p, [7, i]) for i in range(n)]


def _run(model, cfg, mesh, params, batches):
    state = train_state_from_params(params, model, cfg, mesh, compiler_options=FAST)
    step = make_train_step(model, cfg, mesh, batch_shapes=global_batch_shapes(batches[0]), compiler_options=FAST)
    losses = []
    for b in batches:
        state, m = step(state, put_batch(b, mesh))
        losses.append(float(m["loss"]))
    return losses, state, m


def _np(tree):
    return jax.tree.map(np.asarray, tree)


_REFERENCES: dict = {}


def _reference(size):
    """Single-device run, once per model size: (model, train config, params, batches, losses, final params)."""
    if size not in _REFERENCES:
        model = get_config(size)
        cfg = train_base.get_config(**CFG_KW)
        mesh1 = make_mesh({"data": 1}, jax.devices()[:1])
        params = fake_params(model)  # no init compile: ~10 s CPU saved per model
        batches = _batches(model)
        losses, state, m = _run(model, cfg, mesh1, params, batches)
        if model.text.num_experts:
            assert float(m["moe_aux_loss"]) > 0
        _REFERENCES[size] = model, cfg, params, batches, losses, _np(state.params)
    return _REFERENCES[size]


def _spec_axes(spec):
    return {a for part in spec if part is not None for a in ((part,) if isinstance(part, str) else part)}


# Each case costs ~15-20 s CPU (one step compile). Pure data parallelism (data=8) is slow-marked:
# data-parallel gradients are already exercised by data=2 in the FSDP case and by the 2-process test.
CASES = [
    pytest.param("tiny", {"data": 8}, marks=pytest.mark.slow, id="data8"),
    pytest.param("tiny", {"fsdp": 4, "data": 2}, id="fsdp4-data2"),
    pytest.param("tiny", {"tensor": 2, "fsdp": 4, "data": 1}, id="tensor2-fsdp4"),
    pytest.param("tiny-moe", {"expert": 4, "data": -1}, id="moe-expert4-data2"),
]


@pytest.mark.parametrize("size,axes", CASES)
def test_sharded_run_matches_single_device(size, axes):
    model, cfg, params, batches, ref_losses, ref_params = _reference(size)
    t0 = time.time()
    mesh = make_mesh(axes)
    losses, state, _ = _run(model, cfg, mesh, params, batches)
    print(f"{size} {dict(mesh.shape)}: {time.time() - t0:.1f}s losses {losses}")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), _np(state.params), ref_params)
    # The layout really is the one the rules ask for.
    layers = state.params["decoder"]["layers"]
    q_axes = _spec_axes(layers["attn"]["q_proj"]["kernel"].sharding.spec)
    assert ("fsdp" in q_axes) == (mesh.shape["fsdp"] > 1)
    assert ("tensor" in q_axes) == (mesh.shape["tensor"] > 1)
    if mesh.shape["expert"] > 1:
        assert "expert" in _spec_axes(layers["moe"]["wi_gate"].sharding.spec)


def test_rules_drop_mesh_axes_that_do_not_divide():
    mesh = make_mesh({"tensor": 4, "data": 2})
    # 2 kv heads * 32 = 64 divides by 4, but a dim of 6 does not: left unsharded, no error.
    assert rules.logical_spec((128, 64), ("embed", "kv_heads"), mesh) == jax.sharding.PartitionSpec(None, "tensor")
    assert rules.logical_spec((128, 6), ("embed", "kv_heads"), mesh) == jax.sharding.PartitionSpec(None, None)
    # Activations: the batch claims the batch axes, so an activation's embed dim is not sharded.
    mesh = make_mesh({"fsdp": 4, "data": 2})
    assert rules.logical_spec((8, 16, 128), ("batch", "seq", "embed"), mesh) == \
        jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
    assert rules.logical_spec((128, 256), ("embed", "mlp"), mesh) == jax.sharding.PartitionSpec("fsdp", None)
    with pytest.raises(ValueError, match="not divisible"):
        rules.batch_shardings({"input_ids": (6, 16)}, mesh)


def test_compact_vision_joins_per_process_buffers():
    model = get_config("tiny")
    parts = [make_fake_batch(model, 2, 48, 32, [3, i], num_grids=4) for i in range(2)]
    raw_pv = np.concatenate([p["pixel_values"] for p in parts])
    raw_grid = np.concatenate([p["grid_thw"] for p in parts])
    merged = merge_process_batches(parts)
    pv, grid = compact_vision(raw_pv, raw_grid, 2)
    np.testing.assert_array_equal(pv, merged["pixel_values"])
    np.testing.assert_array_equal(grid, merged["grid_thw"])
    assert int(parts[0]["grid_thw"].prod(-1).sum()) < 32  # the first block really had padding in the middle


# --- two processes -------------------------------------------------------------------------------------------

def _worker(rank: int, port: int, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=rank, local_device_ids=[0])
    jax.config.update("jax_default_matmul_precision", "highest")
    model = get_config("tiny")
    cfg = train_base.get_config(**CFG_KW)
    mesh = make_mesh({"data": -1})
    params = traverse_util.unflatten_dict(dict(np.load(os.path.join(out, "params.npz"))), sep="/")
    local = [make_fake_batch(model, 2, 32, 16, [11, i, rank], num_grids=4) for i in range(STEPS)]
    losses, _, _ = _run(model, cfg, mesh, params, local)
    if rank == 0:
        with open(os.path.join(out, "losses.json"), "w") as f:
            json.dump(losses, f)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_data_parallel_match_one_process(tmp_path):
    model = get_config("tiny")
    cfg = train_base.get_config(**CFG_KW)
    mesh1 = make_mesh({"data": 1}, jax.devices()[:1])
    params = fake_params(model)
    np.savez(tmp_path / "params.npz", **traverse_util.flatten_dict(params, sep="/"))
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(r), str(port), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = [p.communicate(timeout=600)[0].decode()[-3000:] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(logs)
    mp_losses = json.loads((tmp_path / "losses.json").read_text())
    # One process, the same global batches (rows of process 0 then 1; vision buffers joined).
    batches = [merge_process_batches([make_fake_batch(model, 2, 32, 16, [11, i, r], num_grids=4) for r in range(2)])
               for i in range(STEPS)]
    losses, _, _ = _run(model, cfg, mesh1, params, batches)
    np.testing.assert_allclose(mp_losses, losses, rtol=1e-5)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])


@pytest.mark.slow  # 30-160 s: three train steps of tiny-moe on two meshes
def test_train_steps_with_expert_parallel_match_single_device():
    """The whole train step (scanned layers, AdamW) with moe_impl='expert_parallel' on expert=4 x data=2
    follows the single-device run of test_sharding.py step for step."""
    model, cfg, params, batches, want_losses, want_params = _reference("tiny-moe")
    ep = model.copy_and_resolve_references()
    ep.text.moe_impl = "expert_parallel"
    validate_model(ep)
    losses, state, _ = _run(ep, cfg, make_mesh({"expert": 4, "data": -1}), params, batches)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    got = jax.tree.map(np.asarray, state.params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))

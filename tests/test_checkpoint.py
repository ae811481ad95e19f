"""Checkpoints: exact resume (params, optimizer, rng, data iterator), keep-last-K, atomic tmp
directories, SIGTERM save-and-exit, a clear error for an incompatible config; relative paths, failed
saves stop with one line, and restore falls back past damaged checkpoints."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from tests.checkpoint_faults import fail_background_writes
from tests.fake_data import FakeDataIterator, fake_params
from vlm_jax.configs import model as model_configs
from vlm_jax.configs import train_base
from vlm_jax.parallel import make_mesh
from vlm_jax.train import Checkpointer, IncompatibleCheckpointError, PreemptionGuard, make_train_step, put_batch
from vlm_jax.train.checkpoint import CheckpointError
from vlm_jax.train.state import train_state_from_params, unboxed_abstract_state
from vlm_jax.train.step import CPU_FAST_COMPILE as FAST
from vlm_jax.train.step import global_batch_shapes

MODEL = model_configs.get_config("tiny")
CFG = train_base.get_config(**{"optimizer.warmup_steps": 2, "optimizer.llm_lr": 1e-3, "optimizer.vision_lr": 1e-3,
                               "optimizer.merger_lr": 1e-3, "num_train_steps": 6})
DATA = dict(batch=8, seq_len=32, num_patches=32)


def _np(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope="module")
def mesh():
    # Sharded params (each device holds half of most arrays). Only 2 devices: Orbax's first save
    # slices replicated arrays per replica with eager ops, one compile per shard (~2 s per device).
    return make_mesh({"fsdp": 2}, jax.devices()[:2])


@pytest.fixture(scope="module")
def step(mesh):
    it = FakeDataIterator(MODEL, **DATA)
    return make_train_step(MODEL, CFG, mesh, batch_shapes=global_batch_shapes(next(it)), compiler_options=FAST)


def _fresh(mesh):
    return train_state_from_params(fake_params(MODEL), MODEL, CFG, mesh, compiler_options=FAST)


def _train(state, it, step, mesh, n):
    losses = []
    for _ in range(n):
        state, m = step(state, put_batch(next(it), mesh))
        losses.append(float(m["loss"]))
    return state, losses


def test_resume_is_exact(tmp_path, mesh, step):
    state, want = _train(_fresh(mesh), FakeDataIterator(MODEL, **DATA), step, mesh, 6)
    want_params = _np(state.params)

    it = FakeDataIterator(MODEL, **DATA)
    ckpt = Checkpointer(tmp_path, every_steps=1, keep=2, model_config=MODEL)
    state, got = _fresh(mesh), []
    for i in range(1, 4):
        state, losses = _train(state, it, step, mesh, 1)
        got += losses
        assert ckpt.save(i, state, it.get_state())
    ckpt.close()  # waits for the asynchronous writes
    del state, it

    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3]  # keep last 2
    assert json.loads((tmp_path / "3" / "data" / "process_0-of-1.json").read_text())["index"] == 3

    # A half-written save (what a crash leaves: Orbax writes `<step>.orbax-checkpoint-tmp` and
    # renames it when complete) is invisible, and removed by the next run's manager.
    (tmp_path / "7.orbax-checkpoint-tmp").mkdir()
    ckpt = Checkpointer(tmp_path, every_steps=1, keep=2)
    assert ckpt.latest_step() == 3
    state, data_state, at = ckpt.restore(unboxed_abstract_state(MODEL, CFG, mesh))
    assert at == 3 and int(state.step) == 3
    assert state.params["embed"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    it = FakeDataIterator(MODEL, **DATA)
    it.set_state(data_state)
    rest = []
    for i in range(4, 7):
        state, losses = _train(state, it, step, mesh, 1)
        rest += losses
        ckpt.save(i, state, it.get_state())
    ckpt.close()
    assert not (tmp_path / "7.orbax-checkpoint-tmp").exists()  # cleanup runs in the background, done by now
    assert ckpt.all_steps() == [5, 6]
    assert got + rest == want  # bit-identical losses
    jax.tree.map(np.testing.assert_array_equal, _np(state.params), want_params)


def test_incompatible_config_lists_mismatched_shapes(tmp_path, mesh):
    ckpt = Checkpointer(tmp_path, every_steps=1, async_save=False)
    ckpt.save(1, _fresh(mesh))
    ckpt.wait()
    other = mlc.ConfigDict(MODEL.to_dict())
    other.text.intermediate_size = 384
    other.vision.hidden_size = 96
    model_configs.validate(other)
    with pytest.raises(IncompatibleCheckpointError) as e:
        ckpt.restore(unboxed_abstract_state(other, CFG, mesh))
    msg = str(e.value)
    assert "params/decoder/layers/mlp/gate_proj/kernel: checkpoint (4, 128, 256) vs config (4, 128, 384)" in msg
    assert "params/vision/patch_embed/kernel: checkpoint (1536, 64) vs config (1536, 96)" in msg
    assert "opt_state" in msg  # the optimizer moments are listed too
    moe = model_configs.get_config("tiny-moe")
    with pytest.raises(IncompatibleCheckpointError, match="moe/wi_gate: built by the config"):
        ckpt.restore(unboxed_abstract_state(moe, CFG, mesh))
    ckpt.close()


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.time() + 400
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("step 2"):
            proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    log = "".join(lines) + out
    assert proc.returncode == 0, log[-3000:]
    stopped = int(next(ln.split()[-1] for ln in log.splitlines() if ln.startswith("preempted at step")))
    assert stopped >= 2
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == stopped  # the periodic interval (1000) was never reached: this is the SIGTERM save
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    state, data_state, _ = ckpt.restore(unboxed_abstract_state(MODEL, CFG, mesh))
    assert int(state.step) == stopped and data_state["index"] == stopped
    ckpt.close()


def _arrays(i):
    # Several arrays: a damaged data file then fails several concurrent reads, the noisy case.
    return {"a": jnp.arange(3000.0) + i, "b": jnp.full((40, 50), float(i)), "c": jnp.full((7,), float(i))}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _errors(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_relative_directory_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = Checkpointer(os.path.join("runs", "ck"), every_steps=1)
    assert str(ckpt.directory) == str(tmp_path / "runs" / "ck")
    assert ckpt.save(1, _arrays(1), {"index": 1})
    ckpt.close()  # TensorStore rejects relative paths in the background writer: this raised before
    state, data_state, step = Checkpointer("runs/ck").restore(_abstract(_arrays(0)))
    assert step == 1 and data_state == {"index": 1}
    np.testing.assert_array_equal(state["a"], np.asarray(_arrays(1)["a"]))


def test_failed_save_raises_one_line_naming_the_path(tmp_path, caplog):
    d = tmp_path / "ck"
    ckpt = Checkpointer(d, every_steps=1)
    assert ckpt.save(1, _arrays(1))
    ckpt.wait()
    shutil.rmtree(d)
    d.write_text("")  # a regular file where the directory was: the next step's directory cannot be made
    with pytest.raises(CheckpointError) as e:
        ckpt.save(2, _arrays(2))
    assert str(e.value).startswith(f"checkpoint save failed: {d}/2: NotADirectoryError")
    assert "\n" not in str(e.value)
    ckpt.close()

    # A directory its parent cannot hold fails before any training step.
    with pytest.raises(CheckpointError, match=f"checkpoint directory unusable: {d}/sub: NotADirectoryError"):
        Checkpointer(d / "sub")
    assert not _errors(caplog)


def test_failed_background_save_surfaces_without_waiting_for_the_next_save(tmp_path, monkeypatch, caplog):
    fail_background_writes(monkeypatch)
    ckpt = Checkpointer(tmp_path, every_steps=1000)
    assert ckpt.save(1, _arrays(1))  # returns before the background write fails
    want = f"checkpoint save failed: {tmp_path}/1: OSError: [Errno 5] Input/output error"
    with pytest.raises(CheckpointError) as e:
        for _ in range(200):  # what a loop does every step: no save is due (interval 1000), check() is
            assert not ckpt.save(2, _arrays(2))
            time.sleep(0.05)
    assert str(e.value) == want
    assert not (tmp_path / "1").exists() and ckpt.latest_step() is None
    ckpt.close()
    assert not _errors(caplog)  # Orbax's tracebacks for it are dropped

    # A save still in flight when the run ends fails at close().
    fail_background_writes(monkeypatch, delay=0.5)
    ckpt = Checkpointer(tmp_path, every_steps=1)
    assert ckpt.save(3, _arrays(3))
    with pytest.raises(CheckpointError, match=f"checkpoint save failed: {tmp_path}/3: OSError"):
        ckpt.close()


def _damage(step_dir, item):
    """Truncates one file of a checkpoint, as a crash or full disk leaves it."""
    if item == "state":  # the largest OCDBT data file: it holds the arrays themselves
        f = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                key=lambda p: p.stat().st_size)
        os.truncate(f, f.stat().st_size // 3)
    else:
        os.truncate(step_dir / {"meta": "meta/metadata", "data": "data/process_0-of-1.json"}[item], 3)


def _two_checkpoints(directory):
    ckpt = Checkpointer(directory, every_steps=1, keep=3)
    for i in (1, 2):
        ckpt.save(i, _arrays(i), {"index": i})
    ckpt.close()


@pytest.mark.parametrize("item,cause", [("state", "OUT_OF_RANGE"), ("meta", "meta: JSONDecodeError"),
                                        ("data", "data/process_0-of-1.json: JSONDecodeError")])
def test_restore_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, capfd, item, cause):
    _two_checkpoints(tmp_path)
    _damage(tmp_path / "2", item)
    ckpt = Checkpointer(tmp_path, every_steps=1, keep=3)
    with caplog.at_level(logging.WARNING):
        state, data_state, step = ckpt.restore(_abstract(_arrays(0)))
    assert step == 1 and data_state == {"index": 1}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(_arrays(1)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("vlm")]
    assert len(warnings) == 1 and not _errors(caplog), caplog.records
    assert warnings[0].startswith(f"checkpoint {tmp_path}/2 is unreadable (") and cause in warnings[0]
    assert "\n" not in warnings[0] and "Traceback" not in capfd.readouterr().err
    # Moved aside, so the run saves step 2 again instead of skipping it as already written.
    assert (tmp_path / "2.unreadable").is_dir() and ckpt.all_steps() == [1]
    assert ckpt.save(2, _arrays(2), {"index": 2})
    ckpt.close()
    assert Checkpointer(tmp_path).restore(_abstract(_arrays(0)))[2] == 2


def test_restore_with_no_intact_checkpoint_stops_with_one_line(tmp_path, caplog):
    _two_checkpoints(tmp_path)
    _damage(tmp_path / "2", "meta")
    _damage(tmp_path / "1", "state")
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError) as e:
        ckpt.restore(_abstract(_arrays(0)))
    msg = str(e.value)
    assert msg.startswith(f"no intact checkpoint in {tmp_path}: step 2: meta: JSONDecodeError")
    assert "step 1: ValueError: OUT_OF_RANGE" in msg and "\n" not in msg
    assert ckpt.all_steps() == [1, 2] and not list(tmp_path.glob("*.unreadable"))  # left as found
    with pytest.raises(CheckpointError, match=f"checkpoint unreadable: {tmp_path}/1: "):
        ckpt.restore(_abstract(_arrays(0)), step=1)  # an explicit step does not fall back
    ckpt.close()
    assert not _errors(caplog)


def _sigterm_worker(directory: str) -> None:
    """A minimal loop: train until SIGTERM, then save at the current step and exit 0."""
    jax.config.update("jax_default_matmul_precision", "highest")
    mesh = make_mesh({"data": 1})
    data = dict(batch=2, seq_len=32, num_patches=16)
    it = FakeDataIterator(MODEL, **data)
    state = train_state_from_params(fake_params(MODEL), MODEL, CFG, mesh, compiler_options=FAST)
    step = make_train_step(MODEL, CFG, mesh, batch_shapes=global_batch_shapes(next(FakeDataIterator(MODEL, **data))),
                           compiler_options=FAST)
    ckpt = Checkpointer(directory, every_steps=1000, keep=2)
    guard = PreemptionGuard()
    for i in range(1, 10_000):
        state, _ = step(state, put_batch(next(it), mesh))
        ckpt.save(i, state, it.get_state())  # no-op off the interval
        print(f"step {i}", flush=True)
        if guard.should_stop(i):
            ckpt.save(i, state, it.get_state(), force=True)
            ckpt.close()
            print(f"preempted at step {i}", flush=True)
            sys.exit(0)
        time.sleep(0.2)
    sys.exit(3)


if __name__ == "__main__":
    _sigterm_worker(sys.argv[1])

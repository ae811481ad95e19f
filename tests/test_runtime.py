"""vlm_jax.runtime: the CPU process settings applied on import, checked in fresh processes (the
settings must be in place before JAX creates its CPU client, which this test process already has)."""

import json
import os
import subprocess
import sys

import pytest

_PROBE = r"""
import json, os, resource
import vlm_jax, jax, jax.numpy as jnp
from vlm_jax import runtime

# A step whose temporary buffer (two [4096, 4096] float32 intermediates, 128 MiB) is far above
# glibc's largest mmap threshold (32 MiB).
@jax.jit
def f(x):
    return jnp.sum(jnp.tanh(x @ x.T) * jnp.cos(x @ x.T))

x = jnp.ones((4096, 64), jnp.float32) / 64
for _ in range(2):  # compile, then one call that grows the heap to the step's peak
    f(x).block_until_ready()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
print(json.dumps({"settings": runtime.settings(), "async": jax.config.values["jax_cpu_enable_async_dispatch"],
                  "xla_flags": os.environ.get("XLA_FLAGS", ""), "faults": faults, "temp_pages": temp // 4096}))
"""


def _probe(**env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VLM_JAX_CPU_TUNING")}
    env.update(JAX_PLATFORMS="cpu", **env_overrides)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_cpu_settings_applied_and_steps_reuse_their_memory():
    got = _probe()
    assert got["settings"] == {"keep_freed_memory": True, "ynn_fusions": True, "sync_dispatch": True}
    assert got["async"] is False
    assert "--xla_cpu_experimental_ynn_fusion_type=dot,reduce" in got["xla_flags"]
    assert got["temp_pages"] > 32 * 2**20 // 4096  # the probe really allocates above the mmap threshold
    # Once warm, a call reuses the heap, where without the settings every call maps its
    # temporary buffer afresh and faults all of it in (one fault per 4 KiB page; the test below
    # checks that contrast). Not every warm call is free: glibc places a call's buffers in the
    # order its threads ask for them, so now and then a call finds the freed space fragmented
    # and grows the heap once more (seen here in 0-2 calls of 5, in CI in 3 of 5).
    free_calls = sum(f < 0.05 * got["temp_pages"] for f in got["faults"])
    assert free_calls >= 2, got


def test_cpu_settings_can_be_turned_off_and_keep_the_users_flags():
    off = _probe(VLM_JAX_CPU_TUNING="0")
    assert off["settings"] == {} and off["async"] is True and "ynn" not in off["xla_flags"]
    # Without the settings, glibc maps the buffer afresh on every call: no call is fault-free.
    assert min(off["faults"]) > 0.9 * off["temp_pages"], off
    mine = _probe(XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=")
    assert mine["settings"]["ynn_fusions"] is False
    assert mine["xla_flags"] == "--xla_cpu_experimental_ynn_fusion_type="


def test_accelerator_platform_skips_the_cpu_settings(monkeypatch):
    from vlm_jax import runtime

    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not runtime.cpu_is_default()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert runtime.cpu_is_default()

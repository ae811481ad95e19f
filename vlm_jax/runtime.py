"""Process settings that make XLA:CPU steps fast; applied once when `vlm_jax` is imported.

Profiling the train step on CPU (benchmarks/profile_step.py, getrusage, strace) found a third of
its time outside the arithmetic:

- **Fresh pages every step.** XLA:CPU allocates each execution's temporary buffer (hundreds of
  MiB for a train step) with `malloc` and frees it afterwards. glibc serves any block above its
  mmap threshold (at most 32 MiB) with a fresh `mmap`, so every step page-faults its whole
  working set in again and the kernel zeroes it: 58,000 faults and 115 ms of system time per
  step of the `tiny` benchmark. `mallopt(M_MMAP_MAX, 0)` and no trimming (`M_TRIM_THRESHOLD`
  -1, i.e. the largest size) make freed memory stay in the heap, where the next step reuses it.
- **Where the buffer is allocated.** With asynchronous dispatch the step runs on an XLA worker
  thread, whose glibc arena cannot hold a block larger than 64 MiB and falls back to `mmap`
  regardless of the setting above. Synchronous dispatch (`jax_cpu_enable_async_dispatch=False`)
  runs the step on the calling thread, whose main arena grows with `brk`.
- **Library fusions.** YNNPACK runs the dot and reduction fusions
  (`--xla_cpu_experimental_ynn_fusion_type=dot,reduce`). Its reductions (softmax and norm
  statistics, loss sums) made the tiny train step 6-10% faster and the 100m step 10% faster than
  with dots alone; its elementwise fusions forced layouts that cost transposed copies in the
  backward pass, so they stay with XLA.

All three only matter when JAX runs on the CPU; they are skipped when an accelerator plugin is
installed and `JAX_PLATFORMS` does not ask for the CPU. `VLM_JAX_CPU_TUNING=0` turns them off.
Memory freed back to the heap is not returned to the OS while the process runs (its peak stays
resident), which is what a training process, running one step program over and over, wants.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"

_applied: dict[str, object] = {}


def cpu_is_default() -> bool:
    """Whether JAX will run on the CPU: JAX_PLATFORMS names cpu first, or no accelerator plugin
    (CUDA, ROCm, TPU) is installed. Decided without initialising a backend."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    accelerator_packages = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
                            "libtpu")
    return not any(importlib.util.find_spec(p) for p in accelerator_packages)


def _keep_freed_memory() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))


YNN_FUSIONS = "dot,reduce"


def _set_ynn_fusions() -> bool:
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG in flags:  # the user chose; keep it
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}={YNN_FUSIONS}".strip()
    return True


def configure_cpu() -> dict[str, object]:
    """Applies the settings above once per process (before JAX creates its CPU client, which
    reads XLA_FLAGS and the dispatch mode); returns what was applied."""
    if _applied or os.environ.get("VLM_JAX_CPU_TUNING", "1") == "0" or not cpu_is_default():
        return dict(_applied)
    _applied["keep_freed_memory"] = _keep_freed_memory()
    _applied["ynn_fusions"] = _set_ynn_fusions()
    import jax  # after XLA_FLAGS is set

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    _applied["sync_dispatch"] = True
    return dict(_applied)


def settings() -> dict[str, object]:
    """What `configure_cpu` applied in this process (empty when it was skipped)."""
    return dict(_applied)

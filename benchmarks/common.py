"""Shared helpers for the benchmarks: core count, interleaved timing, JSON output, input builders,
the Hugging Face reference model.

Timings on a shared CPU are noisy, so `interleaved` alternates the contenders repetition by
repetition (ABBA order, so neither side always runs right after the other) and the benchmarks
report medians and ratios of medians. Every benchmark's JSON carries a "host" block
(`host_start` first thing, `host_report(start)` at the end): the load average at start and end,
so a busy machine shows, and the thread settings of both runtimes (`runtime_settings`).
`print_json` writes non-finite numbers as null (a rate over a zero time is not a measurement).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def num_cores() -> int:
    """CPU cores this process may run on (not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Seconds for one call of `fn`, which must block until its work is done; and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 0) -> dict[str, dict]:
    """Per contender {"wall": [s] * reps, "cpu": [s] * reps}; `warmup` untimed calls each first.

    Repetition i runs the contenders in order when i is even and reversed when odd (ABBA...),
    so slow drifts in machine load hit both sides alike. "cpu" is this process's CPU time (all
    threads) during the call: unlike wall time it does not grow while other processes hold the
    cores, so it is the steadier measure on a shared machine (spin-waiting threads count in it).
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, dict] = {n: {"wall": [], "cpu": []} for n in names}
    for i in range(reps):
        for n in names if i % 2 == 0 else names[::-1]:
            c0 = time.process_time()
            wall, _ = timed(fns[n])
            times[n]["cpu"].append(time.process_time() - c0)
            times[n]["wall"].append(wall)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def log(*args) -> None:
    """Progress to stderr, so stdout carries only the JSON result."""
    print(*args, file=sys.stderr, flush=True)


def print_json(obj) -> None:
    """`obj` as indented strict JSON on stdout: numpy values as Python ones, NaN / inf as null."""
    print(json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False))


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, np.ndarray):
        return _finite(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, str | int | float | bool):
        return x
    raise TypeError(f"not JSON serialisable: {type(x)}")


def rate(numerator: float, denominator: float, digits: int = 2) -> float | None:
    """numerator / denominator rounded, or None when the denominator is not a positive finite time
    (e.g. a CPU-time difference of 0 at the clock's resolution): never an infinite rate."""
    if numerator is None or denominator is None or not math.isfinite(denominator) or denominator <= 0:
        return None
    return round(numerator / denominator, digits)


# Environment variables that set the thread pools of XLA, PyTorch and the BLAS libraries below them.
THREAD_ENV = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "JAX_PLATFORMS")


def _xla_flag(flags: str, name: str) -> str | None:
    m = re.search(rf"--{name}=(\S+)", flags)
    return m.group(1) if m else None


def runtime_settings() -> dict[str, Any]:
    """Thread settings of JAX / XLA and PyTorch as this process runs them: the environment variables,
    `--xla_cpu_multi_thread_eigen` (XLA's default is true), JAX's devices, and torch's intra- and
    inter-op thread counts, and the process settings `vlm_jax.runtime` applied on import (malloc,
    dispatch mode, YNNPACK fusions: they change both sides' speed in one process). A runtime the
    benchmark did not import is reported as not imported."""
    env = {k: os.environ.get(k) for k in THREAD_ENV}
    out: dict[str, Any] = {"env": env}
    eigen = _xla_flag(env["XLA_FLAGS"] or "", "xla_cpu_multi_thread_eigen")
    if "jax" in sys.modules:
        import jax

        out["jax"] = {"version": jax.__version__, "backend": jax.default_backend(),
                      "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
                      "xla_cpu_multi_thread_eigen": eigen if eigen is not None else "unset (default true)",
                      "async_dispatch": jax.config.values.get("jax_cpu_enable_async_dispatch")}
    else:
        out["jax"] = {"imported": False}
    if "torch" in sys.modules:
        import torch

        out["torch"] = {"version": torch.__version__, "num_threads": torch.get_num_threads(),
                        "num_interop_threads": torch.get_num_interop_threads()}
    else:
        out["torch"] = {"imported": False}
    if "vlm_jax.runtime" in sys.modules:
        out["vlm_jax_runtime"] = sys.modules["vlm_jax.runtime"].settings()
    return out


def host_start() -> dict[str, Any]:
    """The host's state when a benchmark starts (pass it to `host_report`)."""
    return {"load_avg": [round(x, 2) for x in os.getloadavg()], "time": time.time()}


def host_report(start: dict[str, Any]) -> dict[str, Any]:
    """The "host" block of a benchmark's JSON: cores, load average (1, 5, 15 min) at start and at
    end, wall seconds in between, and the runtimes' thread settings."""
    return {"cores": num_cores(), "load_avg_start": start["load_avg"],
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            "seconds": round(time.time() - start["time"], 1), "threads": runtime_settings()}


def vlm_batch(config, batch: int, seq: int, images: int, image_size: int, seed: int = 0) -> dict:
    """A synthetic training batch: `batch` rows of exactly `seq` tokens, `images` images in all.

    The images (image_size x image_size, one temporal patch pair each, as Qwen3-VL processes a
    still image) are dealt to the rows round-robin; a row holding k images is laid out as
    text, [<vision_start> <image_pad> x n <vision_end> text] x k, with the text split evenly.
    Returns numpy arrays:
      input_ids [B, S] int32, token_types [B, S] int32 (0 text / 1 image), grid_thw [images, 3]
      (in placeholder order, row after row), pixel_values [images * patches, C*T*p*p] float32,
      position_ids [3, B, S] int32 (our `get_rope_index`), and the per-row image counts.
    """
    from vlm_jax.model import rope
    from vlm_jax.model.vlm import visual_tokens_per_entry

    v = config.vision
    unit = v.patch_size * v.spatial_merge_size
    if image_size % unit:
        raise ValueError(f"image_size={image_size} must be a multiple of "
                         f"patch_size * spatial_merge_size = {unit}")
    side = image_size // v.patch_size
    grid_one = np.asarray([[1, side, side]], np.int64)
    n_vis = int(visual_tokens_per_entry(grid_one, config)[0])
    per_row = [images // batch + (r < images % batch) for r in range(batch)]
    need = max(per_row) * (n_vis + 2)
    if need > seq:
        raise ValueError(f"{max(per_row)} images of {n_vis} visual tokens (+2 markers each) "
                         f"need {need} > seq={seq} positions")

    rng = np.random.default_rng(seed)
    specials = {config.image_token_id, config.video_token_id, config.vision_start_token_id,
                config.vision_end_token_id}
    low = max(specials) + 1  # ordinary text ids sit above every special id of these configs
    ids = np.empty((batch, seq), np.int64)
    run = [config.vision_start_token_id] + [config.image_token_id] * n_vis + [config.vision_end_token_id]
    for r, k in enumerate(per_row):
        n_text = seq - k * (n_vis + 2)
        cuts = np.linspace(0, n_text, k + 2).astype(int)
        row = []
        for j in range(k + 1):
            row += rng.integers(low, config.text.vocab_size, size=cuts[j + 1] - cuts[j]).tolist()
            if j < k:
                row += run
        ids[r] = row
    grid = np.repeat(grid_one, images, axis=0)
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    pixel_values = rng.normal(size=(int(grid.prod(-1).sum()), patch_dim)).astype(np.float32)
    pos, _ = rope.get_rope_index(ids, grid if images else None, None, None,
                                 image_token_id=config.image_token_id, video_token_id=config.video_token_id,
                                 spatial_merge_size=v.spatial_merge_size)
    types = rope.token_types(ids, config.image_token_id, config.video_token_id)
    return dict(input_ids=ids.astype(np.int32), token_types=types,
                grid_thw=grid.astype(np.int32), pixel_values=pixel_values, position_ids=pos,
                images_per_row=per_row, visual_tokens_per_image=n_vis)


def hf_model(config, seed: int, attn: str, *, train: bool):
    """A randomly initialised HF Qwen3-VL (dense or MoE) for our `config`, with `attn` attention
    (sdpa | eager) in the text model and the vision tower; in train mode if `train`, else eval mode."""
    import torch
    import transformers

    from vlm_jax.convert import hf as convert

    torch.manual_seed(seed)
    d = convert.hf_config_from(config)
    moe = bool(config.text.num_experts)
    cfg_cls = transformers.Qwen3VLMoeConfig if moe else transformers.Qwen3VLConfig
    cls = (transformers.Qwen3VLMoeForConditionalGeneration if moe
           else transformers.Qwen3VLForConditionalGeneration)
    model = cls(cfg_cls(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")}))
    for cfg in (model.config, model.model.visual.config, model.model.language_model.config):
        cfg._attn_implementation = attn
    return model.train(train)

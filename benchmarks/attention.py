"""Attention memory and speed vs sequence length: the dense `xla` kernel vs `xla_chunked`.

    python benchmarks/attention.py [--lengths 1024,2048,4096,8192] [--heads 4] [--kv_heads 2] [--head_dim 64]
    python benchmarks/attention.py --lengths 1024,2048,4096,8192,16384,32768 \
        --contenders dense,xla_chunked,gpu,cudnn --dtype bfloat16          # on a GPU

Per length L, for each contender, one `jax.jit` of forward + backward (the gradient of
sum(attention(q, k, v) * w) w.r.t. q, k and v; self-attention, causal unless --nocausal):
  dense:       the `xla` impl's fused kernel (kernels/attention.py `_fused_attention`) on the full
               [B, L, L] mask: [B, H, L, L] logits, memory quadratic in L;
  xla_chunked: kernels/chunked_attention.py (online softmax over KV blocks, recomputing backward);
  gpu, cudnn:  on a GPU (`--contenders`), the Pallas Triton flash kernel and cuDNN's through
               `dot_product_attention` (cuDNN with `--dtype bfloat16`).
Reported: XLA's compiled temp bytes (`memory_analysis().temp_size_in_bytes`, the buffers besides
inputs and outputs) and the median wall / CPU seconds of a call (repetitions alternate between the
contenders, `common.interleaved`; on a shared machine the CPU seconds are the steadier figure),
and, for each doubling of L, the ratios of temp bytes and of times (quadratic memory gives about
4, linear about 2; time stays quadratic for both: xla_chunked skips only all-masked blocks). Dense is
compiled but not run where its temp bytes exceed --dense_cap_mib. Progress goes to stderr;
stdout is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks.common import host_report, host_start, interleaved, log, median, print_json, rate  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.kernels import attention as attn  # noqa: E402
from vlm_jax.kernels import chunked_attention as chunked  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string("lengths", "1024,2048,4096,8192", "comma-separated sequence lengths", flag_values=FLAGS)
flags.DEFINE_integer("batch", 1, "rows", flag_values=FLAGS)
flags.DEFINE_integer("heads", 4, "query heads", flag_values=FLAGS)
flags.DEFINE_integer("kv_heads", 2, "key/value heads (GQA)", flag_values=FLAGS)
flags.DEFINE_integer("head_dim", 64, "head dimension", flag_values=FLAGS)
flags.DEFINE_bool("causal", True, "causal self-attention (else bidirectional)", flag_values=FLAGS)
flags.DEFINE_integer("block_q", chunked.BLOCK_Q, "xla_chunked query block", flag_values=FLAGS)
flags.DEFINE_integer("block_kv", chunked.BLOCK_KV, "xla_chunked key/value block", flag_values=FLAGS)
flags.DEFINE_integer("dense_cap_mib", 2048, "run dense only where its compiled temp bytes fit in this many MiB",
                     flag_values=FLAGS)
flags.DEFINE_integer("reps", 3, "timed repetitions per contender and length", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "input seed", flag_values=FLAGS)
flags.DEFINE_string("contenders", "dense,xla_chunked",
                    "comma-separated: dense, xla_chunked, gpu (Triton, on a GPU), cudnn (GPU, bfloat16)",
                    flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "q, k, v dtype", flag_values=FLAGS)

MIB = 2 ** 20


def contenders(a: dict) -> dict:
    """name -> attention(q, k, v) for self-attention of the benchmark's shape."""
    causal = a["causal"]

    def dense(q, k, v):
        t = q.shape[1]
        # Bidirectional without segments masks nothing: no mask is the dense kernel's fastest form.
        mask = attn.attention_mask(None, None, causal=True, t=t, s=t) if causal else None
        return attn._fused_attention(q, k, v, mask)

    def xla_chunked(q, k, v):
        return chunked.chunked_attention(q, k, v, causal=causal, block_q=a["block_q"], block_kv=a["block_kv"])

    def kernel(impl):
        return lambda q, k, v: attn.dot_product_attention(q, k, v, causal=causal, impl=impl)

    every = {"dense": dense, "xla_chunked": xla_chunked, "gpu": kernel("gpu"), "cudnn": kernel("cudnn")}
    names = [x.strip() for x in a["contenders"].split(",") if x.strip()]
    unknown = sorted(set(names) - set(every))
    if unknown or "dense" not in names:
        raise ValueError(f"--contenders={a['contenders']!r}: dense is the reference and must be listed; "
                         f"unknown {unknown}, choose from {sorted(every)}")
    return {name: every[name] for name in names}


def grad_step(fn):
    """jit of (q, k, v, w) -> d/d(q, k, v) of sum(fn(q, k, v) * w)."""
    return jax.jit(jax.grad(lambda q, k, v, w: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))


def inputs(a: dict, length: int) -> tuple:
    r = np.random.default_rng(a["seed"])
    b, h, kh, d = a["batch"], a["heads"], a["kv_heads"], a["head_dim"]
    shapes = ((b, length, h, d), (b, length, kh, d), (b, length, kh, d), (b, length, h, d))
    return tuple(jnp.asarray(r.normal(size=s), a["dtype"]) for s in shapes)


def per_doubling(rows: dict, key: str) -> dict:
    """'L->2L' -> the ratio of `key` between consecutive measured lengths that double."""
    lengths = sorted(rows)
    return {f"{x}->{y}": rate(rows[y][key], rows[x][key])
            for x, y in zip(lengths, lengths[1:]) if y == 2 * x and rows[x].get(key) and rows[y].get(key)}


def measure(flag_values: flags.FlagValues) -> None:
    """Compiles and times each contender at each length, prints one JSON object."""
    a = flag_values.flag_values_dict()
    lengths = [int(x) for x in a["lengths"].split(",") if x.strip()]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--lengths={a['lengths']!r} must be positive integers")
    if a["heads"] % a["kv_heads"]:
        raise ValueError(f"--heads={a['heads']} is not a multiple of --kv_heads={a['kv_heads']}")
    start = host_start()
    fns = contenders(a)
    results: dict[str, dict[int, dict]] = {name: {} for name in fns}
    for length in lengths:
        args = inputs(a, length)
        timed = {}
        for name, fn in fns.items():
            compiled = grad_step(fn).lower(*args).compile()
            temp = int(compiled.memory_analysis().temp_size_in_bytes)
            row = {"temp_bytes": temp, "temp_mib": round(temp / MIB, 2)}
            if name == "dense" and temp > a["dense_cap_mib"] * MIB:
                row["skipped"] = f"temp {temp / MIB:.0f} MiB > --dense_cap_mib={a['dense_cap_mib']}"
            else:
                timed[name] = lambda compiled=compiled, args=args: jax.block_until_ready(compiled(*args))
            results[name][length] = row
            log(f"L={length} {name}: temp {temp / MIB:.1f} MiB{' (not run)' if 'skipped' in row else ''}")
        log(f"L={length}: timing {list(timed)} x {a['reps']} (one warm-up each)")
        for name, t in interleaved(timed, reps=a["reps"], warmup=1).items():
            results[name][length].update(wall_s=round(median(t["wall"]), 4), cpu_s=round(median(t["cpu"]), 4))
        dense = results["dense"][length]
        for name in fns:
            if name != "dense":
                ours = results[name][length]
                ours["temp_vs_dense"] = rate(ours["temp_bytes"], dense["temp_bytes"], 4)
                ours["speedup_vs_dense_wall"] = rate(dense.get("wall_s"), ours["wall_s"])
                ours["speedup_vs_dense_cpu"] = rate(dense.get("cpu_s"), ours["cpu_s"])
    print_json({
        "benchmark": "attention",
        "shape": {"batch": a["batch"], "heads": a["heads"], "kv_heads": a["kv_heads"], "head_dim": a["head_dim"],
                  "causal": a["causal"], "dtype": a["dtype"]},
        "xla_chunked_blocks": {"block_q": a["block_q"], "block_kv": a["block_kv"]},
        "dense_cap_mib": a["dense_cap_mib"], "reps": a["reps"],
        "results": {name: {str(length): row for length, row in rows.items()} for name, rows in results.items()},
        "per_doubling": {name: {"temp": per_doubling(rows, "temp_bytes"), "wall": per_doubling(rows, "wall_s"),
                                "cpu": per_doubling(rows, "cpu_s")} for name, rows in results.items()},
        "host": host_report(start),
    })


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: measure(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the full input pipeline on the synthetic world (not a test).

    python benchmarks/input_pipeline.py [--workers 0,1,2] [--batches 20] [--seq-len 2048] ...

Prints one JSON object: per worker count, samples/s and tokens/s (real, non-padding tokens) of
source -> decode -> tokenise -> pack -> batch, measured after a warm-up (worker start-up excluded),
plus packing efficiency (real tokens / token slots) and vision-buffer utilisation, and the host block
(`benchmarks.common.host_report`: load average at start and end, thread settings).
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from benchmarks.common import host_report, host_start, log, print_json  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.data.pipeline import Pipeline, get_config  # noqa: E402
from vlm_jax.data.synthetic import TOKENIZER_PATH, SyntheticSource, SyntheticWorld  # noqa: E402


def run(workers: int, args: dict) -> dict:
    """Measures the pipeline with `workers` worker processes; `args`: the flag values, dashes as underscores."""
    cfg = get_config(
        seq_len=args["seq_len"],
        batch_size=args["batch_size"],
        max_patches=args["max_patches"],
        max_grids=args["max_grids"],
        worker_count=workers,
        read_threads=args["read_threads"],
        seed=args["seed"],
    )
    source = SyntheticSource(SyntheticWorld(), "train", length=10**7)
    log(f"workers={workers}: starting")
    t0 = time.perf_counter()
    it = iter(Pipeline(source, str(TOKENIZER_PATH), cfg))
    for _ in range(args["warmup"]):
        next(it)
    t1 = time.perf_counter()
    s0 = dict(it.stats)
    per_batch = []
    for _ in range(args["batches"]):
        tb = time.perf_counter()
        next(it)
        per_batch.append(time.perf_counter() - tb)
    t2 = time.perf_counter()
    log(f"workers={workers}: {args['batches']} batches in {t2 - t1:.1f} s")
    st = it.stats
    it.close()
    dt = t2 - t1
    samples = st["samples"] - s0["samples"]
    tokens = st["tokens"] - s0["tokens"]
    return {
        "workers": workers,
        "samples_per_s": round(samples / dt, 2),
        "tokens_per_s": round(tokens / dt, 1),
        "batches_per_s": round(args["batches"] / dt, 3),
        "median_batch_s": round(statistics.median(per_batch), 3),
        "packing_efficiency": round(
            (st["tokens"] - s0["tokens"]) / (st["token_slots"] - s0["token_slots"]), 4
        ),
        "vision_buffer_utilisation": round(
            (st["patches"] - s0["patches"]) / (st["patch_slots"] - s0["patch_slots"]), 4
        ),
        "skipped": st["skipped"],
        "startup_and_warmup_s": round(t1 - t0, 2),
        "measured_s": round(dt, 2),
    }


FLAGS = flags.FlagValues()
flags.DEFINE_string("workers", "0,1,2", "comma-separated worker counts", flag_values=FLAGS)
flags.DEFINE_integer("batches", 20, "measured batches per worker count", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 3, "batches before the measurement", flag_values=FLAGS)
flags.DEFINE_integer("seq-len", 2048, "tokens per packed row", flag_values=FLAGS)
flags.DEFINE_integer("batch-size", 4, "rows per batch", flag_values=FLAGS)
flags.DEFINE_integer("max-patches", 20480, "vision patches per batch", flag_values=FLAGS)
flags.DEFINE_integer("max-grids", 256, "images per batch", flag_values=FLAGS)
flags.DEFINE_integer("read-threads", 2, "source read threads", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "pipeline seed", flag_values=FLAGS)


def measure(flag_values: flags.FlagValues) -> None:
    """Runs the benchmark for every worker count of the parsed flags; one JSON object on stdout."""
    args = {k.replace("-", "_"): v for k, v in flag_values.flag_values_dict().items()}
    start = host_start()
    results = [run(int(w), args) for w in args["workers"].split(",")]
    print_json(
        {
            "benchmark": "input_pipeline",
            "data": "synthetic world (default config), train split",
            "config": {
                "seq_len": args["seq_len"],
                "batch_size": args["batch_size"],
                "max_patches": args["max_patches"],
                "max_grids": args["max_grids"],
                "read_threads": args["read_threads"],
                "batches": args["batches"],
                "warmup": args["warmup"],
            },
            "host": {
                **host_report(start),
                "python": platform.python_version(),
            },
            "results": results,
        }
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: measure(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())

"""Where a train step's time goes: XLA:CPU's per-op trace, summed by model region and by op.

Runs the step of `benchmarks/train_step.py` (forward + backward + AdamW, ours only) under
`jax.profiler.trace`, reads the Perfetto trace, and maps every executed XLA op (fusion, copy,
library call) to the `op_name` metadata of the compiled HLO, which names the model module that
produced it and whether it belongs to the forward pass or the backward (`transpose(jvp(...))`).
Times are summed over threads, so they add up to more than the wall time when ops run in parallel.

    python benchmarks/profile_step.py --config tiny --steps 3
    python benchmarks/profile_step.py --config 100m --steps 1 --top 40

Progress goes to stderr; stdout is one JSON object: the wall time per step, the time per region
(vision tower, decoder attention, decoder MLP, layer-scan stacking, LM head and loss, optimizer,
other), and the `--top` most expensive (pass, module path) entries with an example op of each.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.train_step import ours_step_fn  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import model as model_configs  # noqa: E402
from vlm_jax.model.vlm import Qwen3VL  # noqa: E402

_OP_NAME = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', re.M)
# Wrappers of the op path that say nothing about where in the model an op comes from.
_NOISE = {"while", "body", "closed_call", "cond", "checkpoint", "rematted_computation"}


def region(op_name: str) -> str:
    """The model region an HLO op_name belongs to, with F (forward) or B (backward)."""
    side = "B" if "transpose(jvp" in op_name else "F"
    if "encode_vision" in op_name:
        where = "vision tower"
    elif "/decoder/" in op_name and "/attn/" in op_name:
        where = "decoder attention"
    elif "/decoder/" in op_name and ("/mlp/" in op_name or "/moe/" in op_name):
        where = "decoder mlp"
    elif "/decoder/" in op_name and "dynamic_" in op_name and "index_in_dim" in op_name:
        where = "layer-scan stacking"
    elif "/decoder/" in op_name:
        where = "decoder other"
    elif "bsd,dv->bsv" in op_name or "Qwen3VL" not in op_name:
        where = "LM head, loss, optimizer"
    else:
        where = "other"
    return f"{side} {where}"


def module_path(op_name: str, depth: int) -> str:
    """op_name without jit/jvp wrappers, cut to `depth` components, with F/B in front."""
    side = "B" if "transpose(jvp" in op_name else "F"
    path = re.sub(r"(transpose\()?jvp\(([^()]*)\)\)?", r"\2", op_name.split("/", 1)[-1])
    parts = [p for p in path.split("/") if p and p not in _NOISE]
    return f"{side} " + "/".join(parts[:depth])


def op_table(trace_dir: str, hlo_text: str, steps: int, depth: int) -> tuple[dict, list]:
    """(ms per step by region, [(ms per step, module path, example op)] sorted) from a trace."""
    meta = {m.group(1): m.group(2) for m in _OP_NAME.finditer(hlo_text)}
    trace = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))
    regions: collections.Counter = collections.Counter()
    paths: collections.Counter = collections.Counter()
    example: dict[str, str] = {}
    for e in trace["traceEvents"]:
        if e.get("ph") != "X" or e["name"] not in meta:
            continue
        op_name = meta[e["name"]]
        regions[region(op_name)] += e["dur"]
        key = module_path(op_name, depth)
        paths[key] += e["dur"]
        example.setdefault(key, e["name"])
    per_step = 1e3 * steps  # trace durations are in microseconds
    return ({k: round(v / per_step, 2) for k, v in regions.most_common()},
            [(round(v / per_step, 2), k, example[k]) for k, v in paths.most_common()])


FLAGS = flags.FlagValues()
flags.DEFINE_string("config", "tiny", "model size (get_config name)", flag_values=FLAGS)
flags.DEFINE_integer("batch", 4, "rows per batch", flag_values=FLAGS)
flags.DEFINE_integer("seq", 512, "tokens per row", flag_values=FLAGS)
flags.DEFINE_integer("images", 4, "images in the whole batch", flag_values=FLAGS)
flags.DEFINE_integer("image_size", 224, "image side in pixels", flag_values=FLAGS)
flags.DEFINE_integer("steps", 3, "traced steps (after two untraced ones)", flag_values=FLAGS)
flags.DEFINE_integer("depth", 8, "module-path components kept in the op table", flag_values=FLAGS)
flags.DEFINE_integer("top", 30, "op-table entries printed", flag_values=FLAGS)


def run(args: flags.FlagValues) -> None:
    start = common.host_start()
    c = model_configs.get_config(args.config)
    b = common.vlm_batch(c, args.batch, args.seq, args.images, args.image_size, seed=0)
    vis = (jnp.asarray(b["pixel_values"]), jnp.asarray(b["grid_thw"])) if args.images else (None, None)
    inputs = (jnp.asarray(b["input_ids"]), jnp.asarray(b["position_ids"]), *vis)
    params = jax.jit(lambda r: Qwen3VL(c).init(r, inputs[0], inputs[1], None, *inputs[2:]))(jax.random.key(0))
    opt = optax.adamw(1e-4)
    state = [params["params"], opt.init(params["params"])]
    step_fn = ours_step_fn(c, opt)
    common.log(f"[{args.config}] compiling")
    compiled = step_fn.lower(state[0], state[1], *inputs).compile()
    hlo = compiled.as_text()

    def step() -> float:
        state[0], state[1], loss = compiled(state[0], state[1], *inputs)
        return float(loss)

    for _ in range(2):
        step()
    walls = [common.timed(step)[0] for _ in range(args.steps)]
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(args.steps):
                step()
        regions, table = op_table(d, hlo, args.steps, args.depth)
    common.print_json({
        "config": args.config, "batch": args.batch, "seq": args.seq, "images": args.images,
        "step_ms_median": round(1e3 * common.median(walls), 1),
        "thread_ms_per_step_by_region": regions,
        "top_ops": [{"ms_per_step": ms, "where": where, "example_op": op} for ms, where, op in table[:args.top]],
        "host": common.host_report(start),
    })


def main(argv: list[str] | None = None) -> int:
    """Profiles the step for the parsed flags in `argv` (without the program name)."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())

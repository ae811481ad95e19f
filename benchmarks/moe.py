"""MoE layer throughput: dense vs ragged vs expert-parallel, forward + backward, on simulated CPU devices.

All three run the same `MoE` layer (same params, inputs, mesh with expert=--devices, the model's
shardings) in one jit of value_and_grad w.r.t. params and inputs:
  dense            every expert on every token (GSPMD partitions it);
  ragged           token copies sorted by expert, grouped matmuls (GSPMD partitions it);
  expert_parallel  shard_map: tokens exchanged with the expert shards by all_to_all (parallel/expert.py).
The simulated devices share this machine's cores, so the numbers compare the implementations' work and
overheads, not a real interconnect. Outputs must agree with dense (a guard against timing different
computations). Repetitions alternate between the contenders; medians and tokens/s are reported.

    python benchmarks/moe.py --tokens 1024,4096 --hidden 64 --inter 128 --experts 8 --topk 2

Progress goes to stderr; stdout is one JSON object.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The simulated devices must be requested before jax is imported (a no-op when it already is).
_DEVICES_FLAG = "--xla_force_host_platform_device_count"
if "jax" not in sys.modules and _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}=8".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from benchmarks import common  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import model as model_configs  # noqa: E402
from vlm_jax.model.moe import MoE, load_balancing_loss  # noqa: E402
from vlm_jax.parallel import make_mesh, rules  # noqa: E402

IMPLS = ("dense", "ragged", "expert_parallel")
AGREE_TOL = 1e-4


def layer_config(args, impl: str):
    c = model_configs.base_config()
    c.text.update(hidden_size=args.hidden, num_experts=args.experts, num_experts_per_tok=args.topk,
                  moe_intermediate_size=args.inter, moe_impl=impl, moe_gmm=args.gmm)
    model_configs.validate(c)
    return c


def step_fn(config, mesh):
    """jit of (loss, out), grads w.r.t. (params, x) of the layer under `mesh`."""
    def loss(params, x, valid, cot):
        out, stats = MoE(config).apply({"params": params}, x, valid)
        return jnp.sum(out * cot) + load_balancing_loss(stats, config.text.num_experts), out

    def step(params, x, valid, cot):
        with rules.sharding_context(mesh):
            return jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x, valid, cot)

    return jax.jit(step)


def bench_tokens(tokens: int, args, mesh) -> dict:
    rows = args.devices
    if tokens % rows:
        raise ValueError(f"--tokens {tokens} must be a multiple of --devices={rows} (one block of rows each)")
    seq = tokens // rows
    rng = np.random.default_rng(args.seed)
    spec = lambda shape, names: NamedSharding(mesh, rules.logical_spec(shape, names, mesh))
    x = jax.device_put(rng.normal(size=(rows, seq, args.hidden)).astype(np.float32),
                       spec((rows, seq, args.hidden), ("batch", "seq", None)))
    cot = jax.device_put(rng.normal(size=x.shape).astype(np.float32), x.sharding)
    valid = jax.device_put(np.ones((rows, seq), bool), spec((rows, seq), ("batch", "seq")))
    boxed = MoE(layer_config(args, "dense")).init(jax.random.key(args.seed), x[:1], valid[:1])["params"]
    params = jax.device_put(nn.unbox(boxed), rules.param_shardings(boxed, mesh))

    fns, compile_s, outs = {}, {}, {}
    for impl in IMPLS:
        common.log(f"[{tokens}] compiling {impl}")
        fn = step_fn(layer_config(args, impl), mesh)
        t, compiled = common.timed(lambda f=fn: f.lower(params, x, valid, cot).compile())
        compile_s[impl] = round(t, 2)
        outs[impl] = np.asarray(compiled(params, x, valid, cot)[0][1])
        fns[impl] = lambda c=compiled: jax.block_until_ready(c(params, x, valid, cot))
    diff = {k: float(np.max(np.abs(outs[k] - outs["dense"]))) for k in IMPLS}
    if max(diff.values()) > AGREE_TOL:
        raise SystemExit(f"[{tokens}] outputs differ from dense by {diff} > {AGREE_TOL}: not the same computation")

    common.log(f"[{tokens}] timing {args.reps} interleaved repetitions (+{args.warmup} warm-up)")
    times = common.interleaved(fns, reps=args.reps, warmup=args.warmup)
    med = {k: common.median(times[k]["wall"]) for k in IMPLS}
    out = dict(
        tokens_per_s={k: common.rate(tokens, med[k], 1) for k in IMPLS},
        speedup_vs_dense={k: common.rate(med["dense"], med[k], 3) for k in IMPLS},
        step_ms_median={k: round(1e3 * med[k], 2) for k in IMPLS},
        cpu_s_median={k: round(common.median(times[k]["cpu"]), 3) for k in IMPLS},
        compile_s=compile_s,
        max_abs_diff_vs_dense={k: float(f"{v:.3e}") for k, v in diff.items()},
    )
    common.log(f"[{tokens}] tokens/s {out['tokens_per_s']}")
    return out


FLAGS = flags.FlagValues()
flags.DEFINE_string("tokens", "1024,4096", "comma-separated token counts (batch rows x seq, rows = --devices)",
                    flag_values=FLAGS)
flags.DEFINE_integer("devices", 8, "simulated devices = the mesh's expert axis", flag_values=FLAGS)
flags.DEFINE_integer("hidden", 64, "model width", flag_values=FLAGS)
flags.DEFINE_integer("inter", 128, "expert width (moe_intermediate_size)", flag_values=FLAGS)
flags.DEFINE_integer("experts", 8, "experts (a multiple of --devices)", flag_values=FLAGS)
flags.DEFINE_integer("topk", 2, "experts per token", flag_values=FLAGS)
flags.DEFINE_enum("gmm", "ragged_dot", ["ragged_dot", "megablox"], "grouped matmul of ragged / expert_parallel",
                  flag_values=FLAGS)
flags.DEFINE_integer("reps", 5, "timed repetitions per implementation", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 1, "untimed repetitions per implementation", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "params and data seed", flag_values=FLAGS)


def run(args: flags.FlagValues) -> None:
    """Benchmarks every token count of the parsed flags `args`; one JSON object on stdout."""
    start = common.host_start()
    if jax.device_count() < args.devices:
        raise ValueError(f"--devices={args.devices} but jax sees {jax.device_count()} (set XLA_FLAGS "
                         f"{_DEVICES_FLAG}=N before jax is imported)")
    if args.experts % args.devices:
        raise ValueError(f"--experts={args.experts} must be a multiple of --devices={args.devices}")
    mesh = make_mesh({"expert": args.devices}, jax.devices()[:args.devices])
    setup = dict(devices=args.devices, mesh=dict(mesh.shape), hidden=args.hidden, inter=args.inter,
                 experts=args.experts, topk=args.topk, gmm=args.gmm, reps=args.reps, warmup=args.warmup,
                 backend=jax.default_backend(), jax=jax.__version__)
    counts = [int(t) for t in args.tokens.split(",") if t]
    results = {str(t): bench_tokens(t, args, mesh) for t in counts}
    common.print_json({"setup": setup, "results": results, "host": common.host_report(start)})


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())

"""Training-step throughput: vlm_jax vs the Hugging Face PyTorch reference, on CPU.

One step is forward + backward + AdamW update on the same batch with the same weights:
  ours: one `jax.jit` of loss (the train step's `losses.cross_entropy_loss`) -> `jax.value_and_grad`
        -> `optax.adamw` update -> new params,
        with params and optimizer state donated;
  ref:  `Qwen3VLForConditionalGeneration` built from `hf_config_from(config)`, loss from
        `labels=input_ids`, `loss.backward()`, `torch.optim.AdamW.step()`, `zero_grad()`.
The loss is next-token cross-entropy over every position (as HF computes it from `labels`).
Our weights are converted from the HF model, and the two step-0 losses must agree to 1e-4
(a guard against timing two different computations). Repetitions alternate between the two
sides (`--alone`: each side in its own loop); medians and tokens/s (batch * seq / median step
time) are reported.

    python benchmarks/train_step.py --configs tiny,100m --batch 4 --seq 512 --images 4 --image_size 224

`--images` is the number of images in the whole batch, dealt to the rows round-robin.
Progress goes to stderr; stdout is one JSON object.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import model as model_configs  # noqa: E402
from vlm_jax.convert import hf as convert  # noqa: E402
from vlm_jax.model.vlm import Qwen3VL  # noqa: E402
from vlm_jax.train import losses  # noqa: E402

LOSS_TOL = 1e-4
# Timed steps and extra untimed warm-up steps per side (step 0, which is checked, always warms up).
DEFAULT_STEPS = {"tiny": 6, "tiny-moe": 6, "100m": 2}
DEFAULT_WARMUP = {"tiny": 1, "tiny-moe": 1, "100m": 1}


def ours_step_fn(c, opt):
    model = Qwen3VL(c)

    def loss_fn(params, ids, pos, px, grid):
        logits = model.apply({"params": params}, ids, pos, None, px, grid)["logits"]
        # Next-token labels with the last position weighted out: the same mean over B * (S - 1)
        # terms as HF's shifted loss, through the train step's own cross-entropy.
        labels = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
        weight = jnp.ones(ids.shape, jnp.float32).at[:, -1].set(0.0)
        return losses.cross_entropy_loss(logits, labels, weight)["loss"]

    def step(params, opt_state, ids, pos, px, grid):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, pos, px, grid)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def bench_config(name: str, args) -> dict:
    c = model_configs.get_config(name)
    if name.startswith("tiny-moe"):
        c = c.unlock()
        c.text.moe_impl = args.moe_impl
        c.lock()
    b = common.vlm_batch(c, args.batch, args.seq, args.images, args.image_size, seed=args.seed)
    common.log(f"[{name}] building HF model ({args.ref_attn} attention) and converting weights")
    ref = common.hf_model(c, args.seed, args.ref_attn, train=True)
    params = convert.params_from_hf_tensors(((k, v.detach().numpy()) for k, v in ref.state_dict().items()), c)
    n_params = int(sum(x.size for x in jax.tree.leaves(params)))
    n_ref = sum(p.numel() for p in ref.parameters())

    hyper = dict(lr=args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    opt = optax.adamw(hyper["lr"], b1=hyper["b1"], b2=hyper["b2"], eps=hyper["eps"],
                      weight_decay=hyper["weight_decay"])
    ropt = torch.optim.AdamW(ref.parameters(), lr=hyper["lr"], betas=(hyper["b1"], hyper["b2"]),
                             eps=hyper["eps"], weight_decay=hyper["weight_decay"])

    # --- ours: compile ahead of time so compile time is measured on its own
    vis = (jnp.asarray(b["pixel_values"]), jnp.asarray(b["grid_thw"])) if args.images else (None, None)
    inputs = (jnp.asarray(b["input_ids"]), jnp.asarray(b["position_ids"]), *vis)
    state = {"params": params, "opt": opt.init(params)}
    common.log(f"[{name}] compiling ours")
    step_fn = ours_step_fn(c, opt)
    t_lower, lowered = common.timed(lambda: step_fn.lower(state["params"], state["opt"], *inputs))
    t_compile, compiled = common.timed(lowered.compile)

    def ours():
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], *inputs)
        return float(loss)  # blocks until the step is done

    # --- reference
    t = lambda a, dt=torch.long: torch.as_tensor(np.asarray(a), dtype=dt)
    ref_inputs = dict(input_ids=t(b["input_ids"]), labels=t(b["input_ids"]),
                      mm_token_type_ids=t(b["token_types"], torch.int32))
    if args.images:
        ref_inputs.update(pixel_values=t(b["pixel_values"], torch.float32), image_grid_thw=t(b["grid_thw"]))

    def reference():
        loss = ref(**ref_inputs).loss
        loss.backward()
        ropt.step()
        ropt.zero_grad(set_to_none=True)
        return loss.item()

    # --- step 0 (also the first warm-up): both sides must compute the same loss
    t0_ours, loss_ours = common.timed(ours)
    t0_ref, loss_ref = common.timed(reference)
    diff = abs(loss_ours - loss_ref)
    common.log(f"[{name}] step-0 loss ours={loss_ours:.6f} ref={loss_ref:.6f} |diff|={diff:.2e}; "
               f"first step ours {t0_ours:.2f}s ref {t0_ref:.2f}s")
    if not diff <= LOSS_TOL:
        raise SystemExit(f"[{name}] step-0 losses differ by {diff:.3e} > {LOSS_TOL}: "
                         "not the same computation")

    steps = args.steps or DEFAULT_STEPS.get(name, 2)
    warmup = DEFAULT_WARMUP.get(name, 0) if args.warmup < 0 else args.warmup
    common.log(f"[{name}] timing {steps} interleaved steps per side (+{warmup} warm-up)")
    sides = {"ours": ours, "ref": reference}
    if args.alone:  # each side in its own loop: no alternation between the two runtimes' thread pools
        times = {k: common.interleaved({k: fn}, reps=steps, warmup=warmup)[k] for k, fn in sides.items()}
    else:
        times = common.interleaved(sides, reps=steps, warmup=warmup)
    tokens = args.batch * args.seq
    wall = {k: times[k]["wall"] for k in times}
    ours_med, ref_med = common.median(wall["ours"]), common.median(wall["ref"])
    ours_cpu, ref_cpu = common.median(times["ours"]["cpu"]), common.median(times["ref"]["cpu"])
    # Per-repetition ratios (adjacent runs share the machine load) as a spread measure.
    pair = sorted(r / o for o, r in zip(wall["ours"], wall["ref"]))
    out = dict(
        ours_tokens_per_s=round(tokens / ours_med, 1),
        ref_tokens_per_s=round(tokens / ref_med, 1),
        ratio=round(ref_med / ours_med, 3),
        ratio_per_rep_min_max=[round(pair[0], 3), round(pair[-1], 3)],
        ours_step_ms_median=round(1e3 * ours_med, 1),
        ref_step_ms_median=round(1e3 * ref_med, 1),
        # Process CPU seconds per step (all threads): steadier than wall time on a shared machine.
        ours_cpu_s_median=round(ours_cpu, 2),
        ref_cpu_s_median=round(ref_cpu, 2),
        cpu_ratio=round(ref_cpu / ours_cpu, 3),
        compile_s=round(t_lower + t_compile, 2),
        params=n_params,
        ref_params=n_ref,
        steps=steps,
        ours_step_ms=[round(1e3 * x, 1) for x in wall["ours"]],
        ref_step_ms=[round(1e3 * x, 1) for x in wall["ref"]],
        loss_step0_ours=round(loss_ours, 6),
        loss_step0_ref=round(loss_ref, 6),
        loss_step0_abs_diff=float(f"{diff:.3e}"),
        visual_tokens=int(sum(b["images_per_row"]) * b["visual_tokens_per_image"]),
        patches=int(b["pixel_values"].shape[0]),
    )
    common.log(f"[{name}] {out['ours_tokens_per_s']} vs {out['ref_tokens_per_s']} tokens/s: "
               f"ratio {out['ratio']}")
    return out


FLAGS = flags.FlagValues()
flags.DEFINE_string("configs", "tiny,100m", "comma-separated model sizes (get_config names)", flag_values=FLAGS)
flags.DEFINE_integer("batch", 4, "rows per batch", flag_values=FLAGS)
flags.DEFINE_integer("seq", 512, "tokens per row", flag_values=FLAGS)
flags.DEFINE_integer("images", 4, "images in the whole batch (dealt to the rows round-robin)", flag_values=FLAGS)
flags.DEFINE_integer("image_size", 224, "image side in pixels", flag_values=FLAGS)
flags.DEFINE_integer("steps", 0, f"timed steps per side (0: per-config default {DEFAULT_STEPS}, else 2)",
                     flag_values=FLAGS)
flags.DEFINE_integer("warmup", -1, f"untimed steps per side after the checked step 0 (-1: {DEFAULT_WARMUP}, else 0)",
                     flag_values=FLAGS)
flags.DEFINE_float("lr", 1e-4, "AdamW learning rate", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "weights and data seed", flag_values=FLAGS)
flags.DEFINE_enum("ref_attn", "sdpa", ["sdpa", "eager"], "HF attention implementation (sdpa is transformers' default)",
                  flag_values=FLAGS)
flags.DEFINE_enum("moe_impl", "ragged", ["ragged", "dense"], "ours, for tiny-moe", flag_values=FLAGS)
flags.DEFINE_bool("alone", False, "time each side in its own loop (default: repetitions alternate between the sides)",
                  flag_values=FLAGS)


def run(args: flags.FlagValues) -> None:
    """Benchmarks every config of the parsed flags `args` (`FLAGS`); one JSON object on stdout."""
    start = common.host_start()
    cores = common.num_cores()
    torch.set_num_threads(cores)
    setup = dict(batch=args.batch, seq=args.seq, images=args.images, image_size=args.image_size, alone=args.alone,
                 ref_attn=args.ref_attn, cores=cores, torch_threads=torch.get_num_threads(),
                 jax=jax.__version__, torch=torch.__version__, transformers=transformers.__version__,
                 backend=jax.default_backend(), xla_flags=os.environ.get("XLA_FLAGS", ""))
    results = {name: bench_config(name, args) for name in args.configs.split(",") if name}
    common.print_json({"setup": setup, "configs": results, "host": common.host_report(start)})


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())

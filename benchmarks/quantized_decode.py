"""Decode speed and accuracy of the weight formats (float32, bfloat16, weight-only int8) at batch 1.

What each format runs (`vlm_jax.inference.quantize.prepare_weights`, then the same `generate`: jitted
prefill, then every decode step in one jitted `while_loop`, greedy, exactly `--new_tokens` tokens, no
stop token, image prompts; compute in the config's dtype, float32, for all three):
  float32:  the weights as they are;
  bfloat16: every weight stored as bfloat16, cast to float32 in front of each matmul;
  int8:     Dense kernels and the embedding / LM head stored as int8 with one float32 scale per output
            channel, dequantised in front of each matmul (the rest stays float32).
decode_tok_s = (N - 1) / (median time(N tokens) - median time(1 token)), on the wall clock and on the
process CPU clock (steadier on a shared machine); compilation is excluded (warm-up), repetitions
alternate between the formats (ABBA), and each format's timed pair runs after an untimed call that
makes `generate`'s per-layer weight split (kept for one model at a time) that format's.

Memory: `copy_gb_s` is the bytes moved (read + write) per second by an in-place `a + 1` over an
`--copy_mib` float32 array (best and median of --copy_reps), per wall second and per process CPU
second (on a busy machine the wall figure measures the share of the cores this process got);
`decode_weight_bytes` is what one decode step must read (decoder layers, final norm, LM head:
`quantize.decode_weight_bytes`), and `bandwidth_bound_tok_s` = best copy bandwidth / those bytes on the
same clock, the ceiling for a decode step that only streams its weights once. XLA:CPU does not fuse
the int8 / bfloat16 -> float32 conversion into its dot, so on CPU `generate` lets XLA hoist it out of
the decode loop: the decode steps then read float32 copies, and the int8 / bfloat16 bytes per token are
what an accelerator would read, not what the CPU does (see vlm_jax/inference/quantize.py).

Accuracy (`quantize.accuracy_cost`): greedy-token agreement with float32 (free running and teacher
forced) and max / mean |logit error| on `--accuracy_rows` image prompts, `--accuracy_tokens` tokens each.

Weights: random (normal, std 0.02 as the model's init; norm scales 1, biases 0; untrained, so logit
gaps are small and greedy ties are easier to flip than in a trained model), or `--checkpoint`.

    python benchmarks/quantized_decode.py --configs tiny,100m --new_tokens 32
    python benchmarks/quantized_decode.py --checkpoint runs/synthetic_tiny

Progress goes to stderr; stdout is one JSON object.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import model as model_configs  # noqa: E402
from vlm_jax.inference import quantize  # noqa: E402
from vlm_jax.inference.generate import generate  # noqa: E402
from vlm_jax.model.vlm import param_shapes  # noqa: E402

TARGET_INT8_SPEEDUP = 1.7  # issue 12: int8 decode >= 1.7x float32 on the 100m config


def random_params(config, seed: int) -> dict:
    """Normal(0, 0.02) weights (the model's init), norm scales 1, biases 0; from the shapes, no jitted init."""
    rng = np.random.default_rng(seed)

    def value(path, s):
        name = getattr(path[-1], "key", None)
        if name in ("scale", "bias"):
            return jnp.full(s.shape, 1.0 if name == "scale" else 0.0, s.dtype)
        return jnp.asarray(rng.normal(0, 0.02, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(value, nn.unbox(param_shapes(config)))


def copy_bandwidth(mib: int, reps: int) -> dict:
    """Bytes moved (read + write) per second by an in-place `a + 1` over a float32 array of `mib` MiB, per
    wall second and per process CPU second (best and median of `reps`)."""
    a = jnp.zeros((mib * 2**20 // 4,), jnp.float32)
    step = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    a = step(a).block_until_ready()
    times = {"wall": [], "cpu": []}
    for _ in range(reps):
        c0 = time.process_time()
        wall, a = common.timed(lambda: step(a).block_until_ready())  # noqa: B023 (called right here)
        times["cpu"].append(time.process_time() - c0)
        times["wall"].append(wall)
    moved = 2 * a.nbytes
    out = {"array_mib": mib, "bytes_moved": moved, "reps": reps}
    for clock, ts in times.items():
        out[clock] = {"copy_gb_s_best": common.rate(moved / 1e9, min(ts)),
                      "copy_gb_s_median": common.rate(moved / 1e9, common.median(ts))}
    return out


def decode_rates(config, formats: dict, prompt: list, px, grid, n: int, reps: int) -> dict:
    """{format: {"wall" | "cpu": {"prefill_s", "decode_tok_s"}}} at batch 1 (see the module docstring)."""
    run = lambda p, k: generate(config, p, prompt, pixel_values=px, grid_thw=grid, preset="greedy",
                                max_new_tokens=k).tokens
    for p in formats.values():  # compile prefill and decode
        run(p, 1), run(p, n)
    times = {w: {k: {"wall": [], "cpu": []} for k in (1, n)} for w in formats}
    names = list(formats)
    for i in range(reps):
        for w in names if i % 2 == 0 else names[::-1]:
            run(formats[w], 1)  # untimed: makes generate's cached per-layer split this format's
            for k in (1, n) if i % 2 == 0 else (n, 1):
                c0 = time.process_time()
                wall, _ = common.timed(lambda: run(formats[w], k))  # noqa: B023 (called right here)
                times[w][k]["cpu"].append(time.process_time() - c0)
                times[w][k]["wall"].append(wall)
    out = {}
    for w in names:
        out[w] = {}
        for clock in ("wall", "cpu"):
            t1, tn = (common.median(times[w][k][clock]) for k in (1, n))
            out[w][clock] = {"prefill_s": round(t1, 5), "decode_tok_s": common.rate(n - 1, tn - t1, 1)}
    return out


def bench_config(name: str, config, params: dict, bandwidth: dict, args) -> dict:
    formats = {w: quantize.prepare_weights(params, w) for w in quantize.WEIGHTS}
    # Accuracy: --accuracy_rows image prompts; timing: one of them (batch 1).
    data = common.vlm_batch(config, args.accuracy_rows, args.prompt_len, args.accuracy_rows, args.image_size)
    prompts = list(data["input_ids"])
    common.log(f"[{name}] accuracy")
    accuracy = quantize.accuracy_cost(config, params, prompts, pixel_values=data["pixel_values"],
                                      grid_thw=data["grid_thw"], weights=quantize.WEIGHTS[1:],
                                      max_new_tokens=args.accuracy_tokens)
    one = common.vlm_batch(config, 1, args.prompt_len, 1, args.image_size)
    common.log(f"[{name}] decode timing")
    rates = decode_rates(config, formats, list(one["input_ids"]), one["pixel_values"], one["grid_thw"],
                         args.new_tokens, args.reps)
    out = {"config": name, "params_m": round(sum(x.size for x in jax.tree.leaves(params)) / 1e6, 1),
           "prompt_len": args.prompt_len, "images_per_row": 1,
           "patches_per_row": int(one["pixel_values"].shape[0]), "new_tokens": args.new_tokens, "weights": {}}
    for w, p in formats.items():
        per_token = quantize.decode_weight_bytes(p, config)
        out["weights"][w] = {"weight_bytes_total": quantize.nbytes(p), "decode_weight_bytes": per_token,
                             "bandwidth_bound_tok_s": {
                                 clock: common.rate(bandwidth[clock]["copy_gb_s_best"] * 1e9, per_token, 1)
                                 for clock in ("wall", "cpu")},
                             **rates[w], "accuracy": accuracy.get(w, "reference")}
    for w in quantize.WEIGHTS[1:]:
        out[f"{w}_vs_float32_decode"] = {
            clock: common.rate(rates[w][clock]["decode_tok_s"], rates["float32"][clock]["decode_tok_s"])
            for clock in ("wall", "cpu")}
    ratio = out["int8_vs_float32_decode"]
    out["int8_target"] = {"speedup_needed": TARGET_INT8_SPEEDUP,
                          "met_wall": ratio["wall"] is not None and ratio["wall"] >= TARGET_INT8_SPEEDUP,
                          "met_cpu": ratio["cpu"] is not None and ratio["cpu"] >= TARGET_INT8_SPEEDUP}
    return out


FLAGS = flags.FlagValues()
flags.DEFINE_string("configs", "tiny,100m", "comma-separated model sizes (get_config names) with random weights",
                    flag_values=FLAGS)
flags.DEFINE_string("checkpoint", None, "a params dir or workdir to measure instead of --configs", flag_values=FLAGS)
flags.DEFINE_integer("prompt_len", 32, "prompt tokens per row (one 64x64 image included)", flag_values=FLAGS)
flags.DEFINE_integer("image_size", 64, "image side in pixels", flag_values=FLAGS)
flags.DEFINE_integer("new_tokens", 32, "tokens generated per timed call", flag_values=FLAGS)
flags.DEFINE_integer("reps", 3, "timed repetitions", flag_values=FLAGS)
flags.DEFINE_integer("accuracy_rows", 2, "prompts of the accuracy measurement", flag_values=FLAGS)
flags.DEFINE_integer("accuracy_tokens", 16, "greedy tokens per prompt of the accuracy measurement",
                     flag_values=FLAGS)
flags.DEFINE_integer("copy_mib", 256, "array size of the copy-bandwidth measurement", flag_values=FLAGS)
flags.DEFINE_integer("copy_reps", 5, "repetitions of the copy-bandwidth measurement", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "weights seed", flag_values=FLAGS)


def run(args: flags.FlagValues) -> None:
    """Benchmarks the weight formats with the parsed flags `args` (`FLAGS`); one JSON object on stdout."""
    if args.new_tokens < 2 or args.accuracy_tokens < 1 or args.reps < 1:
        raise ValueError("--new_tokens must be >= 2, --accuracy_tokens and --reps >= 1")
    start = common.host_start()
    jax.config.update("jax_default_matmul_precision", "highest")
    bandwidth = copy_bandwidth(args.copy_mib, args.copy_reps)
    common.log(f"memory: {bandwidth}")
    result = {"benchmark": "quantized_decode", "device": jax.devices()[0].device_kind,
              "sides": {"float32": "weights as stored; float32 compute",
                        "bfloat16": "weights stored bfloat16, cast to float32 in front of each matmul",
                        "int8": "Dense kernels + embedding/LM head int8 with per-output-channel float32 scales, "
                                "dequantised in front of each matmul; norms, biases float32",
                        "cpu_note": "on CPU the int8 / bfloat16 -> float32 conversion is hoisted out of the decode "
                                    "while_loop (once per generate call), so decode steps read float32 copies",
                        "all": "vlm_jax generate: XLA, jitted prefill + jitted while_loop decode, greedy, batch 1"},
              "settings": args.flag_values_dict(), "memory": bandwidth, "runs": []}
    if args.checkpoint:
        from vlm_jax.inference.loading import load_model

        config, params, _ = load_model(args.checkpoint)
        todo = [(f"checkpoint:{Path(args.checkpoint).name}", config, nn.unbox(params))]
    else:
        todo = [(n, model_configs.get_config(n), None) for n in args.configs.split(",") if n]
    for name, config, params in todo:
        common.log(f"[{name}] building weights")
        params = random_params(config, args.seed) if params is None else params
        r = bench_config(name, config, params, bandwidth, args)
        result["runs"].append(r)
        common.log(r)
    result["host"] = common.host_report(start)
    common.print_json(result)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())

"""Generation speed: vlm_jax `generate` vs Hugging Face `model.generate`, on CPU, for image
prompts (the headline: what a VLM serves) and text-only prompts.

What each side runs (same weights: ours converted from a randomly initialised HF model; same
prompts; greedy decoding of exactly `--new_tokens` tokens, no stop token; float32):
  ours:           `vlm_jax.inference.generate`: XLA, jitted prefill (vision tower included) into a
                  preallocated KV cache, then every decode step inside one jitted `while_loop`;
  ours_host_loop: the same jitted prefill, then one jitted decode step per token driven by a Python
                  loop (the streaming path);
  ref:            transformers' `Qwen3VLForConditionalGeneration.generate`, eager PyTorch (no
                  torch.compile), `--attn` attention (sdpa by default), dynamic KV cache.
For each side: prefill_s, the median time of a generate call with max_new_tokens=1 (prompt in, one
token out); decode_tok_s = batch * (N - 1) / (median time(N tokens) - median time(1 token)); both for
wall time and for process CPU time ("cpu": steadier on a shared machine). A rate over a time
difference that is not positive is null, not infinite. Compilation is excluded (warm-up calls);
repetitions alternate between the contenders (benchmarks/common.py). The fraction of greedy tokens on
which both sides agree guards against timing different work. "headline": image prompts at batch 1
and 8, ours vs ref.

    python benchmarks/generate.py --configs tiny,100m --batches 1,8 --prompt_len 64 --new_tokens 32

Progress goes to stderr; stdout is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import model as model_configs  # noqa: E402
from vlm_jax.convert import hf as convert  # noqa: E402
from vlm_jax.inference.generate import generate  # noqa: E402

DEFAULT_REPS = {"tiny": 5, "tiny-moe": 5, "100m": 3}
HEADLINE_BATCHES = (1, 8)
SIDES = ("ref", "ours", "ours_host_loop")


def bench_one(name: str, c, hf, params, batch: int, images_per_row: int, args) -> dict:
    data = common.vlm_batch(c, batch, args.prompt_len, images_per_row * batch, args.image_size, seed=batch)
    ids = data["input_ids"]
    has_vis = images_per_row > 0
    px, grid = (data["pixel_values"], data["grid_thw"]) if has_vis else (None, None)
    hf_kw = dict(input_ids=torch.as_tensor(ids, dtype=torch.long),
                 attention_mask=torch.ones(ids.shape, dtype=torch.long))
    if has_vis:
        hf_kw.update(pixel_values=torch.as_tensor(px), image_grid_thw=torch.as_tensor(grid, dtype=torch.long),
                     mm_token_type_ids=torch.as_tensor(data["token_types"], dtype=torch.int32))

    def hf_run(n):
        with torch.no_grad():
            out = hf.generate(**hf_kw, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                              eos_token_id=None, pad_token_id=0)
        return out[:, ids.shape[1]:].numpy()

    def ours_run(n, loop):
        return generate(c, params, list(ids), pixel_values=px, grid_thw=grid, preset="greedy",
                        max_new_tokens=n, use_while_loop=loop).tokens

    n = args.new_tokens
    fns = {
        "ref_1": lambda: hf_run(1), "ref_n": lambda: hf_run(n),
        "ours_1": lambda: ours_run(1, True), "ours_n": lambda: ours_run(n, True),
        "ours_host_loop_1": lambda: ours_run(1, False), "ours_host_loop_n": lambda: ours_run(n, False),
    }
    agree = float(np.mean(hf_run(n) == ours_run(n, True)))
    times = common.interleaved(fns, reps=args.reps or DEFAULT_REPS.get(name, 3), warmup=1)
    out = {"prompt": "image" if has_vis else "text", "batch": batch, "prompt_len": args.prompt_len,
           "images_per_row": images_per_row, "patches_per_row": int(data["pixel_values"].shape[0]) // batch,
           "new_tokens": n, "greedy_token_agreement": agree}
    # Wall time, and process CPU time (steadier on a shared machine: it does not grow while other
    # processes hold the cores).
    for clock in ("wall", "cpu"):
        med = {k: common.median(v[clock]) for k, v in times.items()}
        res = {}
        for side in SIDES:
            res[side] = {"prefill_s": round(med[f"{side}_1"], 5),
                         "decode_tok_s": common.rate(batch * (n - 1), med[f"{side}_n"] - med[f"{side}_1"], 1)}
        for side in SIDES[1:]:
            res[f"{side}_vs_ref"] = {
                "prefill_speedup": common.rate(res["ref"]["prefill_s"], res[side]["prefill_s"]),
                "decode_speedup": common.rate(res[side]["decode_tok_s"], res["ref"]["decode_tok_s"])}
        out[clock] = res
    return out


def headline(runs: list[dict]) -> list[dict]:
    """Ours vs ref on image prompts at batch 1 and 8 (wall and CPU clocks), one entry per config and batch."""
    out = []
    for r in runs:
        if r["prompt"] == "image" and r["batch"] in HEADLINE_BATCHES:
            out.append({"config": r["config"], "batch": r["batch"], **{
                clock: {"ours_prefill_s": r[clock]["ours"]["prefill_s"], "ref_prefill_s": r[clock]["ref"]["prefill_s"],
                        "ours_decode_tok_s": r[clock]["ours"]["decode_tok_s"],
                        "ref_decode_tok_s": r[clock]["ref"]["decode_tok_s"], **r[clock]["ours_vs_ref"]}
                for clock in ("wall", "cpu")}})
    return out


FLAGS = flags.FlagValues()
flags.DEFINE_string("configs", "tiny,100m", "comma-separated model sizes (get_config names)", flag_values=FLAGS)
flags.DEFINE_string("batches", "1,8", "comma-separated batch sizes", flag_values=FLAGS)
flags.DEFINE_integer("prompt_len", 64, "prompt tokens per row", flag_values=FLAGS)
flags.DEFINE_integer("new_tokens", 32, "tokens generated per row", flag_values=FLAGS)
flags.DEFINE_string("prompts", "image,text", "prompt kinds to run: image and / or text", flag_values=FLAGS)
flags.DEFINE_integer("images", 1, "images per row of the image prompts", flag_values=FLAGS)
flags.DEFINE_integer("image_size", 64, "image side in pixels", flag_values=FLAGS)
flags.DEFINE_integer("reps", 0, "timed repetitions (0: per-config default)", flag_values=FLAGS)
flags.DEFINE_string("attn", "sdpa", "HF attention implementation (sdpa | eager)", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "weights seed", flag_values=FLAGS)


def run(args: flags.FlagValues) -> None:
    """Benchmarks generation with the parsed flags `args` (`FLAGS`); one JSON object on stdout."""
    kinds = [k for k in args.prompts.split(",") if k]
    if not kinds or set(kinds) - {"image", "text"}:
        raise ValueError(f"--prompts must list image and / or text, got {args.prompts!r}")
    if "image" in kinds and args.images < 1:
        raise ValueError("--images must be >= 1 for image prompts")

    start = common.host_start()
    jax.config.update("jax_default_matmul_precision", "highest")
    result = {"benchmark": "generate", "device": jax.devices()[0].device_kind, "hf_attn": args.attn,
              "sides": {"ours": "vlm_jax generate: XLA, jitted prefill + jitted while_loop decode",
                        "ours_host_loop": "vlm_jax generate: XLA, jitted prefill + jitted step per token, "
                                          "Python loop",
                        "ref": f"transformers Qwen3-VL generate: eager PyTorch, {args.attn} attention"},
              "settings": args.flag_values_dict(), "headline": [], "runs": []}
    for name in args.configs.split(","):
        c = model_configs.get_config(name)
        common.log(f"[{name}] building models")
        hf = common.hf_model(c, args.seed, args.attn, train=False)
        tensors = ((k, v.detach().numpy()) for k, v in hf.state_dict().items())
        params = convert.params_from_hf_tensors(tensors, c)
        n_params = sum(x.numel() for x in hf.parameters())
        for kind in kinds:
            for b in (int(x) for x in args.batches.split(",")):
                common.log(f"[{name}] {kind} prompts, batch {b}")
                r = bench_one(name, c, hf, params, b, args.images if kind == "image" else 0, args)
                result["runs"].append({"config": name, "params_m": round(n_params / 1e6, 1), **r})
                common.log(r)
    result["headline"] = headline(result["runs"])
    result["host"] = common.host_report(start)
    common.print_json(result)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())

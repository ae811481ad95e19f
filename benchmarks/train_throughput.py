"""Train-loop throughput: tokens/s and MFU of the whole loop (data pipeline included), on the
synthetic world, next to the two things it is made of, measured in the same run:

  loop:      `vlm_jax.train.loop.train_and_evaluate` for `--steps` steps (no evaluation), as the
             main job runs it: Grain pipeline, sharded step, metrics, checkpoint at the end.
             tokens/s and MFU are the medians of its log windows (compilation excluded).
  step_only: the same jitted step on one prefetched batch, repeated (the device-bound ceiling).
  pipeline:  the data pipeline alone (render, process, tokenise, pack), batches per second.

`loop_over_step` near 1 means the host keeps the device fed. Real (non-padding) tokens count.
MFU uses `vlm_jax.train.metrics` (6 FLOPs per param per token + attention over the pairs the
masks allow: within each packed sequence, causal; within each frame for the ViT);
on CPU the peak is a measured float32 matmul, so CPU MFU is relative to what XLA can reach.

    python benchmarks/train_throughput.py --configs tiny,100m --steps 20
    python benchmarks/train_throughput.py --configs main --steps 100  # README command 1's config
    python benchmarks/train_throughput.py --configs 2b-shallow --dtype bfloat16   # on a GPU / TPU
    python benchmarks/train_throughput.py --configs 2b --dtype bfloat16 --seq 4096 --batch 4 \
        --max_patches 16384 --max_grids 512 --attention_impl gpu --noloop       # the 2B step's MFU

`2b`: the 2B model's real shapes (28 decoder layers, the 24-layer SigLIP2-Large tower) with the
world's tokenizer ids; `--noloop` measures only the step. `2b-shallow`: the 2B model's real widths
(text hidden 2048, 16 heads, vocab 151936; the SigLIP2-Large tower) with 4 decoder and 6 ViT layers.
Progress goes to stderr; stdout is one JSON object.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import ml_collections as mlc  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import common  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import experiment, synthetic_tiny  # noqa: E402
from vlm_jax.configs import model as model_configs  # noqa: E402
from vlm_jax.parallel import make_mesh  # noqa: E402
from vlm_jax.train import data as data_lib  # noqa: E402
from vlm_jax.train import metrics as metrics_lib  # noqa: E402
from vlm_jax.train.loop import train_and_evaluate  # noqa: E402
from vlm_jax.train.state import init_train_state  # noqa: E402
from vlm_jax.train.step import effective_model_config, global_batch_shapes, make_train_step, put_batch  # noqa: E402

# The main job itself: vlm_jax/configs/synthetic_tiny.py as README command 1 runs it (its model,
# batch shapes and remat policy; the shape, dtype and remat flags do not apply).
MAIN = "main"


def model_dict(name: str, dtype: str, attention_impl: str = "xla") -> dict:
    if name in ("2b", "2b-shallow"):
        m = model_configs.get_config("2b")
        m.unlock()
        if name == "2b-shallow":
            m.vision.update(depth=6, deepstack_layers=(1, 3, 5), full_attention_layers=(5,))
            m.text.num_layers = 4
        ids = model_configs.TINY_TOKEN_IDS  # the synthetic world's tokenizer
        m.update(image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vision_start"],
                 vision_end_token_id=ids["vision_end"], name=f"qwen3-vl-{name}")
    else:
        m = model_configs.get_config(name)
        m.unlock()
    m.dtype = dtype
    m.attention_impl = attention_impl
    m.vision.attention_block = 64  # the world's 64 x 64 images: 16 patches a frame
    return m.to_dict()


def experiment_config(name: str, args) -> mlc.ConfigDict:
    c = synthetic_tiny.get_config()
    if name != MAIN:  # MAIN keeps the main job's model, batch shapes and remat policy
        c.model = mlc.ConfigDict(model_dict(name, args.dtype, args.attention_impl))
        c.data.pipeline.processor.patch_size = c.model.vision.patch_size  # the pipeline patchifies for this model
        c.train.remat_policy = args.remat
        c.data.pipeline.update(seq_len=args.seq, batch_size=args.batch, max_patches=args.max_patches,
                               max_grids=args.max_grids)
    c.train.num_train_steps = args.steps
    c.train.optimizer.warmup_steps = 2
    c.train.checkpoint.every_steps = 10**6  # only the final save
    c.eval.tasks = ()
    c.log.update(every_steps=max(1, args.steps // 4), tensorboard=False, progress=False, vision_probe_every=0)
    return c


def bench_pipeline(c: mlc.ConfigDict, n: int) -> dict:
    pipe, _, _ = data_lib.make_pipeline(c.data, seed=1)
    it = iter(pipe)
    next(it)
    tokens = 0
    t0 = time.perf_counter()
    for _ in range(n):
        tokens += int(np.sum(next(it)["segment_ids"] != 0))
    dt = time.perf_counter() - t0
    return {"batches_per_second": n / dt, "tokens_per_second": tokens / dt}


def bench_step(c: mlc.ConfigDict, reps: int) -> dict:
    mc = experiment.model_config(c)
    tc = experiment.train_config(c)
    pipe, _, _ = data_lib.make_pipeline(c.data, seed=2)
    batch = next(iter(pipe))
    mesh = make_mesh(tc.parallel)
    state = init_train_state(mc, tc, mesh)
    step = make_train_step(mc, tc, mesh, batch_shapes=global_batch_shapes(batch))
    dev = put_batch(batch, mesh)
    state, m = step(state, dev)
    jax.block_until_ready(m)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, m = step(state, dev)  # the state is donated: rebind it every step
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    tokens = float(np.sum(batch["segment_ids"] != 0))
    grid = batch["grid_thw"].reshape(-1, 3)
    patches = float(np.prod(grid, axis=-1).sum())
    emc = effective_model_config(mc, tc)
    flops = metrics_lib.step_flops(emc, metrics_lib.model_flop_counts(emc), tokens=tokens, patches=patches,
                                   text_pairs=metrics_lib.text_attention_pairs(batch["segment_ids"]),
                                   vision_pairs=metrics_lib.vision_attention_pairs(grid, emc.vision),
                                   trainable={"llm": True, "merger": True, "vision": True})
    t = common.median(times)
    return {"step_seconds": t, "tokens_per_second": tokens / t, "flops_per_step": flops}


def bench_config(name: str, args) -> dict:
    c = experiment_config(name, args)
    common.log(f"[{name}] step alone")
    step = bench_step(c, args.step_reps)
    out = {"config": name, "attention_impl": args.attention_impl,
           "params": metrics_lib.model_flop_counts(experiment.model_config(c))}
    if args.loop:
        common.log(f"[{name}] pipeline alone")
        pipe = bench_pipeline(c, args.pipeline_batches)
        common.log(f"[{name}] full loop, {args.steps} steps")
        # The loop prints its log lines and summary; stdout is for the JSON result only.
        with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(sys.stderr):
            summary = train_and_evaluate(c, os.path.join(workdir, "run"))
        # One peak for both MFUs: the loop's (on CPU a measured matmul, so not measured twice).
        peak, peak_source = summary["peak_flops_per_device"], summary["peak_flops_source"]
        loop_tps = summary["tokens_per_second"]
        out.update(
            loop={"tokens_per_second": loop_tps, "mfu": summary["mfu"], "steps": summary["steps"],
                  "compile_seconds": summary["compile_seconds"], "final_loss": summary.get("final_loss")},
            pipeline=pipe, loop_over_step=loop_tps / step["tokens_per_second"],
            pipeline_over_loop=pipe["tokens_per_second"] / loop_tps)
    else:  # the step alone (`--noloop`): one compile of a large model, no pipeline or loop measurement
        peak, peak_source = metrics_lib.device_peak_flops(override=c.log.peak_flops_per_device)
    peak *= jax.device_count()
    out.update(step_only={**step, "mfu": step["flops_per_step"] / step["step_seconds"] / peak},
               peak_flops=peak, peak_flops_source=peak_source)
    return out


FLAGS = flags.FlagValues()
flags.DEFINE_string("configs", "tiny,100m", "comma-separated: main (the main job's own config), tiny, tiny-moe, 100m, "
                    "2b-shallow, ...", flag_values=FLAGS)
flags.DEFINE_integer("steps", 20, "train-loop steps", flag_values=FLAGS)
flags.DEFINE_integer("seq", 512, "data.pipeline.seq_len", flag_values=FLAGS)
flags.DEFINE_integer("batch", 8, "data.pipeline.batch_size", flag_values=FLAGS)
flags.DEFINE_integer("max_patches", 2048, "data.pipeline.max_patches", flag_values=FLAGS)
flags.DEFINE_integer("max_grids", 128, "data.pipeline.max_grids (images per batch row)", flag_values=FLAGS)
flags.DEFINE_string("attention_impl", "xla", "model.attention_impl (xla, xla_chunked, gpu, cudnn, splash)",
                    flag_values=FLAGS)
flags.DEFINE_bool("loop", True, "also measure the pipeline alone and the whole train loop", flag_values=FLAGS)
flags.DEFINE_string("dtype", "float32", "compute dtype (bfloat16 on accelerators)", flag_values=FLAGS)
flags.DEFINE_string("remat", "full", "train.remat_policy", flag_values=FLAGS)
flags.DEFINE_integer("step_reps", 5, "repetitions of the step-only measurement", flag_values=FLAGS)
flags.DEFINE_integer("pipeline_batches", 20, "batches of the pipeline-only measurement", flag_values=FLAGS)


def run(args: flags.FlagValues) -> None:
    """Benchmarks every config of the parsed flags `args` (`FLAGS`); one JSON object on stdout."""
    start = common.host_start()
    results = [bench_config(name, args) for name in args.configs.split(",") if name]
    common.print_json({"benchmark": "train_throughput", "device": str(jax.devices()[0].device_kind),
                       "num_devices": jax.device_count(), "cpu_cores": common.num_cores(),
                       "settings": args.flag_values_dict(), "results": results, "host": common.host_report(start)})


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())

"""python -m vlm_jax.convert: Hugging Face checkpoint <-> vlm_jax params dir.

  python -m vlm_jax.convert hf-to-jax --hf_dir=Qwen3-VL-2B-Instruct --out=ckpt/qwen3vl-2b [--dtype=bfloat16]
  python -m vlm_jax.convert jax-to-hf --ckpt=ckpt/qwen3vl-2b --out=export/ [--max_shard_gb=4]
      [--moe_layout=released|transformers]

A params dir holds `model_config.json` and `params/` (Orbax), see `vlm_jax.params.store`. Prints
`{"written": DIR, "seconds": ...}`. Errors (missing flag or file, unsupported checkpoint) print one
line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
import time

from absl import flags

from vlm_jax import cli

FLAGS = flags.FlagValues()
flags.DEFINE_string("hf_dir", None, "hf-to-jax: a Hugging Face Qwen3-VL(-MoE) checkpoint directory",
                    flag_values=FLAGS)
flags.DEFINE_string("ckpt", None, "jax-to-hf: a vlm_jax params dir", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output directory", flag_values=FLAGS)
flags.DEFINE_string("dtype", None, "hf-to-jax: param dtype (default: float32)", flag_values=FLAGS)
flags.DEFINE_float("max_shard_gb", 4.0, "jax-to-hf: safetensors shard size", flag_values=FLAGS)
flags.DEFINE_enum("moe_layout", "released", ("released", "transformers"),
                  "jax-to-hf: MoE expert tensor layout", flag_values=FLAGS)

# The flags each command takes (any other given flag is an error), required ones first.
COMMANDS = {"hf-to-jax": (("hf_dir", "out"), ("dtype",)),
            "jax-to-hf": (("ckpt", "out"), ("max_shard_gb", "moe_layout"))}


def _convert(command: str) -> int:
    from vlm_jax.convert import hf
    from vlm_jax.params.store import load_params, save_params

    required, optional = COMMANDS[command]
    stray = [f"--{f}" for f in FLAGS if FLAGS[f].present and f not in required + optional]
    if stray:
        raise ValueError(f"{command} does not take {', '.join(stray)}")
    missing = [f"--{f}" for f in required if FLAGS[f].value is None]
    if missing:
        raise ValueError(f"{command} needs {', '.join(missing)}")
    t0 = time.time()
    if command == "hf-to-jax":
        config, params = hf.load_hf_checkpoint(FLAGS.hf_dir, dtype=FLAGS.dtype)
        out = save_params(params, config, FLAGS.out)
    else:
        config, params = load_params(FLAGS.ckpt)
        out = hf.save_hf_checkpoint(params, config, FLAGS.out, max_shard_bytes=int(FLAGS.max_shard_gb * 2**30),
                                    moe_layout=FLAGS.moe_layout)
    print(json.dumps({"written": str(out), "seconds": round(time.time() - t0, 2)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, _convert, argv, doc=__doc__, commands=tuple(COMMANDS))


if __name__ == "__main__":
    sys.exit(main())

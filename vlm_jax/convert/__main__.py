"""python -m vlm_jax.convert: Hugging Face checkpoint <-> vlm_jax checkpoint.

  python -m vlm_jax.convert hf-to-jax --hf_dir=Qwen3-VL-2B-Instruct --out=ckpt/qwen3vl-2b [--dtype=bfloat16]
  python -m vlm_jax.convert jax-to-hf --ckpt=ckpt/qwen3vl-2b --out=export/ [--max_shard_gb=4]

A vlm_jax checkpoint directory holds `model_config.json` and `params/` (Orbax).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ml_collections as mlc

from vlm_jax.configs import model as model_configs
from vlm_jax.convert import hf


def save_params(params: dict, config: mlc.ConfigDict, out: str | Path) -> Path:
    """Writes `model_config.json` and the params (Orbax) into `out`."""
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / "params", params, force=True)
    (out / "model_config.json").write_text(config.to_json(indent=1))
    return out


def load_config(ckpt: str | Path) -> mlc.ConfigDict:
    raw = json.loads((Path(ckpt) / "model_config.json").read_text())
    c = model_configs.base_config()
    c.update(_tuples(raw))
    model_configs.validate(c)
    return c


def load_params(ckpt: str | Path, config: mlc.ConfigDict | None = None) -> tuple[mlc.ConfigDict, dict]:
    import flax.linen as nn
    import orbax.checkpoint as ocp

    from vlm_jax.model.vlm import param_shapes

    config = config or load_config(ckpt)
    target = nn.unbox(param_shapes(config))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(Path(ckpt).absolute() / "params", target)
    return config, params


def _tuples(x):
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(x)
    return x


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vlm_jax.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-jax", help="read a Hugging Face Qwen3-VL(-MoE) checkpoint directory")
    a.add_argument("--hf_dir", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--dtype", default=None, help="param dtype (default: float32)")
    b = sub.add_parser("jax-to-hf", help="write a vlm_jax checkpoint as a Hugging Face checkpoint")
    b.add_argument("--ckpt", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--max_shard_gb", type=float, default=4.0)
    b.add_argument("--moe_layout", default="released", choices=("released", "transformers"))
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.cmd == "hf-to-jax":
        config, params = hf.load_hf_checkpoint(args.hf_dir, dtype=args.dtype)
        out = save_params(params, config, args.out)
    else:
        config, params = load_params(args.ckpt)
        out = hf.save_hf_checkpoint(params, config, args.out, max_shard_bytes=int(args.max_shard_gb * 2**30),
                                    moe_layout=args.moe_layout)
    print(json.dumps({"written": str(out), "seconds": round(time.time() - t0, 2)}))


if __name__ == "__main__":
    main(sys.argv[1:])

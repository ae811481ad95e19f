"""Sparse upcycling: a dense model's export becomes a mixture-of-experts model whose every expert starts as
a copy of the dense MLP (Komatsuzaki et al. 2022; Qwen1.5-MoE was upcycled from a dense Qwen).

    python -m vlm_jax.params.upcycle --src=runs/zoo/student/final --dst=runs/zoo/teacher_init \
        --num_experts=32 [--experts_per_tok=1] [--router_std=0.02] [--seed=0]

Each expert keeps the dense MLP's width (`moe_intermediate_size = intermediate_size`), so a token's compute
is `experts_per_tok` times the dense MLP's. With `norm_topk_prob` (set here, the Qwen3 default) a token's
top-k weights sum to 1 and every expert computes the dense MLP, so the upcycled model computes exactly what
the dense one does, whatever the router (tested: equal logits). Training breaks the symmetry: the random
router (normal, `router_std`) sends different tokens to different experts, which then learn apart.
Everything else (attention, norms, embeddings, vision tower, merger) is copied; the destination gets the
source's tokenizer and processor settings too, so it is a complete `init_from` for the next run.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
from absl import flags

from vlm_jax import cli
from vlm_jax.configs import model as model_configs


def upcycle_config(dense: mlc.ConfigDict, num_experts: int, experts_per_tok: int) -> mlc.ConfigDict:
    """The MoE model config of a dense `dense`: its experts as wide as its MLP, normalised top-k weights."""
    if dense.text.num_experts:
        raise ValueError(f"the source model is already a mixture of {dense.text.num_experts} experts")
    c = mlc.ConfigDict(dense.to_dict())
    c.text.update(num_experts=num_experts, num_experts_per_tok=experts_per_tok,
                  moe_intermediate_size=dense.text.intermediate_size, norm_topk_prob=True)
    model_configs.validate(c)
    return c


def upcycle_params(params: dict, moe_config: mlc.ConfigDict, rng: jax.Array, router_std: float = 0.02) -> dict:
    """The dense `params` with the decoder's scanned MLP ([layers, ...] kernels) replaced by `moe_config`'s
    experts, each a copy of it, and a random router. Checked against the MoE model's parameter shapes."""
    from vlm_jax.model.vlm import param_shapes

    layers = params["decoder"]["layers"]
    if "mlp" not in layers:
        raise ValueError("the source params have no dense decoder MLP (decoder.layers.mlp)")
    mlp = layers["mlp"]
    e = moe_config.text.num_experts
    copies = lambda w: jnp.repeat(jnp.asarray(w)[:, None], e, axis=1)  # [L, ...] -> [L, E, ...]
    gate = jnp.asarray(mlp["gate_proj"]["kernel"])
    router = router_std * jax.random.normal(rng, (*gate.shape[:2], e), gate.dtype)
    moe = {"router": router, "wi_gate": copies(gate), "wi_up": copies(mlp["up_proj"]["kernel"]),
           "wo": copies(mlp["down_proj"]["kernel"])}
    new_layers = {**{k: v for k, v in layers.items() if k != "mlp"}, "moe": moe}
    out = {**params, "decoder": {**params["decoder"], "layers": new_layers}}
    want = jax.tree.map(lambda s: (tuple(s.shape), jnp.dtype(s.dtype)), nn.unbox(param_shapes(moe_config)))
    got = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), out)
    if got != want:
        raise ValueError(f"upcycled params do not fit the MoE model: {got} != {want}")
    return out


def upcycle(src: str | os.PathLike, dst: str | os.PathLike, num_experts: int, experts_per_tok: int = 1,
            router_std: float = 0.02, seed: int = 0) -> Path:
    """Writes the upcycled export of the params dir (or workdir) `src` to `dst`; returns its path."""
    from vlm_jax.inference.loading import PROCESSOR_CONFIG_FILE, TOKENIZER_FILE
    from vlm_jax.params.store import load_params, resolve_params_dir, save_params

    src_dir = resolve_params_dir(src)
    dense, params = load_params(src_dir)
    moe = upcycle_config(dense, num_experts, experts_per_tok)
    moe.name = f"{dense.name}-upcycled-{num_experts}x{experts_per_tok}"
    out = save_params(upcycle_params(params, moe, jax.random.key(seed), router_std), moe, dst)
    for name in (TOKENIZER_FILE, PROCESSOR_CONFIG_FILE):
        if (src_dir / name).exists():
            shutil.copy(src_dir / name, out / name)
    return out


FLAGS = flags.FlagValues()
flags.DEFINE_string("src", None, "the dense model's params dir or workdir", flag_values=FLAGS)
flags.DEFINE_string("dst", None, "where to write the mixture-of-experts params dir", flag_values=FLAGS)
flags.DEFINE_integer("num_experts", 8, "experts per MoE layer", flag_values=FLAGS)
flags.DEFINE_integer("experts_per_tok", 1, "experts a token is routed to (its compute, in dense MLPs)",
                     flag_values=FLAGS)
flags.DEFINE_float("router_std", 0.02, "standard deviation of the random router", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "the router's seed", flag_values=FLAGS)
flags.mark_flags_as_required(["src", "dst"], flag_values=FLAGS)


def _run() -> int:
    out = upcycle(FLAGS.src, FLAGS.dst, FLAGS.num_experts, FLAGS.experts_per_tok, FLAGS.router_std, FLAGS.seed)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, _run, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())


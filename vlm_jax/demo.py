"""python -m vlm_jax.demo: one forward pass of the tiny model on a packed synthetic-world batch.

A smoke test of the whole input -> model path on a fresh machine: the synthetic world renders
samples, the Grain pipeline processes, tokenises and packs them, the (randomly initialised)
tiny Qwen3-VL model computes logits under jit, and the masked cross-entropy is printed.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.configs import model as model_configs
from vlm_jax.data.pipeline import Pipeline, PipelineConfig
from vlm_jax.data.synthetic import SyntheticSource, SyntheticWorld, load_tokenizer
from vlm_jax.model.vlm import Qwen3VL, init_params


def main() -> None:
    t0 = time.time()
    config = model_configs.get_config("tiny")
    world = SyntheticWorld()
    pipe = Pipeline(SyntheticSource(world, "train", length=10_000), load_tokenizer(),
                    PipelineConfig(seq_len=1024, batch_size=2, max_patches=4096, max_grids=64, seed=0,
                                   processor={"min_pixels": 64 * 64, "max_pixels": 128 * 128}))
    it = iter(pipe)
    batch = next(it)
    params = init_params(config, jax.random.key(0))
    model = Qwen3VL(config)

    @jax.jit
    def loss_fn(params, batch):
        out = model.apply({"params": params}, batch["input_ids"], batch["position_ids"], batch["segment_ids"],
                          batch["pixel_values"], batch["grid_thw"])
        logp = jax.nn.log_softmax(out["logits"], axis=-1)
        nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
        w = batch["loss_weights"]
        return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1e-9)

    arrays = {k: jnp.asarray(v) for k, v in batch.items()}
    loss = float(loss_fn(params, arrays))
    print(json.dumps({
        "model": config.name,
        "batch_shapes": {k: "x".join(map(str, np.shape(v))) for k, v in batch.items()},
        "images_and_videos": int(np.sum(batch["grid_thw"][:, 0] > 0)),
        "packing_efficiency": round(it.packing_efficiency, 4),
        "loss_at_init": round(loss, 4),
        "log_vocab": round(float(np.log(config.text.vocab_size)), 4),
        "seconds": round(time.time() - t0, 1),
    }, indent=1))


if __name__ == "__main__":
    main()

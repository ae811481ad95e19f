"""Test inputs that need no Hugging Face: small model configs, random params, token layouts with
vision placeholders; and readers of what a run leaves behind (metrics rows, parameter differences).
The comparisons against `transformers` live in `tests/hf_oracle.py` (the
`oracle` fixture in conftest.py), so tests of our model alone run without torch installed."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vlm_jax.configs import model as model_configs
from vlm_jax.model import rope
from vlm_jax.model.vlm import init_params

TOL = 1e-4  # max |ours - reference| of float32 logits and features

LAYOUTS = {
    "text": [("text", 12)],
    "one_image": [("text", 4), ("image", (1, 4, 6)), ("text", 5)],
    "two_images": [("text", 3), ("image", (1, 6, 4)), ("text", 2), ("image", (1, 2, 8)), ("text", 4)],
    "video": [("text", 3), ("video", (2, 4, 4)), ("text", 4)],
    "image_and_video": [("text", 2), ("image", (1, 4, 4)), ("text", 2), ("video", (2, 2, 4)), ("text", 3)],
}


def small_config(moe: bool = False, **overrides) -> mlc.ConfigDict:
    """A tiny config with HF's default special-token ids (so the HF oracle needs no remapping).
    `overrides` are dotted keys, e.g. `**{"vision.attention_block": 16}`."""
    c = model_configs.base_config()
    c.vision.update(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=16,
                    deepstack_layers=(0, 1))
    c.text.update(vocab_size=512, hidden_size=64, intermediate_size=96, num_layers=3,
                  num_heads=4, num_kv_heads=2, head_dim=16, mrope_section=(2, 3, 3), tie_word_embeddings=False)
    c.update(image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503)
    if moe:
        c.text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, moe_impl="dense")
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    model_configs.validate(c)
    return c


def random_params(c: mlc.ConfigDict, seed: int = 0) -> dict:
    """Params for `c` with every tensor perturbed away from its initial value (norm scales and biases
    too), so every parameter matters: like the oracle's `hf_model`, without torch."""
    params = nn.unbox(init_params(c, jax.random.key(seed)))
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        scale = 0.5 if getattr(path[-1], "key", None) in ("scale", "bias") else 0.1
        return jnp.asarray(np.asarray(x) + (rng.normal(size=x.shape) * scale).astype(np.float32))

    return jax.tree_util.tree_map_with_path(perturb, params)


def build(rng: np.random.Generator, layout, c: mlc.ConfigDict):
    """Token ids for a layout like [("text", 5), ("image", (1, 4, 6)), ("video", (2, 4, 4))].

    Returns ids, the grids in placeholder order (ours), and image / video grids and pixels (HF's).
    """
    ids, ours, images, videos = [], [], [], []
    text = lambda n: rng.integers(20, 400, size=n).tolist()
    for kind, arg in layout:
        if kind == "text":
            ids += text(arg)
            continue
        t, h, w = arg
        px = rng.normal(size=(t * h * w, 1536)).astype(np.float32)
        ours.append((arg, px))
        (images if kind == "image" else videos).append((arg, px))
        pad = c.image_token_id if kind == "image" else c.video_token_id
        groups = [1] * t if kind == "video" else [t]
        for g in groups:
            if kind == "video":
                ids += text(3)  # stands for the "<1.5 seconds>" timestamp text
            ids += [c.vision_start_token_id] + [pad] * (g * h * w // 4) + [c.vision_end_token_id]

    def cat(xs):
        if not xs:
            return None, None
        return np.asarray([g for g, _ in xs], np.int64), np.concatenate([p for _, p in xs])

    return np.asarray(ids, np.int64), cat(ours), cat(images), cat(videos)


def positions(c: mlc.ConfigDict, ids, mask, images, videos):
    """(MRoPE position ids, rope deltas) for HF-style separate image and video grids."""
    return rope.get_rope_index(ids, images, videos, mask, image_token_id=c.image_token_id,
                               video_token_id=c.video_token_id)


def metrics_rows(workdir: str) -> list[dict]:
    """The JSONL rows a run wrote to `<workdir>/metrics.jsonl`, in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def max_abs_diff(a, b) -> float:
    """Largest |a - b| over all leaves of two parameter trees of the same structure."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def assert_released_size(c: mlc.ConfigDict, model_config: mlc.ConfigDict, train_config: mlc.ConfigDict,
                         size: str) -> None:
    """A post-training config at a released `size` validates and builds that size's train state
    (abstract shapes only: nothing is allocated), with the published total parameter count (2%)."""
    from vlm_jax.configs.posttrain import base
    from vlm_jax.train.state import abstract_state

    base.validate(c)
    assert c.size == size and c.name.endswith(f"_{size}")
    state = abstract_state(model_config, train_config)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(state.params)))
    assert abs(total / 1e9 / model_configs.PUBLISHED_TOTAL_B[size] - 1) <= 0.02, (size, total)

"""In a packed batch, each sample's answer loss depends on its own image and on no other."""

import jax
import numpy as np

from vlm_jax.configs import experiment as experiment_lib
from vlm_jax.configs.synthetic_tiny import get_config
from vlm_jax.model.vlm import init_params, visual_tokens_per_entry
from vlm_jax.train import data as data_lib
from vlm_jax.train import vision_probe


def _packed_batch():
    c = get_config()
    world = dict(c.data.sources.synthetic.world)
    world["tasks"] = {"count": 1.0, "ground_box": 1.0, "caption": 1.0}
    c.data.sources.synthetic.world = world
    c.data.pipeline.update(seq_len=512, batch_size=2, max_patches=2048, max_grids=48)
    experiment_lib.validate(c)
    pipe, _, _ = data_lib.make_pipeline(c.data, seed=0)
    return experiment_lib.model_config(c), next(iter(pipe))


def _image_owner(batch, model_config) -> list[int]:
    """The sample id (`vision_probe.sample_ids`) of each real grid entry, from placeholder order."""
    ids = np.asarray(batch["input_ids"]).reshape(-1)
    owners = vision_probe.sample_ids(batch["segment_ids"]).reshape(-1)
    placeholder = np.nonzero((ids == model_config.image_token_id) | (ids == model_config.video_token_id))[0]
    grid = np.asarray(batch["grid_thw"])
    tokens = visual_tokens_per_entry(grid[grid[:, 0] > 0], model_config)
    starts = np.concatenate([[0], np.cumsum(tokens)[:-1]])
    out = []
    for start, n in zip(starts, tokens):
        who = set(owners[placeholder[start:start + n]].tolist())
        assert len(who) == 1, f"one image's placeholders span samples {who}"
        out.append(who.pop())
    return out


def test_each_answer_gradient_reaches_its_own_image_only():
    mc, batch = _packed_batch()
    params = init_params(mc, jax.random.key(0))
    grad_fn = vision_probe.make_pixel_grad_fn(mc)
    owner = np.asarray(_image_owner(batch, mc))
    samples = vision_probe.sample_ids(batch["segment_ids"])
    supervised = np.asarray(batch["loss_weights"]) > 0
    checked = 0
    for sid in np.unique(samples[supervised]):
        if not np.any(owner == sid):
            continue  # a text-only sample
        weights = np.where(samples == sid, batch["loss_weights"], 0).astype(np.float32)
        g = jax.device_get(grad_fn(params, {**batch, "loss_weights": weights}))
        norms = vision_probe.per_image_norms(g, batch["grid_thw"])
        assert np.all(norms[owner == sid] > 0), f"sample {sid}: no gradient reaches its own image"
        np.testing.assert_array_equal(norms[owner != sid], 0.0,
                                      err_msg=f"sample {sid}'s answer loss reaches other samples' images")
        checked += 1
    assert checked >= 8, f"only {checked} image samples in the packed batch"

"""The evaluation prompt of a held-out item is token-identical to the training tokens of the same
sample up to the answer, with the same pixels: a model is scored on exactly what it was trained on."""

import numpy as np
import pytest

from vlm_jax.configs import experiment as experiment_lib
from vlm_jax.configs.synthetic_tiny import get_config
from vlm_jax.data.pipeline import tokenize_sample
from vlm_jax.eval import tasks
from vlm_jax.inference.prompt import build_prompt
from vlm_jax.train import data as data_lib


@pytest.mark.parametrize("question_first", [0.0, 1.0])
@pytest.mark.parametrize("family", ["counting", "grounding", "pointing"])
def test_eval_prompt_is_the_training_prefix(family, question_first):
    c = get_config()
    c.data.sources.synthetic.world = {**dict(c.data.sources.synthetic.world), "question_first": question_first}
    tokenizer = data_lib.make_tokenizer(c.data)
    pipeline_config = data_lib.pipeline_config(c.data, seed=0, weights=None)
    processor = experiment_lib.processor_config(c)
    world = data_lib.make_source("synthetic", c.data.sources.synthetic).world
    items = tasks.synthetic_items(family, 6, world=world)
    assert len(items) == 6
    first = [m["content"][0]["type"] == "text" for m in (item.messages[0] for item in items)]
    assert first == [bool(question_first)] * 6
    for item in items:
        prompt = build_prompt(item.messages, item.images, item.videos, tokenizer, processor)
        train = tokenize_sample(item.to_sample(), tokenizer, pipeline_config,
                                processor_config=pipeline_config.processor)
        ids = np.asarray(train["input_ids"])
        n = len(prompt.input_ids)
        np.testing.assert_array_equal(ids[:n], prompt.input_ids, err_msg=f"{item.id}: prompt differs from training")
        # After the prompt comes the supervised answer (through <|im_end|>), then the turn's newline.
        mask = np.asarray(train["loss_mask"])
        assert not mask[:n].any() and mask[n:-1].all() and not mask[-1]
        np.testing.assert_array_equal(np.asarray(train["grid_thw"]), prompt.grid_thw)
        np.testing.assert_allclose(np.asarray(train["pixel_values"]), prompt.pixel_values, atol=1e-6)


def test_resampler_eval_prompt_is_the_training_prefix():
    """With a 64-query resampler (the main job's images are 8 x 8 patches, 16 MLP tokens) the eval prompt
    and the training sample both give each image 64 placeholders, token for token the same."""
    c = get_config()
    c.model.update(merger="resampler", resampler_num_queries=64, deepstack=False)
    tokenizer = data_lib.make_tokenizer(c.data)
    pipeline_config = data_lib.pipeline_config(c.data, seed=0, weights=None)
    processor = experiment_lib.processor_config(c)  # what training exports: the model's merger keys
    assert (processor["merger"], processor["resampler_num_queries"]) == ("resampler", 64)
    world = data_lib.make_source("synthetic", c.data.sources.synthetic).world
    item = tasks.synthetic_items("counting", 1, world=world)[0]
    prompt = build_prompt(item.messages, item.images, item.videos, tokenizer, processor)
    train = tokenize_sample(item.to_sample(), tokenizer, pipeline_config)
    n = len(prompt.input_ids)
    np.testing.assert_array_equal(np.asarray(train["input_ids"])[:n], prompt.input_ids)
    assert prompt.grid_thw.tolist() == [[1, 8, 8]] and prompt.input_ids.count(tokenizer.image_pad_id) == 64
    np.testing.assert_array_equal(np.asarray(train["grid_thw"]), prompt.grid_thw)
    video = {"frames": np.zeros((4, 64, 64, 3), np.uint8), "fps": 2.0}
    with pytest.raises(ValueError, match=r"video\(s\) with merger='resampler'"):
        build_prompt([{"role": "user", "content": [{"type": "video"}]}], [], [video], tokenizer, processor)

"""`model.video_time_encoding`: Qwen3-VL text timestamps vs the Qwen2.5-VL absolute-time ablation.

Positions are checked against transformers without building a model: Qwen2.5-VL's `get_rope_index` on a
tiny config, and Qwen2.5-Omni's (which keeps the released Qwen2.5-VL rule that text after a video continues
at max(ids) + 1; transformers 5.24's Qwen2.5-VL continues at start + max(h, w)). Then the data side: the
synthetic video tasks tokenised under both settings, the evaluation prompt against training, the config
link between the model and the processor, and the Hugging Face export refusal.
"""

from __future__ import annotations

import types

import ml_collections as mlc
import numpy as np
import pytest

from tests.helpers import small_config
from vlm_jax.configs import experiment
from vlm_jax.configs import model as model_configs
from vlm_jax.configs.synthetic_tiny import get_config as synthetic_tiny_config
from vlm_jax.convert import hf as convert
from vlm_jax.data import pipeline
from vlm_jax.data import processor as proc
from vlm_jax.data.chat_template import tokenize_conversation
from vlm_jax.data.pipeline import tokenize_sample
from vlm_jax.data.synthetic import TOKENIZER_PATH, SyntheticSource, SyntheticWorld
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.eval import tasks
from vlm_jax.inference.generate import split_grids, video_time_args
from vlm_jax.inference.prompt import batch_prompts, build_prompt
from vlm_jax.model import rope

C = small_config()
TOK = load_tokenizer(TOKENIZER_PATH)
WORLD = SyntheticWorld()
SMALL = dict(seq_len=1024, batch_size=2, max_patches=5120, max_grids=64, read_threads=1)


def layout(rng: np.random.Generator, parts) -> np.ndarray:
    """Token ids in Qwen2.5-VL's layout: ("text", n) or (kind, (t, h, w)) -> vision_start, one run of
    t*h*w/4 pads, vision_end (a video is one block, no timestamps)."""
    ids = []
    for kind, arg in parts:
        if kind == "text":
            ids += rng.integers(20, 400, size=arg).tolist()
        else:
            pad = C.image_token_id if kind == "image" else C.video_token_id
            ids += [C.vision_start_token_id] + [pad] * (int(np.prod(arg)) // 4) + [C.vision_end_token_id]
    return np.asarray(ids, np.int64)


def grids(parts, kind):
    out = [arg for k, arg in parts if k == kind]
    return np.asarray(out, np.int64).reshape(-1, 3) if out else None


def ours(ids, parts, seconds, tps, mask=None, rows=1):
    tile = lambda g: None if g is None else np.concatenate([g] * rows)
    return rope.get_rope_index(ids, tile(grids(parts, "image")), tile(grids(parts, "video")), mask,
                               image_token_id=C.image_token_id, video_token_id=C.video_token_id,
                               second_per_grid_ts=list(seconds) * rows, tokens_per_second=tps)


def hf_qwen2_5_vl(oracle, ids, parts, seconds, tps, mask=None, rows=1):
    """transformers' Qwen2.5-VL `get_rope_index` on a tiny config (no weights built)."""
    torch, transformers = oracle.torch, oracle.transformers
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    model = types.SimpleNamespace(config=transformers.Qwen2_5_VLConfig(
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16,
                       "spatial_merge_size": 2, "tokens_per_second": tps}))
    model.get_vision_position_ids = Qwen2_5_VLModel.get_vision_position_ids.__get__(model)
    t = lambda a, dt=torch.long: None if a is None else torch.as_tensor(np.asarray(a), dtype=dt)
    tile = lambda g: None if g is None else np.concatenate([g] * rows)
    pos, deltas = Qwen2_5_VLModel.get_rope_index(
        model, t(ids), t(rope.token_types(ids, C.image_token_id, C.video_token_id), torch.int32),
        image_grid_thw=t(tile(grids(parts, "image"))), video_grid_thw=t(tile(grids(parts, "video"))),
        second_per_grid_ts=t(list(seconds) * rows, torch.float32), attention_mask=t(mask))
    return pos.numpy(), deltas.numpy()


def hf_qwen2_5_omni(oracle, ids, parts, seconds, tps):
    """transformers' Qwen2.5-Omni `get_rope_index` (videos without audio): the released Qwen2.5-VL rule."""
    torch = oracle.torch
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniPreTrainedModelForConditionalGeneration as Omni,
    )

    cfg = types.SimpleNamespace(image_token_id=C.image_token_id, video_token_id=C.video_token_id,
                                vision_start_token_id=C.vision_start_token_id, audio_token_id=510,
                                audio_start_token_id=511, position_id_per_seconds=tps, seconds_per_chunk=2)
    model = types.SimpleNamespace(config=cfg, spatial_merge_size=2)
    model.get_llm_pos_ids_for_vision = Omni.get_llm_pos_ids_for_vision.__get__(model)
    t = lambda a, dt=torch.long: None if a is None else torch.as_tensor(np.asarray(a), dtype=dt)
    pos, deltas = Omni.get_rope_index(model, t(ids[None]), t(grids(parts, "image")), t(grids(parts, "video")),
                                      second_per_grids=t(seconds, torch.float32))
    return pos.numpy(), deltas.numpy()


# Videos whose temporal ids stay below their spatial extent: there transformers 5.24 agrees with the released
# rule everywhere. Seconds per group 2/3 (3 fps) and 0.75 exercise the float32 truncation.
FITTING = {
    "video": ([("text", 3), ("video", (3, 8, 8)), ("text", 4)], [0.75]),
    "image_then_video": ([("text", 2), ("image", (1, 4, 8)), ("text", 2), ("video", (4, 12, 12)), ("text", 3)],
                         [2 / 3]),
    "two_videos": ([("text", 2), ("video", (3, 8, 12)), ("text", 2), ("video", (2, 8, 4)), ("text", 2)],
                   [0.75, 1.0]),
}


@pytest.mark.parametrize("name", list(FITTING))
def test_absolute_time_matches_transformers_qwen2_5_vl(oracle, name):
    parts, seconds = FITTING[name]
    ids = layout(np.random.default_rng(0), parts)
    ids = np.stack([ids, ids])
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # the second row starts with two padding tokens
    got, d_got = ours(ids, parts, seconds, 2.0, mask, rows=2)
    ref, d_ref = hf_qwen2_5_vl(oracle, ids, parts, seconds, 2, mask, rows=2)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(d_got, d_ref)
    # The temporal ids are really scaled: one temporal id step per group (0.5 s at 2 per second) differs.
    assert not np.array_equal(got, ours(ids, parts, [0.5] * len(seconds), 2.0, mask, rows=2)[0])


# Long videos: temporal ids run past the spatial extent, so the text after them must start beyond.
LONG = {
    "long_video": ([("text", 3), ("video", (4, 4, 4)), ("text", 5)], [2.0], 2.0),
    "video_image_video": ([("text", 2), ("video", (3, 4, 4)), ("text", 1), ("image", (1, 4, 4)), ("text", 2),
                           ("video", (5, 4, 8)), ("text", 3)], [1.0, 1.5], 4.0),
}


@pytest.mark.parametrize("name", list(LONG))
def test_text_after_a_long_video_continues_at_max_plus_one(oracle, name):
    parts, seconds, tps = LONG[name]
    ids = layout(np.random.default_rng(1), parts)
    got, d_got = ours(ids[None], parts, seconds, tps)
    ref, d_ref = hf_qwen2_5_omni(oracle, ids, parts, seconds, tps)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(d_got, d_ref)
    # transformers' Qwen2.5-VL places the first video's tokens exactly as we do (it differs only after them).
    start = int(np.argmax(ids == C.video_token_id))
    n = int(np.prod(grids(parts, "video")[0])) // 4
    hf, _ = hf_qwen2_5_vl(oracle, ids[None], parts, seconds, int(tps))
    np.testing.assert_array_equal(got[:, 0, start:start + n], hf[:, 0, start:start + n])
    after = got[:, 0, start + n]  # vision_end: one past every earlier id
    assert (after == got[:, 0, :start + n].max() + 1).all()


def test_images_alone_are_placed_as_with_timestamps():
    parts = [("text", 3), ("image", (1, 4, 6)), ("text", 2), ("image", (1, 8, 4)), ("text", 2)]
    ids = layout(np.random.default_rng(2), parts)[None]
    absolute, _ = rope.get_rope_index(ids, grids(parts, "image"), None, image_token_id=C.image_token_id,
                                      video_token_id=C.video_token_id, second_per_grid_ts=[], tokens_per_second=2.0)
    stamped, _ = rope.get_rope_index(ids, grids(parts, "image"), None, image_token_id=C.image_token_id,
                                     video_token_id=C.video_token_id)
    np.testing.assert_array_equal(absolute, stamped)


def test_absolute_time_arguments_are_checked():
    parts = [("text", 2), ("video", (2, 4, 4)), ("text", 2)]
    ids = layout(np.random.default_rng(3), parts)[None]
    call = lambda **kw: rope.get_rope_index(ids, None, grids(parts, "video"), image_token_id=C.image_token_id,
                                            video_token_id=C.video_token_id, **kw)
    with pytest.raises(ValueError, match="one positive number of seconds per video: 1 video grids, got"):
        call(second_per_grid_ts=[1.0, 1.0], tokens_per_second=2.0)
    with pytest.raises(ValueError, match="one positive number of seconds per video"):
        call(second_per_grid_ts=[0.0], tokens_per_second=2.0)
    with pytest.raises(ValueError, match="needs tokens_per_second > 0"):
        call(second_per_grid_ts=[1.0])
    with pytest.raises(ValueError, match="a run of 8 video placeholder tokens"):  # one run, but split per group
        call()


# --- the data side: synthetic video tasks, prompts


def _timestamp_text(ids) -> bool:
    return "seconds>" in TOK.decode(ids)


@pytest.mark.parametrize("task", ["video_temporal", "video_count"])
def test_synthetic_video_tasks_under_both_encodings(task):
    sample = WORLD.sample(5, "train", task=task)
    out = {enc: tokenize_sample(sample, TOK, pipeline.get_config(**SMALL, processor={"video_time_encoding": enc}),
                                index=5)
           for enc in proc.VIDEO_TIME_ENCODINGS}
    pcfg = proc.get_config()
    video = sample["videos"][0]
    (t, h, w), = out["timestamps"]["grid_thw"].tolist()
    assert out["absolute_time"]["grid_thw"].tolist() == [[t, h, w]] and t > 1
    np.testing.assert_array_equal(out["absolute_time"]["pixel_values"], out["timestamps"]["pixel_values"])

    # Timestamps: as before (one run per temporal group, each after its text timestamp), Qwen3-VL positions.
    ids = out["timestamps"]["input_ids"]
    assert _timestamp_text(ids)
    ref, _ = rope.get_rope_index(ids[None], None, out["timestamps"]["grid_thw"], image_token_id=TOK.image_pad_id,
                                 video_token_id=TOK.video_pad_id)
    np.testing.assert_array_equal(out["timestamps"]["position_ids"], ref[:, 0])

    # Absolute time: no timestamp text, one vision block, temporal ids start + int(g * seconds * 2).
    ids, pos = out["absolute_time"]["input_ids"], out["absolute_time"]["position_ids"]
    assert not _timestamp_text(ids)
    assert (ids == TOK.special_ids["vision_start"]).sum() == 1
    where = np.nonzero(ids == TOK.video_pad_id)[0]
    assert len(where) == t * h * w // 4 and np.all(np.diff(where) == 1)
    start = where[0]
    n_sampled = len(proc.plan_video(*video["frames"].shape[:3], video["fps"], pcfg)[0])
    seconds = pcfg.temporal_patch_size / (n_sampled / video["frames"].shape[0] * video["fps"])
    groups = np.arange(len(where)) // (h * w // 4)
    np.testing.assert_array_equal(pos[0, where], start + (groups * seconds * pcfg.video_tokens_per_second).astype(int))
    assert pos[0, where].max() > start + max(h, w) // 2 - 1  # time, not space, sets where the text resumes
    np.testing.assert_array_equal(pos[:, where[-1] + 1], pos[:, :where[-1] + 1].max() + 1)
    # The same answer is supervised either way.
    answer = lambda o: TOK.decode(o["input_ids"][o["loss_mask"]])
    assert answer(out["absolute_time"]) == answer(out["timestamps"])


def test_packed_batch_of_video_tasks_with_absolute_time():
    world = SyntheticWorld(tasks={"video_temporal": 1.0, "video_count": 1.0})
    cfg = dict(**SMALL, worker_count=0, processor={"video_time_encoding": "absolute_time"})
    batch = next(iter(pipeline.Pipeline(SyntheticSource(world, "train", length=8), TOK, cfg)))
    ids = batch["input_ids"]
    assert (ids == TOK.video_pad_id).any() and not any(_timestamp_text(row) for row in ids)
    # Every video is one block: as many vision_start tokens as grid rows.
    assert (ids == TOK.special_ids["vision_start"]).sum() == (batch["grid_thw"][:, 0] > 0).sum()


def test_eval_prompt_positions_match_training_with_absolute_time():
    item = tasks.synthetic_items("temporal", 1, world=WORLD)[0]
    pc = pipeline.get_config(**SMALL, processor={"video_time_encoding": "absolute_time"})
    prompt = build_prompt(item.messages, item.images, item.videos, TOK, pc.processor)
    train = tokenize_sample(item.to_sample(), TOK, pc)
    n = len(prompt.input_ids)
    np.testing.assert_array_equal(train["input_ids"][:n], prompt.input_ids)
    batch = batch_prompts([prompt])
    assert batch["second_per_grid_ts"] == [proc.process_video(item.videos[0]["frames"], item.videos[0]["fps"],
                                                             pc.processor)["second_per_grid"]]
    # The positions `generate` computes for the prompt are the training positions of the same tokens.
    config = small_config(video_time_encoding="absolute_time")
    config.update(image_token_id=TOK.image_pad_id, video_token_id=TOK.video_pad_id)
    ids = np.asarray(batch["prompts"])
    igrid, vgrid = split_grids(batch["prompts"], batch["grid_thw"], config)
    pos, _ = rope.get_rope_index(ids, igrid, vgrid, image_token_id=TOK.image_pad_id, video_token_id=TOK.video_pad_id,
                                 **video_time_args(config, batch["second_per_grid_ts"], len(vgrid)))
    np.testing.assert_array_equal(pos[:, 0], train["position_ids"][:, :n])
    with pytest.raises(ValueError, match="needs second_per_grid_ts"):
        video_time_args(config, None, 1)
    assert video_time_args(small_config(), batch["second_per_grid_ts"], 1) == {}  # timestamps: not used


def test_chat_template_rejects_an_unknown_encoding():
    msgs = [{"role": "user", "content": [{"type": "video"}]}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(ValueError, match="video_time_encoding must be one of"):
        tokenize_conversation(msgs, TOK, video_grids=[(2, 4, 4)], video_timestamps=[[0.5, 1.5]],
                              video_time_encoding="relative")


# --- configs and export


def test_model_key_is_validated():
    assert model_configs.CHOICES["video_time_encoding"] == proc.VIDEO_TIME_ENCODINGS
    assert small_config(video_time_encoding="absolute_time", video_tokens_per_second=4.0).video_tokens_per_second == 4
    with pytest.raises(ValueError, match="video_time_encoding='frames' \\(expected one of timestamps, absolute_time"):
        small_config(video_time_encoding="frames")
    with pytest.raises(ValueError, match="video_tokens_per_second=4.0 is only used with"):
        small_config(video_tokens_per_second=4.0)
    with pytest.raises(ValueError, match="video_tokens_per_second=0.0 must be > 0"):
        small_config(video_time_encoding="absolute_time", video_tokens_per_second=0.0)
    with pytest.raises(ValueError, match="processor.video_time_encoding must be one of"):
        proc.get_config(video_time_encoding="frames")


def test_experiment_processor_follows_the_model_key():
    c = synthetic_tiny_config()
    c.model.video_time_encoding = "absolute_time"
    c.model.video_tokens_per_second = 3.0
    experiment.validate(c)
    saved = experiment.processor_config(c)  # what training exports for evaluation and generation
    assert (saved["video_time_encoding"], saved["video_tokens_per_second"]) == ("absolute_time", 3.0)
    # A copy that loses the link (e.g. through to_dict) and changes only the model fails, naming both keys.
    d = mlc.ConfigDict(c.to_dict())
    d.model.video_time_encoding = "timestamps"
    d.model.video_tokens_per_second = 2.0
    with pytest.raises(ValueError, match="processor.video_time_encoding='absolute_time' differs from "
                                         "config.model.video_time_encoding='timestamps'"):
        experiment.validate(d)


def test_hf_export_refuses_absolute_time():
    assert convert.hf_config_from(small_config())["model_type"] == "qwen3_vl"
    with pytest.raises(ValueError, match="video_time_encoding='absolute_time' .* has no Qwen3-VL Hugging Face"):
        convert.hf_config_from(small_config(video_time_encoding="absolute_time"))

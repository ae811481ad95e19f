"""Evaluation: metrics on hand-made cases and garbage, prompts, model loading, the harness (known replies
and a tiny random model), baselines from data, visualisations, JSONL round trip, both CLIs."""

from __future__ import annotations

import collections
import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from vlm_jax.configs.model import get_config
from vlm_jax.data.synthetic import SyntheticWorld
from vlm_jax.data.synthetic import load_tokenizer as synthetic_tokenizer
from vlm_jax.eval import command as eval_cli
from vlm_jax.eval import harness, metrics, stats, tasks, visualize
from vlm_jax.generate import __main__ as generate_cli
from vlm_jax.inference import generate as generate_lib
from vlm_jax.inference.loading import load_model, load_processor_config
from vlm_jax.inference.prompt import as_tokenizer, batch_prompts, build_prompt
from vlm_jax.model.vlm import param_shapes
from vlm_jax.params.store import save_params

PROC = {"min_pixels": 64 * 64, "max_pixels": 64 * 64}  # a 64x64 image -> 4x4 patches, 4 tokens
IMG = [{"type": "image"}]


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld()


@pytest.fixture(scope="module")
def tok():
    return as_tokenizer(synthetic_tokenizer())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random model saved with save_params (random values from the shapes: a jitted init costs
    seconds on 2 cores), plus the processor settings it is meant to run with."""
    config = get_config("tiny")
    rng = np.random.default_rng(0)
    shapes = nn.unbox(param_shapes(config))
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (np.ones(s.shape, s.dtype) if "scale" in jax.tree_util.keystr(path)
                         else (0.05 * rng.standard_normal(s.shape)).astype(s.dtype)), shapes)
    out = tmp_path_factory.mktemp("ckpt") / "final"
    save_params(params, config, out)
    (out / "processor_config.json").write_text(json.dumps(PROC))
    return out.parent  # a "workdir": load_model finds final/


# ----------------------------------------------------------------------------- metrics


def test_grounding_iou_boundary_and_malformed():
    truth = [0, 0, 100, 100]
    half = metrics.box_accuracy('[{"bbox_2d": [0, 0, 100, 50], "label": "x"}]', truth)
    assert half.value == 1.0 and half.extras["iou"] == pytest.approx(0.5) and not half.malformed
    below = metrics.box_accuracy('[{"bbox_2d": [0, 0, 100, 49]}]', truth)
    assert below.value == 0.0 and below.extras["iou"] == pytest.approx(0.49) and not below.malformed
    # Truncated JSON still yields its complete box (regex fallback); no box at all is malformed.
    assert metrics.box_accuracy('[{"bbox_2d": [0, 0, 100, 100], "label": "re', truth).value == 1.0
    assert metrics.box_accuracy("a box somewhere", truth).malformed


def test_points_counts_time_and_text():
    assert metrics.point_in_box('[{"point_2d": [100, 50]}]', [0, 0, 100, 100]).value == 1.0  # edge counts
    assert metrics.point_in_box('[{"point_2d": [101, 50]}]', [0, 0, 100, 100]).value == 0.0
    assert metrics.point_within('{"point_2d": [30, 40]}', [0, 0], 50).value == 1.0
    assert metrics.point_within('{"point_2d": [30, 41]}', [0, 0], 50).value == 0.0
    assert metrics.count_exact("There are three red circles.", 3).value == 1.0
    assert metrics.count_exact("none", 0).value == 1.0
    assert metrics.count_exact("I see nothing", 2).malformed
    assert metrics.value_exact("The bar is 7 high, not 8", 8).value == 1.0
    for reply, ok in (("At 3.4 seconds.", 1.0), ("3.5", 1.0), ("3.6 s", 0.0), ("2.5", 1.0), ("2.49", 0.0)):
        s = metrics.time_within(reply, 3.0)  # metrics.TIME_TOLERANCE_S: 0.5 s
        assert s.value == ok and not s.malformed, reply
    assert metrics.time_within("at the end", 3.0).malformed
    f1 = metrics.token_f1("A red circle.", "the red square")  # {red, circle} vs {red, square}
    assert f1.value == pytest.approx(0.5)
    assert metrics.token_f1("red square", "The red square.").value == 1.0
    assert metrics.token_f1("  ", "x").malformed


def test_temporal_tolerance_is_the_answers_own(world):
    """Eval and the synthetic world's self-check apply one rule: the answer's tolerance (synthetic: half a
    frame, so the neighbouring frame is wrong), else TIME_TOLERANCE_S."""
    items = tasks.load_items(["temporal"], num_per_task=6, world=world)
    step = 1.0 / world.video_fps
    for it in items:
        t = it.answer["time"]
        for reply, ok in ((f"At {t:.1f} seconds.", 1.0), (f"{t + step:.2f}", 0.0), (f"{t - step:.2f}", 0.0)):
            assert tasks.score_item("temporal", it.answer, reply).value == ok == metrics.score(it.answer, reply)
    assert tasks.score_item("temporal", {"time": 3.0}, "3.5").value == 1.0 == metrics.score({"time": 3.0}, "3.5")
    assert tasks.score_item("temporal", {"time": 3.0}, "3.6").value == 0.0


def test_cer_and_ocr():
    assert metrics.edit_distance("kitten", "sitting") == 3 == metrics.edit_distance("sitting", "kitten")
    assert metrics.edit_distance("", "abc") == 3 and metrics.edit_distance("flaw", "lawn") == 2
    assert metrics.character_error_rate("kitten", "sitting") == pytest.approx(3 / 7)
    assert metrics.character_error_rate("a very long wrong reply", "ab") == 1.0  # capped
    exact = metrics.ocr_exact(' "SUN". ', "SUN")
    assert exact.value == 1.0 and exact.extras["cer"] == 0.0
    near = metrics.ocr_exact("SUM", "SUN")
    assert near.value == 0.0 and near.extras["cer"] == pytest.approx(1 / 3)
    assert metrics.ocr_exact("sun", "SUN").value == 0.0  # case-sensitive
    assert metrics.ocr_exact("", "SUN").malformed


def test_multiple_choice_letters_and_text():
    opts = ["red", "blue", "green"]
    for reply in ("B", "(b)", "B. blue", "Answer: B", "The blue bar.", "blue"):
        s = metrics.multiple_choice(reply, opts, "blue")
        assert s.value == 1.0 and not s.malformed, reply
    assert metrics.multiple_choice("A red bar.", opts, 1).value == 0.0  # "A" is the article here
    assert metrics.multiple_choice("C", opts, "C").value == 1.0
    assert metrics.multiple_choice("Z", opts, "red").malformed  # no such option
    assert metrics.multiple_choice("red or blue", opts, "red").malformed  # ambiguous
    assert metrics.multiple_choice("The first image.", ["first", "second"], "first").value == 1.0
    assert metrics.multiple_choice("dark red", ["red", "dark red"], 1).value == 1.0
    with pytest.raises(ValueError, match="not one of the options"):
        metrics.choice_index("purple", opts)


GARBAGE = ["", " ", "garbage !!", "[" * 50000, "{" * 5000 + "}" * 5000, '[{"bbox_2d": [1, 2, 3', "NaN", "nan inf",
           '[{"bbox_2d": [NaN, 1, 2, 3]}]', '[{"bbox_2d": [1e999, 0, 10, 10]}]', '[{"point_2d": [Infinity, 1]}]',
           "9" * 5000, "-" + "9" * 5000 + ".5", '[{"bbox_2d": [' + "9" * 400 + ', 0, 1, 1]}]',
           '[{"bbox_2d": [1e300, -1e300, 1e300, 1e300]}]', '[{"bbox_2d": [true, false, 1, 2]}]',
           '{"point_2d": "x"}', '[{"point_2d": [1, 2, 3]}]', "\ud800\udfff\x00\x01", "</think>", "B. (C) A"]


def test_metrics_never_raise_on_garbage():
    calls = [lambda r: metrics.box_accuracy(r, [0, 0, 10, 10]), lambda r: metrics.point_in_box(r, [0, 0, 9, 9]),
             lambda r: metrics.point_within(r, [5, 5], 40), lambda r: metrics.count_exact(r, 3),
             lambda r: metrics.value_exact(r, 3), lambda r: metrics.time_within(r, 1.0),
             lambda r: metrics.ocr_exact(r, "SUN"), lambda r: metrics.token_f1(r, "a red box"),
             lambda r: metrics.text_match(r, "yes"), lambda r: metrics.multiple_choice(r, ["yes", "no"], "no")]
    # Garbage scores 0 unless it happens to hold the answer: a last integer 3, or the letter of "no".
    threes = {'[{"bbox_2d": [1, 2, 3', '[{"bbox_2d": [NaN, 1, 2, 3]}]', '[{"point_2d": [1, 2, 3]}]'}
    right = {3: threes, 4: threes, 9: {"B. (C) A"}}
    malformed = collections.Counter()
    for reply in GARBAGE:
        for k, call in enumerate(calls):
            s = call(reply)
            assert s.value == float(reply in right.get(k, ())), (k, reply[:40])
            assert all(math.isfinite(v) for v in s.extras.values()), (k, reply[:40])
            assert not (s.malformed and s.value), (k, reply[:40])
            malformed[k] += s.malformed
    assert malformed[0] == len(GARBAGE) - 1  # only the huge-but-finite box parses
    assert metrics.count_exact("9" * 5000, 3).value == 0.0  # a number past int()'s digit limit


# ----------------------------------------------------------------------------- prompts and loading


def test_build_prompt(tok):
    img = np.full((64, 64, 3), 128, np.uint8)
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    msgs = [{"role": "user", "content": [{"type": "video"}, *IMG, {"type": "text", "text": "What?"}]}]
    p = build_prompt(msgs, [img], [{"frames": frames, "fps": 2.0}], tok, PROC)
    # Video first (placeholder order); 4 frames -> 2 temporal groups of 4x4 patches.
    assert p.grid_thw.tolist() == [[2, 4, 4], [1, 4, 4]] and p.pixel_values.shape == (48, 1536)
    ids = np.asarray(p.input_ids)
    assert (ids == tok.image_pad_id).sum() == 4 and (ids == tok.video_pad_id).sum() == 8
    assert tok.decode(p.input_ids[-3:]).endswith("<|im_start|>assistant\n")
    thinking = build_prompt(msgs, [img], [frames], tok, PROC, thinking=True)
    assert tok.decode(thinking.input_ids).endswith("<|im_start|>assistant\n<think>\n")
    text = build_prompt([{"role": "user", "content": "hi"}], [], [], tok)
    batch = batch_prompts([p, text, p])
    assert batch["grid_thw"].shape == (4, 3) and batch["pixel_values"].shape == (96, 1536)
    assert batch_prompts([text])["pixel_values"] is None


def test_build_prompt_errors(tok):
    img = np.zeros((64, 64, 3), np.uint8)
    two = [{"role": "user", "content": [*IMG, *IMG, {"type": "text", "text": "Same?"}]}]
    with pytest.raises(ValueError, match="2 image and 0 video placeholders but 1 images and 0 videos"):
        build_prompt(two, [img], [], tok, PROC)
    with pytest.raises(ValueError, match="0 image and 0 video placeholders but 1 images"):
        build_prompt([{"role": "user", "content": "no image here"}], [img], [], tok)
    one = [{"role": "user", "content": [*IMG, {"type": "text", "text": "?"}]}]
    with pytest.raises(ValueError, match="image 0: .*zero size"):
        build_prompt(one, [np.zeros((0, 64, 3), np.uint8)], [], tok, PROC)
    with pytest.raises(ValueError, match="image 0: .*uint8"):
        build_prompt(one, [np.zeros((64, 64, 3), np.float32)], [], tok, PROC)
    with pytest.raises(ValueError, match="image 0 is None"):
        build_prompt(one, [None], [], tok, PROC)


def test_load_model(ckpt, tmp_path):
    config, params, tokenizer = load_model(ckpt)  # the workdir: found in final/
    assert config.name == "qwen3-vl-tiny" and tokenizer.image_pad_id == config.image_token_id
    assert params["embed"].shape == (1024, 128)
    assert load_processor_config(ckpt / "final").max_pixels == 64 * 64
    with pytest.raises(FileNotFoundError, match="no model_config.json in .* or .*final"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing")


def test_processor_settings_take_the_models_merger(tmp_path):
    """How many placeholders an image gets is the model's (`merger`): older exports without the key and
    hand-written settings take it from the model config; settings that contradict it fail."""
    from tests.helpers import small_config
    from vlm_jax.inference.loading import processor_config_for

    def export(name, processor, **model):  # a params dir's configs (no weights: not read here)
        d = tmp_path / name
        (d / "params").mkdir(parents=True)
        (d / "model_config.json").write_text(small_config(**model).to_json(indent=1))
        if processor is not None:
            (d / "processor_config.json").write_text(json.dumps(processor))
        return d

    resampler = dict(merger="resampler", resampler_num_queries=64, deepstack=False, **{"vision.deepstack_layers": ()})
    old = export("old", PROC, **resampler)  # written before processor_config.json held the merger keys
    assert load_processor_config(old).merger == "mlp"  # the file alone still loads, with the default
    got = processor_config_for(old)
    assert (got.merger, got.resampler_num_queries, got.max_pixels) == ("resampler", 64, 64 * 64)
    assert processor_config_for(old, {"min_pixels": 1024}).resampler_num_queries == 64
    with pytest.raises(ValueError, match="processor settings merger='mlp' differ from the model's merger='resampler'"):
        processor_config_for(old, {"merger": "mlp"})
    assert processor_config_for(export("bare", None, **resampler)).merger == "resampler"
    mlp = export("mlp", PROC)
    assert processor_config_for(mlp) == load_processor_config(mlp) and processor_config_for(mlp).merger == "mlp"
    assert processor_config_for(export("mlp_bare", None)) is None  # as before: the processor defaults


# ----------------------------------------------------------------------------- items


def test_items_and_jsonl_round_trip(world, tmp_path):
    items = tasks.load_items(["grounding", "multiple_choice", "counting"], num_per_task=4, world=world)
    assert [it.family for it in items] == ["grounding"] * 4 + ["multiple_choice"] * 4 + ["counting"] * 4
    # Tasks of a family are interleaved, deterministically.
    assert [it.task for it in items[8:]] == ["count", "count_points", "count_boxes", "video_count"]
    assert [it.id for it in items] == [it.id for it in tasks.load_items(
        ["grounding", "multiple_choice", "counting"], num_per_task=4, world=world)]
    for it in items[4:8]:
        assert it.answer["text"] in it.answer["options"]
    path = tasks.write_items_jsonl(items, tmp_path)
    back = tasks.load_items(None, jsonl=path)
    assert [(b.id, b.family, b.answer, b.reference) for b in back] == [
        (a.id, a.family, a.answer, a.reference) for a in items]
    assert back[0].messages == items[0].messages
    np.testing.assert_array_equal(back[0].images[0], items[0].images[0])
    np.testing.assert_array_equal(back[-1].videos[0]["frames"], items[-1].videos[0]["frames"])
    assert [b.family for b in tasks.jsonl_items(path, ["counting"], n=2)] == ["counting"] * 2
    # A record from elsewhere: options and a letter answer make it multiple choice.
    mc = tmp_path / "mc.jsonl"
    record = {"id": "q1", "task": "quiz", "answer": {"options": ["cat", "dog"], "choice": "B"},
              "conversations": [{"from": "human", "value": "A) cat B) dog. Which barks?"},
                                {"from": "gpt", "value": "B"}]}
    mc.write_text(json.dumps(record) + "\n")
    (item,) = tasks.jsonl_items(mc)
    assert item.family == "multiple_choice" and item.messages[0]["content"][0]["text"].startswith("A) cat")
    assert harness.score_items([item], ["dog"]).tasks()["multiple_choice"]["acc"] == 1.0
    mc.write_text(json.dumps(dict(record, answer={"options": ["cat", "dog"], "choice": "D"})) + "\n")
    with pytest.raises(ValueError, match="record 1: reference answer 'D' is not one of the options"):
        tasks.jsonl_items(mc)


def test_task_name_errors(world, tmp_path):
    with pytest.raises(ValueError, match="unknown eval task.*'nope'.*valid tasks: grounding, pointing"):
        tasks.load_items(["grounding", "nope"], world=world)
    with pytest.raises(ValueError, match="unknown split"):
        tasks.load_items(["grounding"], split="dev", world=world)
    with pytest.raises(ValueError, match="fits no eval task"):
        tasks.family_of("mystery", {"foo": 1})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "conversations": [{"from": "human", "value": "hi"}]}\n')
    with pytest.raises(ValueError, match="record 1: no 'answer'"):
        tasks.jsonl_items(bad)


# ----------------------------------------------------------------------------- harness


def test_score_items_aggregates(world):
    items = tasks.load_items(["grounding", "counting", "ocr"], num_per_task=4, world=world)
    replies = [it.reference for it in items]
    replies[0] = "no idea"  # grounding: 3 / 4 correct, 1 malformed
    box = items[1].answer["bbox_2d"]
    replies[1] = json.dumps([{"bbox_2d": [box[0], box[1], box[2] + 1000, box[3]]}])  # clipped, IoU < 0.5
    replies[4] = "<think>\nhmm 7\n</think>\n\n" + items[4].reference  # only the final answer is scored
    replies[5] = "99"
    replies[8] = ""
    report = harness.score_items(items, replies)
    t = report.tasks()
    assert t["grounding"]["acc@iou0.5"] == 0.5 and t["grounding"]["malformed"] == 1 and t["grounding"]["n"] == 4
    iou1 = report.results[1].extras["iou"]
    assert iou1 == pytest.approx((box[2] - box[0]) / (1000 - box[0]))  # the box clipped at 1000, same height
    assert t["grounding"]["mean_iou"] == pytest.approx((0 + iou1 + 1 + 1) / 4)
    assert t["counting"]["exact"] == 0.75 and t["counting"]["malformed"] == 0
    assert t["ocr"]["exact"] == 0.75 and t["ocr"]["malformed"] == 1 and t["ocr"]["cer"] == pytest.approx(0.25)
    assert report.scalars()["grounding/malformed_rate"] == 0.25
    table = report.table().splitlines()
    assert table[0].split() == ["task", "metric", "n", "score", "[95%", "CI]", "malformed", "extra"]
    lo, hi = stats.wilson_interval(2, 4)
    assert table[2].split()[:7] == ["grounding", "acc@iou0.5", "4", "0.500", f"[{lo:.3f},", f"{hi:.3f}]", "1"]
    js = report.to_json()
    assert json.loads(json.dumps(js))["tasks"]["counting"]["exact"] == 0.75 and len(js["predictions"]) == 12
    assert js["tasks"]["grounding"]["ci95"] == [lo, hi] and js["tasks"]["grounding"]["interval"] == "wilson"


def test_evaluate_batches_and_decodes(world, tok, monkeypatch):
    """generate is replaced by a lookup of each prompt's reference reply: every item must come back
    correct, in item order, whatever the length-sorted batching did."""
    items = tasks.load_items(["counting", "grounding"], num_per_task=3, world=world)
    answers = {tuple(build_prompt(it.messages, it.images, it.videos, tok, PROC).input_ids):
               tok.encode(it.reference) + [tok.im_end_id] for it in items}
    rows_seen = []

    def fake_generate(config, params, prompts, *, pixel_values, grid_thw, max_new_tokens, pad_token_id, **kw):
        rows_seen.append(len(prompts))
        assert grid_thw.shape[0] >= len(prompts)
        out = np.full((len(prompts), max_new_tokens), pad_token_id, np.int32)
        lengths = []
        for r, p in enumerate(prompts):
            seq = answers[tuple(p)][:max_new_tokens]
            out[r, :len(seq)] = seq
            lengths.append(len(seq))
        return generate_lib.GenerateOutput(out, np.asarray(lengths), np.ones(len(prompts), bool), 64)

    monkeypatch.setattr(generate_lib, "generate", fake_generate)
    report = harness.evaluate(get_config("tiny"), {}, tok, items, batch_size=4, max_new_tokens=256, processor=PROC)
    assert rows_seen == [4, 4]  # the last batch is padded to the same shape
    assert [r.id for r in report.results] == [it.id for it in items]
    assert [r.reply for r in report.results] == [it.reference for it in items]
    assert {f: row[tasks.FAMILIES[f].metric] for f, row in report.tasks().items()} == {"counting": 1.0,
                                                                                       "grounding": 1.0}


def test_trivial_baselines_from_data(world):
    base = harness.trivial_baselines(["counting", "grounding", "pointing"], world, n_train=30)
    counts = [world.sample(i, "train", task=t)["answer"]["count"]
              for t in ("count", "count_points", "count_boxes", "video_count") for i in range(30)]
    assert base["counting"].reply == str(collections.Counter(counts).most_common(1)[0][0])
    boxes = [world.sample(i, "train", task="ground_box")["answer"]["bbox_2d"] for i in range(30)]
    assert json.loads(base["grounding"].reply)[0]["bbox_2d"] == np.mean(boxes, 0).round().astype(int).tolist()
    items = tasks.load_items(["counting", "grounding"], num_per_task=8, world=world)
    report = harness.score_items(items, [it.reference for it in items])
    scores = report.baseline_scores(base)
    expect = np.mean([it.answer["count"] == int(base["counting"].reply) for it in items[:8]])
    assert scores["counting"] == pytest.approx(expect)
    assert set(scores) == {"counting", "grounding"}  # pointing has no items in this report
    assert report.table(base).splitlines()[0].split()[6] == "baseline"
    assert report.to_json(base)["tasks"]["counting"]["baseline"] == pytest.approx(expect)


def test_intervals_against_hand_computed_values():
    # Wilson 95% for 8 / 10 by hand: z^2 = 3.8415, centre (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half 1.96 * sqrt(0.016 + 0.0096037) / 1.38415 = 0.22658 -> [0.4902, 0.9433].
    lo, hi = stats.wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    for n in range(1, 40):  # the interval holds the proportion exactly, whatever the rounding
        for k in range(n + 1):
            lo, hi = stats.wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0 and (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n)
    assert stats.wilson_interval(0, 10)[1] == pytest.approx(3.8415 / 13.8415, abs=1e-4)  # z^2 / (n + z^2)
    assert all(math.isnan(x) for x in stats.wilson_interval(0, 0))
    # Normal: mean 0.5, squared deviations 0.25 + 0 + 0 + 0.25 -> sample sd sqrt(0.5 / 3), se sd / 2.
    est = stats.estimate([0.0, 0.5, 0.5, 1.0], proportion=False)
    half = stats.Z95 * math.sqrt(1 / 6) / 2
    assert est.method == "normal" and est.n == 4
    assert (est.low, est.high) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert est.format() == f"0.500 [{0.5 - half:.3f}, {0.5 + half:.3f}]"
    assert stats.estimate([1, 0, 1], proportion=True).method == "wilson"
    with pytest.raises(ValueError, match="proportion needs per-item scores of 0 or 1"):
        stats.estimate([0.5, 1.0], proportion=True)


def test_whole_split_is_the_default(tmp_path):
    world = SyntheticWorld({"tasks": {"count": 1.0, "ground_box": 1.0}, "eval_splits": {"eval": 7, "test": 3}})
    items = tasks.load_items(["counting", "grounding"], world=world)
    assert collections.Counter(it.family for it in items) == {"counting": 7, "grounding": 7}
    assert [it.meta["index"] for it in items[:7]] == list(range(7))
    assert len(tasks.load_items(["counting"], split="test", world=world)) == 3
    assert len(tasks.load_items(["counting"], num_per_task=5, world=world)) == 5
    assert len(tasks.load_items(["counting"], num_per_task=0, world=world)) == 7  # 0: configs' "all"
    with pytest.raises(ValueError, match="items per task must be >= 0"):
        tasks.load_items(["counting"], num_per_task=-1, world=world)


@pytest.fixture(scope="module")
def image_items():
    """Counting and grounding items of a world that trains only the single-image tasks (the main job's)."""
    world = SyntheticWorld({"tasks": {"count": 1.0, "ground_box": 1.0}})
    return tasks.load_items(["counting", "grounding"], num_per_task=5, world=world)


def _pixel_key(prompt) -> bytes:
    return np.asarray(prompt.pixel_values).tobytes()


def test_vision_off_items_swap_images_within_a_task(image_items, tok):
    items = image_items
    donors = tasks.vision_off_donors(items)
    assert sorted(donors) == list(range(len(items)))
    assert all(d != k and items[d].family == items[k].family for k, d in enumerate(donors))
    off = tasks.vision_off_items(items, donors)
    orig_px = [_pixel_key(build_prompt(it.messages, it.images, it.videos, tok, PROC)) for it in items]
    off_prompts = [build_prompt(it.messages, it.images, it.videos, tok, PROC) for it in off]
    off_px = [_pixel_key(p) for p in off_prompts]
    assert len(set(orig_px)) == len(items)  # distinct images, so a swap is visible
    assert all(a != b for a, b in zip(off_px, orig_px))  # every prompt's pixels changed ...
    for fam in ("counting", "grounding"):  # ... and are a permutation of the same task's originals
        ks = [k for k, it in enumerate(items) if it.family == fam]
        assert sorted(off_px[k] for k in ks) == sorted(orig_px[k] for k in ks)
    for a, b, p in zip(items, off, off_prompts):  # the question and answer stay
        assert (b.messages, b.answer, b.id) == (a.messages, a.answer, a.id)
        assert p.input_ids == build_prompt(a.messages, a.images, a.videos, tok, PROC).input_ids
    with pytest.raises(ValueError, match="permutation"):
        tasks.vision_off_items(items, [0] * len(items))
    # A lone item of its kind has no other image to take: it keeps its own.
    assert tasks.vision_off_donors(items[:1] + items[-1:]) == [0, 1]


def test_evaluate_vision_off_control(image_items, tok, monkeypatch):
    """generate is replaced by "the reference of the item whose image this is": the model scores 1,
    and in the control each item gets exactly its donor's reference."""
    items = image_items
    by_pixels = {_pixel_key(build_prompt(it.messages, it.images, it.videos, tok, PROC)): it.reference
                 for it in items}
    patches = 16  # a 64 x 64 image under PROC

    def fake_generate(config, params, prompts, *, pixel_values, grid_thw, max_new_tokens, pad_token_id, **kw):
        assert np.prod(grid_thw, axis=-1).tolist() == [patches] * len(prompts)
        out = np.full((len(prompts), max_new_tokens), pad_token_id, np.int32)
        for r in range(len(prompts)):
            ref = by_pixels[pixel_values[r * patches:(r + 1) * patches].tobytes()]
            seq = (tok.encode(ref) + [tok.im_end_id])[:max_new_tokens]
            out[r, :len(seq)] = seq
        return generate_lib.GenerateOutput(out, np.full(len(prompts), max_new_tokens), np.ones(len(prompts), bool),
                                           64)

    monkeypatch.setattr(generate_lib, "generate", fake_generate)
    report = harness.evaluate(get_config("tiny"), {}, tok, items, batch_size=4, max_new_tokens=64, processor=PROC,
                              vision_off_control=True)
    donors = report.control.settings["donors"]
    assert [r.reply for r in report.results] == [it.reference for it in items]
    assert [r.reply for r in report.control.results] == [items[d].reference for d in donors]
    assert [r.answer for r in report.control.results] == [it.answer for it in items]
    expect = {f: np.mean([tasks.score_item(f, items[k].answer, items[d].reference).value
                          for k, d in enumerate(donors) if items[k].family == f]) for f in ("counting", "grounding")}
    assert {f: e.value for f, e in report.control.estimates().items()} == pytest.approx(expect)
    assert expect["grounding"] < 1.0  # another item's box does not fit
    header = report.table().splitlines()[0].split()
    assert header[:7] == ["task", "metric", "n", "score", "[95%", "CI]", "vision-off"]
    js = report.to_json()
    assert js["tasks"]["grounding"]["vision_off"] == pytest.approx(expect["grounding"])
    assert report.scalars()["counting/vision_off/exact"] == pytest.approx(expect["counting"])
    assert js["vision_off"]["settings"]["swapped"] == len(items)


def test_visualization_draws_true_green_and_predicted_red(tmp_path):
    img = np.full((64, 64, 3), 100, np.uint8)
    item = tasks.EvalItem("v1", "grounding", [], [img], [], {"bbox_2d": [100, 100, 400, 400]}, task="ground_box")
    report = harness.score_items([item], ['[{"bbox_2d": [600, 600, 900, 900]}]'])
    (path,) = visualize.write_visualizations(report, [item], tmp_path, n=4)
    px = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert px.shape[1] == 256 and px.shape[0] > 256  # upscaled 4x, caption band below
    is_green = (px == [0, 255, 0]).all(-1)
    is_red = (px == [255, 0, 0]).all(-1)
    gy, gx = np.nonzero(is_green)
    ry, rx = np.nonzero(is_red)
    # Outlines at 100..400 and 600..900 of 1000 -> pixels ~26..102 and ~154..230 of 256.
    assert abs(gx.min() - 25.6) <= 2 and abs(gx.max() - 102.4) <= 2 and abs(gy.min() - 25.6) <= 2
    assert abs(rx.min() - 153.6) <= 2 and abs(rx.max() - 230.4) <= 2 and abs(ry.max() - 230.4) <= 2
    assert not is_green[:, 110:].any() and not is_red[:, :150].any()


# ----------------------------------------------------------------------------- real model and CLIs


def test_eval_cli_runs_tiny_model(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = eval_cli.main([f"--checkpoint={ckpt}", "--tasks=grounding,counting", "--num=2", "--batch_size=2",
                        "--max_new_tokens=4", "--n_train=20", "--vision_off", f"--out={out}"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:8] == ["task", "metric", "n", "score", "[95%", "CI]", "baseline", "vision-off"]
    result = json.loads((out / "results.json").read_text())
    assert {k: v["n"] for k, v in result["tasks"].items()} == {"grounding": 2, "counting": 2}
    assert all(0.0 <= v["vision_off"] <= 1.0 for v in result["tasks"].values())
    assert len(result["vision_off"]["predictions"]) == 4 and result["vision_off"]["settings"]["swapped"] == 4
    assert [p["score"] for p in result["predictions"]] == [
        tasks.score_item(p["family"], p["answer"], p["final"]).value for p in result["predictions"]]
    assert len(list(out.glob("*.png"))) >= 3  # grounding items and box / point counting items


@pytest.mark.parametrize("args, message", [
    (["--checkpoint={missing}", "--tasks=grounding"], "checkpoint not found"),
    (["--checkpoint={ckpt}", "--tasks=grounding,nope"], "unknown eval task(s) ['nope']; valid tasks: grounding"),
    (["--checkpoint={ckpt}", "--preset=fast"], "unknown sampling preset 'fast'; choose from instruct"),
    (["--checkpoint={ckpt}", "--jsonl={missing}"], "JSONL file not found"),
    (["--tasks=grounding"], "flag --checkpoint=None: Flag --checkpoint must have a value"),
    (["--checkpoint={ckpt}", "--num=all"], "flag --num=all: invalid literal for int()"),
    (["--checkpoint={ckpt}", "--bogus=1"], "Unknown command line flag 'bogus'"),
    (["--checkpoint={ckpt}", "grounding"], "unexpected arguments ['grounding']"),
])
def test_eval_cli_errors(ckpt, tmp_path, capsys, args, message):
    rc = eval_cli.main([a.format(ckpt=ckpt, missing=tmp_path / "missing") for a in args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_generate_cli(ckpt, tmp_path, capsys):
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    base = [f"--checkpoint={ckpt}", "--prompt=How many circles?"]
    cases = [([f"--image={tmp_path / 'missing.png'}"], "image file not found"),
             ([f"--image={tmp_path / 'bad.png'}"], "cannot decode image"),
             (["--preset=fast"], "unknown sampling preset 'fast'"),
             ([f"--video={tmp_path / 'a.png'}"], "unsupported video"),
             (["--max_new_tokens=8190"], "exceeds the model's budget of 8192 positions"),
             (["--processor=[1]"], "processor settings must be a JSON object")]
    for extra, message in cases:
        assert generate_cli.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (extra, err)
    np.save(tmp_path / "v.npy", np.zeros((4, 64, 64, 3), np.uint8))
    rc = generate_cli.main(base + [f"--image={tmp_path / 'a.png'}", f"--video={tmp_path / 'v.npy'}",
                                   "--max_new_tokens=3", "--preset=thinking", "--stream"])
    out = capsys.readouterr().out
    assert rc == 0 and "[reasoning]" in out and "[answer]" in out

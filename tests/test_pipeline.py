"""The Grain pipeline end to end: sample -> tokens, packed batches, determinism, resume, bad input."""

from __future__ import annotations

import gc
import json
import os
import re

import grain
import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import packing, pipeline, sources
from vlm_jax.data import processor as proc
from vlm_jax.data.pipeline import DataError, Pipeline, tokenize_sample
from vlm_jax.data.synthetic import TOKENIZER_PATH, SyntheticSource, SyntheticWorld
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.model.rope import get_rope_index

TOK = load_tokenizer(TOKENIZER_PATH)
IMAGE_PAD, VIDEO_PAD = TOK.image_pad_id, TOK.video_pad_id
WORLD = SyntheticWorld()
SMALL = dict(seq_len=1024, batch_size=2, max_patches=5120, max_grids=64, read_threads=1)


def synthetic(length: int = 10_000) -> SyntheticSource:
    return SyntheticSource(WORLD, "train", length=length)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- sample -> tokens


def test_tokenize_sample_synthetic_tasks():
    cfg = pipeline.get_config(**SMALL)
    seen = set()
    for task in ("caption", "multi_image", "video_count", "text", "thinking"):
        s = WORLD.sample(3, "train", task=task)
        out = tokenize_sample(s, TOK, cfg, task_id=7, index=3)
        ids, grid = out["input_ids"], out["grid_thw"]
        assert ids.dtype == np.int32 and out["position_ids"].shape == (3, len(ids))
        assert out["pixel_values"].shape == (int(grid.prod(-1).sum()), 1536)
        assert int(np.isin(ids, [IMAGE_PAD, VIDEO_PAD]).sum()) == int(grid.prod(-1).sum()) // 4
        assert len(grid) == len(s["images"]) + len(s["videos"])
        ref, _ = get_rope_index(
            ids[None],
            grid[grid[:, 0] == 1] if not s["videos"] else None,
            grid if s["videos"] else None,
            image_token_id=IMAGE_PAD,
            video_token_id=VIDEO_PAD,
        )
        np.testing.assert_array_equal(out["position_ids"], ref[:, 0])
        # supervised tokens are exactly the assistant answers (+ <|im_end|>), never vision tokens
        assert out["loss_mask"].any() and not out["loss_mask"][np.isin(ids, [IMAGE_PAD, VIDEO_PAD])].any()
        answer = TOK.decode(ids[out["loss_mask"]])
        assert answer.endswith("<|im_end|>") and "<|im_start|>" not in answer
        assert out["task_id"] == 7
        seen.add(task)
    assert len(seen) == 5


def test_visuals_in_placeholder_order():
    video = {"frames": np.stack([rgb(64, 96, t) for t in range(4)]), "fps": 2.0}
    img_a, img_b = rgb(64, 64, 10), rgb(96, 32, 11)
    sample = {
        "id": "mixed",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "then"}, {"type": "video"}],
            },
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and?"}]},
            {"role": "assistant", "content": "fine"},
        ],
        "images": [img_a, img_b],
        "videos": [video],
    }
    cfg = pipeline.get_config(**SMALL)
    out = tokenize_sample(sample, TOK, cfg)
    a, b = proc.process_image(img_a), proc.process_image(img_b)
    v = proc.process_video(video["frames"], 2.0)
    np.testing.assert_array_equal(
        out["grid_thw"], np.concatenate([a["grid_thw"], v["grid_thw"], b["grid_thw"]])
    )
    np.testing.assert_array_equal(
        out["pixel_values"], np.concatenate([a["pixel_values"], v["pixel_values"], b["pixel_values"]])
    )
    text = TOK.decode(out["input_ids"])
    for stamp in v["timestamps"]:  # one text timestamp per temporal group
        assert proc.format_timestamp(stamp) in text


def _image_runs(ids, pad):
    """Lengths of the runs of `pad` tokens in `ids`, in order."""
    edges = np.diff(np.concatenate([[0], (ids == pad).astype(int), [0]]))
    return (np.nonzero(edges == -1)[0] - np.nonzero(edges == 1)[0]).tolist()


def test_resampler_places_its_query_count_per_image():
    # Both images become 280 patches (70 MLP tokens); a 64-query resampler makes 64 tokens of each.
    sample = {
        "id": "two",
        "images": [rgb(64, 96, 1), rgb(96, 32, 2)],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]},
            {"role": "assistant", "content": "ok"},
        ],
    }
    out = {m: tokenize_sample(sample, TOK, pipeline.get_config(**SMALL, processor={"merger": m,
                                                                                     "resampler_num_queries": 64}))
           for m in proc.MERGERS}
    grid = out["mlp"]["grid_thw"]
    assert grid.tolist() == [[1, 14, 20], [1, 28, 10]]
    # The MLP path as before: the patch grids' t*h*w/4 tokens, positions of the patch grids.
    assert _image_runs(out["mlp"]["input_ids"], IMAGE_PAD) == [70, 70]
    ref, _ = get_rope_index(out["mlp"]["input_ids"][None], grid, None, image_token_id=IMAGE_PAD,
                            video_token_id=VIDEO_PAD)
    np.testing.assert_array_equal(out["mlp"]["position_ids"], ref[:, 0])
    # The resampler: 64 tokens per image at its virtual 16 x 16 grid; pixels and grids stay the real patches.
    ids = out["resampler"]["input_ids"]
    assert _image_runs(ids, IMAGE_PAD) == [64, 64]
    virtual = proc.llm_grids(grid, "resampler", 64, 2)
    assert virtual.tolist() == [[1, 16, 16], [1, 16, 16]]
    ref, _ = get_rope_index(ids[None], virtual, None, image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD)
    np.testing.assert_array_equal(out["resampler"]["position_ids"], ref[:, 0])
    np.testing.assert_array_equal(out["resampler"]["grid_thw"], grid)
    np.testing.assert_array_equal(out["resampler"]["pixel_values"], out["mlp"]["pixel_values"])
    # A video has no place under the resampler (one query grid per clip, no temporal groups): refused.
    video = {"id": "v", "images": [], "videos": [{"frames": np.stack([rgb(64, 64, t) for t in range(4)]), "fps": 2.0}],
             "messages": [{"role": "user", "content": [{"type": "video"}]}, {"role": "assistant", "content": "ok"}]}
    with pytest.raises(sources.SampleError, match=r"processing_error.*video\(s\) with merger='resampler'"):
        tokenize_sample(video, TOK, pipeline.get_config(**SMALL, processor={"merger": "resampler"}))


def test_qwen_jsonl_matches_in_memory_samples(tmp_path):
    """The synthetic world written as Qwen-VL JSONL tokenises exactly like the in-memory samples."""
    from vlm_jax.data.synthetic import write_jsonl

    src = sources.QwenJsonlSource(write_jsonl(WORLD, "train", 32, tmp_path))
    cfg = pipeline.get_config(seq_len=4096, max_patches=8192, thinking="thinking")
    for i in range(32):
        a = tokenize_sample(WORLD.sample(i), TOK, cfg)
        b = tokenize_sample(sources.decode_sample(src[i]), TOK, cfg)
        for k in ("input_ids", "loss_mask", "pixel_values", "grid_thw", "position_ids"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"sample {i} {k}")


def test_video_is_shrunk_to_fit_seq_len():
    video = {"frames": np.stack([rgb(256, 256, t) for t in range(16)]), "fps": 2.0}
    sample = {
        "id": "v",
        "images": [],
        "videos": [video],
        "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what?"}]},
            {"role": "assistant", "content": "noise"},
        ],
    }
    full = tokenize_sample(sample, TOK, pipeline.get_config(seq_len=4096, max_patches=8192))
    n_full = len(full["input_ids"])
    fit = tokenize_sample(sample, TOK, pipeline.get_config(seq_len=n_full // 2, max_patches=8192))
    assert len(fit["input_ids"]) <= n_full // 2
    assert fit["grid_thw"].prod() < full["grid_thw"].prod()
    with pytest.raises(sources.SampleError, match="too_long"):
        tokenize_sample(sample, TOK, pipeline.get_config(seq_len=n_full // 2, max_patches=8192, fit_videos=False))


# --- batches


def test_batches_match_contract_and_pack_tightly():
    cfg = pipeline.get_config(**SMALL, loss_normalization="sample")
    with iter(Pipeline(synthetic(), TOK, cfg)) as it:
        batches = take(it, 8)
        stats = it.stats
        eff = it.packing_efficiency
    b, s = cfg.batch_size, cfg.seq_len
    for batch in batches:
        assert set(batch) == {
            "input_ids",
            "segment_ids",
            "position_ids",
            "targets",
            "loss_weights",
            "task_ids",
            "pixel_values",
            "grid_thw",
        }
        assert batch["position_ids"].shape == (3, b, s) and batch["pixel_values"].shape == (5120, 1536)
        assert batch["grid_thw"].shape == (64, 3) and batch["loss_weights"].dtype == np.float32
        seg, ids = batch["segment_ids"], batch["input_ids"]
        n_vis = int(np.isin(ids, [IMAGE_PAD, VIDEO_PAD]).sum())
        assert n_vis * 4 == int(batch["grid_thw"].prod(-1).sum())  # one grid row per visual, in order
        real = int(batch["grid_thw"].prod(-1).sum())
        assert (batch["pixel_values"][real:] == 0).all() and (batch["pixel_values"][:real] != 0).any()
        for r in range(b):
            for k in range(1, seg[r].max() + 1):
                m = seg[r] == k
                pos = batch["position_ids"][:, r][:, m]
                assert (pos[:, 0] == 0).all()  # positions restart per sample
                np.testing.assert_array_equal(batch["targets"][r][m][:-1], ids[r][m][1:])
                assert batch["targets"][r][m][-1] == 0
                w = batch["loss_weights"][r][m]
                np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)  # per-sample normalisation
                assert (w[batch["targets"][r][m] == IMAGE_PAD] == 0).all()
            assert (batch["task_ids"][r][seg[r] > 0] > 0).all()
    assert stats["batches"] == 8 and stats["skipped"] == {}
    assert eff >= 0.9, eff


def test_deterministic_by_seed_and_resumable_in_process():
    cfg = pipeline.get_config(**SMALL)
    pipe = Pipeline(synthetic(), str(TOKENIZER_PATH), cfg)
    full = take(iter(pipe), 6)
    it = iter(pipe)
    first = take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    resumed = iter(pipe)
    assert isinstance(resumed, grain.DatasetIterator)  # works with grain.checkpoint.CheckpointHandler
    resumed.set_state(state)
    rest = take(resumed, 3)
    assert_same_batches(full, first + rest)
    assert resumed.stats["batches"] == 6
    other = take(iter(Pipeline(synthetic(), TOK, pipeline.get_config(**SMALL, seed=1))), 1)
    assert not np.array_equal(other[0]["input_ids"], full[0]["input_ids"])


def test_resumable_with_two_worker_processes():
    cfg = pipeline.get_config(**SMALL, worker_count=2, worker_buffer_size=1)
    pipe = Pipeline(synthetic(), str(TOKENIZER_PATH), cfg)
    it = iter(pipe)
    first = take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    rest = take(it, 3)
    it.close()
    resumed = iter(pipe)
    resumed.set_state(state)
    again = take(resumed, 3)
    resumed.close()
    assert_same_batches(rest, again)
    assert resumed.stats["batches"] == 6 and resumed.stats["samples"] == it.stats["samples"]
    assert first[0]["input_ids"].shape == (2, 1024)
    del first, rest, again
    gc.collect()


def test_sharding_by_process_splits_the_data(tmp_path):
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            f.write(json.dumps({"text": f"document number {i} end"}) + "\n")
    src = sources.MessagesJsonlSource(path)
    got = []
    for shard in range(2):
        cfg = pipeline.get_config(
            seq_len=64,
            batch_size=2,
            max_patches=16,
            max_grids=1,
            num_epochs=1,
            shard_index=shard,
            shard_count=2,
            read_threads=1,
        )
        ids = set()
        for batch in Pipeline(src, TOK, cfg):
            for r in range(2):
                seg = batch["segment_ids"][r]
                for k in range(1, seg.max() + 1):
                    text = TOK.decode(batch["input_ids"][r][seg == k])
                    ids.add(int(re.search(r"number (\d+)", text).group(1)))
        got.append(ids)
    assert got[0].isdisjoint(got[1]) and got[0] | got[1] == set(range(40))
    assert abs(len(got[0]) - len(got[1])) <= 1


# --- bad input


def _bad_dataset(tmp_path):
    d = tmp_path
    Image.fromarray(rgb(64, 64, 1)).save(d / "ok.png")
    data = (d / "ok.png").read_bytes()
    (d / "trunc.png").write_bytes(data[: len(data) // 2])
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (d / "empty.png").write_bytes(b"")
    Image.fromarray(rgb(2, 500, 2)).save(d / "thin.png")  # 250:1

    def conv(image, question="<image>What is it?", answer="A thing."):
        rec = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
        if image is not None:
            rec["image"] = image
        return rec

    records = [
        conv("ok.png"),  # 0 good
        conv("trunc.png"),  # 1 bad_image
        conv("corrupt.jpg"),  # 2 bad_image
        conv("empty.png"),  # 3 empty_image
        conv("thin.png"),  # 4 aspect_ratio
        conv("ok.png", "<image><image>two?"),  # 5 placeholder_mismatch (more placeholders)
        conv(["ok.png", "ok.png"]),  # 6 placeholder_mismatch (more images)
        conv(None, "long " * 2000),  # 7 too_long
        conv("missing.png"),  # 8 missing_file
        {"conversations": []},  # 9 empty_conversation
        {"conversations": [{"from": "human", "value": "hello?"}]},  # 10 empty_conversation
        conv(None, "Hi", "Hello."),  # 11 good
    ]
    lines = [json.dumps(r) for r in records] + ['{"conversations": [']  # 12 bad_format
    (d / "bad.jsonl").write_text("\n".join(lines) + "\n")
    return sources.QwenJsonlSource(d / "bad.jsonl")


def test_bad_inputs_are_skipped_and_counted(tmp_path):
    src = _bad_dataset(tmp_path)
    cfg = pipeline.get_config(
        seq_len=512, batch_size=2, max_patches=1024, max_grids=8, num_epochs=1, read_threads=1
    )
    it = iter(Pipeline(src, TOK, cfg))
    batches = list(it)
    assert it.stats["skipped"] == {
        "bad_image": 2,
        "empty_image": 1,
        "aspect_ratio": 1,
        "placeholder_mismatch": 2,
        "too_long": 1,
        "missing_file": 1,
        "empty_conversation": 2,
        "bad_format": 1,
    }
    assert it.stats["samples"] == 2 and it.num_skipped == 11
    assert any("missing.png" in m and "sample 8" in m for m in it.recent_skips)
    # nothing truncated: every packed sample ends with the template's final "<|im_end|>" + newline
    ends = []
    for b in batches:
        seg = b["segment_ids"]
        for r in range(2):
            for k in range(1, seg[r].max() + 1):
                ends.append(TOK.decode(b["input_ids"][r][seg[r] == k][-2:]))
    assert ends == ["<|im_end|>" + chr(10)] * 2


def test_on_error_raise_names_path_and_sample(tmp_path):
    Image.fromarray(rgb(64, 64, 1)).save(tmp_path / "ok.png")
    recs = [
        {
            "image": name,
            "conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "x"}],
        }
        for name in ("ok.png", "ok.png", "gone.png")
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    src = sources.QwenJsonlSource(tmp_path / "d.jsonl")
    base = dict(seq_len=512, batch_size=2, max_patches=1024, max_grids=8, num_epochs=1, read_threads=1)
    with pytest.raises(DataError) as e:
        list(Pipeline(src, TOK, pipeline.get_config(**base, on_error="raise")))
    msg = str(e.value)
    assert "sample 2" in msg and os.fspath(tmp_path / "gone.png") in msg and "missing_file" in msg
    it = iter(Pipeline(src, TOK, pipeline.get_config(**base, on_error="skip")))
    list(it)
    assert it.stats["skipped"] == {"missing_file": 1} and it.stats["samples"] == 2


def test_zero_size_array_image_is_skipped():
    class Mem:
        name = "mem"

        def __len__(self):
            return 2

        def __getitem__(self, i):
            img = np.zeros((0, 16, 3), np.uint8) if i == 0 else rgb(32, 32)
            return {
                "id": f"m{i}",
                "images": [img],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                    {"role": "assistant", "content": "x"},
                ],
            }

    cfg = pipeline.get_config(
        seq_len=512, batch_size=1, max_patches=1024, max_grids=4, num_epochs=1, read_threads=1
    )
    it = iter(Pipeline(Mem(), TOK, cfg))
    list(it)
    assert it.stats["skipped"] == {"empty_image": 1} and it.stats["samples"] == 1


# --- mixture, config


def test_mixture_with_text_only_data_and_task_ids(tmp_path):
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": f"plain text {i} " * 5}) + "\n" for i in range(50)))
    cfg = pipeline.get_config(**SMALL, weights={"synthetic": 0.7, "text": 0.3})
    with iter(
        Pipeline({"synthetic": synthetic(), "text": sources.MessagesJsonlSource(path)}, TOK, cfg)
    ) as it:
        batches = take(it, 4)
    task_ids = np.concatenate([b["task_ids"][b["segment_ids"] > 0] for b in batches])
    assert 2 in task_ids  # "text" is the second mixture source: task id 2
    assert len(np.unique(task_ids)) > 3  # synthetic tasks get their own ids after the source names


def test_suggest_vision_buffer():
    cfg = pipeline.get_config(seq_len=2048, batch_size=4)
    got = pipeline.suggest_vision_buffer(synthetic(), TOK, cfg, num_samples=24)
    assert got["samples"] == 24 and 1.0 < got["patches_per_token"] < 4.0
    assert got["max_patches"] % 1024 == 0 and got["max_patches"] >= 2048 * 4 * got["patches_per_token"]


def test_config_is_validated():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) pipeline\.seq_lenn;"):
        pipeline.get_config({"seq_lenn": 3})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) pipeline\.processor\.max_pixelz;"):
        pipeline.get_config(processor={"max_pixelz": 3})
    with pytest.raises(ValueError, match="on_error"):
        pipeline.get_config(on_error="ignore")
    with pytest.raises(ValueError, match="loss_normalization"):
        pipeline.get_config(loss_normalization="per_token")
    with pytest.raises(ValueError, match=r"pipeline\.seq_len: .*float"):  # an int key takes no float
        pipeline.get_config(seq_len=128.5)
    assert pipeline.get_config({"seq_len": 128}).seq_len == 128
    cfg = pipeline.get_config({"processor": {"max_pixels": 1 << 16}, "task_names": ["a"]})
    assert cfg.processor == proc.get_config(max_pixels=1 << 16) and cfg.task_names == ("a",)
    assert cfg.processor.min_pixels == proc.base_config().min_pixels  # merged key by key onto the defaults
    assert pipeline.get_config(cfg) == cfg  # a built config is a valid override of every key
    assert os.path.exists(TOKENIZER_PATH)


def test_packer_reads_the_pipeline_packing_keys():
    cfg = pipeline.get_config(seq_len=256, batch_size=3, max_consecutive_skips=7, processor={"patch_size": 14})
    assert "patch_dim" not in cfg  # the processor's: one place
    pc = pipeline.packing_config(cfg, pad_id=5)
    assert set(pc.keys()) == set(packing.base_config().keys())
    assert (pc.seq_len, pc.batch_size, pc.max_consecutive_skips, pc.pad_id) == (256, 3, 7, 5)
    assert pc.patch_dim == cfg.processor.patch_dim == 3 * 2 * 14 * 14

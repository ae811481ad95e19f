"""The official Qwen3-VL fine-tuning demo folder, as shipped, through the sources, the pipeline and training.

`tests/fixtures/qwen_finetune_demo/demo/` holds the demo's two annotation files byte for byte
(`qwen-vl-finetune/demo/single_images.json` and `video.json` of the official repository). The test
copies them into the demo's layout and writes small stand-ins for its media under the same names:

    qwen-vl-finetune/demo/single_images.json   image paths "demo/images/..." (relative to qwen-vl-finetune)
    qwen-vl-finetune/demo/video.json           video paths "v_....mp4" (relative to demo/videos)
    qwen-vl-finetune/demo/images/10095.png, 10149.png, COCO_train2014_000000580957.jpg
    qwen-vl-finetune/demo/videos/v_7bUu05RIksU.mp4, v_TpB_zMG3XBA.mp4, v_rBMQFpHspmo.mp4  (MPEG-4 Part 2, 3 fps)

plus a JSONL copy of each annotation file (same records, one per line).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.video_files import write_video
from vlm_jax.data import pipeline, sources
from vlm_jax.data.pipeline import DataError, Pipeline
from vlm_jax.data.synthetic import TOKENIZER_PATH
from vlm_jax.data.tokenizer import load_tokenizer

pytest.importorskip("av")

FIXTURE = Path(__file__).parent / "fixtures" / "qwen_finetune_demo" / "demo"
VIDEOS = ("v_7bUu05RIksU.mp4", "v_TpB_zMG3XBA.mp4", "v_rBMQFpHspmo.mp4")
IMAGES = ("10095.png", "10149.png", "COCO_train2014_000000580957.jpg")
TOK = load_tokenizer(TOKENIZER_PATH)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The root of the demo's layout (the official `qwen-vl-finetune` directory)."""
    root = tmp_path_factory.mktemp("official") / "qwen-vl-finetune"
    shutil.copytree(FIXTURE, root / "demo")
    rng = np.random.default_rng(0)
    (root / "demo" / "images").mkdir()
    for k, name in enumerate(IMAGES):
        Image.fromarray(rng.integers(0, 256, (36 + 8 * k, 42, 3), dtype=np.uint8)).save(root / "demo" / "images" / name)
    (root / "demo" / "videos").mkdir()
    for k, name in enumerate(VIDEOS):  # the demo's codec (MPEG-4 Part 2 in mp4) and rate (3 fps)
        write_video(root / "demo" / "videos" / name, 9 + 3 * k, fps=3, height=64, width=64, codec="mpeg4",
                    options={"qscale": "2"})
    for name in ("single_images", "video"):
        records = json.loads((root / "demo" / f"{name}.json").read_text())
        with open(root / "demo" / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return root


def registry(root: Path, ext: str = "json") -> dict:
    """The official registry entries (`qwenvl/data/__init__.py` style) of the two demo datasets."""
    demo = root / "demo"
    return {"single_images": {"annotation_path": str(demo / f"single_images.{ext}"), "data_path": str(root)},
            "video": {"annotation_path": str(demo / f"video.{ext}"), "data_path": str(demo / "videos")}}


def test_fixture_is_the_official_demo_byte_for_byte():
    # git blob hashes of the official files: a reformatted copy would not test the format as shipped
    import hashlib

    def blob(p: Path) -> str:
        data = p.read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    assert blob(FIXTURE / "single_images.json") == "eff1da9dbb84984f39c9885f75616d8ac9456815"
    assert blob(FIXTURE / "video.json") == "b4d1459663baeeb92c8b9881f35917476a68aff4"


def test_demo_array_and_jsonl_files_read_the_same(demo):
    for ext in ("json", "jsonl"):
        srcs = sources.qwen_sources("single_images,video", registry(demo, ext))
        images, videos = srcs["single_images"], srcs["video"]
        assert (len(images), len(videos)) == (3, 3)
        s = images[0]  # the placeholder after the text
        assert s["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "Is the value of Favorable 38 in 2015?"},
                                         {"type": "image"}]},
            {"role": "assistant", "content": "Yes"},
        ]
        assert s["images"] == [str(demo / "demo" / "images" / "10095.png")]
        v = videos[1]  # the placeholder before the text
        assert v["messages"][0]["content"] == [
            {"type": "video"}, {"type": "text", "text": "Can you describe what the woman is doing on the lake?"}]
        assert v["videos"][0]["frames"] == str(demo / "demo" / "videos" / "v_TpB_zMG3XBA.mp4")
        decoded = sources.decode_sample(v)
        assert decoded["videos"][0]["frames"].shape == (12, 64, 64, 3) and decoded["videos"][0]["fps"] == 3.0
        if ext == "json":
            first = (images, videos)
        else:
            for a, b in zip(first, (images, videos)):
                assert [a[i]["messages"] for i in range(3)] == [b[i]["messages"] for i in range(3)]
                assert [a[i]["images"] + a[i]["videos"] for i in range(3)] == [
                    b[i]["images"] + b[i]["videos"] for i in range(3)]


def test_dataset_names_with_a_sampling_rate(demo):
    srcs = sources.qwen_sources(["single_images%67", "video%34"], registry(demo))
    assert (len(srcs["single_images"]), len(srcs["video"])) == (2, 1)  # int(3 * 0.67), int(3 * 0.34)
    again = sources.qwen_sources("single_images%67", registry(demo))["single_images"]
    assert [again[i]["messages"] for i in range(2)] == [srcs["single_images"][i]["messages"] for i in range(2)]
    mix = sources.qwen_mixture("single_images,video%67", registry(demo))
    assert len(mix) == 5 and dict(zip(mix.names, mix.weights)) == pytest.approx({"single_images": 0.6, "video": 0.4})
    assert sources.parse_dataset_name("cambrian_737k%50") == ("cambrian_737k", 0.5)
    for bad, match in (("video%0", "1..100"), ("video%150", "1..100"), ("nope", "not in the registry")):
        with pytest.raises(ValueError, match=match):
            sources.qwen_sources(bad, registry(demo))


def test_experiment_config_sources_take_the_official_names(demo):
    from vlm_jax.configs import experiment as experiment_lib
    from vlm_jax.configs.synthetic_tiny import get_config
    from vlm_jax.train import data as data_lib

    c = get_config()
    reg = registry(demo)
    c.data.sources = {"single_images": {"kind": "qwen_jsonl", "path": reg["single_images"]["annotation_path"],
                                        "data_root": reg["single_images"]["data_path"], "weight": 2.0},
                      "video%67": {"kind": "qwen_jsonl", "path": reg["video"]["annotation_path"],
                                   "data_root": reg["video"]["data_path"]}}
    c.data.curriculum = ()
    experiment_lib.validate(c)
    built, weights = data_lib.make_sources(c.data)
    assert {n: len(s) for n, s in built.items()} == {"single_images": 3, "video": 2}
    assert weights == {"single_images": 2.0, "video": 1.0}
    c.data.sources["video%67"]["sampling_rate"] = 0.5
    with pytest.raises(ValueError, match="not both"):
        data_lib.make_sources(c.data)


def _config(**kw) -> pipeline.PipelineConfig:
    return pipeline.get_config(seq_len=512, batch_size=2, max_patches=2048, max_grids=8, read_threads=1,
                               num_epochs=1, shuffle=False, shard_index=0, shard_count=1,
                               processor={"min_pixels": 32 * 32, "max_pixels": 64 * 64}, **kw)


def test_demo_trains_through_the_pipeline_as_shipped(demo):
    it = iter(Pipeline(sources.qwen_mixture("single_images,video", registry(demo)), TOK, _config()))
    batches = list(it)
    assert it.stats["samples"] == 6 and not it.stats["skipped"]
    ids = np.concatenate([b["input_ids"].reshape(-1) for b in batches])
    assert (ids == TOK.image_pad_id).sum() > 0 and (ids == TOK.video_pad_id).sum() > 0
    grids = np.concatenate([b["grid_thw"] for b in batches])
    video_groups = sorted(int(g[0]) for g in grids if g[0] > 1)
    # 2 fps of the 3-fps clips of 9, 12 and 15 frames: 6, 8 and 10 frames, 2 per temporal group
    assert video_groups == [3, 4, 5]


def test_a_bad_demo_video_is_skipped_or_raises_naming_the_file(demo, tmp_path):
    root = tmp_path / "qwen-vl-finetune"
    shutil.copytree(demo, root)
    bad = root / "demo" / "videos" / VIDEOS[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    src = sources.qwen_sources("video", registry(root))["video"]
    it = iter(Pipeline(src, TOK, _config()))
    list(it)
    assert it.stats["samples"] == 2 and it.stats["skipped"] == {"bad_video": 1}
    with pytest.raises(DataError, match=VIDEOS[0]):
        list(Pipeline(src, TOK, _config(on_error="raise")))


@pytest.mark.slow
def test_demo_trains_the_tiny_model(demo):
    """A few train steps of the main job's tiny model on the demo, from the experiment config."""
    import jax

    from vlm_jax.configs import experiment as experiment_lib
    from vlm_jax.configs.synthetic_tiny import get_config
    from vlm_jax.parallel import make_mesh
    from vlm_jax.train import data as data_lib
    from vlm_jax.train.state import init_train_state
    from vlm_jax.train.step import CPU_FAST_COMPILE, make_train_step, put_batch

    c = get_config()
    reg = registry(demo)
    c.data.sources = {name: {"kind": "qwen_jsonl", "path": e["annotation_path"], "data_root": e["data_path"]}
                      for name, e in reg.items()}
    c.data.curriculum = ()
    c.data.pipeline.update(seq_len=512, batch_size=2, max_patches=2048, max_grids=8)
    experiment_lib.validate(c)
    pipe, _, names = data_lib.make_pipeline(c.data, seed=0)
    assert names == ("single_images", "video")
    mc, tc = experiment_lib.model_config(c), experiment_lib.train_config(c)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    state = init_train_state(mc, tc, mesh)
    step = make_train_step(mc, tc, mesh, compiler_options=CPU_FAST_COMPILE)
    it = iter(pipe)
    losses = []
    for _ in range(3):
        state, metrics = step(state, put_batch(next(it), mesh))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and int(state.step) == 3
    assert not it.stats["skipped"]

"""Sources (Qwen JSONL, messages JSONL, ArrayRecord, TFDS, mixture) and decoding of bad inputs."""

from __future__ import annotations

import base64
import json
import os
import pickle
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import sources
from vlm_jax.data.sources import SampleError


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_png(path, arr) -> str:
    Image.fromarray(arr).save(path)
    return os.fspath(path)


def write_jsonl(path, records) -> str:
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return os.fspath(path)


# --- Qwen JSONL


def test_qwen_jsonl_single_multi_image_and_video(tmp_path):
    (tmp_path / "img").mkdir()
    a = rgb(20, 30, 1)
    save_png(tmp_path / "img" / "a.png", a)
    save_png(tmp_path / "img" / "b.png", rgb(10, 10, 2))
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(4):
        save_png(frames / f"{t:03d}.png", rgb(16, 16, t))
    recs = [
        {
            "image": "img/a.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is this?"},
                {"from": "gpt", "value": "A picture."},
            ],
        },
        "",  # blank lines are ignored
        {
            "image": ["img/a.png", "img/b.png"],
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Compare <image> and <image>."},
                {"from": "gpt", "value": "Same."},
            ],
        },
        {
            "video": [f"frames/{t:03d}.png" for t in range(4)],
            "video_fps": 4,
            "conversations": [
                {"from": "human", "value": "<video>Describe."},
                {"from": "gpt", "value": "Noise."},
            ],
        },
        {
            "video": "frames",
            "conversations": [
                {"from": "user", "value": "<video>Describe."},
                {"from": "assistant", "value": "Noise."},
            ],
        },
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    src = sources.QwenJsonlSource(write_jsonl(tmp_path / "train.jsonl", recs))
    assert len(src) == 5 and src.name == "train"
    s0 = src[0]
    assert s0["messages"] == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A picture."},
    ]
    assert s0["images"] == [os.fspath(tmp_path / "img" / "a.png")] and s0["source"] == "train"
    d0 = sources.decode_sample(s0)
    np.testing.assert_array_equal(d0["images"][0], a)
    s1 = src[1]
    assert [m["role"] for m in s1["messages"]] == ["system", "user", "assistant"]
    assert s1["messages"][1]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image"},
        {"type": "text", "text": "and"},
        {"type": "image"},
        {"type": "text", "text": "."},
    ]
    assert s1["messages"][0] == {"role": "system", "content": "Be brief."}
    d2 = sources.decode_sample(src[2])
    assert d2["videos"][0]["frames"].shape == (4, 16, 16, 3) and d2["videos"][0]["fps"] == 4.0
    d3 = sources.decode_sample(src[3], default_video_fps=2.0)
    assert d3["videos"][0]["frames"].shape == (4, 16, 16, 3) and d3["videos"][0]["fps"] == 2.0
    assert src[4]["images"] == [] and src[4]["messages"][1]["content"] == "Hello"
    # data_root overrides the JSONL's directory
    other = sources.QwenJsonlSource(tmp_path / "train.jsonl", data_root="/elsewhere")
    assert other[0]["images"] == ["/elsewhere/img/a.png"]
    # picklable for worker processes, also after use
    clone = pickle.loads(pickle.dumps(src))
    assert clone[1]["id"] == src[1]["id"] == "train:1"


def test_qwen_jsonl_bad_records_name_file_and_line(tmp_path):
    recs = [
        {
            "image": ["a.png"],
            "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}],
        },
        {
            "image": ["a.png", "b.png"],
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
        },
        {"conversations": [{"from": "wizard", "value": "hi"}]},
        '{"conversations": [',
        {"no": "conversations"},
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", recs)
    src = sources.QwenJsonlSource(path)
    reasons = []
    for i in range(len(src)):
        with pytest.raises(SampleError) as e:
            src[i]
        reasons.append(e.value.reason)
        assert f"{path}:{i + 1}" in str(e.value) and f"sample {i}" in str(e.value)
    assert reasons == [
        "placeholder_mismatch",
        "placeholder_mismatch",
        "bad_format",
        "bad_format",
        "bad_format",
    ]


def test_missing_jsonl_file_fails_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        sources.QwenJsonlSource(tmp_path / "nope.jsonl")


# --- JSON array files (the official .json), packed lists, sampling


def _qwen_record(k: int, text: str = "") -> dict:
    return {"image": f"img/{k}.png", "conversations": [
        {"from": "human", "value": f"<image>\nQuestion {k}: {text}"}, {"from": "gpt", "value": f"Answer {k}"}]}


# Text that a byte scanner could mistake for structure: brackets, commas, quotes and backslashes in strings.
TRICKY = ['plain', 'a "quoted" [list], {x}', 'back\\slash \\"', 'ends with a backslash \\', '\\\\"[', 'é ✓ 中']


def test_json_array_files_read_like_jsonl(tmp_path):
    records = [_qwen_record(k, TRICKY[k % len(TRICKY)]) for k in range(13)]
    packed = [records[0], [records[1], records[2]], records[3], [], [records[4]], *records[5:]]  # pack_data style
    for indent in (None, 4):
        (tmp_path / "a.json").write_text(json.dumps(packed, indent=indent, ensure_ascii=indent is None))
        write_jsonl(tmp_path / "a.jsonl", records)
        arr = sources.QwenJsonlSource(tmp_path / "a.json", data_root="/data")
        lines = sources.QwenJsonlSource(tmp_path / "a.jsonl", data_root="/data")
        assert len(arr) == len(lines) == 13
        for i in range(13):
            a, b = arr[i], lines[i]
            assert a["messages"] == b["messages"] and a["images"] == b["images"] == [f"/data/img/{i}.png"]
            assert a["messages"][0]["content"][1]["text"] == f"Question {i}: {TRICKY[i % len(TRICKY)]}".strip()
    # line numbers of the records' opening braces name bad records
    text = ('[\n  {"conversations": []},\n  {"image": "x.png",\n'
            '   "conversations": [{"from": "wizard", "value": "hi"}]}\n]')
    (tmp_path / "b.json").write_text(text)
    src = pickle.loads(pickle.dumps(sources.QwenJsonlSource(tmp_path / "b.json")))
    with pytest.raises(SampleError, match=r"b\.json:3 \(sample 1\)"):
        src[1]
    # a .json file holding JSON lines is read as such; packed JSONL lines count each record
    write_jsonl(tmp_path / "lines.json", [records[0], [records[1], records[2]], records[3]])
    src = sources.QwenJsonlSource(tmp_path / "lines.json")
    assert len(src) == 4 and [src[i]["images"][0].endswith(f"img/{i}.png") for i in range(4)] == [True] * 4


@pytest.mark.parametrize("text, match", [
    ('{\n  "image": "a.png"\n}\n', r"not one complete JSON object"),
    ('[{"a": 1}, {"b": [1, 2', r"truncated: the file ends before the array is closed \(the last complete record "
                               r"ends at byte 9\) at byte 22"),
    ('[\n{"a": "unterminated]\n', r"truncated: the file ends inside a string"),
    ('[{"a": 1},\n 7]', r"neither a JSON object nor a list of them at byte 10 \(line 1\)"),
    ('[{"a": 1},\n]', r"an empty element at byte 10"),
    ('[{"a": 1}]\n[{"b": 2}]', r"data after the end of the array at byte 11 \(line 2\)"),
    ('', r"no JSON array found"),
])
def test_bad_json_array_files_name_the_file_and_position(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        sources.QwenJsonlSource(path)
    assert str(path) in str(e.value)


def test_sampling_rate_keeps_a_fixed_share(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [_qwen_record(k) for k in range(50)])
    half = sources.QwenJsonlSource(tmp_path / "a.jsonl", sampling_rate=0.5, seed=3)
    kept = [int(half[i]["images"][0].rsplit("/", 1)[1].split(".")[0]) for i in range(len(half))]
    assert len(half) == 25 and kept == sorted(kept) and len(set(kept)) == 25  # file order, no repeats
    again = sources.QwenJsonlSource(tmp_path / "a.jsonl", sampling_rate=0.5, seed=3)
    assert [again[i]["images"] for i in range(25)] == [half[i]["images"] for i in range(25)]
    other = sources.QwenJsonlSource(tmp_path / "a.jsonl", sampling_rate=0.5, seed=4)
    assert [other[i]["images"] for i in range(25)] != [half[i]["images"] for i in range(25)]
    with pytest.raises(ValueError, match="sampling_rate"):
        sources.QwenJsonlSource(tmp_path / "a.jsonl", sampling_rate=0)


# --- messages JSONL


def test_messages_jsonl_forms(tmp_path):
    img = rgb(8, 12, 3)
    save_png(tmp_path / "x.png", img)
    buf = open(tmp_path / "x.png", "rb").read()
    data_url = "data:image/png;base64," + base64.b64encode(buf).decode()
    recs = [
        {
            "messages": [
                {"role": "system", "content": "sys"},
                {
                    "role": "user",
                    "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "Q"}],
                },
                {"role": "assistant", "content": "A", "reasoning_content": "think"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}}, "Q"]},
                {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
            ]
        },
        {
            "images": ["x.png", "file://" + os.fspath(tmp_path / "x.png")],
            "messages": [
                {"role": "user", "content": "<image>one<image>two"},
                {"role": "assistant", "content": "A"},
            ],
        },
        {
            "images": ["x.png"],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
                {"role": "assistant", "content": "A"},
            ],
        },
        {"text": "plain text document"},
        {
            "images": ["x.png", "x.png"],
            "messages": [
                {"role": "user", "content": "<image>only one"},
                {"role": "assistant", "content": "A"},
            ],
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "image": "https://example.com/a.png"}]}
            ]
        },
    ]
    src = sources.MessagesJsonlSource(write_jsonl(tmp_path / "m.jsonl", recs), name="msgs")
    s0 = src[0]
    assert s0["messages"][2] == {"role": "assistant", "content": "A", "reasoning": "think"}
    assert s0["messages"][1]["content"] == [{"type": "image"}, {"type": "text", "text": "Q"}]
    np.testing.assert_array_equal(sources.decode_sample(s0)["images"][0], img)
    s1 = src[1]
    assert isinstance(s1["images"][0], bytes)
    np.testing.assert_array_equal(sources.decode_sample(s1)["images"][0], img)
    assert s1["messages"][0]["content"][1] == {"type": "text", "text": "Q"}
    s2 = sources.decode_sample(src[2])
    assert len(s2["images"]) == 2 and [i["type"] for i in s2["messages"][0]["content"]] == [
        "image",
        "text",
        "image",
        "text",
    ]
    assert len(src[3]["images"]) == 1
    assert src[4]["text"] == "plain text document" and "messages" not in src[4]
    with pytest.raises(SampleError, match="placeholder_mismatch"):
        src[5]
    with pytest.raises(SampleError, match="remote URL"):
        src[6]


# --- decoding


def test_decode_bad_images(tmp_path):
    good = save_png(tmp_path / "good.png", rgb(32, 32))
    data = open(good, "rb").read()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    cases = {
        os.fspath(tmp_path / "trunc.png"): "bad_image",
        os.fspath(tmp_path / "junk.jpg"): "bad_image",
        os.fspath(tmp_path / "missing.png"): "missing_file",
        b"": "empty_image",
        b"\x89PNG\r\n\x1a\n": "bad_image",
    }
    for ref, reason in cases.items():
        with pytest.raises(SampleError) as e:
            sources.decode_image(ref, "sample 7 image 0")
        assert e.value.reason == reason, ref
        assert "sample 7 image 0" in str(e.value)
    with pytest.raises(SampleError, match="missing.png"):
        sources.decode_image(os.fspath(tmp_path / "missing.png"))
    with pytest.raises(SampleError) as e:
        sources.decode_image(np.zeros((0, 5, 3), np.uint8))
    assert e.value.reason == "empty_image"


def test_decode_modes_and_alpha(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = sources.decode_image(os.fspath(tmp_path / "g.png"))
    assert out.shape == (8, 8, 3) and (out[..., 0] == gray).all()
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent -> white background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert (sources.decode_image(os.fspath(tmp_path / "a.png")) == 255).all()


def test_decode_video_errors(tmp_path):
    with pytest.raises(SampleError) as e:
        sources.decode_video({"frames": [rgb(4, 4), rgb(5, 4)], "fps": 1})
    assert e.value.reason == "bad_video"
    with pytest.raises(SampleError) as e:
        sources.decode_video(os.fspath(tmp_path / "clip.mp4"))
    assert e.value.reason == "missing_file"
    np.save(tmp_path / "clip.npy", np.zeros((3, 4, 4, 3), np.uint8))
    v = sources.decode_video(os.fspath(tmp_path / "clip.npy"), default_fps=1.5)
    assert v["frames"].shape == (3, 4, 4, 3) and v["fps"] == 1.5


# --- ArrayRecord


def test_array_record_round_trip(tmp_path):
    img_file = save_png(tmp_path / "f.png", rgb(9, 7, 5))
    samples = [
        {
            "id": "s0",
            "task": "caption",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q"}],
                },
                {"role": "assistant", "content": "A", "reasoning": "r"},
            ],
            "images": [rgb(10, 20, 1), img_file],
            "videos": [],
            "meta": {"bbox": [1, 2, 3, 4]},
        },
        {
            "id": "s1",
            "messages": [
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Q"}]},
                {"role": "assistant", "content": "A"},
            ],
            "images": [],
            "videos": [{"frames": rgb(6, 6, 2).reshape(2, 3, 6, 3), "fps": 3.0}],
        },
        {"id": "s2", "task": "text", "text": "just text", "extra": np.arange(5, dtype=np.int64)},
    ]
    path = tmp_path / "data.array_record"
    assert sources.write_array_record(samples, path) == 3
    src = sources.ArrayRecordSource(path, name="ar")
    assert len(src) == 3
    d0 = sources.decode_sample(src[0])
    np.testing.assert_array_equal(d0["images"][0], samples[0]["images"][0])  # PNG: lossless
    np.testing.assert_array_equal(d0["images"][1], rgb(9, 7, 5))
    assert d0["messages"] == samples[0]["messages"] and d0["meta"] == {"bbox": [1, 2, 3, 4]}
    assert d0["source"] == "ar" and d0["task"] == "caption"
    d1 = sources.decode_sample(src[1])
    np.testing.assert_array_equal(d1["videos"][0]["frames"], samples[1]["videos"][0]["frames"])
    assert d1["videos"][0]["fps"] == 3.0
    s2 = src[2]
    assert s2["text"] == "just text" and s2["extra"].tolist() == [0, 1, 2, 3, 4]
    # The encoding is plain: magic, header length, JSON header, payload.
    rec = sources.encode_record(samples[2])
    assert rec[:4] == sources.RECORD_MAGIC
    # Plain JSON records with base64 bytes are accepted too.
    png = open(img_file, "rb").read()
    plain = json.dumps({"messages": [], "images": [{"$b64": base64.b64encode(png).decode()}]}).encode()
    np.testing.assert_array_equal(
        sources.decode_image(sources.decode_record(plain)["images"][0]), rgb(9, 7, 5)
    )
    with pytest.raises(SampleError, match="bad_format"):
        sources.decode_record(b"garbage")
    assert pickle.loads(pickle.dumps(src))[2]["text"] == "just text"


# --- TFDS


def test_tfds_source(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyVlm(tfds.core.GeneratorBasedBuilder):
        """A tiny VL dataset; features that need no TensorFlow to encode (TFDS without TF)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(
                            shape=(None, None, 3), dtype=np.uint8, encoding="bytes"
                        ),
                        "messages": tfds.features.Text(),
                        "task": tfds.features.Text(),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(5)}

        def _generate_examples(self, n):
            for i in range(n):
                msgs = [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"q{i}"}]},
                    {"role": "assistant", "content": f"a{i}"},
                ]
                yield i, {"image": rgb(8 + i, 10, i), "messages": json.dumps(msgs), "task": "vqa"}

    # A one-part module name keeps TFDS from looking for checksum files next to the test module
    # (that lookup needs the `importlib_resources` backport).
    TinyVlm.__module__ = "tiny_vlm_builder"
    TinyVlm(data_dir=os.fspath(tmp_path), file_format="array_record").download_and_prepare()
    src = sources.TFDSSource("tiny_vlm", "train", data_dir=tmp_path)
    assert len(src) == 5
    got = {}
    for i in range(5):
        s = sources.decode_sample(src[i])
        assert s["task"] == "vqa" and s["source"] == "tiny_vlm/train"
        q = s["messages"][0]["content"][1]["text"]
        got[q] = s["images"][0]
    for i in range(5):
        np.testing.assert_array_equal(got[f"q{i}"], rgb(8 + i, 10, i))
    custom = sources.TFDSSource(
        "tiny_vlm", "train[:2]", data_dir=tmp_path, convert=lambda ex: {"text": ex["messages"].decode()}
    )
    assert len(custom) == 2
    for ex in (custom[0], custom[1]):  # the raw feature, converted by `convert`: example i's messages
        msgs = json.loads(ex["text"])
        i = int(msgs[0]["content"][1]["text"][1:])
        assert msgs[1] == {"role": "assistant", "content": f"a{i}"}


# --- mixture


class ListSource:
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"id": f"{self.name}{i}", "text": "t"}


def test_mixture_proportions_coverage_and_determinism():
    a, b, c = ListSource("a", 50), ListSource("b", 7), ListSource("text", 1000)
    mix = sources.MixtureSource(
        {"a": a, "b": b, "text": c}, {"a": 0.5, "b": 0.2, "text": 0.3}, length=3000, seed=1
    )
    ids = [mix[i]["id"] for i in range(3000)]
    counts = Counter(mix.locate(i)[0] for i in range(3000))
    assert counts == {0: 1500, 1: 600, 2: 900}
    window = Counter(mix.locate(i)[0] for i in range(100))  # evenly spread inside a block
    assert abs(window[0] - 50) <= 1 and abs(window[1] - 20) <= 1 and abs(window[2] - 30) <= 1
    # Every cycle through a small source visits each of its items once.
    b_items = [mix.locate(i)[1] for i in range(3000) if mix.locate(i)[0] == 1]
    for k in range(0, 84, 7):
        assert sorted(b_items[k : k + 7]) == list(range(7))
    again = sources.MixtureSource(
        {"a": a, "b": b, "text": c}, {"a": 0.5, "b": 0.2, "text": 0.3}, length=3000, seed=1
    )
    assert ids == [again[i]["id"] for i in range(3000)]
    other = sources.MixtureSource(
        {"a": a, "b": b, "text": c}, {"a": 0.5, "b": 0.2, "text": 0.3}, length=3000, seed=2
    )
    assert ids != [other[i]["id"] for i in range(3000)]
    k, j = mix.locate(0)
    s = mix[0]
    assert s["id"] == f"{mix.names[k]}{j}" and s["source"] == mix.names[k] and s["task"] == s["source"]
    assert len(sources.MixtureSource([a, b])) == 57
    with pytest.raises(ValueError, match="unknown sources"):
        sources.MixtureSource({"a": a}, {"z": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        sources.MixtureSource([a, b], [1.0, -1.0])

"""Tests of the synthetic world: determinism, held-out splits, pixel-exact ground truth, JSONL, tokenizer."""

from __future__ import annotations

import json
import pickle
import random
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from vlm_jax.data.sources import decode_sample, qwen_record_to_sample
from vlm_jax.data.synthetic import (
    SPECIAL_IDS,
    SPECIAL_TOKENS,
    TASKS,
    TOKENIZER_PATH,
    SyntheticSource,
    SyntheticWorld,
    default_config,
    load_tokenizer,
    read_jsonl,
    score,
    write_jsonl,
)
from vlm_jax.data.synthetic import render as R
from vlm_jax.data.synthetic import tasks as T
from vlm_jax.data.synthetic.vocab import DEFAULT_VOCAB_SIZE
from vlm_jax.data.synthetic.world import plan_key

ROOT = Path(__file__).resolve().parents[1]
N = 12  # samples per task in the pixel checks (kept small: 2 shared CPU cores)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld()


# ------------------------------------------------------------------------------------ pixel helpers


def background(img: np.ndarray) -> np.ndarray:
    """The most frequent colour."""
    flat = img.reshape(-1, 3)
    vals, counts = np.unique(flat, axis=0, return_counts=True)
    return vals[counts.argmax()].astype(int)


def color_mask(img: np.ndarray, rgb, tol: int = 2) -> np.ndarray:
    return (np.abs(img.astype(int) - np.asarray(rgb, int)) <= tol).all(-1)


def components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """4-connected components of a boolean mask, as pixel boxes (x1, y1, x2 excl, y2 excl)."""
    H, W = mask.shape
    seen = np.zeros_like(mask)
    boxes = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        q = deque([(y0, x0)])
        seen[y0, x0] = True
        xs, ys = [], []
        while q:
            y, x = q.popleft()
            xs.append(x)
            ys.append(y)
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
        boxes.append((int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1))
    return boxes


def foreground(img: np.ndarray) -> np.ndarray:
    return (np.abs(img.astype(int) - background(img)) > 3).any(-1)


# ----------------------------------------------------------------------------------- basic contract


def test_every_task_produces_valid_self_consistent_samples(world):
    for task in TASKS:
        for i in range(N):
            s = world.sample(i, "train", task)
            assert s["task"] == task and isinstance(s["id"], str) and s["source"] == "synthetic"
            user, reply = s["messages"]
            assert user["role"] == "user" and reply["role"] == "assistant"
            assert isinstance(reply["content"], str) and reply["content"]
            kinds = [c["type"] for c in user["content"]]
            assert kinds[-1] == "text" and user["content"][-1]["text"]
            assert kinds.count("image") == len(s["images"]) and kinds.count("video") == len(s["videos"])
            for img in s["images"]:
                assert img.dtype == np.uint8 and img.shape == (world.height, world.width, 3)
            for v in s["videos"]:
                assert v["frames"].dtype == np.uint8 and v["frames"].shape == (world.video_frames, 64, 64, 3)
                assert v["fps"] == world.video_fps
            json.dumps(s["answer"]), json.dumps(s["meta"])  # JSON-able
            if task == "thinking":
                assert reply["reasoning"] and s["meta"]["base_task"] in T.THINKING_BASES
            else:
                assert "reasoning" not in reply
            # The reference reply scores 1 against the ground truth (answers and scorer agree).
            assert score(s["answer"], reply["content"]) == 1.0, (task, reply["content"], s["answer"])
            if task == "thinking":
                full = f"<think>\n{reply['reasoning']}\n</think>\n\n{reply['content']}"
                assert score(s["answer"], full) == 1.0


def test_determinism_and_random_access(world):
    other = pickle.loads(pickle.dumps(SyntheticWorld()))
    for i in (0, 7, 123456789, 2**40):
        a, b = world.sample(i), other.sample(i)
        assert a["id"] == b["id"] and a["messages"] == b["messages"] and a["answer"] == b["answer"]
        assert a["meta"] == b["meta"]
        for x, y in zip(a["images"], b["images"], strict=True):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(a["videos"], b["videos"], strict=True):
            np.testing.assert_array_equal(x["frames"], y["frames"])
    # Different seeds -> different worlds.
    s1 = SyntheticWorld(seed=1)
    assert [s1.sample(i)["messages"] for i in range(5)] != [world.sample(i)["messages"] for i in range(5)]


def test_mixture_follows_weights():
    w = SyntheticWorld(tasks={"count": 3.0, "ocr": 1.0})
    tasks = [w.sample(i)["task"] for i in range(200)]
    assert set(tasks) == {"count", "ocr"}
    assert 0.6 < tasks.count("count") / 200 < 0.9


def test_train_and_heldout_splits_are_disjoint(world):
    assert world.split_size("eval") == 1000 and world.split_size("train") is None
    with pytest.raises(IndexError):
        world.sample(1000, "eval")
    with pytest.raises(IndexError):
        world.sample(-1)
    with pytest.raises(ValueError):
        world.sample(0, "validation")
    fam = lambda s: T.PLAN_FAMILY.get(s["meta"]["base_task"], s["meta"]["base_task"])
    train = [world.sample(i) for i in range(300)]
    heldout = [world.sample(i, "eval") for i in range(60)] + [
        world.sample(i, "test", "count") for i in range(20)
    ]
    assert not any(world.is_heldout_plan(fam(s), s["meta"]["plan"]) for s in train)
    assert all(world.is_heldout_plan(fam(s), s["meta"]["plan"]) for s in heldout)
    train_keys = {plan_key(fam(s), s["meta"]["plan"]) for s in train}
    assert not train_keys & {plan_key(fam(s), s["meta"]["plan"]) for s in heldout}
    digest = lambda s: b"".join(x.tobytes() for x in s["images"]) + json.dumps(s["messages"]).encode()
    assert not {digest(s) for s in train} & {digest(s) for s in heldout}
    # Fixed: the eval split is the same on every access.
    assert world.sample(3, "eval")["messages"] == heldout[3]["messages"]


# ------------------------------------------------------------------------------- pixels vs answers


def test_boxes_enclose_the_drawn_object(world):
    for task in ("ground_box", "ground_point"):
        for i in range(N):
            s = world.sample(i, "train", task)
            img, a, m = s["images"][0], s["answer"], s["meta"]
            comps = components(color_mask(img, m["rgb"]))
            assert tuple(m["pixel_box"]) in comps  # the box is exactly a blob of the target colour
            assert T.norm_box(m["pixel_box"], world.width, world.height) == a["bbox_2d"]
            x1, y1, x2, y2 = (round(v * world.width / 1000) for v in a["bbox_2d"])
            assert (x1, y1, x2, y2) == tuple(m["pixel_box"])  # [0, 1000] -> pixels recovers it
            if task == "ground_point":
                px = int(a["point_2d"][0] * world.width / 1000)
                py = int(a["point_2d"][1] * world.height / 1000)
                assert color_mask(img, m["rgb"])[py, px], "the point is on the object"
            assert json.loads(s["messages"][1]["content"])[0]["label"] == a["label"]


def test_counts_match_connected_components(world):
    for task in ("count", "count_boxes", "count_points"):
        for i in range(N):
            s = world.sample(i, "train", task)
            img, plan = s["images"][0], s["meta"]["plan"]
            comps = components(foreground(img))
            assert len(comps) == len(plan["objects"])  # every object is one blob, nothing else
            boxes = [tuple(b) for b in s["meta"]["boxes"]]
            assert sorted(comps) == sorted(boxes)
            cat = plan["category"]
            n_match = sum(T.matches(o, cat) for o in plan["objects"])
            assert s["answer"]["count"] == n_match == plan["count"]
            if cat["color"] and not cat["shape"]:  # colour categories: count by colour mask alone
                rgb = R.COLORS[cat["color"]]
                blobs = components(color_mask(img, rgb, tol=world.color_jitter))
                assert len(blobs) == n_match
            if task == "count_boxes":
                got = json.loads(s["messages"][1]["content"].split("\n")[0])
                want = [T.norm_box(boxes[t], world.width, world.height) for t in s["meta"]["targets"]]
                assert [g["bbox_2d"] for g in got] == want


def test_ocr_text_is_rendered(world):
    fonts = set()
    for i in range(N):
        s = world.sample(i, "train", "ocr")
        img, m, plan = s["images"][0], s["meta"], s["meta"]["plan"]
        assert s["answer"]["text"] == s["messages"][1]["content"]
        assert s["answer"]["text"].lower() == plan["word"].lower()
        x1, y1, x2, y2 = m["text_box"]
        fg = foreground(img)
        assert fg.sum() > 5 and fg[y1:y2, x1:x2].sum() == fg.sum()
        assert 0 <= x1 < x2 <= world.width and 0 <= y1 < y2 <= world.height
        fonts.add(m["font"])
    assert len(fonts) >= 2  # several fonts in use


def test_chart_values_match_bar_heights(world):
    for task in ("chart_value", "chart_compare"):
        for i in range(N):
            s = world.sample(i, "train", task)
            img, plan = s["images"][0], s["meta"]["plan"]
            lay = R.chart_layout(world.height, world.width, len(plan["values"]), world.chart_max_value)
            for (bx0, bx1), v, c in zip(lay["bars"], plan["values"], plan["colors"], strict=True):
                col = img[:, (bx0 + bx1) // 2]
                height = int(color_mask(col[None], R.COLORS[c], tol=world.color_jitter)[0].sum())
                assert height == v * lay["unit"]
            if task == "chart_value":
                assert s["answer"]["value"] == plan["values"][plan["bar"]]


def test_geometry_point_is_on_both_lines(world):
    for i in range(N):
        s = world.sample(i, "train", "geometry")
        img, plan = s["images"][0], s["meta"]["plan"]
        x = s["answer"]["point_2d"][0] * world.width / 1000
        y = s["answer"]["point_2d"][1] * world.height / 1000
        xi, yi = int(x), int(y)
        win = img[max(0, yi - 3) : yi + 4, max(0, xi - 3) : xi + 4]
        for c in plan["colors"][:2]:
            assert color_mask(win, R.COLORS[c], tol=world.color_jitter).any(), (i, c)


def test_spatial_relations_hold_in_pixels(world):
    for i in range(N):
        s = world.sample(i, "train", "spatial")
        plan, boxes = s["meta"]["plan"], s["meta"]["boxes"]
        a, t = boxes[plan["anchor"]], boxes[plan["target"]]
        holds = {
            "left of": t[2] <= a[0],
            "right of": t[0] >= a[2],
            "above": t[3] <= a[1],
            "below": t[1] >= a[3],
        }[plan["rel"]]
        if plan["kind"] == "what":
            assert holds and s["answer"]["text"] == T.label(plan["objects"][plan["target"]])
        else:
            assert s["answer"]["text"] == ("yes" if holds else "no")


def test_multi_image_differences(world):
    for i in range(N):
        s = world.sample(i, "train", "multi_image")
        plan = s["meta"]["plan"]
        n1, n2 = (len(components(foreground(img))) for img in s["images"])
        if plan["kind"] == "difference":
            assert n2 - n1 == {"removed": -1, "added": 1, "recolored": 0}[plan["change"]]
        else:
            assert (n1, n2) == (len(plan["scenes"][0]["objects"]), len(plan["scenes"][1]["objects"]))


def test_video_timestamp_matches_appearance_frame(world):
    for i in range(N):
        s = world.sample(i, "train", "video_temporal")
        frames, plan = s["videos"][0]["frames"], s["meta"]["plan"]
        o = plan["objects"][plan["target"]]
        box = s["meta"]["boxes"][plan["target"]]
        k = s["answer"]["frame"]
        assert s["answer"]["time"] == pytest.approx(k / s["videos"][0]["fps"])
        assert k % 2 == 0  # aligned to 2-frame temporal patch groups
        rgb = R.COLORS[o["color"]]
        visible = [
            color_mask(f[box[1] : box[3], box[0] : box[2]], rgb, world.color_jitter).any() for f in frames
        ]
        first_change = next(t for t in range(1, len(frames)) if visible[t] != visible[t - 1])
        assert first_change == k
        assert visible[k] == (o["event"] == "appear")


def test_video_count_matches_tracks(world):
    for i in range(N):
        s = world.sample(i, "train", "video_count")
        frames, plan = s["videos"][0]["frames"], s["meta"]["plan"]
        seen = 0
        for o, box in zip(plan["objects"], s["meta"]["boxes"], strict=True):
            shown = [
                color_mask(
                    f[box[1] : box[3], box[0] : box[2]], R.COLORS[o["color"]], world.color_jitter
                ).any()
                for f in frames
            ]
            assert sum(shown) == o["end"] - o["start"] >= 1
            seen += T.matches(o, plan["category"])
        assert s["answer"]["count"] == seen


# --------------------------------------------------------------------------------- sources, config


def test_source_protocol_and_grain(world):
    src = SyntheticSource(world, "eval")
    assert len(src) == 1000
    assert src[-1]["id"] == world.sample(999, "eval")["id"]
    with pytest.raises(IndexError):
        src[1000]
    with pytest.raises(ValueError):
        SyntheticSource(world, "train")
    tr = SyntheticSource(world, "train", length=10, task="count")
    assert all(tr[i]["task"] == "count" for i in range(3))
    tr2 = pickle.loads(pickle.dumps(tr))
    assert tr2[4]["messages"] == tr[4]["messages"]
    grain = pytest.importorskip("grain")
    ds = grain.MapDataset.source(tr).shuffle(seed=0)
    assert len(ds) == 10 and ds[0]["task"] == "count"


def test_config_variants():
    w = SyntheticWorld(
        image_size=(96, 128), max_count=8, max_distractors=4, shapes=("circle", "star", "cross")
    )
    assert default_config().image_size == (64, 64)
    for i in range(6):
        s = w.sample(i, "train", "count")
        assert s["images"][0].shape == (96, 128, 3)
        assert len(components(foreground(s["images"][0]))) == len(s["meta"]["plan"]["objects"])
    with pytest.raises(ValueError, match=r"unknown config key\(s\) world\.no_such_key;"):
        SyntheticWorld(no_such_key=1)
    with pytest.raises(ValueError):
        SyntheticWorld(tasks={"nonsense": 1.0})
    # Missing fonts fall back to Pillow's default font.
    s = SyntheticWorld(fonts=("NoSuchFont.ttf",)).sample(0, "train", "ocr")
    assert s["meta"]["font"] in ("default", "bitmap")


def test_question_first_moves_only_the_question():
    def order(sample):
        return [part["type"] for part in sample["messages"][0]["content"]]

    after, before = SyntheticWorld(), SyntheticWorld(question_first=1.0)
    mixed = SyntheticWorld(question_first=0.5)
    firsts = []
    for i in range(40):
        a, b, m = after.sample(i, "train"), before.sample(i, "train"), mixed.sample(i, "train")
        media = order(a)[:-1]
        assert order(a) == [*media, "text"] and order(b) == ["text", *media]
        # The same plan, pixels and answer whatever the order.
        assert a["meta"]["plan"] == b["meta"]["plan"] == m["meta"]["plan"] and a["answer"] == m["answer"]
        assert all(np.array_equal(x, y) for x, y in zip(a["images"], m["images"], strict=True))
        firsts.append(order(m)[0] == "text")
        assert order(mixed.sample(i, "train")) == order(m)  # deterministic per sample
    assert 10 < sum(firsts) < 30
    with pytest.raises(ValueError, match="question_first is a probability"):
        SyntheticWorld(question_first=1.5)


def test_shared_color_scenes_differ_by_shape_alone():
    kw = dict(shapes=("circle", "square", "triangle"), colors=("red", "green", "blue"), max_objects=2)
    plain, shared = SyntheticWorld(**kw), SyntheticWorld(**kw, shared_color=1.0)
    half = SyntheticWorld(**kw, shared_color=0.5)
    kinds = {"plain": [], "half": []}
    for i in range(60):
        objs = shared.sample(i, "train", "ground_point")["meta"]["plan"]["objects"]
        assert len({o["shape"] for o in objs}) == len(objs)  # still one object per (shape, colour)
        assert len(objs) == 1 or len({o["color"] for o in objs}) == 1
        for name, world in (("plain", plain), ("half", half)):
            objs = world.sample(i, "train", "ground_point")["meta"]["plan"]["objects"]
            if len(objs) == 2:
                kinds[name].append(objs[0]["color"] == objs[1]["color"])
    # Distinct (shape, colour) pairs share a colour by chance (2 of the 8 other pairs); 0.5 adds half the rest.
    assert sum(kinds["plain"]) < 0.4 * len(kinds["plain"]) < sum(kinds["half"])
    # Counting scenes are untouched, and so are single-object grounding scenes (no extra random draw).
    singles = 0
    for i in range(30):
        a, b = shared.sample(i, "train", "count"), plain.sample(i, "train", "count")
        assert a["meta"]["plan"] == b["meta"]["plan"] and np.array_equal(a["images"][0], b["images"][0])
        a, b = shared.sample(i, "train", "ground_box"), plain.sample(i, "train", "ground_box")
        if len(b["meta"]["plan"]["objects"]) == 1 and a["meta"]["attempt"] == b["meta"]["attempt"] == 0:
            singles += 1
            assert a["meta"]["plan"] == b["meta"]["plan"] and a["answer"] == b["answer"]
    assert singles >= 5
    with pytest.raises(ValueError, match="shared_color is a probability"):
        SyntheticWorld(shared_color=-0.1)


def test_bitmap_font_fallback(monkeypatch):
    monkeypatch.setattr(R, "HAVE_FREETYPE", False)
    R.get_font.cache_clear()
    try:
        m, name = R.text_mask("cat", "DejaVuSans.ttf", 22, 5.0)
        assert name == "bitmap" and m.getbbox() is not None and m.height >= 14
    finally:
        R.get_font.cache_clear()


def test_scoring_rejects_wrong_answers():
    assert score({"count": 3}, "There are 4 red circles.") == 0.0
    assert score({"count": 3}, "<think>I see 4? no.</think>\n\nthree") == 1.0
    box = {"bbox_2d": [100, 100, 300, 300]}
    assert score(box, '[{"bbox_2d": [110, 90, 310, 290], "label": "x"}]') == 1.0
    assert score(box, '```json\n[{"bbox_2d": [300, 300, 500, 500]}]\n```') == 0.0
    assert score(box, "no idea") == 0.0
    pt = {"point_2d": [200, 200], "bbox_2d": [100, 100, 300, 300]}
    assert score(pt, '[{"point_2d": [150, 290]}]') == 1.0 and score(pt, '[{"point_2d": [350, 290]}]') == 0.0
    # Time: the answer's own tolerance (the world's: half a frame), else metrics.TIME_TOLERANCE_S (0.5 s).
    assert score({"time": 1.0, "tolerance": 0.25}, "At 1.5 seconds.") == 0.0
    assert score({"time": 1.0, "tolerance": 0.25}, "At 1.25 seconds.") == 1.0
    assert score({"time": 1.0}, "At 1.5 seconds.") == 1.0 and score({"time": 1.0}, "At 1.6 seconds.") == 0.0
    assert score({"text": "orange"}, "The orange bar.") == 1.0
    assert score({"text": "orange"}, "purple") == 0.0
    assert score({"text": "orange"}, "It is not purple, it is orange.") == 0.0  # too long a reply to contain it
    with pytest.raises(ValueError, match="no scoring rule for answer keys"):
        score({"colour": "red"}, "red")


def test_video_answers_name_the_frame(world):
    """The world's temporal answers accept the event's frame only: its neighbours score 0."""
    for i in range(N):
        a = world.sample(i, "eval", "video_temporal")["answer"]
        step = 1.0 / world.video_fps
        assert a["tolerance"] == pytest.approx(step / 2)
        assert score(a, f"{a['time']:.2f}") == 1.0
        assert score(a, f"{a['time'] - step:.2f}") == score(a, f"{a['time'] + step:.2f}") == 0.0


# ------------------------------------------------------------------------------------------- JSONL


def test_jsonl_round_trip(world, tmp_path):
    path = write_jsonl(world, "train", 40, tmp_path)
    n = write_jsonl(world, "train", 2, tmp_path, task="video_count", filename="video.jsonl")
    t = write_jsonl(world, "eval", 2, tmp_path, task="thinking", filename="think.jsonl")
    for p, split, task, start in (
        (path, "train", None, 0),
        (n, "train", "video_count", 0),
        (t, "eval", "thinking", 0),
    ):
        back = list(read_jsonl(p))
        orig = list(world.samples(split, len(back), start=start, task=task))
        assert len(back) == len(orig) > 0
        for a, b in zip(orig, back, strict=True):
            assert (a["id"], a["task"], a["messages"], a["answer"]) == (
                b["id"],
                b["task"],
                b["messages"],
                b["answer"],
            )
            assert a["meta"] == b["meta"]
            for x, y in zip(a["images"], b["images"], strict=True):
                np.testing.assert_array_equal(x, y)
            for x, y in zip(a["videos"], b["videos"], strict=True):
                np.testing.assert_array_equal(x["frames"], y["frames"])
                assert x["fps"] == y["fps"]
    rec = json.loads(n.read_text().splitlines()[0])
    assert rec["conversations"][0]["value"].startswith("<video>\n") and rec["video_fps"] == world.video_fps
    assert all((tmp_path / f).exists() for f in rec["video"])
    rec = json.loads(t.read_text().splitlines()[0])
    assert rec["conversations"][1]["value"].startswith("<think>\n")
    # The pipeline's reader of the official Qwen-VL format gets the same visuals and replies back.
    records = [(line, "train", None, i) for i, line in enumerate(path.read_text().splitlines()[:10])]
    records += [(line, "train", "video_count", i) for i, line in enumerate(n.read_text().splitlines())]
    for line, split, task, i in records:
        orig = world.sample(i, split, task)
        r = decode_sample(qwen_record_to_sample(json.loads(line), data_root=str(tmp_path)))
        assert [m["role"] for m in r["messages"]] == [m["role"] for m in orig["messages"]]
        assert r["messages"][-1]["content"].endswith(orig["messages"][-1]["content"])  # after any <think>
        for x, y in zip(r["images"], orig["images"], strict=True):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(r["videos"], orig["videos"], strict=True):
            np.testing.assert_array_equal(x["frames"], y["frames"])
            assert x["fps"] == y["fps"]


# ---------------------------------------------------------------------------------------- throughput


def test_throughput(world):
    n = 300
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        world.sample(10_000 + i)
    wall, cpu = n / (time.perf_counter() - t0), n / max(1e-9, time.process_time() - c0)
    print(
        f"\nsynthetic world (default config, mixture, one process): {cpu:.0f} samples/s of CPU time, "
        f"{wall:.0f} samples/s wall clock"
    )
    assert cpu > 50  # CPU time: robust to other processes sharing the cores


# ----------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_special_ids_and_round_trip(world):
    tok = load_tokenizer()
    assert TOKENIZER_PATH.read_bytes() == (ROOT / "data" / "synthetic_tokenizer.json").read_bytes()
    for t, i in SPECIAL_IDS.items():
        assert tok.token_to_id(t) == i
    assert list(SPECIAL_IDS) == list(SPECIAL_TOKENS) and len(SPECIAL_TOKENS) == 18
    assert tok.get_vocab_size() == DEFAULT_VOCAB_SIZE == 1024
    texts = list(world.text_corpus(100))
    texts.append(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<think>\n\n</think>\n\n"
    )
    rnd = random.Random(0)
    for _ in range(50):  # arbitrary unicode, controls and astral-plane characters included
        texts.append(
            "".join(
                chr(
                    rnd.choice(
                        [rnd.randrange(0, 0x80), rnd.randrange(0x80, 0x3000), rnd.randrange(0x1F300, 0x1FAFF)]
                    )
                )
                for _ in range(rnd.randrange(1, 40))
            )
        )
    for s in texts:
        assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s
    ids = tok.encode('[{"bbox_2d": [120, 45, 987, 1000]}] 2025').ids
    digits = [tok.id_to_token(i) for i in ids if tok.id_to_token(i).strip("Ġ").isdigit()]
    assert all(len(d.strip("Ġ")) == 1 for d in digits) and len(digits) == 17
    # <think> survives skip_special_tokens (as in Qwen3); <|im_end|> does not.
    assert tok.decode(tok.encode("<think>\nx\n</think>\n\n3<|im_end|>").ids) == "<think>\nx\n</think>\n\n3"


def test_tokenizer_build_is_reproducible():
    from vlm_jax.data.synthetic.vocab import build_tokenizer_json

    assert build_tokenizer_json() == (ROOT / "data" / "synthetic_tokenizer.json").read_text(
        encoding="utf-8"
    ), "data/synthetic_tokenizer.json is stale: run python data/build_tokenizer.py"

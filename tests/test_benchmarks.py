"""Public benchmarks: the readers on a fixture per layout (tests/fixtures/benchmarks), the runner and the
`--benchmark` CLI with known replies (generate replaced) and with a tiny random model, a Hugging Face
checkpoint evaluated like our own, and clear errors for bad data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from vlm_jax.configs.model import get_config, validate
from vlm_jax.data.synthetic import load_tokenizer as synthetic_tokenizer
from vlm_jax.eval import benchmark_metrics as bm
from vlm_jax.eval import benchmarks, metrics
from vlm_jax.eval import command as eval_cli
from vlm_jax.eval.benchmarks import choice, run
from vlm_jax.inference import generate as generate_lib
from vlm_jax.inference.prompt import as_tokenizer
from vlm_jax.model.vlm import param_shapes
from vlm_jax.params.store import save_params

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
PROC = {"min_pixels": 64 * 64, "max_pixels": 64 * 64}
# benchmark -> its fixture folder (refcoco+ reads as refcoco does)
DATA = {name: FIXTURES / ("refcoco" if name == "refcoco+" else name) for name in benchmarks.BENCHMARKS}


def _config():
    """The tiny config cut to 2 text layers and a 2-block vision tower: generation compiles in seconds."""
    c = get_config("tiny")
    c.vision.update(depth=2, deepstack_layers=(0,), full_attention_layers=(0, 1))
    c.text.update(num_layers=2)
    validate(c)
    return c


def _random_params(c, seed: int = 0):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (np.ones(s.shape, s.dtype) if "scale" in jax.tree_util.keystr(path)
                         else (0.05 * rng.standard_normal(s.shape)).astype(s.dtype)), nn.unbox(param_shapes(c)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_ckpt") / "final"
    save_params(_random_params(_config()), _config(), out)
    (out / "processor_config.json").write_text(json.dumps(PROC))
    return out


# ----------------------------------------------------------------------------- readers

# benchmark -> (items, the first item's prompt, the first item's answer)
EXPECTED = {
    "refcoco": (4, 'Locate every object that matches the description "left red block" in the image. Report bbox '
                   "coordinates in JSON format.",
                {"bbox_2d": [100.0, 100.0, 500.0, 500.0], "bbox_pixels": [4.0, 3.0, 20.0, 15.0],
                 "image_size": [40, 30]}),
    "refcocog": (3, 'Locate every object that matches the description "a man in a hat" in the image. Report bbox '
                    "coordinates in JSON format.",
                 {"bbox_2d": [62.5, 62.5, 625.0, 562.5], "bbox_pixels": [2.0, 2.0, 20.0, 18.0],
                  "image_size": [32, 32]}),
    "countbench": (3, "Look at the image carefully and count the objects. Answer with just a number, without any "
                      "additional text. How many birds are there in the image?", {"count": 2}),
    "pixmo_count": (3, "How many dogs are there?\nAnswer with a single number.", {"count": 3}),
    "docvqa": (3, "What is the date?\nPlease answer concisely with short words or phrases when possible.",
               {"answers": ["March 3, 1998", "3/3/98"]}),
    "infovqa": (2, "Which country ranks first?\nPlease answer concisely with short words or phrases when possible.",
                {"answers": ["Norway"]}),
    "chartqa": (3, "What is the highest value?\nPlease answer concisely with short words or phrases when possible.",
                {"answers": ["47.5"]}),
    "ocrbench": (3, "what is written in the image?\nPlease answer concisely with short words or phrases when possible.",
                 {"answers": ["HELLO"], "dataset": "IIIT5K"}),
    "mmmu": (3, "Question: <image 1> Which style is this?\nOptions:\nA. Baroque\nB. Cubism\nC. Impressionism\n"
                "Please select the correct answer from the options above.",
             {"options": {"A": "Baroque", "B": "Cubism", "C": "Impressionism"}, "answer": "B"}),
    "mmbench": (7, "Question: What colour is the square?\nOptions:\nA. red\nB. green\nC. blue\nD. white\n"
                   "Answer with the option letter only.",
                {"options": {"A": "red", "B": "green", "C": "blue", "D": "white"}, "answer": "C"}),
    "mmstar": (2, "Question: Which shape is shown?\nOptions:\nA. a circle\nB. a square\nC. a triangle\nD. a star\n"
                  "Answer with the option letter only.",
               {"options": {"A": "a circle", "B": "a square", "C": "a triangle", "D": "a star"}, "answer": "B"}),
    "videomme": (2, "Select the best answer to the following multiple-choice question based on the video. Respond "
                    "with only the letter (A, B, C, or D) of the correct option.\nQuestion: How many people appear?\n"
                    "A. One.\nB. Two.\nC. Three.\nD. Four.\nThe best answer is:",
                 {"options": {"A": "One.", "B": "Two.", "C": "Three.", "D": "Four."}, "answer": "B"}),
    "charades_sta": (3, "Please find the visual event described by a sentence in the video, determining its "
                        "starting and ending times. The format should be: 'The event happens in the start time - "
                        "end time'. For example, The event 'person turn a light on' happens in the 24.3 - 30.4 "
                        "seonds. Now I will give you the textual sentence: person turns on the light. Please return "
                        "its start time and end time.", {"span": [0.0, 1.5]}),
}
EXPECTED["refcoco+"] = EXPECTED["refcoco"]


@pytest.mark.parametrize("name", list(benchmarks.BENCHMARKS))
def test_reader_reads_its_fixture(name):
    bench = benchmarks.get(name)
    n, prompt, answer = EXPECTED[name]
    items = run.load_items(bench, DATA[name])
    assert len(items) == n and items[0].prompt == prompt and items[0].answer == answer
    assert len({it.id for it in items}) == n
    for it in items:
        ev = run.eval_item(bench, it)
        content = ev.messages[0]["content"]
        assert [c["type"] for c in content] == ["image"] * len(ev.images) + ["video"] * len(ev.videos) + ["text"]
        assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[-1] == 3 for im in ev.images)
        assert all(v["frames"].ndim == 4 and v["fps"] == 2.0 for v in ev.videos)
        assert len(ev.images) + len(ev.videos) >= 1


def test_readers_details():
    items = run.load_items(benchmarks.get("refcoco"), DATA["refcoco"])
    # The second expression of an object is its own item; COCO [0, 0, 30, 40] of a 30 x 40 image is all of it.
    assert [it.meta["expression"] for it in items[:2]] == ["left red block", "the red one"]
    assert items[3].answer["bbox_2d"] == [0.0, 0.0, 1000.0, 1000.0] and items[3].answer["image_size"] == [30, 40]
    mmmu = run.load_items(benchmarks.get("mmmu"), DATA["mmmu"])
    assert len(mmmu[1].images) == 2  # image_1 and image_2
    assert mmmu[2].answer == {"options": {"A": "12", "B": "Other Answers"}, "answer": "A"}  # an open question
    mmbench = run.load_items(benchmarks.get("mmbench"), DATA["mmbench"])
    assert [it.meta["group"] for it in mmbench] == [1] * 4 + [2] * 3
    # Copy 1 of question 1: options shifted by one, the answer "C" (blue) now "B"; its image is the first row's.
    assert mmbench[1].answer == {"options": {"A": "green", "B": "blue", "C": "white", "D": "red"}, "answer": "B"}
    np.testing.assert_array_equal(mmbench[1].images[0].load(), mmbench[0].images[0].load())
    assert mmbench[4].prompt.startswith("Hint: Look closely.\nQuestion: How many shapes are there?\nOptions:\nA. one")
    ocr = run.load_items(benchmarks.get("ocrbench"), DATA["ocrbench"])
    assert ocr[1].answer["dataset"] == "HME100k" and ocr[1].meta["category"].startswith("Handwritten Math")
    chart = run.load_items(benchmarks.get("chartqa"), DATA["chartqa"])
    assert {it.meta["split"] for it in chart} == {"human_test"}
    videos = run.load_items(benchmarks.get("videomme"), DATA["videomme"])
    assert [v.load()["frames"].shape[0] for it in videos for v in it.videos] == [4, 6]  # a frame folder, a .npy
    fps5 = run.load_items(benchmarks.get("charades_sta"), DATA["charades_sta"], options=benchmarks.ReadOptions(5.0))
    assert fps5[0].videos[0].load()["fps"] == 5.0
    assert len(run.load_items(benchmarks.get("mmbench"), DATA["mmbench"], num=1)) == 4  # all copies of question 1
    assert len(run.load_items(benchmarks.get("docvqa"), DATA["docvqa"], num=2)) == 2
    # A glob picks a split's files out of a dataset folder; media paths start where the pattern does.
    assert len(run.load_items(benchmarks.get("infovqa"), str(FIXTURES / "info*" / "val-*.parquet"))) == 2
    assert len(run.load_items(benchmarks.get("docvqa"), str(FIXTURES / "docvqa" / "val_*.json"))) == 3


def test_video_files_are_read_with_their_own_rate(tmp_path):
    pytest.importorskip("av")
    from tests.video_files import write_video
    from vlm_jax.inference.prompt import build_prompt

    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "clip.mp4", 12, fps=6)
    (tmp_path / "test.json").write_text(json.dumps([{"videoID": "clip", "question": "What moves?",
                                                     "options": ["A. x", "B. y"], "answer": "B"}]))
    bench = benchmarks.get("videomme")
    (item,) = run.load_items(bench, tmp_path, options=benchmarks.ReadOptions(video_fps=99.0))
    ev = run.eval_item(bench, item)
    assert ev.videos[0]["fps"] == pytest.approx(6.0) and ev.videos[0]["frames"].shape == (12, 48, 64, 3)
    prompt = build_prompt(ev.messages, ev.images, ev.videos, as_tokenizer(synthetic_tokenizer()), PROC)
    assert prompt.grid_thw[0, 0] == 2  # 12 frames at 6 fps sampled at 2 fps: 4 frames, 2 temporal groups


def test_mmbench_without_copies_gets_circular_rotations(tmp_path):
    src = (DATA["mmbench"] / "MMBench_DEV_EN.tsv").read_text().splitlines()
    keep = [line for line in src if not line.split("\t")[0].isdigit() or int(line.split("\t")[0]) < 1_000_000]
    (tmp_path / "mmbench.tsv").write_text("\n".join(keep) + "\n")
    items = run.load_items(benchmarks.get("mmbench"), tmp_path)
    orig = run.load_items(benchmarks.get("mmbench"), DATA["mmbench"])
    assert [(it.id, it.answer) for it in items] == [(it.id, it.answer) for it in orig]  # the same rotations
    assert choice.rotate({"A": "x", "B": "y", "C": "z"}, "A", 2) == ({"A": "z", "B": "x", "C": "y"}, "B")


def test_mmstar_inline_options():
    q, opts = choice.split_inline_options("Which one?\nOptions: A: 1, 2 and 3, B: four, C: x: y, D: the end")
    assert q == "Which one?" and opts == {"A": "1, 2 and 3", "B": "four", "C": "x: y", "D": "the end"}
    assert choice.split_inline_options("No options here") == ("No options here", {})


@pytest.mark.parametrize("name, files, message", [
    ("docvqa", {"test.json": '{"data": [{"questionId": 1, "question": "q", "image": "x.png"}]}'},
     "test.json record 1: no 'answers' .*withheld"),
    ("refcoco", {"a.jsonl": '{"image": "x.png", "sent": "s", "bbox": [5, 1, 2, 3], "width": 9, "height": 9}\n'},
     r"a.jsonl record 1: pixel box \[5, 1, 2, 3\] has x2 < x1"),
    ("refcoco", {"a.jsonl": '{"image": "missing.png", "sent": "s", "bbox": [0, 0, 2, 2]}\n'},
     "a.jsonl record 1: image not found: 'missing.png'"),
    ("chartqa", {"t.json": '[{"imgname": "c.png", "label": "1"}]'}, r"t.json record 1: no 'question' / 'query'"),
    ("mmstar", {"m.jsonl": '{"index": 1, "question": "q", "A": "x", "B": "y", "answer": "E", "image": "i"}\n'},
     "m.jsonl record 1: answer 'E' is not one of the options"),
    ("videomme", {"v.json": '[{"videoID": "nope", "question": "q", "options": ["A. x", "B. y"], "answer": "A"}]'},
     "v.json record 1: video 'nope' not found"),
    ("charades_sta", {"c.txt": "AB12C 3.0 1.0##backwards\n"}, r"c.txt line 1: span \[3.0, 1.0\]"),
    ("countbench", {"c.jsonl": "not json\n"}, "c.jsonl: line 1: invalid JSON"),
    ("countbench", {}, "no .parquet / .jsonl / .json / .tsv files in"),
])
def test_bad_data_is_named(tmp_path, name, files, message):
    for fname, text in files.items():
        (tmp_path / fname).write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run.load_items(benchmarks.get(name), tmp_path)


# ----------------------------------------------------------------------------- the CLI, with known replies


def right_reply(name: str, answer: dict) -> str:
    """A reply the benchmark's metric scores 1."""
    if "bbox_2d" in answer:
        return json.dumps([{"bbox_2d": [round(v) for v in answer["bbox_2d"]], "label": "it"}])
    if "count" in answer:
        return str(answer["count"])
    if "options" in answer:
        return answer["answer"]
    if "span" in answer:
        return "The event happens in the {} - {} seconds.".format(*answer["span"])
    return answer["answers"][0]


def _headline(name: str, records: list[dict]) -> float:
    """The headline recomputed from the written predictions with the metric functions themselves."""
    score = {
        "countbench": lambda r: bm.countbench_exact(r["final"], r["answer"]["count"]),
        "pixmo_count": lambda r: bm.pixmo_count_exact(r["final"], r["answer"]["count"]),
        "docvqa": lambda r: bm.anls(r["final"], r["answer"]["answers"]),
        "infovqa": lambda r: bm.anls(r["final"], r["answer"]["answers"]),
        "chartqa": lambda r: bm.relaxed_accuracy(r["final"], r["answer"]["answers"]),
        "ocrbench": lambda r: bm.ocrbench_match(r["final"], r["answer"]["answers"], r["answer"]["dataset"]),
        "charades_sta": lambda r: bm.temporal_iou_score(r["final"], r["answer"]["span"]),
    }.get(name)
    if name.startswith("refcoco"):
        score = lambda r: metrics.box_accuracy(r["final"], r["answer"]["bbox_2d"])  # noqa: E731
    elif score is None:
        score = lambda r: bm.choice_accuracy(r["final"], r["answer"]["options"], r["answer"]["answer"])  # noqa: E731
    values = [score(r).value for r in records]
    assert values == [r["score"] for r in records]
    if name == "mmbench":
        values = bm.circular_accuracy(values, [r["meta"]["group"] for r in records])
    return float(np.mean(values))


def _check_outputs(name: str, out: Path, stdout: str) -> dict:
    records = json.loads((out / "predictions.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == name and summary["n_items"] == len(records) == EXPECTED[name][0]
    assert summary["score"] == pytest.approx(_headline(name, records))
    assert summary["malformed"] == sum(r["malformed"] for r in records)
    header, _, row = stdout.strip().splitlines()[-3:]
    assert header.split()[:4] == ["benchmark", "metric", "n", "score"] and row.split()[:2] == [name,
                                                                                              summary["metric"]]
    return summary


@pytest.mark.parametrize("name", list(benchmarks.BENCHMARKS))
def test_cli_with_known_replies(name, ckpt, tmp_path, capsys, monkeypatch):
    """generate answers right for every item but the second, which gets "I am not sure.": the summary
    must be the metric of those replies, (n - 1) / n (MMBench: one of its two questions has a wrong copy)."""
    bench = benchmarks.get(name)
    items = run.load_items(bench, DATA[name])
    replies = {it.prompt: right_reply(name, it.answer) for it in items}
    replies[items[1].prompt] = "I am not sure."
    tok = as_tokenizer(synthetic_tokenizer())

    def fake_generate(config, params, prompts, *, max_new_tokens, pad_token_id, **kw):
        out = np.full((len(prompts), max_new_tokens), pad_token_id, np.int32)
        for r, p in enumerate(prompts):
            text = tok.decode(list(p), skip_special_tokens=False)
            (reply,) = [v for k, v in replies.items() if k in text]
            seq = (tok.encode(reply) + [tok.im_end_id])[:max_new_tokens]
            out[r, :len(seq)] = seq
        return generate_lib.GenerateOutput(out, np.full(len(prompts), max_new_tokens), np.ones(len(prompts), bool),
                                           64)

    monkeypatch.setattr(generate_lib, "generate", fake_generate)
    out = tmp_path / "out"
    rc = eval_cli.main([f"--benchmark={name}", f"--data={DATA[name]}", f"--ckpt={ckpt}", "--batch_size=2",
                        "--max_new_tokens=64", f"--out={out}"])
    assert rc == 0
    summary = _check_outputs(name, out, capsys.readouterr().out)
    n = len(items)
    assert summary["score"] == pytest.approx(0.5 if name == "mmbench" else (n - 1) / n)
    assert summary["settings"]["max_new_tokens"] == 64 and summary["settings"]["batch_size"] == 2
    if name == "mmbench":
        assert summary["aggregates"]["acc_single_pass"] == 1.0  # both originals are right


# ----------------------------------------------------------------------------- the CLI, with a tiny random model

REAL_FAST = ("refcoco",)  # the rest compile other prompt shapes: about 5 s each on 2 cores


@pytest.mark.parametrize("name", [n if n in REAL_FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in benchmarks.BENCHMARKS])
def test_cli_with_tiny_model(name, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = eval_cli.main([f"--benchmark={name}", f"--data={DATA[name]}", f"--ckpt={ckpt}", "--batch_size=2",
                        "--max_new_tokens=2", f"--out={out}"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    _check_outputs(name, out, captured.out)
    assert f"{name}: 100%" in captured.err  # the progress bar ran to the end


def test_cli_errors(ckpt, tmp_path, capsys):
    cases = [(["--benchmark=refcoco", f"--ckpt={ckpt}"], "needs both --benchmark and --data"),
             ([f"--data={DATA['refcoco']}", f"--ckpt={ckpt}"], "needs both --benchmark and --data"),
             (["--benchmark=nope", f"--data={tmp_path}", f"--ckpt={ckpt}"], "unknown benchmark 'nope'; known: refcoco"),
             (["--benchmark=refcoco", f"--data={DATA['refcoco']}", f"--ckpt={ckpt}", "--tasks=grounding"],
              "--benchmark does not take --tasks"),
             (["--benchmark=refcoco", f"--data={tmp_path / 'missing'}", f"--ckpt={ckpt}"], "benchmark data not found"),
             (["--benchmark=refcoco", f"--data={DATA['refcoco']}", f"--ckpt={tmp_path}"], "no model_config.json"),
             (["--benchmark=refcoco", f"--data={DATA['refcoco']}"], "Flag --checkpoint must have a value")]
    for args, message in cases:
        assert eval_cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, (args, err)


# ----------------------------------------------------------------------------- a Hugging Face checkpoint


@pytest.mark.slow
def test_hf_checkpoint_evaluates_like_our_own(oracle, tmp_path, capsys):
    """A tiny random transformers Qwen3-VL saved with save_pretrained: --ckpt given the HF folder, and the
    folder converted with `python -m vlm_jax.convert hf-to-jax`, give the same predictions, and those
    are the tokens transformers' own greedy decoding picks for the same prompts."""
    from vlm_jax.convert.command import main as convert_main
    from vlm_jax.data.processor import get_config as processor_config
    from vlm_jax.inference.prompt import build_prompt

    c = _config()
    model = oracle.hf_model(c)
    hf_dir = tmp_path / "hf"
    model.save_pretrained(hf_dir, safe_serialization=True)
    (hf_dir / "processor_config.json").write_text(json.dumps(PROC))
    assert convert_main(["hf-to-jax", f"--hf_dir={hf_dir}", f"--out={tmp_path / 'ours'}"]) == 0
    (tmp_path / "ours" / "processor_config.json").write_text(json.dumps(PROC))
    capsys.readouterr()
    n_new = 4
    preds = {}
    for tag, path in (("hf", hf_dir), ("ours", tmp_path / "ours")):
        out = tmp_path / f"out_{tag}"
        assert eval_cli.main(["--benchmark=refcocog", f"--data={DATA['refcocog']}", f"--ckpt={path}",
                              "--batch_size=2", f"--max_new_tokens={n_new}", f"--out={out}"]) == 0
        preds[tag] = json.loads((out / "predictions.json").read_text())
    assert [r["reply"] for r in preds["hf"]] == [r["reply"] for r in preds["ours"]]
    assert any(r["reply"] for r in preds["hf"])  # the model said something: the comparison below is not vacuous

    tok = as_tokenizer(synthetic_tokenizer())
    bench = benchmarks.get("refcocog")
    for item, record in zip(run.load_items(bench, DATA["refcocog"]), preds["hf"]):
        ev = run.eval_item(bench, item)
        p = build_prompt(ev.messages, ev.images, ev.videos, tok, processor_config(PROC))
        ids = list(p.input_ids)
        for _ in range(n_new):  # transformers' greedy decoding, the whole sequence each step
            logits = oracle.hf_logits(model, c, np.asarray(ids)[None], None, p.pixel_values, p.grid_thw)
            nxt = int(np.argmax(logits[0, -1]))
            if nxt in (tok.im_end_id, tok.pad_id):
                break
            ids.append(nxt)
        assert tok.decode(ids[len(p.input_ids):], skip_special_tokens=True) == record["reply"], item.id
    assert math.isfinite(json.loads((tmp_path / "out_hf" / "summary.json").read_text())["score"])

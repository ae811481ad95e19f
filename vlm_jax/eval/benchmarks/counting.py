"""Counting: CountBench (CountBenchQA) and PixMo-Count, exact match of the count.

Layouts read:
  countbench   parquet / JSON(L) as CountBenchQA ships it: `image` (bytes struct or a path), `question`,
               `number` (and `text`, the caption, unused).
  pixmo_count  parquet / JSON(L): `question` + `answer` as lmms-eval's copy ships it, or allenai's own
               layout `label` + `count` (the question is then "How many {label} are there?"), with
               `image` (bytes struct or a path) or, as allenai ships no pixels, `image_sha256` naming a
               downloaded file under images/.
No Qwen3-VL prompt for these is public: the prompts are lmms-eval's countbench and pixmo_count tasks'.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vlm_jax.eval import benchmark_metrics as bm
from vlm_jax.eval.benchmarks import files
from vlm_jax.eval.benchmarks.spec import Item, ReadOptions
from vlm_jax.eval.metrics import Score

COUNTBENCH_PROMPT = "Look at the image carefully and count the objects. Answer with just a number, without any " \
                    "additional text. {question}"
PIXMO_PROMPT = "{question}\nAnswer with a single number."
IMAGE_FOLDERS = ("images",)


def _image(rec: Mapping, root: Path, where: str) -> files.Media:
    value = rec.get("image") or rec.get("image_path") or rec.get("file_name")
    if value is None and rec.get("image_sha256"):
        sha = str(rec["image_sha256"])
        value = next((p.name for p in sorted((root / "images").glob(f"{sha}*")) if p.is_file()), sha)
    if value is None:
        raise ValueError(f"{where}: no 'image', 'image_path' or 'image_sha256' field (has {sorted(rec)})")
    return files.Media("image", value, root, where, IMAGE_FOLDERS)


def _count(value: object, where: str) -> int:
    import re

    m = re.search(r"\d+", str(value))
    if m is None:
        raise ValueError(f"{where}: count {value!r} is not a number")
    return int(m.group())


def read_countbench(data: Path, options: ReadOptions) -> list[Item]:
    root = files.data_root(data)
    items = []
    for path in files.data_files(data):
        for k, rec in enumerate(files.read_records(path)):
            where = f"{path.name} record {k + 1}"
            question = str(files.field(rec, "question", where=where)).strip()
            count = _count(files.field(rec, "number", "count", "answer", where=where), where)
            items.append(Item(id=str(rec.get("id", f"{path.stem}-{k}")), prompt=COUNTBENCH_PROMPT.format(
                question=question), answer={"count": count}, images=[_image(rec, root, where)]))
    return items


def read_pixmo_count(data: Path, options: ReadOptions) -> list[Item]:
    root = files.data_root(data)
    items = []
    for path in files.data_files(data):
        for k, rec in enumerate(files.read_records(path)):
            where = f"{path.name} record {k + 1}"
            if rec.get("question"):
                question = str(rec["question"]).replace("<image>", "").strip()
            else:
                question = f"How many {files.field(rec, 'label', where=where)} are there?"
            count = _count(files.field(rec, "count", "answer", where=where), where)
            items.append(Item(id=str(rec.get("id", rec.get("image_sha256", f"{path.stem}-{k}"))),
                              prompt=PIXMO_PROMPT.format(question=question), answer={"count": count},
                              images=[_image(rec, root, where)], meta={"label": rec.get("label")}))
    return items


def score_countbench(answer: Mapping, final: str) -> Score:
    return bm.countbench_exact(final, answer["count"])


def score_pixmo_count(answer: Mapping, final: str) -> Score:
    return bm.pixmo_count_exact(final, answer["count"])

"""Text in images: DocVQA and InfoVQA (ANLS), ChartQA (relaxed accuracy), OCRBench (its matching).

Layouts read:
  docvqa / infovqa  parquet as lmms-lab ships it (`question`, `answers`, `image` bytes, `questionId`), or
                    the official JSON ({"data": [...]}: `question`, `answers`, and `image` (DocVQA,
                    "documents/x.png") or `image_local_name` (InfoVQA, under infographicsvqa_images/)).
  chartqa           parquet as lmms-lab ships it (`question`, `answer`, `type`, `image`), or the official
                    test_human.json / test_augmented.json (`imgname` under png/, `query`, `label`).
  ocrbench          parquet as its authors ship it on Hugging Face (`question`, `answer` list, `dataset`,
                    `question_type`, `image`), or the official OCRBench.json (`image_path` under
                    OCRBench_Images/, `question`, `answers`, `dataset_name`, `type`).
Prompt: VLMEvalKit's Qwen3-VL prompt for its VQA-type datasets (all four are), the question and
"Please answer concisely with short words or phrases when possible."
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from vlm_jax.eval import benchmark_metrics as bm
from vlm_jax.eval.benchmarks import files
from vlm_jax.eval.benchmarks.spec import Item, ReadOptions
from vlm_jax.eval.metrics import Score

VQA_PROMPT = "{question}\nPlease answer concisely with short words or phrases when possible."
IMAGE_FOLDERS = ("images", "documents", "infographicsvqa_images", "png", "OCRBench_Images")


def _answers(value: object, where: str) -> list[str]:
    out = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else []
    out = [str(a) for a in out]
    if not out:
        raise ValueError(f"{where}: no reference answers")
    return out


def _records(data: Path):
    for path in files.data_files(data, (".parquet", ".jsonl", ".json")):
        for k, rec in enumerate(files.read_records(path)):
            yield path, k, rec, f"{path.name} record {k + 1}"


def read_docvqa(data: Path, options: ReadOptions) -> list[Item]:
    """DocVQA and InfoVQA (one reader: the same fields but the image's name)."""
    root = files.data_root(data)
    items = []
    for path, k, rec, where in _records(data):
        if not rec.get("answers"):
            raise ValueError(f"{where}: no 'answers' (the test split's answers are withheld: point --data at the "
                             "validation files, e.g. a glob 'DIR/validation-*.parquet')")
        image = files.field(rec, "image", "image_local_name", "image_path", where=where)
        items.append(Item(id=str(rec.get("questionId", f"{path.stem}-{k}")),
                          prompt=VQA_PROMPT.format(question=str(files.field(rec, "question", where=where)).strip()),
                          answer={"answers": _answers(rec["answers"], where)},
                          images=[files.Media("image", image, root, where, IMAGE_FOLDERS)],
                          meta={k2: rec[k2] for k2 in ("question_types", "answer_type") if rec.get(k2) is not None}))
    return items


def read_chartqa(data: Path, options: ReadOptions) -> list[Item]:
    root = files.data_root(data)
    items = []
    for path, k, rec, where in _records(data):
        question = files.field(rec, "question", "query", where=where)
        answer = files.field(rec, "answer", "label", where=where)
        split = rec.get("type") or ("human_test" if "human" in path.stem else
                                    "augmented_test" if "augmented" in path.stem else path.stem)
        image = files.field(rec, "image", "imgname", where=where)
        items.append(Item(id=str(rec.get("id", f"{path.stem}-{k}")),
                          prompt=VQA_PROMPT.format(question=str(question).strip()),
                          answer={"answers": _answers(answer, where)},
                          images=[files.Media("image", image, root, where, IMAGE_FOLDERS)], meta={"split": split}))
    return items


def read_ocrbench(data: Path, options: ReadOptions) -> list[Item]:
    root = files.data_root(data)
    items = []
    for path, k, rec, where in _records(data):
        category = str(files.field(rec, "question_type", "type", where=where))
        dataset = str(files.field(rec, "dataset", "dataset_name", where=where))
        image = files.field(rec, "image", "image_path", where=where)
        items.append(Item(id=str(rec.get("id", f"{path.stem}-{k}")),
                          prompt=VQA_PROMPT.format(question=str(files.field(rec, "question", where=where)).strip()),
                          answer={"answers": _answers(files.field(rec, "answer", "answers", where=where), where),
                                  "dataset": dataset},
                          images=[files.Media("image", image, root, where, IMAGE_FOLDERS)],
                          meta={"category": category}))
    return items


def score_anls(answer: Mapping, final: str) -> Score:
    return bm.anls(final, answer["answers"])


def score_chartqa(answer: Mapping, final: str) -> Score:
    return bm.relaxed_accuracy(final, answer["answers"])


def score_ocrbench(answer: Mapping, final: str) -> Score:
    return bm.ocrbench_match(final, answer["answers"], answer.get("dataset", ""))


def summarize_chartqa(records: Sequence[Mapping]) -> dict[str, float]:
    """Relaxed accuracy per split (human_test / augmented_test), as ChartQA reports them."""
    out = {}
    for split in dict.fromkeys(r["meta"].get("split") for r in records):
        xs = [r["score"] for r in records if r["meta"].get("split") == split]
        out[f"relaxed_{split}"] = sum(xs) / len(xs)
    return out


def summarize_ocrbench(records: Sequence[Mapping]) -> dict[str, float]:
    """OCRBench's report: right answers per category, Text Recognition and Final Score (of 1000)."""
    return bm.ocrbench_summary([r["meta"]["category"] for r in records], [r["score"] for r in records])

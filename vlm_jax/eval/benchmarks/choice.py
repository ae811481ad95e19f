"""Multiple choice: MMMU, MMBench (circular evaluation), MMStar and Video-MME; accuracy of the option letter.

Layouts read:
  mmbench   VLMEvalKit's TSV (`index`, `question`, `hint`, `A`..`D`, `answer`, `category`, `image` base64;
            an image cell holding another row's index reuses that row's image) or lmms-lab's parquet
            (the same columns, `image` bytes). Circular copies are the rows whose index is the original's
            plus k * 1e6; a file without them gets them here (the options rotated, as MMBench's circular
            evaluation asks), unless `circular=False`.
  mmstar    Lin-Chen's parquet (`question` ending in "Options: A: .., B: ..", `answer`, `category`,
            `image`) or VLMEvalKit's TSV (`A`..`D` columns).
  mmmu      MMMU's parquet (`question`, `options` a Python list literal, `answer`, `question_type`,
            `image_1`..`image_7`) or VLMEvalKit's MMMU_DEV_VAL TSV. Open questions become a choice
            between the answer and "Other Answers", as the Qwen3-VL evaluation's MMMU_preproc does.
  videomme  lmms-lab's parquet (`videoID`, `question`, `options` ["A. ..", ..], `answer`, `duration`,
            `domain`, `task_type`), videos under videos/ or data/ (files, frame folders or .npy).
Prompts: MMMU and Video-MME as the Qwen3-VL repository's evaluation builds them (evaluation/mmmu/
run_mmmu.py, evaluation/VideoMME/dataset_utils.py, without subtitles); MMBench and MMStar as VLMEvalKit's
Qwen3-VL prompt for multiple-choice datasets. Replies are read with `benchmark_metrics.extract_option`.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlm_jax.eval import benchmark_metrics as bm
from vlm_jax.eval.benchmarks import files
from vlm_jax.eval.benchmarks.spec import Item, ReadOptions
from vlm_jax.eval.metrics import Score

CIRCULAR_STRIDE = 1_000_000  # MMBench: copy k of question i has index i + k * 1e6
MCQ_SUFFIX = "Answer with the option letter only."
MMMU_SUFFIX = "Please select the correct answer from the options above."
VIDEOMME_PROMPT = ("Select the best answer to the following multiple-choice question based on the video. "
                   "Respond with only the letter (A, B, C, or D) of the correct option.\n"
                   "Question: {question}\n{options}\nThe best answer is:")
MMMU_OPEN_OTHER = "Other Answers"
VIDEO_FOLDERS = ("videos", "data")


def _present(v: object) -> bool:
    return v is not None and str(v).strip() != "" and str(v).lower() != "nan"


def options_of(rec: Mapping) -> dict[str, str]:
    """The `A`, `B`, .. columns of a record that hold an option, in letter order."""
    return {c: str(rec[c]) for c in string.ascii_uppercase if _present(rec.get(c))}


def choice_prompt(question: str, options: Mapping[str, str], hint: str | None, suffix: str) -> str:
    """"Hint: ..\\nQuestion: ..\\nOptions:\\nA. ..\\n" + `suffix` (VLMEvalKit's Qwen3-VL layout)."""
    text = f"Hint: {hint}\n" if _present(hint) else ""
    text += f"Question: {question}\n"
    if options:
        text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items()) + suffix
    return text.rstrip()


def _letter(answer: object, options: Mapping[str, str], where: str) -> str:
    a = str(answer).strip()
    if a not in options:
        raise ValueError(f"{where}: answer {answer!r} is not one of the options {sorted(options)}")
    return a


def _table_images(records: list[dict]) -> dict[str, object]:
    """index -> image cell; VLMEvalKit stores a repeated image once, other rows hold that row's index."""
    cells = {str(r.get("index")): r.get("image") for r in records}
    return {k: cells.get(str(v), v) if isinstance(v, str) and len(v) <= 64 else v for k, v in cells.items()}


def _image_cells(rec: Mapping, images: Mapping[str, object], where: str) -> list:
    if rec.get("image_path") and not rec.get("image"):
        paths = rec["image_path"]
        return list(ast.literal_eval(paths)) if isinstance(paths, str) and paths.startswith("[") else [paths]
    cell = images.get(str(rec.get("index")), rec.get("image"))
    if isinstance(cell, str) and cell.startswith("["):  # VLMEvalKit: a list of base64 images
        return list(ast.literal_eval(cell))
    numbered = [rec[f"image_{i}"] for i in range(1, 8) if rec.get(f"image_{i}") is not None]  # MMMU parquet
    if cell is None and not numbered:
        raise ValueError(f"{where}: no image")
    return [cell] if cell is not None else numbered


def rotate(options: Mapping[str, str], answer: str, k: int) -> tuple[dict[str, str], str]:
    """The options shifted by k places (option j gets the text of option j + k) and the answer's new letter."""
    letters = list(options)
    n = len(letters)
    new = {letters[j]: options[letters[(j + k) % n]] for j in range(n)}
    return new, letters[(letters.index(answer) - k) % n]


def read_table(data: Path, options: ReadOptions, *, suffix: str, circular: bool = False) -> list[Item]:
    """MMBench / MMStar / MMMU records (TSV or parquet) -> items; see the module docstring."""
    root = files.data_root(data)
    items = []
    for path in files.data_files(data, (".tsv", ".parquet", ".jsonl", ".json")):
        records = files.read_records(path)
        images = _table_images(records)
        has_copies = any(str(r.get("index")).isdigit() and int(r["index"]) >= CIRCULAR_STRIDE for r in records)
        for k, rec in enumerate(records):
            where = f"{path.name} record {k + 1}"
            question, opts = str(files.field(rec, "question", where=where)), options_of(rec)
            answer = files.field(rec, "answer", where=where)
            if not opts and _present(rec.get("options")):  # MMMU parquet
                parsed = ast.literal_eval(rec["options"]) if isinstance(rec["options"], str) else rec["options"]
                opts = {string.ascii_uppercase[i]: str(o) for i, o in enumerate(parsed)}
            if not opts and "Options:" in question:  # MMStar parquet: the options close the question
                question, opts = split_inline_options(question)
            if not opts or str(rec.get("question_type", "")) == "open":  # MMMU's open questions
                opts, answer = {"A": str(answer), "B": MMMU_OPEN_OTHER}, "A"
            answer = _letter(answer, opts, where)
            index = str(rec.get("index", rec.get("id", f"{path.stem}-{k}")))
            media = [files.Media("image", c, root, f"{where} image {i + 1}")
                     for i, c in enumerate(_image_cells(rec, images, where))]
            meta = {key: rec[key] for key in ("category", "l2-category", "l2_category", "subfield", "split")
                    if _present(rec.get(key))}
            group = int(index) % CIRCULAR_STRIDE if index.isdigit() else index
            rounds = len(opts) if circular and not has_copies else 1
            for r in range(rounds):
                o, a = rotate(opts, answer, r) if r else (opts, answer)
                copy_id = str(int(index) + r * CIRCULAR_STRIDE) if index.isdigit() else f"{index}-rot{r}"
                items.append(Item(id=index if r == 0 else copy_id,
                                  prompt=choice_prompt(question, o, rec.get("hint"), suffix),
                                  answer={"options": o, "answer": a}, images=media,
                                  meta={**meta, "group": group}))
    return items


_INLINE_OPTIONS = re.compile(r"\s*Options:\s*(.*)$", re.DOTALL)
_INLINE_LETTER = re.compile(r"(?:^|,\s*)([A-F]):\s*")


def split_inline_options(question: str) -> tuple[str, dict[str, str]]:
    """("question", {"A": .., ..}) of a question ending in "Options: A: x, B: y, ..." (MMStar's parquet)."""
    m = _INLINE_OPTIONS.search(question)
    if m is None:
        return question, {}
    parts = _INLINE_LETTER.split(m.group(1).strip())
    opts = {parts[i]: parts[i + 1].strip().rstrip(",").strip() for i in range(1, len(parts) - 1, 2)}
    return question[:m.start()].strip(), opts


def read_mmbench(data: Path, options: ReadOptions) -> list[Item]:
    return read_table(data, options, suffix=MCQ_SUFFIX, circular=True)


def read_mmstar(data: Path, options: ReadOptions) -> list[Item]:
    return read_table(data, options, suffix=MCQ_SUFFIX)


def read_mmmu(data: Path, options: ReadOptions) -> list[Item]:
    return read_table(data, options, suffix=MMMU_SUFFIX)


def read_videomme(data: Path, options: ReadOptions) -> list[Item]:
    root = files.data_root(data)
    items = []
    for path in files.data_files(data, (".parquet", ".jsonl", ".json")):
        for k, rec in enumerate(files.read_records(path)):
            where = f"{path.name} record {k + 1}"
            choices = [str(c) for c in files.field(rec, "options", where=where)]
            opts = {}
            for c in choices:  # "A. text"
                letter, _, text = c.partition(".")
                if letter.strip() not in string.ascii_uppercase or not letter.strip():
                    raise ValueError(f"{where}: option {c!r} does not start with a letter and a full stop")
                opts[letter.strip()] = text.strip()
            video_id = str(files.field(rec, "videoID", "video_id", where=where))
            video = files.find_video(root, video_id, VIDEO_FOLDERS, where)
            items.append(Item(id=str(rec.get("question_id", f"{path.stem}-{k}")),
                              prompt=VIDEOMME_PROMPT.format(question=str(rec["question"]).strip(),
                                                            options="\n".join(choices)),
                              answer={"options": opts, "answer": _letter(files.field(rec, "answer", where=where),
                                                                         opts, where)},
                              videos=[files.Media("video", video, root, where, fps=options.video_fps)],
                              meta={key: rec[key] for key in ("duration", "domain", "sub_category", "task_type")
                                    if _present(rec.get(key))}))
    return items


def score(answer: Mapping, final: str) -> Score:
    return bm.choice_accuracy(final, answer["options"], answer["answer"])


def circular_groups(records: Sequence[Mapping]) -> list[float]:
    """MMBench's headline: one 0 / 1 per question, 1 only if all of its circular copies are right."""
    return bm.circular_accuracy([r["score"] for r in records], [r["meta"]["group"] for r in records])


def _by(records: Sequence[Mapping], key: str) -> dict[str, float]:
    out = {}
    for value in dict.fromkeys(r["meta"].get(key) for r in records if r["meta"].get(key) is not None):
        xs = [r["score"] for r in records if r["meta"].get(key) == value]
        out[f"acc/{value}"] = sum(xs) / len(xs)
    return out


def summarize_mmbench(records: Sequence[Mapping]) -> dict[str, float]:
    """Accuracy of the original rows alone (no rotation), and the circular accuracy per category."""
    originals = [r["score"] for r in records if not str(r["id"]).isdigit() or int(r["id"]) < CIRCULAR_STRIDE]
    out = {"acc_single_pass": sum(originals) / max(len(originals), 1)}
    for cat in dict.fromkeys(r["meta"].get("category") for r in records if r["meta"].get("category")):
        rs = [r for r in records if r["meta"].get("category") == cat]
        groups = circular_groups(rs)
        out[f"circular/{cat}"] = sum(groups) / len(groups)
    return out


def summarize_by_category(records: Sequence[Mapping]) -> dict[str, float]:
    return _by(records, "category")


def summarize_videomme(records: Sequence[Mapping]) -> dict[str, float]:
    """Accuracy per video duration (short / medium / long), as Video-MME reports it."""
    return _by(records, "duration")

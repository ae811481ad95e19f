"""Charades-STA temporal grounding: R@IoU 0.3 / 0.5 / 0.7 and mIoU of the reply's [start, end] span.

Layouts read:
  the original annotation text (charades_sta_test.txt): one query a line, "VIDEO start end##sentence";
  parquet / JSON(L) as lmms-lab ships it: `video` ("VIDEO.mp4"), `caption`, `timestamp` [start, end].
Videos are looked up under Charades_v1_480/, videos/ or the data folder: files, frame folders or .npy.
No Qwen3-VL prompt is public: the prompt is lmms-eval's charades_sta task's (its typo included, as
models were evaluated with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from vlm_jax.eval import benchmark_metrics as bm
from vlm_jax.eval.benchmarks import files
from vlm_jax.eval.benchmarks.spec import Item, ReadOptions
from vlm_jax.eval.metrics import Score

PROMPT = ("Please find the visual event described by a sentence in the video, determining its starting and "
          "ending times. The format should be: 'The event happens in the start time - end time'. For example, "
          "The event 'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the "
          "textual sentence: {caption}. Please return its start time and end time.")
VIDEO_FOLDERS = ("Charades_v1_480", "videos")


def _span(start: object, end: object, where: str) -> list[float]:
    try:
        s, e = float(start), float(end)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: span [{start}, {end}] is not two numbers") from err
    if not 0 <= s <= e:
        raise ValueError(f"{where}: span [{start}, {end}] is not 0 <= start <= end")
    return [s, e]


def _text_records(path: Path) -> list[tuple[str, list[float], str, str]]:
    """The queries of an annotation text file; none from a text file without "##" (a README, say)."""
    text = path.read_text(encoding="utf-8")
    out = []
    for n, line in enumerate(text.splitlines() if "##" in text else [], start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        head, sep, sentence = line.partition("##")
        parts = head.split()
        if not sep or len(parts) != 3:
            raise ValueError(f"{where}: expected 'VIDEO start end##sentence', got {line[:80]!r}")
        out.append((parts[0], _span(parts[1], parts[2], where), sentence, where))
    return out


def read(data: Path, options: ReadOptions) -> list[Item]:
    root = files.data_root(data)
    rows = []
    for path in files.data_files(data, (".txt", ".parquet", ".jsonl", ".json")):
        if path.suffix.lower() == ".txt":
            rows += _text_records(path)
            continue
        for k, rec in enumerate(files.read_records(path)):
            where = f"{path.name} record {k + 1}"
            stamp = files.field(rec, "timestamp", where=where)
            if not isinstance(stamp, Sequence) or isinstance(stamp, str) or len(stamp) != 2:
                raise ValueError(f"{where}: timestamp {stamp!r} is not [start, end]")
            rows.append((str(files.field(rec, "video", where=where)), _span(*stamp, where),
                         str(files.field(rec, "caption", "query", where=where)), where))
    items = []
    for k, (video, span, sentence, where) in enumerate(rows):
        caption = sentence.strip().rstrip(".").strip()  # the prompt adds the full stop
        path = files.find_video(root, video, VIDEO_FOLDERS, where)
        items.append(Item(id=f"{Path(video).stem}-{k}", prompt=PROMPT.format(caption=caption),
                          answer={"span": span}, meta={"video": video, "caption": caption},
                          videos=[files.Media("video", path, root, where, fps=options.video_fps)]))
    return items


def score(answer: Mapping, final: str) -> Score:
    return bm.temporal_iou_score(final, answer["span"])


def summarize(records: Sequence[Mapping]) -> dict[str, float]:
    """R@0.3, R@0.5, R@0.7 and mIoU over the queries."""
    return bm.recall_at_iou([r["extras"].get("iou", 0.0) for r in records])

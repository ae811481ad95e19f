"""RefCOCO / RefCOCO+ / RefCOCOg referring-expression grounding: acc@IoU 0.5 of the first reply box.

Layouts read (one item per referring expression):
  parquet as lmms-lab ships it: `image` (bytes struct), `answer` (the expressions, a list) or `question`,
    `bbox` COCO [x, y, w, h] in pixels, `question_id`;
  JSON / JSONL as the Qwen-VL and InternVL evaluations ship it: `image` (a path under the data folder),
    `sent` (or `sents`), `bbox` [x1, y1, x2, y2] in pixels, `width`, `height`.
Reference boxes become Qwen3-VL [0, 1000] coordinates (`data.boxes`; IoU does not change under the
per-axis scaling, so this equals scoring in pixels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlm_jax.data import boxes
from vlm_jax.eval import metrics
from vlm_jax.eval.benchmarks import files
from vlm_jax.eval.benchmarks.spec import Item, ReadOptions

# Qwen3-VL technical report, appendix B (the form evalscope's and ais_bench's RefCOCO adapters use).
PROMPT = ('Locate every object that matches the description "{ref}" in the image. '
          "Report bbox coordinates in JSON format.")
IMAGE_FOLDERS = ("images", "train2014", "coco/train2014")


def _expressions(rec: Mapping, where: str) -> list[str]:
    refs = files.field(rec, "sent", "sents", "answer", "question", where=where)
    refs = [refs] if isinstance(refs, str) else [str(r) for r in refs]
    refs = [r.strip() for r in refs if str(r).strip()]
    if not refs:
        raise ValueError(f"{where}: no referring expression")
    return refs


def read(data: Path, options: ReadOptions) -> list[Item]:
    """Items of every record file in `data` (see the module docstring)."""
    root = files.data_root(data)
    items = []
    for path in files.data_files(data, (".parquet", ".jsonl", ".json")):
        for k, rec in enumerate(files.read_records(path)):
            where = f"{path.name} record {k + 1}"
            image = files.Media("image", files.field(rec, "image", "file_name", where=where), root, where,
                                IMAGE_FOLDERS)
            box: Any = files.field(rec, "bbox", where=where)
            try:
                if "width" in rec and "height" in rec:  # Qwen-VL / InternVL: xyxy, with the image size
                    size, pixels = (rec["width"], rec["height"]), boxes.coco_to_pixels(boxes.pixels_to_coco(box))
                else:  # lmms-lab: COCO xywh; the size from the image header
                    size, pixels = image.size(), boxes.coco_to_pixels(box)
                rel = boxes.pixels_to_qwen3(pixels, *size, clip=True)  # annotations may stray a pixel fraction
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from e
            base = str(rec.get("question_id", rec.get("id", f"{path.stem}-{k}")))
            refs = _expressions(rec, where)
            for j, ref in enumerate(refs):
                items.append(Item(id=base if len(refs) == 1 else f"{base}-{j}", prompt=PROMPT.format(ref=ref),
                                  answer={"bbox_2d": rel, "bbox_pixels": pixels, "image_size": list(size)},
                                  images=[image], meta={"expression": ref, "file": path.name}))
    return items


def score(answer: Mapping, final: str) -> metrics.Score:
    """acc@IoU 0.5 of the reply's first box (`metrics.box_accuracy`); extras: iou."""
    return metrics.box_accuracy(final, answer["bbox_2d"])


def summarize(records: Sequence[Mapping]) -> dict[str, float]:
    """mean IoU over the items (malformed replies count 0)."""
    return {"mean_iou": sum(r["extras"].get("iou", 0.0) for r in records) / max(len(records), 1)}

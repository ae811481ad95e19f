"""PNG visualisations of predicted vs true boxes and points (Pillow).

Each picture is the item's first image, upscaled (nearest neighbour, so pixels stay crisp) to about
`SIZE` pixels, with the ground truth drawn in green and the model's boxes / points in red, above a
caption with the item id, the score and the reply. Only items with something to draw are used:
grounding, pointing, and counting by boxes / points.
"""

from __future__ import annotations

import itertools
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlm_jax.eval import metrics
from vlm_jax.eval.harness import EvalReport, ItemResult
from vlm_jax.eval.tasks import EvalItem

SIZE = 256
TRUE_COLOR = (0, 255, 0)
PRED_COLOR = (255, 0, 0)
_LINE = 2
_POINT_RADIUS = 4


def _shapes(answer: dict) -> tuple[list, list]:
    """(true boxes, true points) of a ground-truth answer ([0, 1000] units)."""
    boxes = [answer["bbox_2d"]] if "bbox_2d" in answer else []
    points = [answer["point_2d"]] if "point_2d" in answer else []
    return boxes + list(answer.get("boxes", ())), points + list(answer.get("points", ()))


def drawable(item: EvalItem) -> bool:
    """Whether the item has an image and boxes or points to draw."""
    return bool(item.images) and any(_shapes(item.answer))


def render(item: EvalItem, result: ItemResult, size: int = SIZE) -> Image.Image:
    """The picture of one item (see the module docstring)."""
    img = Image.fromarray(np.asarray(item.images[0], np.uint8)).convert("RGB")
    scale = max(1, size // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    w, h = img.size
    # Model coordinates can be anything: clip to just outside the image before scaling.
    px = lambda v, extent: float(np.clip(v, -10, 1010)) / 1000 * extent

    def draw_boxes(draw, boxes, color):
        for x1, y1, x2, y2 in boxes:
            xs, ys = sorted((px(x1, w), px(x2, w))), sorted((px(y1, h), px(y2, h)))
            draw.rectangle([xs[0], ys[0], xs[1], ys[1]], outline=color, width=_LINE)

    def draw_points(draw, points, color):
        for x, y in points:
            cx, cy, r = px(x, w), px(y, h), _POINT_RADIUS
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)

    draw = ImageDraw.Draw(img)
    true_boxes, true_points = _shapes(item.answer)
    draw_boxes(draw, true_boxes, TRUE_COLOR)
    draw_points(draw, true_points, TRUE_COLOR)
    draw_boxes(draw, metrics.parse_boxes(result.final), PRED_COLOR)
    draw_points(draw, metrics.parse_points(result.final), PRED_COLOR)

    font = ImageFont.load_default()
    chars = max(20, w // 6)
    status = "malformed" if result.malformed else f"score {result.score:.2f}"
    lines = [f"{item.family} {item.id}"[:chars], status]
    lines += textwrap.wrap("reply: " + " ".join(result.reply.split()), chars)[:6] or ["reply: (empty)"]
    line_h = 12
    canvas = Image.new("RGB", (w, h + line_h * len(lines) + 6), "white")
    canvas.paste(img, (0, 0))
    cap = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        cap.text((3, h + 3 + k * line_h), line, fill="black", font=font)
    return canvas


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:80]


def write_visualizations(report: EvalReport, items: Sequence[EvalItem], out_dir: str | os.PathLike, n: int = 16,
                         size: int = SIZE) -> list[Path]:
    """Writes up to `n` PNGs (families taken in turn, items in order) to `out_dir`; returns their paths."""
    by_id = {r.id: r for r in report.results}
    per_family: dict[str, list] = {}
    for it in items:
        if it.id in by_id and drawable(it):
            per_family.setdefault(it.family, []).append(it)
    chosen = [it for group in itertools.zip_longest(*per_family.values()) for it in group if it is not None][:n]
    out = Path(out_dir)
    if chosen:
        out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, it in enumerate(chosen):
        path = out / f"{k:03d}_{it.family}_{_safe_name(it.id)}.png"
        render(it, by_id[it.id], size).save(path)
        paths.append(path)
    return paths

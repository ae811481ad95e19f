"""Scenes of non-overlapping objects: placing them, drawing them, reading order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlm_jax.data.synthetic import render as R
from vlm_jax.data.synthetic.tasks.common import Plan, box_center, choose, pick


def place_objects(
    rng: np.random.Generator, w: Any, n: int, occupied: Sequence[tuple[int, int, int]] = ()
) -> list[tuple[int, int, int]] | None:
    """``n`` non-overlapping squares (x, y, size) with a gap, avoiding ``occupied``; None if it fails."""
    H, W, gap = w.height, w.width, w.min_gap
    short = min(H, W)
    total = n + len(occupied)
    cap = int(short / math.ceil(math.sqrt(max(1, total)))) - gap
    smax = max(6, min(int(w.object_size[1] * short), cap))  # >= 6: every shape is one blob
    smin = max(6, min(int(w.object_size[0] * short), smax))
    placed = list(occupied)
    out = []
    for _ in range(n):
        for a, b, c in rng.random((80, 3)).tolist():
            s = smin + int(a * (smax - smin + 1))
            x = int(b * (W - s + 1))
            y = int(c * (H - s + 1))
            if all(
                x + s + gap <= px or px + ps + gap <= x or y + s + gap <= py or py + ps + gap <= y
                for px, py, ps in placed
            ):
                placed.append((x, y, s))
                out.append((x, y, s))
                break
        else:
            return None
    return out


def distinct_attrs(rng: np.random.Generator, w: Any, n: int, shared_color: bool = False
                   ) -> list[tuple[str, str]] | None:
    """``n`` distinct (shape, colour) pairs; with ``shared_color``, ``n`` distinct shapes of one colour."""
    if shared_color:
        if n > len(w.shapes):
            return None
        color = pick(rng, w.colors)
        return [(w.shapes[i], color) for i in choose(rng, len(w.shapes), n)]
    k = len(w.shapes) * len(w.colors)
    if n > k:
        return None
    return [(w.shapes[i % len(w.shapes)], w.colors[i // len(w.shapes)]) for i in choose(rng, k, n)]


def make_objects(attrs: Sequence[tuple[str, str]], pos: Sequence[tuple[int, int, int]]) -> list[dict]:
    return [
        {"shape": sh, "color": c, "x": x, "y": y, "s": s}
        for (sh, c), (x, y, s) in zip(attrs, pos, strict=True)
    ]


def plan_scene(rng: np.random.Generator, w: Any, n: int, shared_color: bool = False) -> Plan | None:
    """A scene of ``n`` objects with distinct (shape, colour) (one colour, distinct shapes, with
    ``shared_color``) and a background."""
    attrs = distinct_attrs(rng, w, n, shared_color)
    pos = place_objects(rng, w, n)
    if attrs is None or pos is None:
        return None
    return {"bg": pick(rng, w.backgrounds), "objects": make_objects(attrs, pos)}


def draw_scene(
    objects: Sequence[dict], bg: str, rng: np.random.Generator, w: Any
) -> tuple[np.ndarray, list[R.Box], list[tuple[int, int, int]]]:
    """Renders a scene; returns image, tight pixel boxes and the (jittered) colours used."""
    bg_rgb = R.jitter_color(R.BACKGROUNDS[bg], w.color_jitter // 2, rng)
    rgbs = [R.jitter_color(R.COLORS[o["color"]], w.color_jitter, rng) for o in objects]
    img, boxes = R.render_scene(
        w.height,
        w.width,
        bg_rgb,
        [(o["shape"], c, o["x"], o["y"], o["s"]) for o, c in zip(objects, rgbs, strict=True)],
    )
    return img, boxes, rgbs


def reading_order(boxes: Sequence[Sequence[float]]) -> list[int]:
    """Indices sorted top-to-bottom, then left-to-right, by box centre."""
    return sorted(range(len(boxes)), key=lambda i: (box_center(boxes[i])[1], box_center(boxes[i])[0]))

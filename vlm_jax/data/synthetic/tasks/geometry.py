"""Geometry: the intersection point of two lines."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vlm_jax.data.synthetic import render as R
from vlm_jax.data.synthetic.tasks.common import Parts, Plan, choose, dumps, make_parts, norm_coord, pick, uniform


def _line_through(px: float, py: float, ang: float, length: float) -> list[float]:
    dx, dy = math.cos(ang) * length, math.sin(ang) * length
    return [round(px - dx, 2), round(py - dy, 2), round(px + dx, 2), round(py + dy, 2)]


def plan_geometry(rng: np.random.Generator, w: Any) -> Plan | None:
    H, W = w.height, w.width
    px = round(uniform(rng, 0.15 * W, 0.85 * W - 1), 2)
    py = round(uniform(rng, 0.15 * H, 0.85 * H - 1), 2)
    a1 = uniform(rng, 0, math.pi)
    a2 = a1 + uniform(rng, math.radians(35), math.radians(145))
    n = len(w.colors)
    cols = [w.colors[i] for i in choose(rng, n, min(3, n))]
    L = 2.0 * max(H, W)
    lines = [_line_through(px, py, a1, L), _line_through(px, py, a2, L)]
    if rng.random() < 0.5 and len(cols) == 3:  # a third, distractor line elsewhere
        qx, qy = uniform(rng, 0, W - 1), uniform(rng, 0, H - 1)
        if math.hypot(qx - px, qy - py) < 0.25 * min(H, W):
            return None
        lines.append(_line_through(qx, qy, uniform(rng, 0, math.pi), L))
    return {"point": [px, py], "lines": lines, "colors": cols[: len(lines)], "bg": pick(rng, w.backgrounds)}


GEOM_Q = (
    "Where do the {a} line and the {b} line intersect? Output the point in JSON format.",
    "Locate the intersection of the {a} and {b} lines, and output its coordinates in JSON format.",
    "Give the point_2d where the {a} line crosses the {b} line.",
)


def build_geometry(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    bg = R.jitter_color(R.BACKGROUNDS[plan["bg"]], w.color_jitter // 2, rng)
    rgbs = [R.jitter_color(R.COLORS[c], w.color_jitter, rng) for c in plan["colors"]]
    img = R.render_lines(
        w.height, w.width, bg, [(tuple(s), c) for s, c in zip(plan["lines"], rgbs, strict=True)]
    )
    px, py = plan["point"]  # PIL pixel-centre coordinates -> edge coordinates (+0.5)
    pt = [norm_coord(px + 0.5, w.width), norm_coord(py + 0.5, w.height)]
    a, b = plan["colors"][:2]
    if rng.random() < 0.5:
        a, b = b, a
    return make_parts(
        images=[img],
        media=["image"],
        question=pick(rng, GEOM_Q).format(a=a, b=b),
        answer_text=dumps([{"point_2d": pt, "label": "intersection"}]),
        answer={"point_2d": pt, "radius": w.point_radius},
        meta={"pixel_point": [px, py], "rgbs": [list(c) for c in rgbs]},
    )

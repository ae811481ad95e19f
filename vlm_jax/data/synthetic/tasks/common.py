"""Shared by the task families: the Plan / Parts types, random draws, [0, 1000] coordinates, phrasing."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Plan = dict[str, Any]
Parts = dict[str, Any]


def ri(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A uniform integer in [lo, hi] (inclusive). (One ``rng.random()`` call: faster than ``integers``.)"""
    return lo + int(rng.random() * (hi - lo + 1))


def pick(rng: np.random.Generator, seq: Sequence) -> Any:
    """A uniform element of ``seq``."""
    return seq[int(rng.random() * len(seq))]


def uniform(rng: np.random.Generator, a: float, b: float) -> float:
    """A uniform float in [a, b)."""
    return a + (b - a) * float(rng.random())


def choose(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` distinct indices of ``range(n)`` in random order."""
    return np.argsort(rng.random(n), kind="stable")[:k].tolist()


def norm_coord(v: float, size: int) -> int:
    """Pixel edge coordinate -> integer in [0, 1000]."""
    return min(1000, max(0, int(math.floor(v * 1000.0 / size + 0.5))))


def norm_box(box: Sequence[float], width: int, height: int) -> list[int]:
    """Pixel box (edges) -> [x1, y1, x2, y2] in [0, 1000]."""
    x1, y1, x2, y2 = box
    return [norm_coord(x1, width), norm_coord(y1, height), norm_coord(x2, width), norm_coord(y2, height)]


def box_center(box: Sequence[float]) -> tuple[float, float]:
    """Centre of a pixel box (edge coordinates)."""
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def object_point(box: Sequence[float], w: Any) -> list[int]:
    """Centre of a pixel box -> [x, y] in [0, 1000] (``w``: the world, for its image size)."""
    cx, cy = box_center(box)
    return [norm_coord(cx, w.width), norm_coord(cy, w.height)]


def position_name(cx: float, cy: float, width: int, height: int) -> str:
    """'top left', 'top', ..., 'center', ..., 'bottom right' from the 3 x 3 grid cell of a point."""
    col = min(2, int(3 * cx / width))
    row = min(2, int(3 * cy / height))
    v = ("top", "", "bottom")[row]
    h = ("left", "", "right")[col]
    return (v + " " + h).strip() or "center"


def at_position(name: str) -> str:
    """'top left' -> 'at the top left'; 'center' -> 'in the center'; 'left' -> 'on the left'."""
    if name == "center":
        return "in the center"
    if name in ("left", "right"):
        return "on the " + name
    return "at the " + name


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def join_and(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def label(o: dict) -> str:
    return f"{o['color']} {o['shape']}"


def dumps(objs: list[dict]) -> str:
    return json.dumps(objs)


def capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def make_parts(**kw: Any) -> Parts:
    """A task's ``Parts``: no media, reasoning or meta unless given."""
    p = {"images": [], "videos": [], "media": [], "reasoning": None, "meta": {}}
    p.update(kw)
    return p

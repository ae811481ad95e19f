"""Task families of the synthetic world.

Each family is a pair of functions:

- ``plan_<task>(rng, w) -> dict | None``: draws the *semantic content* of a sample (the scene,
  which object is asked about, the numbers, ...) as a JSON-able dict. ``None`` rejects the draw
  (the world retries with the next attempt). The plan is what the train / held-out split is
  decided on (a hash of it), so eval content never appears in training in any phrasing.
- ``build_<task>(plan, rng, w) -> Parts``: renders the pixels and writes the text (with ``rng``
  only for style: phrasing, colour jitter, background shade). Deterministic given (plan, rng).

``w`` is the ``SyntheticWorld`` (its resolved configuration). ``Parts`` is a dict with keys
``images``, ``videos``, ``media`` (order of "image"/"video" items before the question),
``question``, ``answer_text``, ``answer`` (machine-checkable), ``reasoning`` (str or None) and
``meta``.

Conventions: boxes/points are normalised to integers in [0, 1000] from pixel *edge* coordinates
(``round(x / width * 1000)``; a box's x2/y2 are the exclusive pixel edges); JSON answers are
``json.dumps`` lists like ``[{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlm_jax.data.synthetic import render as R

Plan = dict[str, Any]
Parts = dict[str, Any]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SIDES = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6, "circle": 0, "star": 10, "cross": 12}


# ---------------------------------------------------------------------------------------- helpers


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


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---------------------------------------------------------------------------------------- scenes


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


def distinct_attrs(rng: np.random.Generator, w: Any, n: int) -> list[tuple[str, str]] | None:
    """``n`` distinct (shape, colour) pairs."""
    k = len(w.shapes) * len(w.colors)
    if n > k:
        return None
    return [(w.shapes[i % len(w.shapes)], w.colors[i // len(w.shapes)]) for i in choose(rng, k, n)]


def make_objects(attrs: Sequence[tuple[str, str]], pos: Sequence[tuple[int, int, int]]) -> list[dict]:
    return [
        {"shape": sh, "color": c, "x": x, "y": y, "s": s}
        for (sh, c), (x, y, s) in zip(attrs, pos, strict=True)
    ]


def plan_scene(rng: np.random.Generator, w: Any, n: int) -> Plan | None:
    """A scene of ``n`` objects with distinct (shape, colour) and a background."""
    attrs = distinct_attrs(rng, w, n)
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


def _parts(**kw: Any) -> Parts:
    p = {"images": [], "videos": [], "media": [], "reasoning": None, "meta": {}}
    p.update(kw)
    return p


# --------------------------------------------------------------------------------------- caption


def plan_caption(rng: np.random.Generator, w: Any) -> Plan | None:
    return plan_scene(rng, w, ri(rng, 1, w.max_objects))


CAPTION_Q = (
    "Describe the image.",
    "Describe this image briefly.",
    "What is in the image?",
    "Write a short caption for the image.",
    "What do you see?",
)


def build_caption(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs = plan["objects"]
    img, boxes, _ = draw_scene(objs, plan["bg"], rng, w)
    order = reading_order(boxes)
    detailed = bool(rng.random() < 0.5)
    phrases = []
    for i in order:
        p = article(label(objs[i]))
        if detailed:
            p += " " + at_position(position_name(*box_center(boxes[i]), w.width, w.height))
        phrases.append(p)
    text = _capital(join_and(phrases)) + f" on a {plan['bg']} background."
    return _parts(
        images=[img],
        media=["image"],
        question=pick(rng, CAPTION_Q),
        answer_text=text,
        answer={"text": text},
        meta={"boxes": [list(b) for b in boxes]},
    )


# ------------------------------------------------------------------------------------- grounding


def plan_ground(rng: np.random.Generator, w: Any) -> Plan | None:
    n = ri(rng, 1, w.max_objects)
    p = plan_scene(rng, w, n)
    if p is None:
        return None
    p["target"] = ri(rng, 0, n - 1)
    return p


BOX_Q = (
    "Locate the {t} in the image, and output its bbox coordinates in JSON format.",
    "Where is the {t}? Output its bounding box as JSON.",
    "Find the {t} and give its bbox_2d in JSON.",
    "Output the bounding box of the {t} in JSON format.",
)
POINT_Q = (
    "Point to the {t} in the image, and output its coordinates in JSON format.",
    "Where is the {t}? Answer with a point in JSON.",
    "Give the point_2d of the {t} in JSON format.",
)


def build_ground_box(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs = plan["objects"]
    img, boxes, rgbs = draw_scene(objs, plan["bg"], rng, w)
    t = plan["target"]
    lab = label(objs[t])
    nb = norm_box(boxes[t], w.width, w.height)
    return _parts(
        images=[img],
        media=["image"],
        question=pick(rng, BOX_Q).format(t=lab),
        answer_text=dumps([{"bbox_2d": nb, "label": lab}]),
        answer={"bbox_2d": nb, "label": lab},
        meta={"pixel_box": list(boxes[t]), "rgb": list(rgbs[t]), "boxes": [list(b) for b in boxes]},
    )


def object_point(box: Sequence[int], w: Any) -> list[int]:
    cx, cy = box_center(box)
    return [norm_coord(cx, w.width), norm_coord(cy, w.height)]


def build_ground_point(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs = plan["objects"]
    img, boxes, rgbs = draw_scene(objs, plan["bg"], rng, w)
    t = plan["target"]
    lab = label(objs[t])
    pt = object_point(boxes[t], w)
    nb = norm_box(boxes[t], w.width, w.height)
    return _parts(
        images=[img],
        media=["image"],
        question=pick(rng, POINT_Q).format(t=lab),
        answer_text=dumps([{"point_2d": pt, "label": lab}]),
        answer={"point_2d": pt, "bbox_2d": nb, "label": lab},
        meta={"pixel_box": list(boxes[t]), "rgb": list(rgbs[t]), "boxes": [list(b) for b in boxes]},
    )


# -------------------------------------------------------------------------------------- counting


def category_phrase(cat: dict, count: int | None = None) -> str:
    """'red circles' / 'circles' / 'red objects' (plural unless count == 1)."""
    one = count == 1
    if cat["shape"] and cat["color"]:
        return f"{cat['color']} {cat['shape'] if one else plural(cat['shape'])}"
    if cat["shape"]:
        return cat["shape"] if one else plural(cat["shape"])
    return f"{cat['color']} {'object' if one else 'objects'}"


def matches(o: dict, cat: dict) -> bool:
    return (not cat["shape"] or o["shape"] == cat["shape"]) and (
        not cat["color"] or o["color"] == cat["color"]
    )


def plan_count_scene(
    rng: np.random.Generator, w: Any, k: int, n_distract: int, cat: dict | None = None
) -> Plan | None:
    """A scene with exactly ``k`` objects of a category (random unless given) and ``n_distract`` others."""
    if cat is None:
        kind = pick(rng, ("shape", "color", "both"))
        cat = {
            "shape": pick(rng, w.shapes) if kind != "color" else "",
            "color": pick(rng, w.colors) if kind != "shape" else "",
        }
    attrs = []
    for _ in range(k):
        attrs.append((cat["shape"] or pick(rng, w.shapes), cat["color"] or pick(rng, w.colors)))
    for _ in range(n_distract):
        for _try in range(50):
            a = (pick(rng, w.shapes), pick(rng, w.colors))
            if not matches({"shape": a[0], "color": a[1]}, cat):
                attrs.append(a)
                break
        else:
            return None
    attrs = [attrs[i] for i in choose(rng, len(attrs), len(attrs))]
    pos = place_objects(rng, w, len(attrs))
    if pos is None:
        return None
    return {"bg": pick(rng, w.backgrounds), "objects": make_objects(attrs, pos), "category": cat, "count": k}


def plan_count(rng: np.random.Generator, w: Any) -> Plan | None:
    return plan_count_scene(rng, w, ri(rng, w.min_count, w.max_count), ri(rng, 0, w.max_distractors))


COUNT_Q = (
    "How many {c} are there?",
    "How many {c} are in the image?",
    "Count the {c}.",
    "How many {c} can you see? Answer with a number.",
)
COUNT_BOX_Q = (
    "Locate every {c1} in the image and output their bbox coordinates in JSON format, then count them.",
    "Find all {c} with bounding boxes in JSON, then say how many there are.",
)
COUNT_POINT_Q = (
    "Point to every {c1} in the image, output their coordinates in JSON format, then count them.",
    "Mark each of the {c} with a point in JSON, then give the total.",
)


def _count_common(plan: Plan, rng: np.random.Generator, w: Any) -> tuple:
    objs = plan["objects"]
    img, boxes, _ = draw_scene(objs, plan["bg"], rng, w)
    targets = [i for i in reading_order(boxes) if matches(objs[i], plan["category"])]
    k = plan["count"]
    assert len(targets) == k
    c = category_phrase(plan["category"])
    where = [at_position(position_name(*box_center(boxes[i]), w.width, w.height)) for i in targets]
    if k == 0:
        reasoning = f"I look for {c}. I do not see any, so there are 0."
    else:
        seen = join_and(["one " + p for p in where])
        reasoning = f"I look for {c}. I see {seen}. That makes {k}."
    meta = {"boxes": [list(b) for b in boxes], "targets": targets}
    return objs, img, boxes, targets, k, c, reasoning, meta


def build_count(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs, img, boxes, targets, k, c, reasoning, meta = _count_common(plan, rng, w)
    return _parts(
        images=[img],
        media=["image"],
        question=pick(rng, COUNT_Q).format(c=c),
        answer_text=str(k),
        answer={"count": k},
        reasoning=reasoning,
        meta=meta,
    )


def _total_sentence(k: int, plan: Plan) -> str:
    if k == 0:
        return f"There are no {category_phrase(plan['category'])}."
    verb = "is" if k == 1 else "are"
    return f"There {verb} {k} {category_phrase(plan['category'], k)}."


def build_count_boxes(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs, img, boxes, targets, k, c, reasoning, meta = _count_common(plan, rng, w)
    nbs = [norm_box(boxes[i], w.width, w.height) for i in targets]
    js = dumps([{"bbox_2d": b, "label": label(objs[i])} for b, i in zip(nbs, targets, strict=True)])
    c1 = category_phrase(plan["category"], 1)
    return _parts(
        images=[img],
        media=["image"],
        question=pick(rng, COUNT_BOX_Q).format(c=c, c1=c1),
        answer_text=js + "\n" + _total_sentence(k, plan),
        answer={"count": k, "boxes": nbs},
        reasoning=reasoning,
        meta=meta,
    )


def build_count_points(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs, img, boxes, targets, k, c, reasoning, meta = _count_common(plan, rng, w)
    pts = [object_point(boxes[i], w) for i in targets]
    js = dumps([{"point_2d": p, "label": label(objs[i])} for p, i in zip(pts, targets, strict=True)])
    c1 = category_phrase(plan["category"], 1)
    return _parts(
        images=[img],
        media=["image"],
        question=pick(rng, COUNT_POINT_Q).format(c=c, c1=c1),
        answer_text=js + "\n" + _total_sentence(k, plan),
        answer={"count": k, "points": pts},
        reasoning=reasoning,
        meta=meta,
    )


# ------------------------------------------------------------------------------------------- OCR


def plan_ocr(rng: np.random.Generator, w: Any) -> Plan | None:
    return {
        "word": pick(rng, w.ocr_words),
        "case": pick(rng, ("lower", "lower", "upper", "title")),
        "font": ri(rng, 0, len(w.fonts) - 1),
        "size": ri(rng, w.font_sizes[0], w.font_sizes[1]),
        "angle": round(uniform(rng, -w.ocr_max_rotation, w.ocr_max_rotation), 1),
        "color": pick(rng, w.colors),
        "bg": pick(rng, w.backgrounds),
        "fx": round(float(rng.random()), 3),
        "fy": round(float(rng.random()), 3),
    }


OCR_Q = (
    "What word is written in the image?",
    "Read the text in the image.",
    "What does the text say?",
    "What is written here? Answer with the text only.",
)


def apply_case(word: str, case: str) -> str:
    return {"upper": word.upper(), "title": word.title()}.get(case, word)


def build_ocr(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    text = apply_case(plan["word"], plan["case"])
    font = w.fonts[plan["font"] % len(w.fonts)]
    size = plan["size"]
    while True:  # shrink until the (rotated) text fits with a 2 px margin
        m, resolved = R.text_mask(text, font, size, plan["angle"])
        if (m.width <= w.width - 4 and m.height <= w.height - 4) or size <= 6:
            break
        size -= 1
    x = 2 + int(plan["fx"] * max(0, w.width - 4 - m.width))
    y = 2 + int(plan["fy"] * max(0, w.height - 4 - m.height))
    rgb = R.jitter_color(R.COLORS[plan["color"]], w.color_jitter, rng)
    bg = R.jitter_color(R.BACKGROUNDS[plan["bg"]], w.color_jitter // 2, rng)
    img = R.render_text(w.height, w.width, bg, [(m, rgb, x, y)])
    box = [x, y, x + m.width, y + m.height]
    return _parts(
        images=[img],
        media=["image"],
        question=pick(rng, OCR_Q),
        answer_text=text,
        answer={"text": text},
        meta={"text_box": box, "font": resolved, "font_size": size, "rgb": list(rgb)},
    )


# ------------------------------------------------------------------------------------------ charts


def plan_chart(rng: np.random.Generator, w: Any, kind: str) -> Plan | None:
    n = ri(rng, w.chart_bars[0], w.chart_bars[1])
    if n > len(w.colors):
        return None
    colors = [w.colors[i] for i in choose(rng, len(w.colors), n)]
    values = [ri(rng, 1, w.chart_max_value) for _ in range(n)]
    p: Plan = {"colors": colors, "values": values, "bg": pick(rng, ("white", "light gray"))}
    if kind == "value":
        p["q"] = "value"
        p["bar"] = ri(rng, 0, n - 1)
        return p
    q = pick(rng, ("max", "min", "pair", "yesno"))
    p["q"] = q
    if q in ("max", "min"):
        best = max(values) if q == "max" else min(values)
        if values.count(best) != 1:
            return None
    else:
        a, b = choose(rng, n, 2)
        if values[a] == values[b]:
            return None
        p["pair"] = [a, b]
    return p


def plan_chart_value(rng: np.random.Generator, w: Any) -> Plan | None:
    return plan_chart(rng, w, "value")


def plan_chart_compare(rng: np.random.Generator, w: Any) -> Plan | None:
    return plan_chart(rng, w, "compare")


def _draw_chart(plan: Plan, rng: np.random.Generator, w: Any) -> tuple[np.ndarray, list[R.Box]]:
    bg = R.BACKGROUNDS[plan["bg"]]
    grid = tuple(c - 35 for c in bg)
    rgbs = [R.jitter_color(R.COLORS[c], w.color_jitter, rng) for c in plan["colors"]]
    return R.render_bar_chart(
        w.height, w.width, plan["values"], rgbs, w.chart_max_value, bg, (30, 30, 30), grid
    )


VALUE_Q = (
    "What is the value of the {c} bar?",
    "How high is the {c} bar? Each grid line is one unit.",
    "Read the value of the {c} bar.",
)


def build_chart_value(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    img, boxes = _draw_chart(plan, rng, w)
    i = plan["bar"]
    v = plan["values"][i]
    c = plan["colors"][i]
    return _parts(
        images=[img],
        media=["image"],
        question=pick(rng, VALUE_Q).format(c=c),
        answer_text=str(v),
        answer={"value": v},
        reasoning=f"The {c} bar reaches grid line {v}, so its value is {v}.",
        meta={"bar_boxes": [list(b) for b in boxes]},
    )


def build_chart_compare(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    img, boxes = _draw_chart(plan, rng, w)
    vals, cols, q = plan["values"], plan["colors"], plan["q"]
    readout = join_and([f"the {c} bar is {v}" for c, v in zip(cols, vals, strict=True)])
    if q in ("max", "min"):
        best = vals.index(max(vals) if q == "max" else min(vals))
        word = "tallest" if q == "max" else "shortest"
        question = pick(rng, (f"Which bar is the {word}?", f"Which color is the {word} bar?"))
        ans = cols[best]
        answer_text = f"The {ans} bar."
        reasoning = f"Reading the bars: {readout}. The {word} is the {ans} bar with {vals[best]}."
        answer = {"text": ans}
    else:
        a, b = plan["pair"]
        ca, cb, va, vb = cols[a], cols[b], vals[a], vals[b]
        bigger = ca if va > vb else cb
        reasoning = (
            f"The {ca} bar is {va} and the {cb} bar is {vb}. "
            f"{max(va, vb)} is more than {min(va, vb)}, so the {bigger} bar is taller."
        )
        if q == "pair":
            question = pick(
                rng, (f"Which bar is taller, the {ca} or the {cb}?", f"Which is larger: {ca} or {cb}?")
            )
            answer_text = f"The {bigger} bar."
            answer = {"text": bigger}
        else:
            question = f"Is the {ca} bar taller than the {cb} bar?"
            answer_text = "Yes" if va > vb else "No"
            answer = {"text": answer_text.lower()}
    return _parts(
        images=[img],
        media=["image"],
        question=question,
        answer_text=answer_text,
        answer=answer,
        reasoning=reasoning,
        meta={"bar_boxes": [list(b) for b in boxes]},
    )


# ---------------------------------------------------------------------------------------- geometry


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
    return _parts(
        images=[img],
        media=["image"],
        question=pick(rng, GEOM_Q).format(a=a, b=b),
        answer_text=dumps([{"point_2d": pt, "label": "intersection"}]),
        answer={"point_2d": pt, "radius": w.point_radius},
        meta={"pixel_point": [px, py], "rgbs": [list(c) for c in rgbs]},
    )


# ------------------------------------------------------------------------------------------ spatial

RELATIONS = ("left of", "right of", "above", "below")


def relation(o: dict, a: dict, rel: str) -> bool | None:
    """True if ``o`` lies entirely in direction ``rel`` of ``a``; False if its centre is on the other
    side of ``a``'s centre (or level with it); None when ambiguous (overlapping range)."""
    ox1, oy1, os_ = o["x"], o["y"], o["s"]
    ax1, ay1, as_ = a["x"], a["y"], a["s"]
    ocx, ocy, acx, acy = ox1 + os_ / 2, oy1 + os_ / 2, ax1 + as_ / 2, ay1 + as_ / 2
    if rel == "left of":
        strict, other = ox1 + os_ <= ax1, ocx >= acx
    elif rel == "right of":
        strict, other = ox1 >= ax1 + as_, ocx <= acx
    elif rel == "above":
        strict, other = oy1 + os_ <= ay1, ocy >= acy
    else:
        strict, other = oy1 >= ay1 + as_, ocy <= acy
    return True if strict else (False if other else None)


def plan_spatial(rng: np.random.Generator, w: Any) -> Plan | None:
    n = ri(rng, 2, max(2, w.max_objects))
    p = plan_scene(rng, w, n)
    if p is None:
        return None
    objs = p["objects"]
    kind = pick(rng, ("what", "what", "yesno"))
    cands = []
    for ai in range(n):
        for rel in RELATIONS:
            rs = [relation(objs[j], objs[ai], rel) if j != ai else False for j in range(n)]
            if kind == "what":
                if rs.count(True) == 1 and None not in rs:
                    cands.append({"anchor": ai, "rel": rel, "target": rs.index(True)})
            else:
                for j in range(n):
                    if j != ai and rs[j] is not None:
                        cands.append({"anchor": ai, "rel": rel, "target": j, "truth": rs[j]})
    if not cands:
        return None
    if kind == "yesno":  # balance yes / no
        want = bool(rng.random() < 0.5)
        same = [c for c in cands if c["truth"] == want]
        cands = same or cands
    p.update(pick(rng, cands), kind=kind)
    return p


def build_spatial(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs = plan["objects"]
    img, boxes, _ = draw_scene(objs, plan["bg"], rng, w)
    a, t, rel = objs[plan["anchor"]], objs[plan["target"]], plan["rel"]
    la, lt = label(a), label(t)
    pa = position_name(*box_center(boxes[plan["anchor"]]), w.width, w.height)
    pt = position_name(*box_center(boxes[plan["target"]]), w.width, w.height)
    if plan["kind"] == "what":
        question = pick(rng, (f"What is {rel} the {la}?", f"Which object is {rel} the {la}?"))
        answer_text = f"The {lt}."
        answer = {"text": lt}
        reasoning = f"The {la} is {at_position(pa)}. The {lt} is {at_position(pt)}, so it is {rel} the {la}."
    else:
        question = f"Is the {lt} {rel} the {la}?"
        yes = plan["truth"]
        answer_text = "Yes" if yes else "No"
        answer = {"text": answer_text.lower()}
        reasoning = (
            f"The {la} is {at_position(pa)} and the {lt} is {at_position(pt)}, "
            f"so the {lt} is {'' if yes else 'not '}{rel} the {la}."
        )
    return _parts(
        images=[img],
        media=["image"],
        question=question,
        answer_text=answer_text,
        answer=answer,
        reasoning=reasoning,
        meta={"boxes": [list(b) for b in boxes]},
    )


# ------------------------------------------------------------------------------------- multi-image


def plan_multi_image(rng: np.random.Generator, w: Any) -> Plan | None:
    kind = pick(rng, ("more", "total", "difference"))
    if kind in ("more", "total"):
        lo = max(w.min_count, 1 if kind == "more" else w.min_count)
        k1, k2 = ri(rng, lo, w.max_count), ri(rng, lo, w.max_count)
        if kind == "more" and k1 == k2:
            return None
        s1 = plan_count_scene(rng, w, k1, ri(rng, 0, w.max_distractors))
        if s1 is None:
            return None
        s2 = plan_count_scene(rng, w, k2, ri(rng, 0, w.max_distractors), cat=s1["category"])
        if s2 is None:
            return None
        return {"kind": kind, "scenes": [s1, s2]}
    n = ri(rng, 2, max(2, w.max_objects))
    s1 = plan_scene(rng, w, n)
    if s1 is None:
        return None
    objs = s1["objects"]
    change = pick(rng, ("removed", "added", "recolored"))
    objs2 = [dict(o) for o in objs]
    info: dict = {"change": change}
    if change == "removed":
        i = ri(rng, 0, n - 1)
        info["object"] = label(objs[i])
        del objs2[i]
    elif change == "added":
        used = {(o["shape"], o["color"]) for o in objs}
        free = [(s, c) for c in w.colors for s in w.shapes if (s, c) not in used]
        pos = place_objects(rng, w, 1, occupied=[(o["x"], o["y"], o["s"]) for o in objs])
        if not free or pos is None:
            return None
        sh, c = pick(rng, free)
        objs2.append({"shape": sh, "color": c, "x": pos[0][0], "y": pos[0][1], "s": pos[0][2]})
        info["object"] = f"{c} {sh}"
    else:
        i = ri(rng, 0, n - 1)
        used = {(o["shape"], o["color"]) for o in objs}
        new = [c for c in w.colors if (objs[i]["shape"], c) not in used]
        if not new:
            return None
        c = pick(rng, new)
        info.update(object=label(objs[i]), new_color=c)
        objs2[i]["color"] = c
    return {"kind": kind, "scenes": [s1, {"bg": s1["bg"], "objects": objs2}], **info}


def build_multi_image(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    s1, s2 = plan["scenes"]
    img1, b1, _ = draw_scene(s1["objects"], s1["bg"], rng, w)
    img2, b2, _ = draw_scene(s2["objects"], s2["bg"], rng, w)
    kind = plan["kind"]
    if kind in ("more", "total"):
        k1, k2 = s1["count"], s2["count"]
        c = category_phrase(s1["category"])
        if kind == "more":
            which = "first" if k1 > k2 else "second"
            question = pick(
                rng,
                (f"Which image has more {c}, the first or the second?", f"Which image contains more {c}?"),
            )
            answer_text = f"The {which} image."
            answer = {"text": which}
            reasoning = f"The first image has {k1} {c} and the second has {k2}, so the {which} has more."
        else:
            question = pick(
                rng, (f"How many {c} are there in the two images in total?", f"Count the {c} in both images.")
            )
            answer_text = str(k1 + k2)
            answer = {"count": k1 + k2}
            reasoning = f"The first image has {k1} {c} and the second has {k2}. {k1} + {k2} = {k1 + k2}."
    else:
        question = pick(
            rng,
            (
                "What changed between the first and the second image?",
                "What is different in the second image?",
            ),
        )
        obj = plan["object"]
        if plan["change"] == "removed":
            answer_text = f"The {obj} was removed."
        elif plan["change"] == "added":
            answer_text = f"{_capital(article(obj))} was added."
        else:
            answer_text = f"The {obj} turned {plan['new_color']}."
        answer = {"text": answer_text, "change": plan["change"], "object": obj}
        first = join_and([article(label(o)) for o in s1["objects"]])
        second = join_and([article(label(o)) for o in s2["objects"]])
        reasoning = f"The first image shows {first}. The second image shows {second}. {answer_text}"
    return _parts(
        images=[img1, img2],
        media=["image", "image"],
        question=question,
        answer_text=answer_text,
        answer=answer,
        reasoning=reasoning,
        meta={"boxes": [[list(b) for b in b1], [list(b) for b in b2]]},
    )


# ------------------------------------------------------------------------------------------- video


def _event_frame(rng: np.random.Generator, w: Any, lo: int, hi: int) -> int:
    """A frame in [lo, hi]; even (a temporal patch group boundary) when ``video_align`` is set."""
    if w.video_align:
        lo2, hi2 = (lo + 1) // 2, hi // 2
        return 2 * ri(rng, lo2, hi2) if hi2 >= lo2 else lo
    return ri(rng, lo, hi)


def draw_video(objects: Sequence[dict], bg: str, rng: np.random.Generator, w: Any) -> tuple[np.ndarray, list]:
    """Renders frames; object ``o`` is visible in frames [o['start'], o['end']). Returns frames, boxes."""
    bg_rgb = R.jitter_color(R.BACKGROUNDS[bg], w.color_jitter // 2, rng)
    rgbs = [R.jitter_color(R.COLORS[o["color"]], w.color_jitter, rng) for o in objects]
    frames = []
    boxes: list = [None] * len(objects)
    for f in range(w.video_frames):
        vis = [i for i, o in enumerate(objects) if o["start"] <= f < o["end"]]
        img, bx = R.render_scene(
            w.height,
            w.width,
            bg_rgb,
            [(objects[i]["shape"], rgbs[i], objects[i]["x"], objects[i]["y"], objects[i]["s"]) for i in vis],
        )
        for i, b in zip(vis, bx, strict=True):
            boxes[i] = list(b)
        frames.append(img)
    return np.stack(frames), boxes


def plan_video_temporal(rng: np.random.Generator, w: Any) -> Plan | None:
    T = w.video_frames
    n_static = ri(rng, 0, 2)
    n_events = 1 + int(rng.random() < 0.5)
    p = plan_scene(rng, w, n_static + n_events)
    if p is None or T < 3:
        return None
    objs = p["objects"]
    for o in objs[:n_static]:
        o.update(start=0, end=T)
    used = set()
    for o in objs[n_static:]:
        k = _event_frame(rng, w, 1, T - 1)
        if k in used:
            return None
        used.add(k)
        if rng.random() < 0.5:
            o.update(start=k, end=T, event="appear")
        else:
            o.update(start=0, end=k, event="disappear")
    p["target"] = n_static + ri(rng, 0, n_events - 1)
    return p


def build_video_temporal(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs = plan["objects"]
    frames, boxes = draw_video(objs, plan["bg"], rng, w)
    o = objs[plan["target"]]
    ev = o["event"]
    k = o["start"] if ev == "appear" else o["end"]
    t = k / w.video_fps
    lab = label(o)
    question = pick(
        rng,
        (f"When does the {lab} {ev}?", f"At what time does the {lab} {ev}? Answer in seconds."),
    )
    return _parts(
        videos=[{"frames": frames, "fps": float(w.video_fps)}],
        media=["video"],
        question=question,
        answer_text=f"At {t:.1f} seconds.",
        answer={"time": t, "frame": k, "tolerance": 0.5 / w.video_fps},
        reasoning=f"The {lab} is {'absent' if ev == 'appear' else 'visible'} before {t:.1f} seconds "
        f"and {'visible' if ev == 'appear' else 'gone'} from {t:.1f} seconds on.",
        meta={"boxes": boxes, "frame": k},
    )


def plan_video_count(rng: np.random.Generator, w: Any) -> Plan | None:
    T = w.video_frames
    k = ri(rng, max(1, w.min_count), min(w.max_count, w.video_max_count))
    p = plan_count_scene(rng, w, k, ri(rng, 0, min(2, w.max_distractors)))
    if p is None or T < 2:
        return None
    for o in p["objects"]:
        s = _event_frame(rng, w, 0, T - 2)
        e = _event_frame(rng, w, s + 2, T) if s + 2 <= T else T
        o.update(start=s, end=max(e, s + 1))
    return p


VCOUNT_Q = (
    "How many {c} appear in the video?",
    "How many different {c} are shown during the video?",
    "Count the {c} that appear in the video.",
)


def build_video_count(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    objs = plan["objects"]
    frames, boxes = draw_video(objs, plan["bg"], rng, w)
    k = plan["count"]
    c = category_phrase(plan["category"])
    targets = [i for i, o in enumerate(objs) if matches(o, plan["category"])]
    times = sorted(objs[i]["start"] / w.video_fps for i in targets)
    reasoning = f"I watch for {c}. " + (
        "They appear at " + join_and([f"{t:.1f}" for t in times]) + f" seconds, so {k} in all."
        if k
        else "None appear."
    )
    return _parts(
        videos=[{"frames": frames, "fps": float(w.video_fps)}],
        media=["video"],
        question=pick(rng, VCOUNT_Q).format(c=c),
        answer_text=str(k),
        answer={"count": k},
        reasoning=reasoning,
        meta={"boxes": boxes, "targets": targets},
    )


# ------------------------------------------------------------------------------------------ text


def plan_text(rng: np.random.Generator, w: Any) -> Plan | None:
    op = pick(rng, ("add", "sub", "mul", "compare", "next", "sort", "reverse", "sides", "json"))
    if op in ("add", "sub"):
        a, b = ri(rng, 0, 99), ri(rng, 0, 99)
        if op == "sub" and b > a:
            a, b = b, a
        return {"op": op, "a": a, "b": b}
    if op == "mul":
        return {"op": op, "a": ri(rng, 0, 12), "b": ri(rng, 0, 12)}
    if op == "compare":
        a, b = ri(rng, 0, 999), ri(rng, 0, 999)
        return None if a == b else {"op": op, "a": a, "b": b}
    if op == "next":
        return {"op": op, "a": ri(rng, 0, 998)}
    if op == "sort":
        return {"op": op, "xs": [ri(rng, 0, 99) for _ in range(ri(rng, 3, 5))]}
    if op == "reverse":
        return {"op": op, "word": pick(rng, w.ocr_words)}
    if op == "sides":
        return {"op": op, "shape": pick(rng, [s for s in w.shapes if s in SIDES])}
    return {
        "op": op,
        "color": pick(rng, w.colors),
        "shape": pick(rng, w.shapes),
        "box": sorted([ri(rng, 0, 1000), ri(rng, 0, 1000)]) + sorted([ri(rng, 0, 1000), ri(rng, 0, 1000)]),
    }


def build_text(plan: Plan, rng: np.random.Generator, w: Any) -> Parts:
    op = plan["op"]
    if op in ("add", "sub", "mul"):
        a, b = plan["a"], plan["b"]
        sym = {"add": "+", "sub": "-", "mul": "*"}[op]
        r = a + b if op == "add" else (a - b if op == "sub" else a * b)
        q = pick(rng, (f"What is {a} {sym} {b}?", f"Compute {a} {sym} {b}.", f"{a} {sym} {b} = ?"))
        ans = str(r)
        if op == "add":
            ta, tb = a // 10 * 10, b // 10 * 10
            reasoning = (
                f"Tens: {ta} + {tb} = {ta + tb}. Ones: {a % 10} + {b % 10} = {a % 10 + b % 10}. Total {r}."
            )
        elif op == "sub":
            reasoning = f"{a} - {b}: {b} + {r} = {a}, so the answer is {r}."
        else:
            reasoning = f"{a} * {b} means {b} added {a} times, which is {r}."
        answer: dict = {"value": r}
    elif op == "compare":
        a, b = plan["a"], plan["b"]
        q = pick(rng, (f"Which number is larger, {a} or {b}?", f"Which is bigger: {a} or {b}?"))
        ans = str(max(a, b))
        reasoning = f"{max(a, b)} is more than {min(a, b)}."
        answer = {"value": max(a, b)}
    elif op == "next":
        a = plan["a"]
        q = pick(rng, (f"What number comes after {a}?", f"What is the next number after {a}?"))
        ans = str(a + 1)
        reasoning = f"{a} + 1 = {a + 1}."
        answer = {"value": a + 1}
    elif op == "sort":
        xs = plan["xs"]
        q = pick(
            rng, ("Sort these numbers from smallest to largest: ", "Order from low to high: ")
        ) + ", ".join(map(str, xs))
        ans = ", ".join(map(str, sorted(xs)))
        reasoning = f"The smallest is {min(xs)} and the largest is {max(xs)}. In order: {ans}."
        answer = {"text": ans}
    elif op == "reverse":
        word = plan["word"]
        q = pick(rng, (f"Spell the word '{word}' backwards.", f"Reverse the letters of '{word}'."))
        ans = word[::-1]
        reasoning = "The letters are " + ", ".join(word) + ". Backwards: " + ", ".join(ans) + "."
        answer = {"text": ans}
    elif op == "sides":
        sh = plan["shape"]
        n = SIDES[sh]
        q = pick(rng, (f"How many sides does a {sh} have?", f"How many straight sides has a {sh}?"))
        ans = str(n)
        reasoning = f"A {sh} has {NUMBER_WORDS[n] if n <= 10 else n} straight sides."
        answer = {"value": n}
    else:
        lab = f"{plan['color']} {plan['shape']}"
        x1, x2, y1, y2 = plan["box"]
        q = f"Write the box from ({x1}, {y1}) to ({x2}, {y2}) of the {lab} as JSON."
        ans = dumps([{"bbox_2d": [x1, y1, x2, y2], "label": lab}])
        reasoning = f"The top left corner is ({x1}, {y1}) and the bottom right is ({x2}, {y2})."
        answer = {"text": ans}
    return _parts(question=q, answer_text=ans, answer=answer, reasoning=reasoning)


# ----------------------------------------------------------------------------------------- registry

PLANS: dict[str, Callable[[np.random.Generator, Any], Plan | None]] = {
    "caption": plan_caption,
    "ground_box": plan_ground,
    "ground_point": plan_ground,
    "count": plan_count,
    "count_boxes": plan_count,
    "count_points": plan_count,
    "ocr": plan_ocr,
    "chart_value": plan_chart_value,
    "chart_compare": plan_chart_compare,
    "geometry": plan_geometry,
    "spatial": plan_spatial,
    "multi_image": plan_multi_image,
    "video_temporal": plan_video_temporal,
    "video_count": plan_video_count,
    "text": plan_text,
}

BUILDS: dict[str, Callable[[Plan, np.random.Generator, Any], Parts]] = {
    "caption": build_caption,
    "ground_box": build_ground_box,
    "ground_point": build_ground_point,
    "count": build_count,
    "count_boxes": build_count_boxes,
    "count_points": build_count_points,
    "ocr": build_ocr,
    "chart_value": build_chart_value,
    "chart_compare": build_chart_compare,
    "geometry": build_geometry,
    "spatial": build_spatial,
    "multi_image": build_multi_image,
    "video_temporal": build_video_temporal,
    "video_count": build_video_count,
    "text": build_text,
}

# Held-out identity: tasks that share a plan family share the held-out decision, so e.g. a held-out
# counting scene is never trained on as a box-counting sample either.
PLAN_FAMILY = {
    "ground_box": "ground",
    "ground_point": "ground",
    "count_boxes": "count",
    "count_points": "count",
}

# "thinking" wraps one of these (base tasks with a reasoning trace).
THINKING_BASES = (
    "count",
    "count_boxes",
    "spatial",
    "chart_compare",
    "chart_value",
    "multi_image",
    "video_count",
    "text",
)

TASKS = (*PLANS, "thinking")

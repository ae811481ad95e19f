"""OCR: reading one rendered word (fonts, sizes, cases, colours)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.data.synthetic import render as R
from vlm_jax.data.synthetic.tasks.common import Parts, Plan, make_parts, pick, ri, uniform


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
    return make_parts(
        images=[img],
        media=["image"],
        question=pick(rng, OCR_Q),
        answer_text=text,
        answer={"text": text},
        meta={"text_box": box, "font": resolved, "font_size": size, "rgb": list(rgb)},
    )

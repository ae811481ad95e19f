"""Bar charts: the value of one bar, and comparisons between bars."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.data.synthetic import render as R
from vlm_jax.data.synthetic.tasks.common import Parts, Plan, choose, join_and, make_parts, pick, ri


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
    return make_parts(
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
    return make_parts(
        images=[img],
        media=["image"],
        question=question,
        answer_text=answer_text,
        answer=answer,
        reasoning=reasoning,
        meta={"bar_boxes": [list(b) for b in boxes]},
    )

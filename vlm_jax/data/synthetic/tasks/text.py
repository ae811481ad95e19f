"""Text-only tasks (arithmetic, comparisons, sorting, shapes' sides, JSON) with reasoning traces."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.data.synthetic.tasks.common import Parts, Plan, dumps, make_parts, pick, ri

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SIDES = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6, "circle": 0, "star": 10, "cross": 12}


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
    return make_parts(question=q, answer_text=ans, answer=answer, reasoning=reasoning)

"""Video: when an object appears or disappears, and how many objects of a category appear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlm_jax.data.synthetic import render as R
from vlm_jax.data.synthetic.tasks.common import Parts, Plan, join_and, label, make_parts, pick, ri
from vlm_jax.data.synthetic.tasks.counting import category_phrase, matches, plan_count_scene
from vlm_jax.data.synthetic.tasks.scenes import plan_scene


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
    return make_parts(
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
    return make_parts(
        videos=[{"frames": frames, "fps": float(w.video_fps)}],
        media=["video"],
        question=pick(rng, VCOUNT_Q).format(c=c),
        answer_text=str(k),
        answer={"count": k},
        reasoning=reasoning,
        meta={"boxes": boxes, "targets": targets},
    )

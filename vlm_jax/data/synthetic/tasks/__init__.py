"""Task families of the synthetic world: one module per family group, and the registry.

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
``meta`` (``common.make_parts``).

Modules: ``common`` (types, random draws, coordinates, phrasing), ``scenes`` (placing and drawing
objects), then one per family group: ``caption``, ``grounding``, ``counting``, ``ocr``, ``charts``,
``geometry``, ``spatial``, ``multi_image``, ``video``, ``text``. A new task adds its plan / build pair
to ``PLANS`` / ``BUILDS`` here.

Conventions: boxes/points are normalised to integers in [0, 1000] from pixel *edge* coordinates
(``round(x / width * 1000)``; a box's x2/y2 are the exclusive pixel edges); JSON answers are
``json.dumps`` lists like ``[{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vlm_jax.data.synthetic.tasks.caption import CAPTION_Q, build_caption, plan_caption
from vlm_jax.data.synthetic.tasks.charts import (
    VALUE_Q,
    build_chart_compare,
    build_chart_value,
    plan_chart,
    plan_chart_compare,
    plan_chart_value,
)
from vlm_jax.data.synthetic.tasks.common import (
    Parts,
    Plan,
    article,
    at_position,
    box_center,
    capitalize,
    choose,
    dumps,
    join_and,
    label,
    make_parts,
    norm_box,
    norm_coord,
    object_point,
    pick,
    plural,
    position_name,
    ri,
    uniform,
)
from vlm_jax.data.synthetic.tasks.counting import (
    COUNT_BOX_Q,
    COUNT_POINT_Q,
    COUNT_Q,
    build_count,
    build_count_boxes,
    build_count_points,
    category_phrase,
    matches,
    plan_count,
    plan_count_scene,
)
from vlm_jax.data.synthetic.tasks.geometry import GEOM_Q, build_geometry, plan_geometry
from vlm_jax.data.synthetic.tasks.grounding import BOX_Q, POINT_Q, build_ground_box, build_ground_point, plan_ground
from vlm_jax.data.synthetic.tasks.multi_image import build_multi_image, plan_multi_image
from vlm_jax.data.synthetic.tasks.ocr import OCR_Q, apply_case, build_ocr, plan_ocr
from vlm_jax.data.synthetic.tasks.scenes import (
    distinct_attrs,
    draw_scene,
    make_objects,
    place_objects,
    plan_scene,
    reading_order,
)
from vlm_jax.data.synthetic.tasks.spatial import RELATIONS, build_spatial, plan_spatial, relation
from vlm_jax.data.synthetic.tasks.text import NUMBER_WORDS, SIDES, build_text, plan_text
from vlm_jax.data.synthetic.tasks.video import (
    VCOUNT_Q,
    build_video_count,
    build_video_temporal,
    draw_video,
    plan_video_count,
    plan_video_temporal,
)

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

__all__ = [
    "BOX_Q",
    "BUILDS",
    "CAPTION_Q",
    "COUNT_BOX_Q",
    "COUNT_POINT_Q",
    "COUNT_Q",
    "GEOM_Q",
    "NUMBER_WORDS",
    "OCR_Q",
    "PLANS",
    "PLAN_FAMILY",
    "POINT_Q",
    "Parts",
    "Plan",
    "RELATIONS",
    "SIDES",
    "TASKS",
    "THINKING_BASES",
    "VALUE_Q",
    "VCOUNT_Q",
    "apply_case",
    "article",
    "at_position",
    "box_center",
    "build_caption",
    "build_chart_compare",
    "build_chart_value",
    "build_count",
    "build_count_boxes",
    "build_count_points",
    "build_geometry",
    "build_ground_box",
    "build_ground_point",
    "build_multi_image",
    "build_ocr",
    "build_spatial",
    "build_text",
    "build_video_count",
    "build_video_temporal",
    "capitalize",
    "category_phrase",
    "choose",
    "distinct_attrs",
    "draw_scene",
    "draw_video",
    "dumps",
    "join_and",
    "label",
    "make_objects",
    "make_parts",
    "matches",
    "norm_box",
    "norm_coord",
    "object_point",
    "pick",
    "place_objects",
    "plan_caption",
    "plan_chart",
    "plan_chart_compare",
    "plan_chart_value",
    "plan_count",
    "plan_count_scene",
    "plan_geometry",
    "plan_ground",
    "plan_multi_image",
    "plan_ocr",
    "plan_scene",
    "plan_spatial",
    "plan_text",
    "plan_video_count",
    "plan_video_temporal",
    "plural",
    "position_name",
    "reading_order",
    "relation",
    "ri",
    "uniform",
]

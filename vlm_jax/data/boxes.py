"""Bounding boxes between other coordinate conventions and Qwen3-VL's: pure functions.

    qwen3    Qwen3-VL (as Qwen2-VL): [x1, y1, x2, y2] relative to the image, in [0, 1000]. The official
             fine-tuning tools convert a pixel box as round(x / width * 1000), clipped to [0, 1000], and
             the official evaluation maps a reply back as x / 1000 * width.
    pixels   absolute [x1, y1, x2, y2] in an image of `width` x `height` pixels. Qwen2.5-VL grounds in
             the pixels of the image *after* its resize (`qwen25_image_size` gives that size).
    qwen_vl  Qwen-VL (v1): integers on a [0, 1000) grid, 0..999 spanning the image (its evaluation
             divides by 999).
    coco     absolute [x, y, w, h] (COCO and RefCOCO annotations).

Every function checks its input: a box is 4 finite numbers with x1 <= x2 and y1 <= y2 (w, h >= 0 for
COCO) inside its frame; anything else raises ValueError naming the box. `clip=True` clips coordinates
into the frame instead of rejecting them (annotations a fraction of a pixel outside the image).
Results are floats unless `rounded=True` (integers, as the training format stores them).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

QWEN3_SCALE = 1000.0
QWEN_VL_SCALE = 999.0  # Qwen-VL's grid is 0..999
# Qwen2.5-VL's resize: 14-pixel patches merged 2x2, its processor's default pixel budget.
QWEN25_FACTOR = 28
QWEN25_MIN_PIXELS = 56 * 56
QWEN25_MAX_PIXELS = 28 * 28 * 16384


def _numbers(box: Sequence[float], n: int, what: str) -> list[float]:
    if isinstance(box, str | bytes) or not hasattr(box, "__len__") or len(box) != n:
        raise ValueError(f"{what} must be {n} numbers, got {box!r}")
    out = []
    for x in box:
        if isinstance(x, bool) or not isinstance(x, numbers.Real):  # numpy scalars are Real too
            raise ValueError(f"{what} must be {n} numbers, got {box!r}")
        f = float(x)
        if not math.isfinite(f):
            raise ValueError(f"{what} has a non-finite coordinate: {box!r}")
        out.append(f)
    return out


def _check_size(width: float, height: float) -> tuple[float, float]:
    w, h = _numbers((width, height), 2, "image size")
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    return w, h


def _xyxy(box: Sequence[float], what: str) -> list[float]:
    x1, y1, x2, y2 = _numbers(box, 4, what)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{what} {list(box)} has x2 < x1 or y2 < y1 (expected [x1, y1, x2, y2])")
    return [x1, y1, x2, y2]


def _in_frame(b: list[float], sx: float, sy: float, clip: bool, what: str) -> list[float]:
    """`b` inside [0, sx] x [0, sy]: clipped when `clip`, else ValueError if it leaves the frame."""
    limits = (sx, sy, sx, sy)
    if clip:
        return [min(max(v, 0.0), m) for v, m in zip(b, limits)]
    if any(v < 0 or v > m for v, m in zip(b, limits)):
        raise ValueError(f"{what} {b} lies outside its frame [0, {sx:g}] x [0, {sy:g}] (pass clip=True to clip)")
    return b


def _out(b: list[float], rounded: bool) -> list[float] | list[int]:
    return [int(round(v)) for v in b] if rounded else b


def pixels_to_qwen3(box: Sequence[float], width: float, height: float, *, rounded: bool = False,
                    clip: bool = False) -> list[float] | list[int]:
    """Absolute pixel [x1, y1, x2, y2] in a `width` x `height` image -> Qwen3-VL [0, 1000] relative."""
    w, h = _check_size(width, height)
    b = _in_frame(_xyxy(box, "pixel box"), w, h, clip, "pixel box")
    return _out([b[0] / w * QWEN3_SCALE, b[1] / h * QWEN3_SCALE, b[2] / w * QWEN3_SCALE, b[3] / h * QWEN3_SCALE],
                rounded)


def qwen3_to_pixels(box: Sequence[float], width: float, height: float, *, rounded: bool = False,
                    clip: bool = False) -> list[float] | list[int]:
    """Qwen3-VL [0, 1000] relative [x1, y1, x2, y2] -> absolute pixels in a `width` x `height` image."""
    w, h = _check_size(width, height)
    b = _in_frame(_xyxy(box, "Qwen3-VL box"), QWEN3_SCALE, QWEN3_SCALE, clip, "Qwen3-VL box")
    return _out([b[0] / QWEN3_SCALE * w, b[1] / QWEN3_SCALE * h, b[2] / QWEN3_SCALE * w, b[3] / QWEN3_SCALE * h],
                rounded)


def coco_to_pixels(box: Sequence[float]) -> list[float]:
    """COCO [x, y, w, h] -> [x1, y1, x2, y2] (same units)."""
    x, y, bw, bh = _numbers(box, 4, "COCO box")
    if bw < 0 or bh < 0:
        raise ValueError(f"COCO box {list(box)} has a negative width or height (expected [x, y, w, h])")
    return [x, y, x + bw, y + bh]


def pixels_to_coco(box: Sequence[float]) -> list[float]:
    """[x1, y1, x2, y2] -> COCO [x, y, w, h] (same units)."""
    x1, y1, x2, y2 = _xyxy(box, "pixel box")
    return [x1, y1, x2 - x1, y2 - y1]


def coco_to_qwen3(box: Sequence[float], width: float, height: float, *, rounded: bool = False,
                  clip: bool = False) -> list[float] | list[int]:
    """COCO absolute [x, y, w, h] in a `width` x `height` image -> Qwen3-VL [0, 1000] relative xyxy."""
    return pixels_to_qwen3(coco_to_pixels(box), width, height, rounded=rounded, clip=clip)


def qwen3_to_coco(box: Sequence[float], width: float, height: float, *, clip: bool = False) -> list[float]:
    """Qwen3-VL [0, 1000] relative xyxy -> COCO absolute [x, y, w, h] in a `width` x `height` image."""
    return pixels_to_coco(qwen3_to_pixels(box, width, height, clip=clip))


def qwen_vl_to_qwen3(box: Sequence[float], *, rounded: bool = False, clip: bool = False) -> list[float] | list[int]:
    """Qwen-VL [0, 1000) grid [x1, y1, x2, y2] (0..999) -> Qwen3-VL [0, 1000] relative."""
    b = _in_frame(_xyxy(box, "Qwen-VL box"), QWEN_VL_SCALE, QWEN_VL_SCALE, clip, "Qwen-VL box")
    return _out([v / QWEN_VL_SCALE * QWEN3_SCALE for v in b], rounded)


def qwen3_to_qwen_vl(box: Sequence[float], *, clip: bool = False) -> list[int]:
    """Qwen3-VL [0, 1000] relative -> Qwen-VL's integer [0, 1000) grid (0..999)."""
    b = _in_frame(_xyxy(box, "Qwen3-VL box"), QWEN3_SCALE, QWEN3_SCALE, clip, "Qwen3-VL box")
    return [int(round(v / QWEN3_SCALE * QWEN_VL_SCALE)) for v in b]


def qwen25_image_size(width: int, height: int, *, min_pixels: int = QWEN25_MIN_PIXELS,
                      max_pixels: int = QWEN25_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of the image Qwen2.5-VL saw for a `width` x `height` input: the frame its pixel
    boxes are in (pass it to `pixels_to_qwen3`). Its smart resize, with 28-pixel multiples."""
    from vlm_jax.data.processor import smart_resize

    _check_size(width, height)
    h, w = smart_resize(int(height), int(width), factor=QWEN25_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    return w, h

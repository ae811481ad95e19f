"""Pillow rendering for the synthetic world: shapes, text, bar charts and lines.

All drawing is aliasing-free (ImageDraw polygons/ellipses/lines have no anti-aliasing), so every
object is painted in exactly one colour and its pixels can be recovered by a colour mask. Only text
is anti-aliased (FreeType). Masks of shapes and fonts are cached per process (module level, so a
``SyntheticWorld`` stays picklable for multi-process data loading).

Coordinates: a pixel box ``(x1, y1, x2, y2)`` uses pixel *edges*, i.e. ``x2``/``y2`` are exclusive
(``x2 - x1`` is the width in pixels), like ``PIL.Image.getbbox``.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

Box = tuple[int, int, int, int]

# Object colours (distinct in hue; none is a gray so no object can melt into a background).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 30),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (245, 120, 190),
    "brown": (130, 80, 30),
}

# Neutral backgrounds.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "dark gray": (70, 70, 70),
    "light gray": (200, 200, 200),
    "white": (245, 245, 245),
}

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon")

HAVE_FREETYPE: bool = bool(features.check("freetype2"))
_FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    os.path.expanduser("~/.fonts"),
    os.path.expanduser("~/.local/share/fonts"),
    "/Library/Fonts",
    "/System/Library/Fonts",
    "C:/Windows/Fonts",
)
_BITMAP_FONT_HEIGHT = 11  # the size Pillow's legacy bitmap default font renders at


def jitter_color(rgb: tuple[int, int, int], amount: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """``rgb`` with each channel moved by a uniform integer in [-amount, amount] (clipped to 0..255)."""
    if amount <= 0:
        return tuple(int(c) for c in rgb)  # type: ignore[return-value]
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(min(255, max(0, c + int(e)))) for c, e in zip(rgb, d, strict=True))  # type: ignore


# ----------------------------------------------------------------------------------------- shapes


def _polygon(shape: str, s: int) -> list[tuple[float, float]]:
    m = s - 1
    c = m / 2.0
    if shape == "triangle":
        return [(0, m), (c, 0), (m, m)]
    if shape == "diamond":
        return [(c, 0), (m, c), (c, m), (0, c)]
    if shape == "hexagon":
        return [(c + c * math.cos(math.pi / 3 * k), c + c * math.sin(math.pi / 3 * k)) for k in range(6)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = c if k % 2 == 0 else c * 0.45
            a = -math.pi / 2 + math.pi / 5 * k
            pts.append((c + r * math.cos(a), c + r * math.sin(a)))
        return pts
    raise ValueError(f"unknown polygon shape {shape!r}")


@functools.lru_cache(maxsize=4096)
def shape_mask(shape: str, size: int) -> tuple[Image.Image, Box]:
    """A cached ``size x size`` 'L' mask (255 on the shape) and the tight box of its pixels.

    The returned image is shared: do not modify it.
    """
    if size < 2:
        raise ValueError(f"shape size must be >= 2, got {size}")
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    if shape == "circle":
        d.ellipse((0, 0, size - 1, size - 1), fill=255)
    elif shape == "square":
        d.rectangle((0, 0, size - 1, size - 1), fill=255)
    elif shape == "cross":
        t = max(1, round(size / 3))
        a = (size - t) // 2
        d.rectangle((a, 0, a + t - 1, size - 1), fill=255)
        d.rectangle((0, a, size - 1, a + t - 1), fill=255)
    else:
        d.polygon(_polygon(shape, size), fill=255)
    box = m.getbbox()
    assert box is not None
    return m, box


def render_scene(
    height: int, width: int, background: tuple[int, int, int], objects: list[tuple[str, tuple, int, int, int]]
) -> tuple[np.ndarray, list[Box]]:
    """Draws ``objects`` = [(shape, rgb, x, y, size), ...] (top-left corner, square size) in order.

    Returns the image (uint8 [H, W, 3]) and each object's tight pixel box (edges, x2/y2 exclusive).
    """
    img = Image.new("RGB", (width, height), background)
    boxes = []
    for shape, rgb, x, y, s in objects:
        m, (bx1, by1, bx2, by2) = shape_mask(shape, s)
        img.paste(rgb, (x, y, x + s, y + s), m)
        boxes.append((x + bx1, y + by1, x + bx2, y + by2))
    return np.array(img), boxes


# ------------------------------------------------------------------------------------------- text


@functools.cache
def _font_files() -> dict[str, str]:
    """Maps lower-case file names of the TrueType/OpenType fonts found on this system to paths."""
    found: dict[str, str] = {}
    for root_dir in _FONT_DIRS:
        if not os.path.isdir(root_dir):
            continue
        for root, dirs, files in os.walk(root_dir):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith((".ttf", ".otf")):
                    found.setdefault(f.lower(), os.path.join(root, f))
    return found


@functools.lru_cache(maxsize=512)
def get_font(name: str, size: int) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, float, str]:
    """(font, scale, resolved name) for a font name ("default", a file name or a path) at ``size`` px.

    "default" is Pillow's bundled font (``ImageFont.load_default(size=...)``). A file that is not
    found falls back to it. Without FreeType, Pillow's bitmap font is returned with ``scale`` =
    size / its native height: the caller renders at native size and resizes by ``scale``.
    """
    if not HAVE_FREETYPE:
        return ImageFont.load_default(), size / _BITMAP_FONT_HEIGHT, "bitmap"
    if name != "default":
        path = name if os.path.isabs(name) and os.path.exists(name) else _font_files().get(name.lower())
        if path is not None:
            try:
                return ImageFont.truetype(path, size), 1.0, os.path.basename(path)
            except OSError:
                pass
    try:
        return ImageFont.load_default(size=size), 1.0, "default"
    except (TypeError, ValueError, OSError):  # very old Pillow: no sized default font
        return ImageFont.load_default(), size / _BITMAP_FONT_HEIGHT, "bitmap"


def text_size(text: str, font_name: str, size: int) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` rendered unrotated."""
    font, scale, _ = get_font(font_name, size)
    x1, y1, x2, y2 = font.getbbox(text)
    return max(1, round((x2 - x1) * scale)), max(1, round((y2 - y1) * scale))


def text_mask(text: str, font_name: str, size: int, angle: float = 0.0) -> tuple[Image.Image, str]:
    """A tight 'L' mask of ``text`` (anti-aliased), rotated by ``angle`` degrees counter-clockwise."""
    font, scale, resolved = get_font(font_name, size)
    x1, y1, x2, y2 = font.getbbox(text)
    m = Image.new("L", (x2 - x1 + 2, y2 - y1 + 2), 0)
    ImageDraw.Draw(m).text((1 - x1, 1 - y1), text, fill=255, font=font)
    if scale != 1.0:
        m = m.resize(
            (max(1, round(m.width * scale)), max(1, round(m.height * scale))), Image.Resampling.NEAREST
        )
    if angle:
        m = m.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    box = m.getbbox()
    if box is not None:
        m = m.crop(box)
    return m, resolved


def render_text(
    height: int,
    width: int,
    background: tuple[int, int, int],
    items: list[tuple[Image.Image, tuple[int, int, int], int, int]],
) -> np.ndarray:
    """Pastes text masks [(mask, rgb, x, y), ...] onto a plain background; uint8 [H, W, 3]."""
    img = Image.new("RGB", (width, height), background)
    for m, rgb, x, y in items:
        img.paste(rgb, (x, y, x + m.width, y + m.height), m)
    return np.array(img)


# ----------------------------------------------------------------------------------------- charts


def chart_layout(height: int, width: int, n_bars: int, max_value: int) -> dict:
    """Pixel layout of a bar chart: plot origin, unit height, bar x-ranges (shared by render/tests)."""
    left, right, top, bottom = 5, 3, 4, 4
    unit = max(1, (height - top - bottom) // max_value)
    base = top + unit * max_value  # y of the x axis (first row below the bars)
    plot_w = width - left - right
    slot = plot_w / n_bars
    bw = max(2, int(slot * 0.6))
    bars = []
    for i in range(n_bars):
        x0 = left + 1 + int(i * slot + (slot - bw) / 2)
        bars.append((x0, x0 + bw))
    return {"left": left, "base": base, "unit": unit, "bars": bars, "right": width - right}


def render_bar_chart(
    height: int,
    width: int,
    values: list[int],
    colors: list[tuple[int, int, int]],
    max_value: int,
    background: tuple[int, int, int],
    axis: tuple[int, int, int],
    grid: tuple[int, int, int],
) -> tuple[np.ndarray, list[Box]]:
    """A bar chart with one horizontal grid line per unit; returns the image and each bar's box."""
    lay = chart_layout(height, width, len(values), max_value)
    img = Image.new("RGB", (width, height), background)
    d = ImageDraw.Draw(img)
    left, base, unit, right = lay["left"], lay["base"], lay["unit"], lay["right"]
    for v in range(1, max_value + 1):
        d.line((left, base - v * unit, right - 1, base - v * unit), fill=grid)
    boxes = []
    for (x0, x1), v, c in zip(lay["bars"], values, colors, strict=True):
        if v > 0:
            d.rectangle((x0, base - v * unit, x1 - 1, base - 1), fill=c)
        boxes.append((x0, base - v * unit, x1, base))
    d.line((left - 1, base, right - 1, base), fill=axis)  # x axis
    d.line((left - 1, base - max_value * unit, left - 1, base), fill=axis)  # y axis
    return np.array(img), boxes


# ------------------------------------------------------------------------------------------ lines


def render_lines(
    height: int,
    width: int,
    background: tuple[int, int, int],
    lines: list[tuple[tuple[float, float, float, float], tuple[int, int, int]]],
    line_width: int = 2,
) -> np.ndarray:
    """Draws segments [((x0, y0, x1, y1), rgb), ...] in PIL pixel-centre coordinates."""
    img = Image.new("RGB", (width, height), background)
    d = ImageDraw.Draw(img)
    for seg, rgb in lines:
        d.line(seg, fill=rgb, width=line_width)
    return np.array(img)

"""The 24 shape categories of the toy world, as polygons in unit coordinates.

Role: geometry only. ``shape_polygons(name)`` gives the polygons that draw one category in a frame
where the shape fits the unit disc, centred at the origin, y pointing down, upright. Polygons are
drawn in order; ``fill=False`` polygons cut holes (ring, frame, crescent). The categories are chosen
to stay distinct under rotation and at small sizes.
Layer 1 (pure Python; used by ``toyworld``).
"""

from __future__ import annotations

import math

Polygon = list[tuple[float, float]]

CATEGORY_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart",
    "arrow", "crescent", "diamond", "pentagon", "ellipse", "trapezoid", "semicircle", "plus",
    "parallelogram", "chevron", "bowtie", "lightning", "drop", "frame", "tee", "ell",
    # "other" shapes (toy counterparts of COCO's 15 names in neither subset): they appear in the
    # COCO-style scenes and the teacher's web data, and their names score regions (stage 02)
    "clover", "crown", "bone", "keyhole", "wave",
)


def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> Polygon:
    return [(r * math.cos(phase + 2 * math.pi * i / n), r * math.sin(phase + 2 * math.pi * i / n))
            for i in range(n)]


def _ellipse(a: float, b: float, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> Polygon:
    return [(cx + a * math.cos(2 * math.pi * i / n), cy + b * math.sin(2 * math.pi * i / n))
            for i in range(n)]


def _star() -> Polygon:
    pts = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else 0.42
        t = -math.pi / 2 + math.pi * i / 5
        pts.append((r * math.cos(t), r * math.sin(t)))
    return pts


def _heart() -> Polygon:
    pts = []
    for i in range(60):
        t = 2 * math.pi * i / 60
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, -y / 17.0 - 0.1))
    return pts


def _drop() -> Polygon:
    pts = [(0.0, -1.0)]
    for i in range(37):  # lower half-disc of radius 0.6 centred at (0, 0.35), joined to the tip
        t = math.radians(-20 + 220 * i / 36)
        pts.append((0.6 * math.cos(t), 0.35 + 0.6 * math.sin(t)))
    return pts


def _wave() -> Polygon:
    top = [(x / 20 * 2 - 1, 0.35 * math.sin(math.pi * 2 * (x / 20 * 2 - 1)) - 0.22) for x in range(21)]
    return top + [(x, y + 0.44) for x, y in reversed(top)]


def _keyhole() -> Polygon:
    pts = [(0.55 * math.cos(math.radians(a)), -0.35 + 0.55 * math.sin(math.radians(a)))
           for a in range(120, 420, 10)]  # an open disc on top ...
    return pts + [(0.4, 1.0), (-0.4, 1.0)]  # ... over a flared foot


_SHAPES: dict[str, list[tuple[Polygon, bool]]] = {
    "circle": [(_ellipse(1.0, 1.0), True)],
    "square": [([(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)], True)],
    "triangle": [(_regular(3), True)],
    "star": [(_star(), True)],
    "cross": [([(-0.15, -1), (0.15, -1), (0.15, -0.5), (0.6, -0.5), (0.6, -0.2), (0.15, -0.2),
                (0.15, 1), (-0.15, 1), (-0.15, -0.2), (-0.6, -0.2), (-0.6, -0.5), (-0.15, -0.5)], True)],
    "ring": [(_ellipse(1.0, 1.0), True), (_ellipse(0.6, 0.6), False)],
    "hexagon": [(_regular(6, phase=0.0), True)],
    "heart": [(_heart(), True)],
    "arrow": [([(-1, -0.18), (0.2, -0.18), (0.2, -0.55), (1, 0), (0.2, 0.55), (0.2, 0.18), (-1, 0.18)],
               True)],
    "crescent": [(_ellipse(1.0, 1.0), True), (_ellipse(0.85, 0.85, 0.45, -0.1), False)],
    "diamond": [([(0, -1), (0.5, 0), (0, 1), (-0.5, 0)], True)],
    "pentagon": [(_regular(5), True)],
    "ellipse": [(_ellipse(1.0, 0.5), True)],
    "trapezoid": [([(-0.4, -0.6), (0.4, -0.6), (1, 0.6), (-1, 0.6)], True)],
    "semicircle": [([(math.cos(math.pi * i / 32), -math.sin(math.pi * i / 32) + 0.4) for i in range(33)],
                    True)],
    "plus": [([(-0.2, -0.9), (0.2, -0.9), (0.2, -0.2), (0.9, -0.2), (0.9, 0.2), (0.2, 0.2),
               (0.2, 0.9), (-0.2, 0.9), (-0.2, 0.2), (-0.9, 0.2), (-0.9, -0.2), (-0.2, -0.2)], True)],
    "parallelogram": [([(-0.4, -0.5), (1, -0.5), (0.4, 0.5), (-1, 0.5)], True)],
    "chevron": [([(-0.9, -0.7), (-0.4, -0.7), (0.3, 0), (-0.4, 0.7), (-0.9, 0.7), (-0.2, 0)], True)],
    "bowtie": [([(-1, -0.7), (0, -0.1), (1, -0.7), (1, 0.7), (0, 0.1), (-1, 0.7)], True)],
    "lightning": [([(0.2, -1), (-0.5, 0.1), (-0.05, 0.1), (-0.3, 1), (0.5, -0.2), (0.05, -0.2),
                    (0.35, -1)], True)],
    "drop": [(_drop(), True)],
    "frame": [([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)], True),
              ([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)], False)],
    "tee": [([(-0.8, -0.8), (0.8, -0.8), (0.8, -0.45), (0.17, -0.45), (0.17, 0.9), (-0.17, 0.9),
              (-0.17, -0.45), (-0.8, -0.45)], True)],
    "ell": [([(-0.6, -0.9), (-0.25, -0.9), (-0.25, 0.55), (0.6, 0.55), (0.6, 0.9), (-0.6, 0.9)], True)],
    "clover": [(_ellipse(0.45, 0.45, 0.5 * math.cos(a), 0.5 * math.sin(a)), True)
               for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)] + [(_ellipse(0.3, 0.3), True)],
    "crown": [([(-0.9, 0.6), (-0.9, -0.6), (-0.45, 0.0), (0, -0.8), (0.45, 0.0), (0.9, -0.6), (0.9, 0.6)], True)],
    "bone": [([(-0.6, -0.17), (0.6, -0.17), (0.6, 0.17), (-0.6, 0.17)], True)]
            + [(_ellipse(0.24, 0.24, sx * 0.7, sy * 0.2), True) for sx in (-1, 1) for sy in (-1, 1)],
    "keyhole": [(_keyhole(), True)],
    "wave": [(_wave(), True)],
}


def shape_polygons(name: str) -> list[tuple[Polygon, bool]]:
    """Polygons of one category in unit coordinates.

    Args:
        name: one of CATEGORY_NAMES.

    Returns:
        ``[(polygon, fill), ...]``: each polygon a list of (x, y) in [-1, 1]^2; ``fill=False`` cuts.

    Raises:
        ValueError: for a name that is not a toy category.
    """
    if name not in _SHAPES:
        raise ValueError(f"unknown toy category {name!r}; allowed: {', '.join(CATEGORY_NAMES)}")
    return _SHAPES[name]

"""Turn a Fabric.js drawing (from ``streamlit-drawable-canvas``) into a boolean mask.

The canvas shows a scaled copy of the slice; every object is mapped from canvas
pixels back to the image's own pixel grid here, whatever size it was drawn at.

Fabric's object model, as far as it matters here: an object's (``left``, ``top``)
is the position of its origin point (``originX``/``originY``: left, center or right);
its local geometry is centred on ``pathOffset`` (polygons, paths), scaled by
``scaleX``/``scaleY`` and rotated by ``angle`` degrees about its centre. Lines,
points and text enclose no area and are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import RoiError

_ORIGIN_FACTOR = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}
_CURVE_STEPS = 8


@dataclass(frozen=True)
class CanvasView:
    """How the image is laid out on the canvas.

    Attributes:
        image_shape: (rows, cols) of the slice in image pixels.
        canvas_size: (width, height) of the canvas in CSS pixels; the background is
            stretched to fill it exactly.
    """

    image_shape: tuple[int, int]
    canvas_size: tuple[int, int]

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Canvas pixels per image pixel along x (columns) and y (rows)."""
        return self.canvas_size[0] / self.image_shape[1], self.canvas_size[1] / self.image_shape[0]

    def to_image(self, points_xy: np.ndarray) -> np.ndarray:
        """Canvas (x, y) → continuous image (x, y); pixel i spans [i, i + 1)."""
        sx, sy = self.scale_xy
        return points_xy / np.array([sx, sy])

    def to_canvas(self, points_xy: np.ndarray) -> np.ndarray:
        """Continuous image (x, y) → canvas (x, y)."""
        sx, sy = self.scale_xy
        return points_xy * np.array([sx, sy])


def canvas_view_for(image_shape: tuple[int, int], max_width: int = 640) -> CanvasView:
    """Canvas ``max_width`` CSS pixels wide, keeping the slice's aspect ratio."""
    rows, cols = image_shape
    scale = max_width / cols
    return CanvasView(image_shape, (round(cols * scale), round(rows * scale)))


def outlines_from_fabric(json_data: dict[str, Any] | None) -> list[np.ndarray]:
    """Closed outlines, each (K, 2) float64 (x, y) in canvas pixels, one per area object."""
    if not json_data:
        return []
    outlines = []
    for obj in json_data.get("objects", []):
        local = _local_outline(obj)
        if local is not None and len(local) >= 3:
            outlines.append(_to_canvas(obj, local))
    return outlines


def mask_from_fabric(json_data: dict[str, Any] | None, view: CanvasView) -> np.ndarray:
    """Union of all closed shapes as a (rows, cols) bool mask in image pixels.

    Raises:
        RoiError: nothing with an area was drawn, or it lies outside the image.
    """
    outlines = outlines_from_fabric(json_data)
    if not outlines:
        raise RoiError("No tumour outline yet: draw a closed polygon, a freehand loop, a rectangle or a circle.")
    mask = mask_from_outlines([view.to_image(o) for o in outlines], view.image_shape)
    if not mask.any():
        raise RoiError("The outline lies outside the image; draw it over the tumour.")
    return mask


def mask_from_outlines(outlines_xy: Iterable[np.ndarray], image_shape: tuple[int, int]) -> np.ndarray:
    """Fill closed outlines given in continuous image (x, y) into a (rows, cols) bool mask.

    A pixel is inside when its centre (i + 0.5) is (even-odd rule, half-open edges), so
    the mask's pixel count converges to the polygon's area: OpenCV's ``fillPoly`` also
    paints every pixel the boundary touches, which inflates small outlines.
    """
    mask = np.zeros(image_shape, dtype=bool)
    for outline in outlines_xy:
        mask |= _fill_polygon(np.asarray(outline, dtype=np.float64), image_shape)
    return mask


def _fill_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    if len(points) < 3:
        return mask
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    first = max(0, int(np.floor(y0.min())))
    last = min(shape[0], int(np.ceil(y0.max())) + 1)
    centres = np.arange(first, last)[:, None] + 0.5
    crosses = (y0 <= centres) != (y1 <= centres)  # (rows, edges)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = x0 + (centres - y0) / (y1 - y0) * (x1 - x0)
    for offset, row in enumerate(range(first, last)):
        hits = np.sort(xs[offset][crosses[offset]])
        for xa, xb in zip(hits[0::2], hits[1::2], strict=False):
            start, stop = max(0, math.ceil(xa - 0.5)), min(shape[1], math.ceil(xb - 0.5))
            if stop > start:
                mask[row, start:stop] = True
    return mask


def polygon_area(points_xy: np.ndarray) -> float:
    """Shoelace area of a closed polygon, in the units² of its coordinates."""
    x, y = points_xy[:, 0], points_xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_to_fabric(points_xy: Sequence[Sequence[float]], stroke: str = "#00ff00") -> dict[str, Any]:
    """A Fabric polygon object (origin left/top, as Fabric serialises it) for ``initial_drawing``."""
    pts = np.asarray(points_xy, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = (lo + hi) / 2.0
    return {
        "type": "Polygon",
        "originX": "center",
        "originY": "center",
        "left": float(centre[0]),
        "top": float(centre[1]),
        "width": float(hi[0] - lo[0]),
        "height": float(hi[1] - lo[1]),
        "scaleX": 1,
        "scaleY": 1,
        "angle": 0,
        "fill": "rgba(0, 255, 0, 0.15)",
        "stroke": stroke,
        "strokeWidth": 2,
        "pathOffset": {"x": float(centre[0]), "y": float(centre[1])},
        "points": [{"x": float(x), "y": float(y)} for x, y in pts],
    }


def _local_outline(obj: dict[str, Any]) -> np.ndarray | None:
    """Outline in the object's own frame, centred on its centre (before scale/rotation)."""
    kind = str(obj.get("type", "")).lower()
    width, height = float(obj.get("width", 0) or 0), float(obj.get("height", 0) or 0)
    if kind in {"polygon", "polyline"}:
        pts = np.array([[p["x"], p["y"]] for p in obj.get("points", [])], dtype=np.float64)
        return pts - _path_offset(obj, pts) if len(pts) else None
    if kind == "path":
        pts = _path_points(obj.get("path", []))
        return pts - _path_offset(obj, pts) if len(pts) else None
    if kind in {"rect", "labeledrect"}:
        hw, hh = width / 2.0, height / 2.0
        return np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    if kind in {"circle", "ellipse"}:
        rx = float(obj.get("rx", obj.get("radius", width / 2.0)) or 0)
        ry = float(obj.get("ry", obj.get("radius", height / 2.0)) or 0)
        t = np.linspace(0.0, 2.0 * math.pi, 180, endpoint=False)
        return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    return None


def _path_offset(obj: dict[str, Any], pts: np.ndarray) -> np.ndarray:
    offset = obj.get("pathOffset")
    if offset:
        return np.array([float(offset["x"]), float(offset["y"])])
    return (pts.min(axis=0) + pts.max(axis=0)) / 2.0


def _path_points(commands: list[list[Any]]) -> np.ndarray:
    """Sample an SVG-style path (M, L, Q, C, Z; absolute) into points."""
    points: list[tuple[float, float]] = []
    current = (0.0, 0.0)
    for cmd in commands:
        op, args = str(cmd[0]).upper(), [float(a) for a in cmd[1:]]
        if op in {"M", "L"} and len(args) >= 2:
            current = (args[0], args[1])
            points.append(current)
        elif op == "Q" and len(args) >= 4:
            points.extend(_bezier([current, (args[0], args[1]), (args[2], args[3])]))
            current = (args[2], args[3])
        elif op == "C" and len(args) >= 6:
            points.extend(_bezier([current, (args[0], args[1]), (args[2], args[3]), (args[4], args[5])]))
            current = (args[4], args[5])
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def _bezier(control: list[tuple[float, float]]) -> list[tuple[float, float]]:
    ctrl = np.array(control)
    out = []
    for t in np.linspace(0.0, 1.0, _CURVE_STEPS + 1)[1:]:
        pts = ctrl.copy()
        while len(pts) > 1:  # de Casteljau
            pts = (1 - t) * pts[:-1] + t * pts[1:]
        out.append((float(pts[0, 0]), float(pts[0, 1])))
    return out


def _to_canvas(obj: dict[str, Any], local: np.ndarray) -> np.ndarray:
    """Apply Fabric's scale, rotation and origin translation to a local outline."""
    sx, sy = float(obj.get("scaleX", 1) or 1), float(obj.get("scaleY", 1) or 1)
    angle = math.radians(float(obj.get("angle", 0) or 0))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    stroke = 0.0 if obj.get("strokeUniform") else float(obj.get("strokeWidth", 0) or 0)
    dims = np.array([(float(obj.get("width", 0) or 0) + stroke) * sx, (float(obj.get("height", 0) or 0) + stroke) * sy])
    factors = np.array(
        [
            _ORIGIN_FACTOR.get(str(obj.get("originX", "left")), 0.0),
            _ORIGIN_FACTOR.get(str(obj.get("originY", "top")), 0.0),
        ]
    )
    origin = np.array([float(obj.get("left", 0) or 0), float(obj.get("top", 0) or 0)])
    centre = origin + rot @ ((0.5 - factors) * dims)
    return (local * np.array([sx, sy])) @ rot.T + centre

"""Turn a Fabric.js drawing (from ``streamlit-drawable-canvas``) into a boolean mask.

Two coordinate systems meet here:

* **canvas px**: CSS pixels of the drawing canvas, x to the right, y down. Everything in the
  Fabric JSON, and every outline returned by :func:`outlines_from_fabric`, is in canvas px.
* **image px**: the slice's own pixel grid, continuous (x, y) with pixel (row, col) spanning
  [col, col + 1) × [row, row + 1). Masks are (rows, cols) in image px. :class:`CanvasView`
  maps between the two; the canvas shows a uniformly stretched copy of the slice.

Geometry follows Fabric.js **7.4.0**, the version streamlit-drawable-canvas 0.13 bundles, and
reproduces what it draws (checked against Fabric itself, see tests/core/fixtures/):

* An object's JSON is read the way ``fromObject`` loads it: missing keys take Fabric 7's
  defaults (``originX``/``originY`` "center", ``strokeWidth`` 1, ``scaleX``/``scaleY`` 1, ...),
  keys are applied in order, a negative scale toggles ``flipX``/``flipY`` and a zero scale
  becomes 0.0001. Polygons, polylines and paths recompute ``width``, ``height`` and
  ``pathOffset`` from their points, ignoring whatever the JSON says about them.
* The object's matrix is Fabric's ``composeMatrix``: translate(centre) · rotate(angle) ·
  scale(±scaleX, ±scaleY) · skewX · skewY. The centre is found from (``left``, ``top``), the
  origin (left/center/right, top/center/bottom, or a number where 0 is left/top and 1 is
  right/bottom) and the *transformed dimensions*: width/height plus the stroke (added after
  scaling when ``strokeUniform``), scaled, or for a skewed object the bounding box of the
  skewed rectangle, the whole offset rotated by ``angle``.
* Points of polygons and paths are relative to ``pathOffset``. Paths may hold absolute or
  relative M L H V C S Q T A Z commands; they are simplified as Fabric's ``makePathSimpler``
  does (arcs become Fabric's own Bézier approximation), then curves are sampled finely enough
  to stay within ``_FLATNESS_PX`` of the curve.
* Each object is filled with its own ``fillRule`` (nonzero unless "evenodd"), all its subpaths
  together; objects are united. The outline is the shape's geometric edge: the stroke drawn
  over it is not part of the area. Lines, text and images enclose no area and are ignored.

Anything Fabric would not draw sensibly (NaN or infinite numbers, text where a number belongs,
absurd sizes, an unknown origin) is refused with :class:`RoiError`, whose message is one
sentence a surgeon can act on.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import RoiError

FABRIC_VERSION = "7.4.0"  # bundled by streamlit-drawable-canvas 0.13; defaults below are its

# Object types that enclose an area (compared case-insensitively; Fabric 7 serialises "Rect").
_AREA_KINDS = frozenset({"rect", "labeledrect", "triangle", "circle", "ellipse", "polygon", "polyline", "path"})
_POINT_KINDS = frozenset({"polygon", "polyline", "path"})  # geometry relative to pathOffset

# Limits. A canvas is at most a few thousand px, so anything far beyond is a corrupt drawing,
# and refusing it early keeps every later float operation finite.
_MAX_ABS_INPUT = 1e7  # any number read from the JSON (px, degrees or a scale factor)
_MAX_ABS_CANVAS = 1e6  # any outline coordinate after the object's transform, canvas px
_MAX_ITEMS = 100_000  # points of a polygon, or commands of a path
_MAX_VERTICES = 2_000_000  # sampled outline vertices in one drawing
_FLATNESS_PX = 0.01  # sampled curves stay within this distance of Fabric's curve, canvas px
_MAX_CURVE_STEPS = 4096
_ROW_CHUNK_CELLS = 4_000_000  # rows × edges evaluated at once when filling

_UNREADABLE = "The drawing could not be read; clear the canvas and draw the outline again."
_BAD_NUMBER = "The outline holds an invalid coordinate; clear the canvas and draw it again."
_TOO_LARGE = "The outline is far larger than the canvas; clear the canvas and draw it again."
_TOO_COMPLEX = "The outline has too many points; clear the canvas and draw a simpler outline."
_UNSUPPORTED = "The outline uses a shape setting this tool cannot measure; clear the canvas and redraw it."

# Fabric 7.4 defaults (fabricObjectDefaultValues and each class's ownDefaults) that affect geometry.
_OBJECT_DEFAULTS: dict[str, Any] = {
    "left": 0.0,
    "top": 0.0,
    "width": 0.0,
    "height": 0.0,
    "angle": 0.0,
    "flipX": False,
    "flipY": False,
    "scaleX": 1.0,
    "scaleY": 1.0,
    "minScaleLimit": 0.0,
    "skewX": 0.0,
    "skewY": 0.0,
    "originX": 0.0,  # "center", stored resolved: offset of the origin from the centre, in widths
    "originY": 0.0,
    "strokeWidth": 1.0,
    "strokeUniform": False,
    "fillRule": "nonzero",
    "visible": True,
}
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "rect": {"rx": 0.0, "ry": 0.0},
    "labeledrect": {"rx": 0.0, "ry": 0.0},
    "ellipse": {"rx": 0.0, "ry": 0.0},
    "circle": {"radius": 0.0, "startAngle": 0.0, "endAngle": 360.0, "counterClockwise": False},
    "polygon": {"exactBoundingBox": False},
    "polyline": {"exactBoundingBox": False},
}
_NUMBER_KEYS = frozenset(
    {"left", "top", "width", "height", "angle", "scaleX", "scaleY", "minScaleLimit", "skewX", "skewY"}
    | {"strokeWidth", "rx", "ry", "radius", "startAngle", "endAngle"}
)
_FLAG_KEYS = frozenset({"flipX", "flipY", "strokeUniform", "counterClockwise", "exactBoundingBox", "visible"})
_ORIGIN_OFFSET = {"left": -0.5, "top": -0.5, "center": 0.0, "right": 0.5, "bottom": 0.5}  # resolveOrigin

_HALF_PI = math.pi / 2
_PI_BY_180 = math.pi / 180
_K_RECT = 1 - 0.5522847498  # Fabric's kRect, for rounded rectangle corners
_PATH_ARGS = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "T": 2, "A": 7, "Z": 0}

_Matrix = tuple[float, float, float, float, float, float]  # Fabric's TMat2D [a, b, c, d, e, f]
_Op = tuple[Any, ...]  # ("M"|"L", x, y), ("C", 3 points), ("Q", 2 points), ("E", ellipse arc)


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
        """Canvas (x, y) → continuous image (x, y); (N, 2) float64 in, (N, 2) float64 out."""
        sx, sy = self.scale_xy
        return points_xy / np.array([sx, sy])

    def to_canvas(self, points_xy: np.ndarray) -> np.ndarray:
        """Continuous image (x, y) → canvas (x, y); (N, 2) float64 in, (N, 2) float64 out."""
        sx, sy = self.scale_xy
        return points_xy * np.array([sx, sy])


def canvas_view_for(image_shape: tuple[int, int], max_width: int = 640) -> CanvasView:
    """Canvas ``max_width`` CSS pixels wide, keeping the slice's aspect ratio."""
    rows, cols = image_shape
    scale = max_width / cols
    return CanvasView(image_shape, (round(cols * scale), round(rows * scale)))


def outlines_from_fabric(json_data: dict[str, Any] | None) -> list[np.ndarray]:
    """Closed outlines of every area object, in canvas px.

    Returns:
        One (K, 2) float64 array of (x, y) vertices per closed subpath (K ≥ 3, the closing
        edge implied), in drawing order. A path with two subpaths gives two outlines.

    Raises:
        RoiError: the drawing holds something Fabric would not draw sensibly.
    """
    return [ring for rings, _ in _drawing_outlines(json_data) for ring in rings]


def mask_from_fabric(json_data: dict[str, Any] | None, view: CanvasView) -> np.ndarray:
    """Union of all closed shapes as a (rows, cols) bool mask in image px.

    Each object is filled with its own fill rule (Fabric's default nonzero), so a freehand
    loop that crosses itself is filled the way the canvas shows it.

    Raises:
        RoiError: nothing with an area was drawn, it lies outside the image, or the drawing
            holds something Fabric would not draw sensibly.
    """
    objects = [(rings, nonzero) for rings, nonzero in _drawing_outlines(json_data) if rings]
    if not objects:
        raise RoiError("No tumour outline yet: draw a closed polygon, a freehand loop, a rectangle or a circle.")
    mask = np.zeros(view.image_shape, dtype=bool)
    for rings, nonzero in objects:
        mask |= _fill_rings([view.to_image(r) for r in rings], view.image_shape, nonzero=nonzero)
    if not mask.any():
        raise RoiError("The outline lies outside the image; draw it over the tumour.")
    return mask


def mask_from_outlines(outlines_xy: Iterable[np.ndarray], image_shape: tuple[int, int]) -> np.ndarray:
    """Fill closed outlines given in continuous image (x, y) into a (rows, cols) bool mask.

    Each (K, 2) outline is filled on its own with the even-odd rule and the results united.
    A pixel is inside when its centre (i + 0.5) is (half-open edges), so the mask's pixel count
    converges to the polygon's area: OpenCV's ``fillPoly`` also paints every pixel the boundary
    touches, which inflates small outlines.
    """
    mask = np.zeros(image_shape, dtype=bool)
    for outline in outlines_xy:
        mask |= _fill_rings([np.asarray(outline, dtype=np.float64)], image_shape, nonzero=False)
    return mask


def polygon_area(points_xy: np.ndarray) -> float:
    """Shoelace area of a closed (K, 2) polygon, in the units² of its coordinates."""
    x, y = points_xy[:, 0], points_xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_to_fabric(points_xy: Sequence[Sequence[float]], stroke: str = "#00ff00") -> dict[str, Any]:
    """A Fabric 7 polygon object for ``initial_drawing`` whose vertices land on ``points_xy``.

    ``points_xy`` are (x, y) in canvas px. The origin is the centre and (``left``, ``top``) is
    the centre of the points' bounding box, which is where Fabric puts the polygon's centre
    (it recomputes ``pathOffset`` as that same centre), so every vertex is drawn exactly at its
    own coordinates whatever the stroke width. ``width``/``height``/``pathOffset`` are written
    for readers only: Fabric recomputes them from the points.

    Raises:
        RoiError: fewer than 3 points, or a point that is not a finite number.
    """
    pts = np.asarray(points_xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise RoiError("An outline needs at least three points; draw it again.")
    if not np.isfinite(pts).all():
        raise RoiError(_BAD_NUMBER)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = lo + (hi - lo) / 2.0  # Fabric's own arithmetic for pathOffset
    return {
        "type": "Polygon",
        "version": FABRIC_VERSION,
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


# --------------------------------------------------------------------------------------------
# Reading a drawing


def _drawing_outlines(json_data: Mapping[str, Any] | None) -> list[tuple[list[np.ndarray], bool]]:
    """Per area object: its closed outlines in canvas px, and whether it fills nonzero."""
    if not json_data:
        return []
    if not isinstance(json_data, Mapping):
        raise RoiError(_UNREADABLE)
    objects = json_data.get("objects", [])
    if not isinstance(objects, Sequence) or isinstance(objects, str):
        raise RoiError(_UNREADABLE)
    out = []
    budget = _MAX_VERTICES  # vertices left for the whole drawing
    for obj in objects:
        found = _object_outlines(obj, budget)
        if found is not None:
            out.append(found)
            budget -= sum(len(r) for r in found[0])
    return out


def _object_outlines(obj: Any, budget: int) -> tuple[list[np.ndarray], bool] | None:
    """One object's closed outlines in canvas px and its fill rule; None if it has no area.

    ``budget`` is how many vertices the drawing may still use; going beyond raises RoiError.
    """
    if not isinstance(obj, Mapping):
        raise RoiError(_UNREADABLE)
    kind = obj.get("type")
    if not isinstance(kind, str) or kind.lower() not in _AREA_KINDS:
        return None  # lines, text, images and anything unknown enclose no area
    kind = kind.lower()
    props = _properties(obj, kind)
    if not props["visible"]:
        return None  # Fabric does not draw it, so the surgeon never saw it
    if props.get("exactBoundingBox"):
        # Changes width/height/pathOffset via stroke projection; never set by the canvas.
        raise RoiError(_UNSUPPORTED)

    local = _local_subpaths(obj, kind, props)  # sets width/height/pathOffset of point kinds
    dims = _transformed_dimensions(props)
    if kind in _POINT_KINDS:
        # The constructor centres the object on pathOffset, then applies the given left/top.
        placed = _origin_from_centre(props, props["pathOffset"], dims)
        for axis, key in enumerate(("left", "top")):
            if not isinstance(obj.get(key), numbers.Real):
                props[key] = placed[axis]
    matrix = _compose_matrix(props, _centre(props, dims))
    rings = []
    for sub in local:
        ring = _flatten(_transform_ops(sub, matrix), budget)
        budget -= len(ring)
        if len(ring) >= 3:
            rings.append(ring)
    return rings, props["fillRule"] != "evenodd"


def _properties(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Fabric's property values once it has loaded ``obj`` (``setOptions``, keys in order)."""
    props: dict[str, Any] = {**_OBJECT_DEFAULTS, **_KIND_DEFAULTS.get(kind, {})}
    for key, value in obj.items():
        if key in _NUMBER_KEYS:
            number = _number(value)
            if key in ("scaleX", "scaleY"):
                number = _constrain_scale(number, props["minScaleLimit"])
                if number < 0:  # FabricObject._set: a negative scale is a flip
                    flip = "flipX" if key == "scaleX" else "flipY"
                    props[flip] = not props[flip]
                    number = -number
            if key in ("rx", "ry", "radius") and number < 0:
                raise RoiError(_UNSUPPORTED)  # the canvas throws on a negative arc radius
            props[key] = number
            # Circle/Ellipse setters size the object; a later width/height key still wins.
            if kind == "circle" and key == "radius":
                props["width"] = props["height"] = 2 * number
            elif kind == "ellipse" and key == "rx":
                props["width"] = 2 * number
            elif kind == "ellipse" and key == "ry":
                props["height"] = 2 * number
        elif key in _FLAG_KEYS:
            props[key] = _flag(value)
        elif key in ("originX", "originY"):
            props[key] = _origin(value)
        elif key == "fillRule":
            props[key] = value
    if kind in ("rect", "labeledrect"):  # Rect._initRxRy: one corner radius implies the other
        if props["rx"] and not props["ry"]:
            props["ry"] = props["rx"]
        elif props["ry"] and not props["rx"]:
            props["rx"] = props["ry"]
    return props


def _number(value: Any) -> float:
    """A finite, plausibly sized JSON number; JS would turn anything else into NaN or garbage."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RoiError(_BAD_NUMBER)
    number = float(value)
    if not math.isfinite(number):
        raise RoiError(_BAD_NUMBER)
    if abs(number) > _MAX_ABS_INPUT:
        raise RoiError(_TOO_LARGE)
    return number


def _flag(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    raise RoiError(_UNREADABLE)  # e.g. "false", which JavaScript would treat as true


def _origin(value: Any) -> float:
    """Fabric's resolveOrigin: offset of the origin from the centre, in object widths/heights."""
    if isinstance(value, str):
        if value not in _ORIGIN_OFFSET:
            raise RoiError(_UNSUPPORTED)
        return _ORIGIN_OFFSET[value]
    return _number(value) - 0.5


def _constrain_scale(value: float, limit: float) -> float:
    """FabricObject._constrainScale."""
    if abs(value) < limit:
        return -limit if value < 0 else limit
    if value == 0:
        return 0.0001
    return value


# --------------------------------------------------------------------------------------------
# Object geometry in its own frame (before the object's matrix), as Fabric's _render draws it


def _local_subpaths(obj: Mapping[str, Any], kind: str, props: dict[str, Any]) -> list[list[_Op]]:
    """Subpaths in the object's frame, centred on its centre; sets sizes Fabric recomputes."""
    if kind in ("polygon", "polyline"):
        points = _points(obj.get("points"))
        left, top, width, height = _bbox_from_points(points)
        offset = (left + width / 2, top + height / 2)  # Polyline._calcDimensions
        props.update(width=width, height=height, pathOffset=offset)
        if not points:
            return []
        shifted = [(x - offset[0], y - offset[1]) for x, y in points]
        return [[("M", *shifted[0]), *(("L", x, y) for x, y in shifted[1:])]]
    if kind == "path":
        simple = _simplify_path(obj.get("path"))
        left, top, width, height = _path_bounds(simple)
        offset = (left + width / 2, top + height / 2)  # Path._calcDimensions
        props.update(width=width, height=height, pathOffset=offset)
        return _path_subpaths(simple, offset)
    width, height = props["width"], props["height"]
    if kind in ("rect", "labeledrect"):
        return [_rect_ops(width, height, props["rx"], props["ry"])]
    if kind == "triangle":
        return [[("M", -width / 2, height / 2), ("L", 0.0, -height / 2), ("L", width / 2, height / 2)]]
    if kind == "ellipse":
        rx, ry = props["rx"], props["ry"]
        # Drawn as arc(0, 0, rx) under transform(1, 0, 0, ry / rx): nothing when rx is 0.
        return [[("E", 0.0, 0.0, rx, 0.0, 0.0, ry, 0.0, 2 * math.pi)]] if rx > 0 and ry > 0 else []
    # circle: ctx.arc(0, 0, radius, startAngle°, endAngle°, counterClockwise)
    radius = props["radius"]
    start, sweep = _canvas_arc(
        props["startAngle"] * _PI_BY_180, props["endAngle"] * _PI_BY_180, props["counterClockwise"]
    )
    if radius <= 0 or sweep == 0:
        return []
    return [[("E", 0.0, 0.0, radius, 0.0, 0.0, radius, start, sweep)]]


def _points(raw: Any) -> list[tuple[float, float]]:
    if raw is None:
        return []
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise RoiError(_UNREADABLE)
    if len(raw) > _MAX_ITEMS:
        raise RoiError(_TOO_COMPLEX)
    points = []
    for point in raw:
        if not isinstance(point, Mapping):
            raise RoiError(_UNREADABLE)
        points.append((_number(point.get("x")), _number(point.get("y"))))
    return points


def _rect_ops(w: float, h: float, rx: float, ry: float) -> list[_Op]:
    """Rect._render, rounded corners included."""
    x, y = -w / 2, -h / 2
    rx = min(rx, w / 2) if rx else 0.0
    ry = min(ry, h / 2) if ry else 0.0
    rounded = rx != 0 or ry != 0
    k = _K_RECT
    ops: list[_Op] = [("M", x + rx, y), ("L", x + w - rx, y)]
    if rounded:
        ops.append(("C", x + w - k * rx, y, x + w, y + k * ry, x + w, y + ry))
    ops.append(("L", x + w, y + h - ry))
    if rounded:
        ops.append(("C", x + w, y + h - k * ry, x + w - k * rx, y + h, x + w - rx, y + h))
    ops.append(("L", x + rx, y + h))
    if rounded:
        ops.append(("C", x + k * rx, y + h, x, y + h - k * ry, x, y + h - ry))
    ops.append(("L", x, y + ry))
    if rounded:
        ops.append(("C", x, y + k * ry, x + k * rx, y, x + rx, y))
    return ops


def _canvas_arc(start: float, end: float, counter_clockwise: bool) -> tuple[float, float]:
    """Start angle and signed sweep (radians) the browser draws for ``ctx.arc``.

    Follows the HTML spec and Chromium's AdjustEndAngle (a 0 → 2π anticlockwise arc is a
    full circle, for compatibility).
    """
    two_pi = 2 * math.pi
    if not counter_clockwise and end - start >= two_pi:
        return start, two_pi
    if counter_clockwise and start - end >= two_pi:
        return start, -two_pi
    if not counter_clockwise and start > end:
        end = start + (two_pi - math.fmod(start - end, two_pi))
    elif counter_clockwise and start < end:
        end = start - (two_pi - math.fmod(end - start, two_pi))
    return start, end - start


# --------------------------------------------------------------------------------------------
# Paths: Fabric's makePathSimpler, _calcBoundsFromPath and _renderPathCommands


def _simplify_path(raw: Any) -> list[_Op]:
    """Absolute M, L, C, Q, Z commands, exactly as Fabric's ``makePathSimpler`` produces them."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raise RoiError(_UNSUPPORTED)  # the canvas always sends a parsed command list
    if not isinstance(raw, Sequence):
        raise RoiError(_UNREADABLE)
    if len(raw) > _MAX_ITEMS:
        raise RoiError(_TOO_COMPLEX)
    x = y = x1 = y1 = 0.0  # current point; start of the current subpath
    control_x = control_y = 0.0  # last control point, reflected by S and T
    previous = ""
    out: list[_Op] = []
    for command in raw:
        if not isinstance(command, Sequence) or isinstance(command, str) or not command:
            raise RoiError(_UNREADABLE)
        letter = command[0]
        if not isinstance(letter, str) or letter.upper() not in _PATH_ARGS or len(letter) != 1:
            previous = ""  # Fabric skips commands it does not know
            continue
        upper, relative = letter.upper(), letter.islower()
        if len(command) - 1 < _PATH_ARGS[upper]:
            raise RoiError(_UNREADABLE)  # Fabric would draw NaN
        a = [_number(v) for v in command[1 : 1 + _PATH_ARGS[upper]]]
        converted: _Op | None = None
        if upper == "L":
            if relative:
                a[0], a[1] = a[0] + x, a[1] + y
            x, y = a[0], a[1]
            converted = ("L", x, y)
        elif upper == "H":
            x = a[0] + x if relative else a[0]
            converted = ("L", x, y)
        elif upper == "V":
            y = a[0] + y if relative else a[0]
            converted = ("L", x, y)
        elif upper == "M":
            if relative:
                a[0], a[1] = a[0] + x, a[1] + y
            x, y = x1, y1 = a[0], a[1]
            converted = ("M", x, y)
        elif upper == "C":
            if relative:
                a = [v + (x if i % 2 == 0 else y) for i, v in enumerate(a)]
            control_x, control_y = a[2], a[3]
            x, y = a[4], a[5]
            converted = ("C", a[0], a[1], control_x, control_y, x, y)
        elif upper == "S":
            if relative:
                a = [v + (x if i % 2 == 0 else y) for i, v in enumerate(a)]
            if previous == "C":  # reflect the previous second control point
                control_x, control_y = 2 * x - control_x, 2 * y - control_y
            else:
                control_x, control_y = x, y
            x, y = a[2], a[3]
            converted = ("C", control_x, control_y, a[0], a[1], x, y)
            control_x, control_y = a[0], a[1]
        elif upper == "Q":
            if relative:
                a = [v + (x if i % 2 == 0 else y) for i, v in enumerate(a)]
            control_x, control_y = a[0], a[1]
            x, y = a[2], a[3]
            converted = ("Q", control_x, control_y, x, y)
        elif upper == "T":
            if relative:
                a[0], a[1] = a[0] + x, a[1] + y
            if previous == "Q":
                control_x, control_y = 2 * x - control_x, 2 * y - control_y
            else:
                control_x, control_y = x, y
            x, y = a[0], a[1]
            converted = ("Q", control_x, control_y, x, y)
        elif upper == "A":
            if relative:
                a[5], a[6] = a[5] + x, a[6] + y
            out.extend(_arc_to_beziers(x, y, *a))
            x, y = a[5], a[6]
        else:  # Z
            x, y = x1, y1
            converted = ("Z",)
        if converted is not None:
            out.append(converted)
            previous = converted[0]
        else:
            previous = ""  # an arc: a following S or T does not reflect
    return out


def _fabric_cos(angle: float) -> float:
    """Fabric's cos: exact at multiples of π/2."""
    if angle == 0:
        return 1.0
    quarter = abs(angle) / _HALF_PI
    if quarter in (1, 3):
        return 0.0
    if quarter == 2:
        return -1.0
    return math.cos(angle)


def _fabric_sin(angle: float) -> float:
    """Fabric's sin: exact at multiples of π/2."""
    if angle == 0:
        return 0.0
    quarter = angle / _HALF_PI
    sign = math.copysign(1.0, angle)
    if quarter == 1:
        return sign
    if quarter == 2:
        return 0.0
    if quarter == 3:
        return -sign
    return math.sin(angle)


def _arc_to_beziers(
    fx: float, fy: float, rx: float, ry: float, rotation: float, large: float, sweep: float, tx: float, ty: float
) -> list[_Op]:
    """Fabric's fromArcToBeziers: an SVG arc as ≤ 90° cubic Béziers (what the canvas draws)."""
    to_x, to_y = tx - fx, ty - fy
    if rx == 0 or ry == 0:
        return []  # Fabric draws nothing (SVG would draw a line)
    theta = rotation * _PI_BY_180
    sin_th, cos_th = _fabric_sin(theta), _fabric_cos(theta)
    px = 0.5 * (-cos_th * to_x - sin_th * to_y)
    py = 0.5 * (-cos_th * to_y + sin_th * to_x)
    rx2, ry2, px2, py2 = rx * rx, ry * ry, px * px, py * py
    pl = rx2 * ry2 - rx2 * py2 - ry2 * px2
    arx, ary = abs(rx), abs(ry)
    root = 0.0
    if pl < 0:
        s = math.sqrt(1 - pl / (rx2 * ry2))
        arx, ary = arx * s, ary * s
    else:
        denominator = rx2 * py2 + ry2 * px2
        if denominator == 0:
            return []  # start == end: NaN in Fabric, which draws nothing
        root = (-1.0 if large == sweep else 1.0) * math.sqrt(pl / denominator)
    cx, cy = root * arx * py / ary, -root * ary * px / arx
    cx1 = cos_th * cx - sin_th * cy + to_x * 0.5
    cy1 = sin_th * cx + cos_th * cy + to_y * 0.5
    m_theta = _vector_angle(1, 0, (px - cx) / arx, (py - cy) / ary)
    d_theta = _vector_angle((px - cx) / arx, (py - cy) / ary, (-px - cx) / arx, (-py - cy) / ary)
    if sweep == 0 and d_theta > 0:
        d_theta -= 2 * math.pi
    elif sweep == 1 and d_theta < 0:
        d_theta += 2 * math.pi
    segments = math.ceil(abs(d_theta / math.pi * 2))
    if segments == 0:
        return []
    m_delta = d_theta / segments
    m_t = (8 / 3) * math.sin(m_delta / 4) * math.sin(m_delta / 4) / math.sin(m_delta / 2)
    th3 = m_theta + m_delta
    from_x = from_y = 0.0
    out: list[_Op] = []
    for _ in range(segments):
        cos1, sin1 = _fabric_cos(m_theta), _fabric_sin(m_theta)
        cos2, sin2 = _fabric_cos(th3), _fabric_sin(th3)
        end_x = cos_th * arx * cos2 - sin_th * ary * sin2 + cx1
        end_y = sin_th * arx * cos2 + cos_th * ary * sin2 + cy1
        cp1_x = from_x + m_t * (-cos_th * arx * sin1 - sin_th * ary * cos1)
        cp1_y = from_y + m_t * (-sin_th * arx * sin1 + cos_th * ary * cos1)
        cp2_x = end_x + m_t * (cos_th * arx * sin2 + sin_th * ary * cos2)
        cp2_y = end_y + m_t * (sin_th * arx * sin2 - cos_th * ary * cos2)
        out.append(("C", cp1_x + fx, cp1_y + fy, cp2_x + fx, cp2_y + fy, end_x + fx, end_y + fy))
        from_x, from_y = end_x, end_y
        m_theta, th3 = th3, th3 + m_delta
    return out


def _vector_angle(ux: float, uy: float, vx: float, vy: float) -> float:
    ta, tb = math.atan2(uy, ux), math.atan2(vy, vx)
    return tb - ta if tb >= ta else 2 * math.pi - (ta - tb)


def _path_bounds(simple: list[_Op]) -> tuple[float, float, float, float]:
    """Path._calcBoundsFromPath: (left, top, width, height) that fix ``pathOffset``.

    Reproduced with its quirks, since they decide where the path is drawn: a lone move adds
    nothing, a line adds the subpath's start, and a quadratic is bounded as the cubic with
    both control points on the quadratic's control point.
    """
    bounds: list[tuple[float, float]] = []
    start_x = start_y = x = y = 0.0
    for op in simple:
        if op[0] == "L":
            x, y = op[1], op[2]
            bounds += [(start_x, start_y), (x, y)]
        elif op[0] == "M":
            x, y = start_x, start_y = op[1], op[2]
        elif op[0] == "C":
            bounds += _curve_bounds(x, y, *op[1:])
            x, y = op[5], op[6]
        elif op[0] == "Q":
            bounds += _curve_bounds(x, y, op[1], op[2], op[1], op[2], op[3], op[4])
            x, y = op[3], op[4]
        else:
            x, y = start_x, start_y
    return _bbox_from_points(bounds)


def _curve_bounds(
    bx: float, by: float, c1x: float, c1y: float, c2x: float, c2y: float, ex: float, ey: float
) -> list[tuple[float, float]]:
    """Fabric's getBoundsOfCurve: min and max corners of a cubic Bézier."""
    t_values = []
    for b0, b1, b2, b3 in ((bx, c1x, c2x, ex), (by, c1y, c2y, ey)):
        b = 6 * b0 - 12 * b1 + 6 * b2
        a = -3 * b0 + 9 * b1 - 9 * b2 + 3 * b3
        c = 3 * b1 - 3 * b0
        if abs(a) < 1e-12:
            if abs(b) >= 1e-12 and 0 < -c / b < 1:
                t_values.append(-c / b)
            continue
        disc = b * b - 4 * c * a
        if disc < 0:
            continue
        root = math.sqrt(disc)
        t_values += [t for t in ((-b + root) / (2 * a), (-b - root) / (2 * a)) if 0 < t < 1]
    xs, ys = [bx, ex], [by, ey]
    for t in t_values:
        mt = 1 - t
        w = (t**3, 3 * t**2 * mt, 3 * t * mt**2, mt**3)
        xs.append(ex * w[0] + c2x * w[1] + c1x * w[2] + bx * w[3])
        ys.append(ey * w[0] + c2y * w[1] + c1y * w[2] + by * w[3])
    return [(min(xs), min(ys)), (max(xs), max(ys))]


def _bbox_from_points(points: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
    """makeBoundingBoxFromPoints: (left, top, width, height); all zero when empty."""
    if not points:
        return 0.0, 0.0, 0.0, 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    left, top = min(xs), min(ys)
    return left, top, max(xs) - left, max(ys) - top


def _path_subpaths(simple: list[_Op], offset: tuple[float, float]) -> list[list[_Op]]:
    """The canvas subpaths _renderPathCommands builds, shifted by −pathOffset."""
    ox, oy = offset
    subpaths: list[list[_Op]] = []
    current: list[_Op] | None = None
    start = (0.0, 0.0)

    def begin(point: tuple[float, float]) -> list[_Op]:
        nonlocal start
        if current is not None and len(current) > 1:
            subpaths.append(current)
        start = point
        return [("M", *point)]

    for op in simple:
        letter = op[0]
        if letter == "Z":
            if current is not None:  # closePath; drawing goes on from the subpath's start
                current = begin(start)
            continue
        coords = [v - (ox if i % 2 == 0 else oy) for i, v in enumerate(op[1:])]
        if letter == "M" or current is None:
            # A line or curve with no subpath first moves to its first point (canvas spec).
            current = begin((coords[0], coords[1]))
            if letter == "M":
                continue
        current.append((letter, *coords))
    if current is not None and len(current) > 1:
        subpaths.append(current)
    return subpaths


# --------------------------------------------------------------------------------------------
# The object's matrix: Fabric's ObjectGeometry and util/misc/matrix


def _multiply(a: _Matrix, b: _Matrix) -> _Matrix:
    """multiplyTransformMatrices(a, b): apply b, then a."""
    return (
        a[0] * b[0] + a[2] * b[1],
        a[1] * b[0] + a[3] * b[1],
        a[0] * b[2] + a[2] * b[3],
        a[1] * b[2] + a[3] * b[3],
        a[0] * b[4] + a[2] * b[5] + a[4],
        a[1] * b[4] + a[3] * b[5] + a[5],
    )


def _dimensions_matrix(props: Mapping[str, Any], with_flips: bool) -> _Matrix:
    """calcDimensionsMatrix: scale (flipped) · skewX · skewY."""
    sx = -props["scaleX"] if with_flips and props["flipX"] else props["scaleX"]
    sy = -props["scaleY"] if with_flips and props["flipY"] else props["scaleY"]
    matrix: _Matrix = (sx, 0.0, 0.0, sy, 0.0, 0.0)
    if props["skewX"]:
        matrix = _multiply(matrix, (1.0, 0.0, math.tan(props["skewX"] * _PI_BY_180), 1.0, 0.0, 0.0))
    if props["skewY"]:
        matrix = _multiply(matrix, (1.0, math.tan(props["skewY"] * _PI_BY_180), 0.0, 1.0, 0.0, 0.0))
    return matrix


def _transformed_dimensions(props: Mapping[str, Any]) -> tuple[float, float]:
    """_getTransformedDimensions: the object's box (stroke included) after scale and skew, px."""
    stroke = props["strokeWidth"]
    before, after = (0.0, stroke) if props["strokeUniform"] else (stroke, 0.0)
    dim_x, dim_y = props["width"] + before, props["height"] + before
    if props["skewX"] == 0 and props["skewY"] == 0:
        return dim_x * props["scaleX"] + after, dim_y * props["scaleY"] + after
    # sizeAfterTransform: bounding box of the scaled, skewed rectangle (flips do not matter).
    m = _dimensions_matrix(props, with_flips=False)
    corners = [(-dim_x / 2, -dim_y / 2), (dim_x / 2, -dim_y / 2), (-dim_x / 2, dim_y / 2), (dim_x / 2, dim_y / 2)]
    xs = [m[0] * x + m[2] * y + m[4] for x, y in corners]
    ys = [m[1] * x + m[3] * y + m[5] for x, y in corners]
    return (max(xs) - min(xs)) + after, (max(ys) - min(ys)) + after


def _rotate_about(point: tuple[float, float], degrees: float, pivot: tuple[float, float]) -> tuple[float, float]:
    """Point.rotate(degreesToRadians(degrees), pivot)."""
    radians = degrees * _PI_BY_180
    sin, cos = _fabric_sin(radians), _fabric_cos(radians)
    dx, dy = point[0] - pivot[0], point[1] - pivot[1]
    return dx * cos - dy * sin + pivot[0], dx * sin + dy * cos + pivot[1]


def _centre(props: Mapping[str, Any], dims: tuple[float, float]) -> tuple[float, float]:
    """translateToCenterPoint(left, top): move from the origin to the centre, rotated by angle."""
    position = (props["left"], props["top"])
    off_x, off_y = 0.0 - props["originX"], 0.0 - props["originY"]
    x, y = position
    if off_x or off_y:
        x, y = x + off_x * dims[0], y + off_y * dims[1]
    return _rotate_about((x, y), props["angle"], position) if props["angle"] else (x, y)


def _origin_from_centre(
    props: Mapping[str, Any], centre: tuple[float, float], dims: tuple[float, float]
) -> tuple[float, float]:
    """translateToOriginPoint: (left, top) that puts the object's centre on ``centre``."""
    x, y = centre
    if props["originX"] or props["originY"]:
        x, y = x + props["originX"] * dims[0], y + props["originY"] * dims[1]
    return _rotate_about((x, y), props["angle"], centre) if props["angle"] else (x, y)


def _compose_matrix(props: Mapping[str, Any], centre: tuple[float, float]) -> _Matrix:
    """composeMatrix: translate(centre) · rotate(angle) · scale(±sx, ±sy) · skewX · skewY."""
    matrix: _Matrix = (1.0, 0.0, 0.0, 1.0, centre[0], centre[1])
    if props["angle"]:
        radians = props["angle"] * _PI_BY_180
        cos, sin = _fabric_cos(radians), _fabric_sin(radians)
        matrix = _multiply(matrix, (cos, sin, -sin, cos, 0.0, 0.0))
    scale = _dimensions_matrix(props, with_flips=True)
    if scale != (1, 0, 0, 1, 0, 0):
        matrix = _multiply(matrix, scale)
    return matrix


# --------------------------------------------------------------------------------------------
# From operations to vertices


def _transform_ops(ops: list[_Op], m: _Matrix) -> list[_Op]:
    """Map every point of a subpath through ``m``; refuse coordinates far off the canvas."""
    out: list[_Op] = []
    for op in ops:
        if op[0] == "E":  # centre moves, axis vectors only see the linear part
            _, cx, cy, ux, uy, vx, vy, start, sweep = op
            new: _Op = (
                "E",
                m[0] * cx + m[2] * cy + m[4],
                m[1] * cx + m[3] * cy + m[5],
                m[0] * ux + m[2] * uy,
                m[1] * ux + m[3] * uy,
                m[0] * vx + m[2] * vy,
                m[1] * vx + m[3] * vy,
                start,
                sweep,
            )
            reach = [abs(new[1]) + math.hypot(new[3], new[5]), abs(new[2]) + math.hypot(new[4], new[6])]
        else:
            coords = op[1:]
            mapped = []
            for x, y in zip(coords[0::2], coords[1::2], strict=True):
                mapped += [m[0] * x + m[2] * y + m[4], m[1] * x + m[3] * y + m[5]]
            new = (op[0], *mapped)
            reach = [abs(v) for v in mapped]
        if not all(math.isfinite(v) for v in reach):
            raise RoiError(_BAD_NUMBER)
        if any(v > _MAX_ABS_CANVAS for v in reach):
            raise RoiError(_TOO_LARGE)
        out.append(new)
    return out


def _flatten(ops: list[_Op], budget: int) -> np.ndarray:
    """Vertices (K, 2) float64 of one subpath in canvas px, curves sampled within _FLATNESS_PX.

    Raises:
        RoiError: more than ``budget`` vertices (each piece is capped, so memory stays bounded).
    """
    pieces: list[np.ndarray] = []
    count = 0
    current = np.zeros(2)
    for op in ops:
        letter = op[0]
        if letter in ("M", "L"):
            current = np.array(op[1:3], dtype=np.float64)
            pieces.append(current[None, :])
        elif letter in ("C", "Q"):
            control = np.vstack([current, np.asarray(op[1:], dtype=np.float64).reshape(-1, 2)])
            samples = _sample_bezier(control)
            pieces.append(samples)
            current = control[-1]
        else:  # "E": an elliptical arc c + u cos θ + v sin θ, in canvas px already
            samples = _sample_ellipse(op)
            pieces.append(samples)
            current = samples[-1]
        count += len(pieces[-1])
        if count > budget:
            raise RoiError(_TOO_COMPLEX)
    if not pieces:
        return np.zeros((0, 2))
    vertices = np.vstack(pieces)
    if len(vertices) > 1 and np.array_equal(vertices[0], vertices[-1]):
        vertices = vertices[:-1]  # the closing edge is implied
    return vertices


def _sample_bezier(control: np.ndarray) -> np.ndarray:
    """Points at t = 1/n … 1 of a Bézier with (d + 1, 2) control points (d = 2 or 3).

    Wang's bound picks n so that the chords stay within _FLATNESS_PX of the curve; sampling
    the transformed control points is exact because Béziers are affine invariant.
    """
    degree = len(control) - 1
    second = control[2:] - 2 * control[1:-1] + control[:-2]
    spread = float(np.max(np.hypot(second[:, 0], second[:, 1])))
    steps = math.ceil(math.sqrt(degree * (degree - 1) / 8 * spread / _FLATNESS_PX))
    steps = min(max(steps, 1), _MAX_CURVE_STEPS)
    t = (np.arange(1, steps + 1) / steps)[:, None]
    mt = 1 - t
    if degree == 3:
        out = mt**3 * control[0] + 3 * mt**2 * t * control[1] + 3 * mt * t**2 * control[2] + t**3 * control[3]
    else:
        out = mt**2 * control[0] + 2 * mt * t * control[1] + t**2 * control[2]
    out[-1] = control[-1]  # end exactly on the node
    return out


def _sample_ellipse(op: _Op) -> np.ndarray:
    """Points of c + u cos θ + v sin θ from θ0 over the sweep; a full turn omits the repeat."""
    _, cx, cy, ux, uy, vx, vy, start, sweep = op
    # |d²p/dθ²| ≤ ‖[u v]‖_F, and a chord of parameter step h strays at most that · h² / 8
    radius = math.sqrt(ux * ux + uy * uy + vx * vx + vy * vy)
    step = math.sqrt(8 * _FLATNESS_PX / radius) if radius > 0 else math.pi
    full = abs(sweep) >= 2 * math.pi
    steps = min(max(math.ceil(abs(sweep) / step), 16), _MAX_CURVE_STEPS)
    if full:
        steps = 4 * math.ceil(steps / 4)  # keep the quarter points on the curve's extremes
    k = np.arange(steps if full else steps + 1)
    theta = start + sweep * k / steps
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    return np.array([cx, cy]) + cos * np.array([ux, uy]) + sin * np.array([vx, vy])


# --------------------------------------------------------------------------------------------
# Filling


def _fill_rings(rings: Sequence[np.ndarray], shape: tuple[int, int], *, nonzero: bool) -> np.ndarray:
    """(rows, cols) bool mask of pixels whose centre is inside the rings taken together.

    ``nonzero``: the canvas's default fill rule (winding number ≠ 0); otherwise even-odd.
    Edges are half-open in y, so a centre on a shared edge belongs to exactly one side.
    """
    mask = np.zeros(shape, dtype=bool)
    usable = [r for r in rings if len(r) >= 3]
    if not usable:
        return mask
    x0 = np.concatenate([r[:, 0] for r in usable])
    y0 = np.concatenate([r[:, 1] for r in usable])
    x1 = np.concatenate([np.roll(r[:, 0], -1) for r in usable])
    y1 = np.concatenate([np.roll(r[:, 1], -1) for r in usable])
    slanted = y0 != y1  # horizontal edges never cross a row of centres
    x0, y0, x1, y1 = x0[slanted], y0[slanted], x1[slanted], y1[slanted]
    if len(x0) == 0:
        return mask
    direction = np.where(y1 > y0, 1, -1)
    first = max(0, math.floor(float(np.nanmin(y0))))
    last = min(shape[0], math.ceil(float(np.nanmax(y0))) + 1)
    chunk = max(1, _ROW_CHUNK_CELLS // len(x0))
    for chunk_start in range(first, last, chunk):
        rows = np.arange(chunk_start, min(last, chunk_start + chunk))
        centres = rows[:, None] + 0.5
        crosses = (y0 <= centres) != (y1 <= centres)  # (rows, edges)
        xs = x0 + (centres - y0) / (y1 - y0) * (x1 - x0)
        for offset, row in enumerate(rows):
            hit = crosses[offset]
            if not hit.any():
                continue
            order = np.argsort(xs[offset][hit], kind="stable")
            hits = xs[offset][hit][order]
            # winding number just right of each crossing (even-odd: the crossing count)
            winding = np.cumsum(direction[hit][order] if nonzero else np.ones(len(hits), dtype=np.int64))[:-1]
            inside = winding != 0 if nonzero else winding % 2 == 1
            for xa, xb in zip(hits[:-1][inside], hits[1:][inside], strict=True):
                start, stop = max(0, math.ceil(xa - 0.5)), min(shape[1], math.ceil(xb - 0.5))
                if stop > start:
                    mask[row, start:stop] = True
    return mask

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import RoiError
from core.roi import (
    CanvasView,
    mask_from_fabric,
    mask_from_outlines,
    outlines_from_fabric,
    polygon_area,
    polygon_to_fabric,
)

SQUARE = np.array([[100.0, 100.0], [250.0, 100.0], [250.0, 220.0], [100.0, 220.0]])
SQUARE_POINTS = [{"x": float(x), "y": float(y)} for x, y in SQUARE]

# Ground truth recorded from Fabric.js 7.4.0 itself; see fixtures/make_fabric_geometry.mjs.
FIXTURE = Path(__file__).parent / "fixtures" / "fabric_geometry.json"
NODE_TOL_PX = 1e-6  # polygon vertices, rectangle corners, path nodes: exact up to float noise
CURVE_TOL_PX = 0.02  # sampled curves: core.roi keeps within 0.01 canvas px of Fabric's curve


def _fabric_polygon_left_top(points: np.ndarray, stroke: float = 2.0) -> dict:
    """A polygon as Fabric serialises it with originX/Y = left/top (stroke included in the box)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return {
        "type": "Polygon",
        "originX": "left",
        "originY": "top",
        "left": float(lo[0] - stroke / 2),
        "top": float(lo[1] - stroke / 2),
        "width": float(hi[0] - lo[0]),
        "height": float(hi[1] - lo[1]),
        "strokeWidth": stroke,
        "scaleX": 1,
        "scaleY": 1,
        "angle": 0,
        "pathOffset": {"x": float((lo[0] + hi[0]) / 2), "y": float((lo[1] + hi[1]) / 2)},
        "points": [{"x": float(x), "y": float(y)} for x, y in points],
    }


def test_polygon_drawn_at_scale_1_5_has_the_expected_image_area() -> None:
    view = CanvasView(image_shape=(400, 400), canvas_size=(600, 600))  # 1.5 canvas px per image px
    mask = mask_from_fabric({"objects": [_fabric_polygon_left_top(SQUARE)]}, view)
    expected = polygon_area(SQUARE) / 1.5**2  # 150 × 120 / 2.25 = 8000 image px²
    assert mask.sum() == pytest.approx(expected, rel=0.01)
    rows, cols = np.nonzero(mask)
    assert cols.min() == pytest.approx(100 / 1.5, abs=1) and rows.max() == pytest.approx(220 / 1.5, abs=1)


def test_centre_origin_polygon_maps_like_left_top() -> None:
    view = CanvasView((300, 300), (450, 450))
    a = mask_from_fabric({"objects": [_fabric_polygon_left_top(SQUARE)]}, view)
    b = mask_from_fabric({"objects": [polygon_to_fabric(SQUARE)]}, view)
    assert (a ^ b).sum() <= 0.01 * a.sum()


def test_scaled_and_rotated_rect() -> None:
    view = CanvasView((200, 200), (200, 200))
    rect = {
        "type": "Rect",
        "originX": "center",
        "originY": "center",
        "left": 100,
        "top": 100,
        "width": 40,
        "height": 20,
        "scaleX": 2,
        "scaleY": 1,
        "angle": 90,
        "strokeWidth": 0,
    }
    mask = mask_from_fabric({"objects": [rect]}, view)
    rows, cols = np.nonzero(mask)
    assert mask.sum() == pytest.approx(80 * 20, rel=0.03)
    assert rows.max() - rows.min() + 1 == pytest.approx(80, abs=1)  # rotated: long axis vertical
    assert cols.max() - cols.min() + 1 == pytest.approx(20, abs=1)


def test_freehand_path_is_closed_and_filled() -> None:
    view = CanvasView((100, 100), (100, 100))
    path = {
        "type": "Path",
        "originX": "left",
        "originY": "top",
        "left": 9,
        "top": 9,
        "width": 40,
        "height": 40,
        "strokeWidth": 2,
        "pathOffset": {"x": 30, "y": 30},
        "path": [["M", 10, 10], ["Q", 30, 10, 50, 10], ["L", 50, 50], ["L", 10, 50], ["L", 10, 10]],
    }
    assert mask_from_fabric({"objects": [path]}, view).sum() == pytest.approx(1600, rel=0.02)


def test_circle_area() -> None:
    view = CanvasView((200, 200), (400, 400))
    circle = {
        "type": "Circle",
        "originX": "center",
        "originY": "center",
        "left": 200,
        "top": 200,
        "radius": 60,
        "width": 120,
        "height": 120,
        "strokeWidth": 0,
    }
    assert mask_from_fabric({"objects": [circle]}, view).sum() == pytest.approx(np.pi * 30**2, rel=0.02)


@pytest.mark.parametrize("drawing", [None, {"objects": []}, {"objects": [{"type": "Line", "x1": 0, "y1": 0}]}])
def test_no_area_means_a_plain_error(drawing: dict | None) -> None:
    with pytest.raises(RoiError, match="No tumour outline"):
        mask_from_fabric(drawing, CanvasView((64, 64), (64, 64)))


def test_outline_outside_the_image() -> None:
    with pytest.raises(RoiError, match="outside the image"):
        mask_from_fabric({"objects": [polygon_to_fabric(SQUARE + 1000)]}, CanvasView((64, 64), (64, 64)))


def test_mask_counts_pixels_whose_centres_are_inside() -> None:
    mask = mask_from_outlines([np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 5.0], [2.0, 5.0]])], (10, 10))
    assert mask.sum() == 12 and mask[2:5, 2:6].all()


# --------------------------------------------------------------------------------------------
# Against Fabric.js 7.4.0 itself


@cache
def _fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def _variants(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Stored variants plus those derived here (make_fabric_geometry.mjs checks they draw the same)."""
    variants = dict(case["variants"])
    canvas = variants["canvas"]
    if canvas.get("flipX"):
        # A negative scale flips on load, and keys apply in order (scaleX comes before flipX).
        variants["negative_scale"] = {k: v for k, v in canvas.items() if k != "flipX"} | {"scaleX": -canvas["scaleX"]}
        variants["negative_scale_then_flip"] = canvas | {"scaleX": -canvas["scaleX"]}
    if canvas["type"] == "Rect":
        variants["labeled"] = canvas | {"type": "LabeledRect", "label": "T1", "fontSize": 20}
    return variants


def _fabric_cases() -> list[Any]:
    return [
        pytest.param(case["name"], variant, id=f"{case['name']}:{variant}")
        for case in _fixture()["cases"]
        for variant in _variants(case)
    ]


def _fabric_subpaths(ops: list[list[Any]], steps: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fabric's recorded drawing (canvas px) → per closed subpath: (on-curve nodes, dense points).

    Independent of core.roi: Béziers are sampled from Fabric's canvas-space control points,
    arcs from the recorded centre and axis vectors.
    """
    out: list[tuple[np.ndarray, np.ndarray]] = []
    nodes: list[np.ndarray] = []
    dense: list[np.ndarray] = []
    current = start = np.zeros(2)

    def flush() -> None:
        if dense and len(np.vstack(dense)) >= 3:
            out.append((np.vstack(nodes), np.vstack(dense)))

    for op in ops:
        letter, values = op[0], np.asarray(op[1:], dtype=np.float64)
        if letter == "M":
            flush()
            current = start = values
            nodes, dense = [values[None]], [values[None]]
        elif letter == "L":
            current = values
            nodes.append(values[None])
            dense.append(values[None])
        elif letter in ("C", "Q"):
            control = np.vstack([current, values.reshape(-1, 2)])
            t = (np.arange(1, steps + 1) / steps)[:, None]
            coefficients = [
                math.comb(len(control) - 1, i) * t**i * (1 - t) ** (len(control) - 1 - i) for i in range(len(control))
            ]
            dense.append(sum(c * p for c, p in zip(coefficients, control, strict=True)))
            current = control[-1]
            nodes.append(current[None])
        elif letter == "Z":
            flush()
            current = start
            nodes, dense = [start[None]], [start[None]]
        else:  # "E": centre, axis vectors u and v, start angle, sweep (full turns only here)
            cx, cy, ux, uy, vx, vy, theta0, sweep = values
            theta = theta0 + sweep * np.arange(4 * steps) / (4 * steps)
            ring = np.stack(
                [cx + ux * np.cos(theta) + vx * np.sin(theta), cy + uy * np.cos(theta) + vy * np.sin(theta)], 1
            )
            dense.append(ring)
            nodes.append(ring[::steps])  # the four quarter points
    flush()
    return out


def _distances_to_polyline(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Distance of each of the (N, 2) ``points`` to the edges of the closed polygon ``ring``."""
    a, ab = ring, np.roll(ring, -1, axis=0) - ring
    length2 = np.maximum((ab**2).sum(axis=1), 1e-300)
    rows = max(1, 2_000_000 // len(ring))  # bound the (points, edges) temporaries
    parts = []
    for i in range(0, len(points), rows):
        chunk = points[i : i + rows, None, :]
        t = np.clip(((chunk - a) * ab).sum(axis=2) / length2, 0.0, 1.0)
        parts.append(np.sqrt(((a + t[..., None] * ab - chunk) ** 2).sum(axis=2)).min(axis=1))
    return np.concatenate(parts)


@pytest.mark.parametrize(("name", "variant"), _fabric_cases())
def test_outlines_match_fabric(name: str, variant: str) -> None:
    case = next(c for c in _fixture()["cases"] if c["name"] == name)
    expected = _fabric_subpaths(case["ops"])
    ours = outlines_from_fabric({"objects": [_variants(case)[variant]]})

    assert len(ours) == len(expected), "one outline per closed subpath Fabric draws"
    for outline, (nodes, dense) in zip(ours, expected, strict=True):
        assert outline.dtype == np.float64 and outline.ndim == 2 and outline.shape[1] == 2
        # every vertex, corner and path node Fabric draws is one of ours, to float noise
        gaps = np.sqrt(((nodes[:, None, :] - outline[None]) ** 2).sum(axis=2)).min(axis=1)
        assert gaps.max() <= NODE_TOL_PX, f"node off by {gaps.max():.3g} px"
        # and the curves between them agree within the flattening tolerance, both ways
        assert _distances_to_polyline(dense, outline).max() <= CURVE_TOL_PX
        assert _distances_to_polyline(outline, dense).max() <= CURVE_TOL_PX

    # bounding box: the exact one of what Fabric draws (its own curve bounds), and inside
    # Fabric's getBoundingRect() (the stroked control box)
    everything = np.vstack(ours)
    box = case["bbox"]
    has_curves = any(op[0] in ("C", "Q", "E") for op in case["ops"])
    tol = CURVE_TOL_PX if has_curves else NODE_TOL_PX
    np.testing.assert_allclose(everything.min(axis=0), [box["left"], box["top"]], atol=tol)
    np.testing.assert_allclose(everything.max(axis=0), [box["right"], box["bottom"]], atol=tol)
    rect = case["bounding_rect"]
    assert (everything.min(axis=0) >= np.array([rect["left"], rect["top"]]) - NODE_TOL_PX).all()
    assert (
        everything.max(axis=0) <= np.array([rect["left"] + rect["width"], rect["top"] + rect["height"]]) + NODE_TOL_PX
    ).all()


def test_fixture_covers_what_the_issue_asks_for() -> None:
    fixture = _fixture()
    assert fixture["fabric_version"] == "7.4.0"
    names = {c["name"] for c in fixture["cases"]}
    for shape in ("rect", "rounded_rect", "ellipse", "circle", "polygon", "path_relative", "path_shorthand"):
        for transform in ("defaults", "flip_x", "skew_x", "skew_xy_uniform_stroke", "flip_skew_numeric_origin"):
            assert f"{shape}/{transform}" in names
    minimal = next(c for c in fixture["cases"] if c["name"] == "rect/defaults")["variants"]["minimal"]
    assert "originX" not in minimal and "strokeWidth" not in minimal  # defaults left out


# --------------------------------------------------------------------------------------------
# Hand-derivable cases


def _rect(**overrides: Any) -> dict[str, Any]:
    return {"type": "Rect", "left": 100, "top": 100, "width": 60, "height": 40, "strokeWidth": 0} | overrides


@pytest.mark.parametrize("origin", [{}, {"originX": "left", "originY": "top"}, {"originX": "right", "originY": 0.3}])
def test_flipped_rect_gives_the_same_mask(origin: dict[str, Any]) -> None:
    view = CanvasView((200, 200), (200, 200))
    plain = mask_from_fabric({"objects": [_rect(**origin)]}, view)
    flipped = mask_from_fabric({"objects": [_rect(flipX=True, flipY=True, **origin)]}, view)
    assert plain.sum() == 60 * 40 and np.array_equal(plain, flipped)


def test_flipped_polygon_is_mirrored_about_its_centre() -> None:
    # A lopsided triangle whose bounding box is centred on x = 50: mirroring about the object's
    # centre is then mirroring the 100-px-wide image, column c ↔ 99 - c.
    points = [{"x": 20.3, "y": 20.7}, {"x": 79.7, "y": 35.2}, {"x": 31.3, "y": 80.4}]
    polygon = {"type": "Polygon", "left": 50.0, "top": 50.55, "strokeWidth": 1, "points": points}
    view = CanvasView((100, 100), (100, 100))
    plain = mask_from_fabric({"objects": [polygon]}, view)
    flipped = mask_from_fabric({"objects": [polygon | {"flipX": True}]}, view)
    assert plain.sum() > 1000
    assert np.array_equal(flipped, plain[:, ::-1])
    assert not np.array_equal(flipped, plain)


def test_skewed_rect_is_the_expected_parallelogram() -> None:
    t = math.tan(math.radians(30))
    # centre origin (Fabric 7's default): corners (±30, ±20) sheared by x += tan(30°)·y
    (outline,) = outlines_from_fabric({"objects": [_rect(skewX=30)]})
    expected = np.array([[-30 - 20 * t, -20], [30 - 20 * t, -20], [30 + 20 * t, 20], [-30 + 20 * t, 20]]) + 100
    np.testing.assert_allclose(outline, expected, atol=1e-9)
    assert polygon_area(outline) == pytest.approx(60 * 40)
    # left/top origin: Fabric sizes the box as the skewed shape's bounding box, so that box
    # starts exactly at (left, top)
    (outline,) = outlines_from_fabric({"objects": [_rect(skewX=30, originX="left", originY="top")]})
    np.testing.assert_allclose(outline.min(axis=0), [100, 100], atol=1e-9)
    np.testing.assert_allclose(outline.max(axis=0), [100 + 60 + 40 * t, 140], atol=1e-9)
    mask = mask_from_fabric({"objects": [_rect(skewX=30)]}, CanvasView((200, 200), (200, 200)))
    assert mask.sum() == pytest.approx(2400, rel=0.01)


def test_missing_origin_and_stroke_take_fabric_7_defaults() -> None:
    # Fabric 7: originX/originY default to "center" and strokeWidth to 1
    (outline,) = outlines_from_fabric(
        {"objects": [{"type": "Rect", "left": 100, "top": 100, "width": 40, "height": 20}]}
    )
    np.testing.assert_allclose(outline.min(axis=0), [80, 90])
    (outline,) = outlines_from_fabric(
        {
            "objects": [
                {
                    "type": "Rect",
                    "originX": "left",
                    "originY": "top",
                    "left": 100,
                    "top": 100,
                    "width": 40,
                    "height": 20,
                }
            ]
        }
    )
    np.testing.assert_allclose(outline.min(axis=0), [100.5, 100.5])  # half the default stroke inside


def test_polygon_without_position_is_centred_on_its_points() -> None:
    # Without left/top Fabric puts the centre on the points' bounding-box centre (175, 160),
    # whatever the origin, then rotates about it.
    polygon = {"type": "Polygon", "originX": "left", "angle": 20, "points": SQUARE_POINTS}
    (outline,) = outlines_from_fabric({"objects": [polygon]})
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    expected = (SQUARE - [175, 160]) @ np.array([[c, s], [-s, c]]) + [175, 160]
    np.testing.assert_allclose(outline, expected, atol=1e-9)


RELATIVE = [
    ["m", 10, 10],
    ["l", 40, 0],
    ["h", 10],
    ["v", 30],
    ["c", 0, 10, -10, 20, -20, 20],
    ["s", -20, -10, -20, -20],
]
RELATIVE += [["q", 0, -10, -5, -15], ["t", -5, -10], ["z"]]
ABSOLUTE = [["M", 10, 10], ["L", 50, 10], ["H", 60], ["V", 40], ["C", 60, 50, 50, 60, 40, 60], ["S", 20, 50, 20, 40]]
ABSOLUTE += [["Q", 20, 30, 15, 25], ["T", 10, 15], ["Z"]]
# S reflects the previous control point (50, 60) about (40, 60); T reflects (20, 30) about (15, 25)
EXPANDED = [["M", 10, 10], ["L", 50, 10], ["L", 60, 10], ["L", 60, 40], ["C", 60, 50, 50, 60, 40, 60]]
EXPANDED += [["C", 30, 60, 20, 50, 20, 40], ["Q", 20, 30, 15, 25], ["Q", 10, 20, 10, 15], ["Z"]]


@pytest.mark.parametrize(
    "transform", [{}, {"originX": "left", "originY": "top", "angle": 30, "flipY": True, "skewX": 12}]
)
def test_relative_path_equals_its_absolute_twin(transform: dict[str, Any]) -> None:
    def outline(commands: list[list[Any]]) -> np.ndarray:
        (found,) = outlines_from_fabric(
            {"objects": [{"type": "Path", "left": 50, "top": 40, "path": commands} | transform]}
        )
        return found

    np.testing.assert_allclose(outline(RELATIVE), outline(ABSOLUTE), atol=1e-9)
    np.testing.assert_allclose(outline(RELATIVE), outline(EXPANDED), atol=1e-9)


def test_arc_command_draws_fabrics_half_circle() -> None:
    path = {"type": "Path", "originX": "left", "originY": "top", "left": 19.5, "top": 19.5}
    path["path"] = [["M", 20, 50], ["A", 30, 30, 0, 0, 1, 80, 50], ["Z"]]  # clockwise on screen: over the top
    (outline,) = outlines_from_fabric({"objects": [path]})
    np.testing.assert_allclose(outline.min(axis=0), [20, 20], atol=0.01)
    np.testing.assert_allclose(outline.max(axis=0), [80, 50], atol=1e-9)
    assert polygon_area(outline) == pytest.approx(math.pi * 30**2 / 2, rel=1e-3)


def test_partial_circle_is_the_chord_segment() -> None:
    circle = {"type": "Circle", "left": 50, "top": 50, "radius": 20, "startAngle": 0, "endAngle": 180}
    (outline,) = outlines_from_fabric({"objects": [circle]})
    assert polygon_area(outline) == pytest.approx(math.pi * 20**2 / 2, rel=1e-3)
    assert outline[:, 1].min() == pytest.approx(50)  # clockwise from 0° to 180° is the lower half


def test_rounded_rect_loses_its_corners() -> None:
    (outline,) = outlines_from_fabric({"objects": [_rect(rx=10)]})  # ry follows rx, as in Fabric
    corner_loss = 4 * (1 - math.pi / 4) * 10 * 10  # Fabric's Bézier quarter circles, to ~0.03 %
    assert polygon_area(outline) == pytest.approx(60 * 40 - corner_loss, rel=1e-3)


def test_self_overlapping_outline_fills_like_the_canvas() -> None:
    # A pentagram: the canvas's default nonzero rule fills the centre, even-odd leaves it empty.
    angles = np.radians(-90 + 144 * np.arange(5))
    star = [{"x": 50 + 40 * math.cos(a), "y": 50 + 40 * math.sin(a)} for a in angles]
    polygon = {"type": "Polygon", "points": star}
    view = CanvasView((100, 100), (100, 100))
    assert mask_from_fabric({"objects": [polygon]}, view)[50, 50]
    assert not mask_from_fabric({"objects": [polygon | {"fillRule": "evenodd"}]}, view)[50, 50]


def test_polygon_to_fabric_lands_on_its_points() -> None:
    points = np.array([[12.5, 40.0], [90.25, 22.0], [70.0, 95.5], [20.0, 80.0]])
    (outline,) = outlines_from_fabric({"objects": [polygon_to_fabric(points)]})
    np.testing.assert_allclose(outline, points, atol=1e-9)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("drawing", "message"),
    [
        ({"objects": [_rect(left=NAN)]}, "invalid coordinate"),
        ({"objects": [_rect(width=INF)]}, "invalid coordinate"),
        ({"objects": [_rect(top="12")]}, "invalid coordinate"),
        ({"objects": [_rect(scaleX=None)]}, "invalid coordinate"),
        ({"objects": [_rect(angle=True)]}, "invalid coordinate"),
        (
            {"objects": [{"type": "Polygon", "points": [{"x": 1, "y": 2}, {"x": NAN, "y": 3}, {"x": 4, "y": 5}]}]},
            "invalid",
        ),
        ({"objects": [{"type": "Path", "path": [["M", 0, 0], ["L", "a", 3], ["L", 5, 5]]}]}, "invalid coordinate"),
        ({"objects": [{"type": "Path", "path": [["M", 0, 0], ["L", 3]]}]}, "could not be read"),
        ({"objects": [{"type": "Path", "path": "M 0 0 L 10 0 L 5 5 z"}]}, "cannot measure"),
        ({"objects": [_rect(width=1e12)]}, "far larger"),
        ({"objects": [_rect(scaleX=1e5)]}, "far larger"),
        ({"objects": [_rect(skewX=90)]}, "far larger"),
        ({"objects": [_rect(originX="middle")]}, "cannot measure"),
        ({"objects": [{"type": "Polygon", "exactBoundingBox": True, "points": SQUARE_POINTS}]}, "cannot measure"),
        ({"objects": [{"type": "Circle", "radius": -5}]}, "cannot measure"),
        ({"objects": [_rect(flipX="false")]}, "could not be read"),
        ({"objects": ["Rect"]}, "could not be read"),
        ({"objects": 5}, "could not be read"),
        (["not", "a", "drawing"], "could not be read"),
    ],
)
def test_unusable_drawings_are_refused_in_one_sentence(drawing: Any, message: str) -> None:
    with pytest.raises(RoiError, match=message) as caught:
        mask_from_fabric(drawing, CanvasView((64, 64), (64, 64)))
    text = str(caught.value)
    assert text.endswith(".") and text.count(".") == 1 and "\n" not in text

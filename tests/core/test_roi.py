from __future__ import annotations

import numpy as np
import pytest

from core.errors import RoiError
from core.roi import CanvasView, mask_from_fabric, mask_from_outlines, polygon_area, polygon_to_fabric

SQUARE = np.array([[100.0, 100.0], [250.0, 100.0], [250.0, 220.0], [100.0, 220.0]])


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

"""Outline measurements and mask → canvas conversion (core.outline)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from core.errors import RoiError
from core.outline import (
    SMALL_TUMOUR_MM,
    count_regions,
    keep_largest_region,
    mask_to_fabric,
    mask_to_outlines,
    max_feret_diameter,
    measure_outline,
    min_patches_for,
    small_tumour_warning,
)
from core.preprocess import PreprocessConfig
from core.roi import canvas_view_for, mask_from_fabric, mask_from_outlines


def _disc(diameter_mm: float, spacing: float, side: int = 200) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    return (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= (diameter_mm / 2 / spacing) ** 2


def test_rectangle_area_and_diameter_in_mm() -> None:
    mask = np.zeros((60, 80), bool)
    mask[10:20, 5:45] = True  # 10 rows × 40 columns
    found = measure_outline(mask, (0.5, 0.8))
    assert found.area_px == 400 and found.area_mm2 == pytest.approx(400 * 0.4)
    # corner to corner: 10 rows of 0.5 mm, 40 columns of 0.8 mm
    assert found.max_diameter_mm == pytest.approx(np.hypot(5.0, 32.0))
    assert found.max_diameter_px == pytest.approx(np.hypot(10, 40))
    assert found.regions == 1 and found.patches is None and found.warning is None


def test_disc_diameter_is_close_to_true_diameter() -> None:
    for diameter in (10.0, 42.0, 80.0):
        measured = max_feret_diameter(_disc(diameter, 0.7, side=200), (0.7, 0.7))
        assert diameter - 0.7 <= measured <= diameter + 2 * 0.7


def test_without_spacing_only_pixels() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5:10, 5:10] = True
    found = measure_outline(mask, None)
    assert (
        found.area_mm2 is None
        and found.max_diameter_mm is None
        and found.max_diameter_px == pytest.approx(np.hypot(5, 5))
    )


def test_empty_outline_is_refused() -> None:
    with pytest.raises(RoiError, match=r"^The outline is empty; draw around the tumour\.$"):
        measure_outline(np.zeros((10, 10), bool), (1.0, 1.0))
    with pytest.raises(RoiError):
        keep_largest_region(np.zeros((10, 10), bool))


def test_regions_and_keep_the_largest() -> None:
    mask = np.zeros((50, 50), bool)
    mask[5:10, 5:10] = True  # 25 px
    mask[20:40, 20:40] = True  # 400 px
    mask[40, 40] = True  # touches the big one at a corner: same region (8-connected)
    mask[2, 45] = True
    assert count_regions(mask) == 3
    largest = keep_largest_region(mask)
    assert int(largest.sum()) == 401 and largest[40, 40] and not largest[5:10, 5:10].any()


def test_minimum_patch_count_is_that_of_a_42_mm_tumour() -> None:
    cfg = PreprocessConfig()
    assert SMALL_TUMOUR_MM == 42.0
    assert min_patches_for(cfg) == 81
    # a different grid (e.g. another checkpoint) gets its own threshold
    assert min_patches_for(PreprocessConfig(stride_px=64)) < 81


def test_small_tumour_warning_below_the_threshold() -> None:
    cfg = PreprocessConfig()
    small = measure_outline(_disc(25.0, 0.7), (0.7, 0.7), cfg)
    assert small.patches is not None and 0 < small.patches < 81
    assert small.warning == (
        f"This outline gives {small.patches} patches (largest diameter {small.max_diameter_mm:.0f} mm), fewer than "
        "the 81 of a round 42 mm "
        "tumour: in the paper, mispredictions concentrated in smaller tumours (median 42 mm against 57.5 mm, "
        "P = 0.025), so treat this estimate with extra caution."
    )
    large = measure_outline(_disc(60.0, 0.7, side=120), (0.7, 0.7), cfg)
    assert large.patches is not None and large.patches >= 81 and large.warning is None
    assert small_tumour_warning(81, cfg) is None and small_tumour_warning(0, cfg) is not None


def test_mask_to_outlines_round_trips_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        mask = ndimage.binary_fill_holes(ndimage.gaussian_filter(rng.random((60, 70)), 3) > 0.52)
        if not mask.any():
            continue
        np.testing.assert_array_equal(mask_from_outlines(mask_to_outlines(mask), mask.shape), mask)
    diagonal = np.zeros((8, 8), bool)
    diagonal[2, 2] = diagonal[3, 3] = True  # two pixels touching at a corner
    assert len(mask_to_outlines(diagonal)) == 2
    np.testing.assert_array_equal(mask_from_outlines(mask_to_outlines(diagonal), diagonal.shape), diagonal)


def test_imported_mask_becomes_editable_canvas_polygons() -> None:
    mask = np.zeros((128, 96), bool)
    mask[30:70, 20:60] = True
    mask[90:100, 70:90] = True
    view = canvas_view_for(mask.shape, max_width=640)  # scaled ×6.67 on screen
    objects = mask_to_fabric(mask, view)
    assert len(objects) == 2 and all(o["type"] == "Polygon" for o in objects)
    np.testing.assert_array_equal(mask_from_fabric({"objects": objects}, view), mask)

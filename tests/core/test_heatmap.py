from __future__ import annotations

import cv2
import numpy as np

from core.heatmap import colour_bar, grey_from_probability, jet_overlay, probability_map


def _grid(boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    return np.array(boxes, dtype=np.float64)


def test_overlapping_patches_average() -> None:
    pmap = probability_map((10, 10), _grid([(0, 0, 4, 4), (2, 2, 6, 6)]), np.array([0.2, 0.6]))
    assert pmap[0, 0] == np.float32(0.2) and pmap[3, 3] == np.float32(0.4) and pmap[5, 5] == np.float32(0.6)
    assert np.isnan(pmap[8, 8])


def test_overlay_is_applycolormap_inside_the_roi_and_the_slice_outside() -> None:
    rng = np.random.default_rng(1)
    display = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    pmap = rng.random((32, 32)).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 4:20] = True
    out = jet_overlay(display, pmap, mask, opacity=1.0)
    expected = cv2.cvtColor(
        cv2.applyColorMap(np.round(pmap * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
    )
    np.testing.assert_array_equal(out[mask], expected[mask])
    np.testing.assert_array_equal(out[~mask], np.repeat(display[~mask][:, None], 3, axis=1))


def test_half_opacity_blends() -> None:
    display = np.full((4, 4), 100, np.uint8)
    pmap = np.zeros((4, 4), np.float32)  # JET(0) = pure blue (0, 0, 128) in RGB
    out = jet_overlay(display, pmap, np.ones((4, 4), bool), opacity=0.5)
    np.testing.assert_array_equal(out[0, 0], [50, 50, 114])


def test_grey_scale_is_0_to_255() -> None:
    np.testing.assert_array_equal(grey_from_probability(np.array([0.0, 0.5, 1.0, np.nan])), [0, 128, 255, 0])


def test_colour_bar_is_red_on_top_blue_at_bottom() -> None:
    bar = colour_bar(100, 10)
    assert bar[0, 0, 0] > 100 and bar[0, 0, 2] < 50 and bar[-1, 0, 2] > 100 and bar[-1, 0, 0] < 50


def test_crop_box_surrounds_the_roi_with_margin_and_stays_inside() -> None:
    from core.heatmap import roi_crop_box

    mask = np.zeros((200, 300), bool)
    mask[90:110, 140:180] = True  # 20 × 40 px
    r0, c0, r1, c1 = roi_crop_box(mask, margin=0.5, min_side=10)
    assert (r0, c0, r1, c1) == (60, 120, 140, 200)  # 80 px square around the centre (100, 160)
    assert roi_crop_box(np.ones((50, 50), bool)) == (0, 0, 50, 50)


def test_outline_is_drawn_on_the_boundary_only() -> None:
    from core.heatmap import draw_outline

    mask = np.zeros((10, 10), bool)
    mask[2:8, 3:7] = True
    drawn = draw_outline(np.zeros((10, 10, 3), np.uint8), mask)
    boundary = drawn[..., 0] == 255
    assert boundary.sum() == 2 * 6 + 2 * 4 - 4  # the rectangle's rim
    assert not boundary[~mask].any() and not boundary[3:7, 4:6].any()

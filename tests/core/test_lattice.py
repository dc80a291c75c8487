"""The slice-anchored patch lattice: counts, geometry, pixels, refusals (core.lattice)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import RoiError
from core.lattice import cut_lattice, plan_lattice
from core.outline import measure_outline
from core.preprocess import PreprocessConfig
from core.roi import mask_from_outlines


def _disk(radius_px: float, shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    cy, cx = shape[0] / 2, shape[1] / 2
    return mask_from_outlines([np.column_stack([cx + radius_px * np.cos(t), cy + radius_px * np.sin(t)])], shape)


def _expected_count(mask: np.ndarray, cfg: PreprocessConfig) -> int:
    """Brute force on the native grid: every origin on the stride lattice from the slice's corner."""
    p, s = cfg.patch_px, cfg.stride_px
    count = 0
    for r in range(0, mask.shape[0] - p + 1, s):
        for c in range(0, mask.shape[1] - p + 1, s):
            if mask[r : r + p, c : c + p].mean() >= cfg.min_roi_coverage:
                count += 1
    return count


def test_disk_on_native_grid_matches_brute_force_count() -> None:
    cfg = PreprocessConfig(target_spacing_mm=None, patch_px=32, stride_px=8)
    mask = _disk(60)
    assert len(plan_lattice(mask, None, cfg)) == _expected_count(mask, cfg)


def test_default_geometry_for_a_50_mm_tumour() -> None:
    """README figure: 16 mm patches every 4 mm give ~120 patches for a 50 mm round tumour."""
    spacing = 0.7
    mask = _disk(25 / spacing)
    count = len(plan_lattice(mask, (spacing, spacing), PreprocessConfig()))
    # patch centres fill roughly the disk itself: area / stride² = π·25² / 4² ≈ 123
    assert 100 <= count <= 140


def test_the_count_beside_the_canvas_is_the_count_the_model_runs() -> None:
    cfg = PreprocessConfig()
    mask = _disk(30)
    grey = np.zeros(mask.shape, np.float32)
    grid, patches = cut_lattice(grey, mask, (0.7, 0.7), cfg)
    assert measure_outline(mask, (0.7, 0.7), cfg).patches == len(grid) == len(patches)


def test_patches_match_the_resampled_image_and_boxes_are_in_image_pixels() -> None:
    cfg = PreprocessConfig(target_spacing_mm=0.35, patch_px=32, stride_px=16)  # 2× upsampling of 0.7 mm
    yy, xx = np.mgrid[0:200, 0:200]
    grey = ((xx + yy) % 50 / 50.0).astype(np.float32)
    mask = _disk(40, (200, 200))
    grid, patches = cut_lattice(grey, mask, (0.7, 0.7), cfg)
    assert patches.shape == (len(grid), 32, 32) and patches.dtype == np.uint8
    sides = grid.boxes_img[:, 2:] - grid.boxes_img[:, :2]
    np.testing.assert_allclose(sides, 16.0, atol=0.2)  # 32 resampled px = 16 image px
    centres = (grid.boxes_img[:, :2] + grid.boxes_img[:, 2:]) / 2
    inside = mask[centres[:, 0].astype(int), centres[:, 1].astype(int)]
    assert inside.mean() > 0.9
    assert np.all(grid.coverage >= cfg.min_roi_coverage)


def test_roi_too_small_for_one_patch() -> None:
    with pytest.raises(RoiError, match="too small for one 16 mm patch"):
        plan_lattice(_disk(3), (0.7, 0.7), PreprocessConfig())


def test_empty_roi() -> None:
    with pytest.raises(RoiError, match="empty"):
        plan_lattice(np.zeros((64, 64), bool), None, PreprocessConfig())


def test_roi_at_the_image_border_is_kept_with_edges_replicated() -> None:
    cfg = PreprocessConfig(target_spacing_mm=None, patch_px=16, stride_px=8)
    mask = np.zeros((64, 64), bool)
    mask[:20, :20] = True
    grid, patches = cut_lattice(np.ones((64, 64), np.float32), mask, None, cfg)
    assert len(grid) > 0 and np.all(patches == 255)

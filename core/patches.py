"""Cut the patch grid inside an ROI, as the preprocessing config describes.

Steps: crop the ROI's bounding box (plus half a patch of margin, edge-replicated
outside the image), resample it to ``target_spacing_mm``, lay a grid of patch
origins every ``stride_px`` anchored at the ROI's top-left corner, and keep each
patch whose share of ROI pixels is at least ``min_roi_coverage``.

All returned coordinates are in the slice's own image pixels (row, col), so the
heatmap can be drawn on the image the surgeon outlined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import RoiError
from core.preprocess import PreprocessConfig


@dataclass(frozen=True)
class PatchGrid:
    """Where the patches sit.

    Attributes:
        boxes_img: (N, 4) float64 rows of (row0, col0, row1, col1), each patch's extent
            in continuous image pixels.
        coverage: (N,) float32 share of each patch inside the ROI.
    """

    boxes_img: np.ndarray
    coverage: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes_img.shape[0])


def resample_scale(spacing_mm: tuple[float, float] | None, cfg: PreprocessConfig) -> tuple[float, float]:
    """Resampled pixels per image pixel along (rows, cols).

    Images without spacing (PNG/JPEG exports) stay on their own grid.
    """
    if cfg.target_spacing_mm is None or spacing_mm is None:
        return 1.0, 1.0
    return spacing_mm[0] / cfg.target_spacing_mm, spacing_mm[1] / cfg.target_spacing_mm


def plan_grid(mask: np.ndarray, spacing_mm: tuple[float, float] | None, cfg: PreprocessConfig) -> PatchGrid:
    """The patch grid of an ROI without cutting pixels (cheap: for counts on screen).

    Args:
        mask: (rows, cols) bool ROI in image pixels.
        spacing_mm: (row, col) pixel size, or ``None``.
        cfg: the model's preprocessing.
    """
    grid, _, _ = _grid_in_crop(mask, spacing_mm, cfg)
    return grid


def extract_patches(
    grey: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float] | None, cfg: PreprocessConfig
) -> tuple[PatchGrid, np.ndarray]:
    """Cut every patch of the grid.

    Args:
        grey: (rows, cols) float32 in [0, 1], already in the model's window.
        mask: (rows, cols) bool ROI, same shape.

    Returns:
        The grid and the patches, (N, patch_px, patch_px) float32 in [0, 1].

    Raises:
        RoiError: the ROI is empty or too small for one patch.
    """
    if grey.shape != mask.shape:
        raise ValueError(f"grey {grey.shape} and mask {mask.shape} differ in shape")
    grid, crop, origins = _grid_in_crop(mask, spacing_mm, cfg)
    resampled = _resampled_crop(grey, crop, interpolation=cv2.INTER_LINEAR)
    p = cfg.patch_px
    patches = np.empty((len(grid), p, p), dtype=np.float32)
    for i, (r, c) in enumerate(origins):
        patches[i] = resampled[r : r + p, c : c + p]
    return grid, patches


@dataclass(frozen=True)
class _Crop:
    row0: int  # top-left of the crop in image pixels (may be negative: padded)
    col0: int
    rows: int
    cols: int
    out_shape: tuple[int, int]  # resampled (rows, cols)


def _grid_in_crop(
    mask: np.ndarray, spacing_mm: tuple[float, float] | None, cfg: PreprocessConfig
) -> tuple[PatchGrid, _Crop, np.ndarray]:
    """The grid, the crop it lives in, and (N, 2) int patch origins in resampled crop pixels."""
    if mask.ndim != 2 or not mask.any():
        raise RoiError("The outline is empty; draw around the tumour.")
    sr, sc = resample_scale(spacing_mm, cfg)
    rows_idx, cols_idx = np.nonzero(mask)
    margin_r, margin_c = math.ceil(cfg.patch_px / sr / 2), math.ceil(cfg.patch_px / sc / 2)
    r0, c0 = int(rows_idx.min()) - margin_r, int(cols_idx.min()) - margin_c
    r1, c1 = int(rows_idx.max()) + 1 + margin_r, int(cols_idx.max()) + 1 + margin_c
    out_shape = (max(1, round((r1 - r0) * sr)), max(1, round((c1 - c0) * sc)))
    crop = _Crop(r0, c0, r1 - r0, c1 - c0, out_shape)
    mask_rs = _resampled_crop(mask.astype(np.float32), crop, interpolation=cv2.INTER_AREA) >= 0.5
    origins, coverage = _grid_origins(mask_rs, margin_r * sr, margin_c * sc, cfg)
    if len(origins) == 0:
        raise RoiError(_too_small_message(cfg))
    # the resampled grid covers the crop exactly, so the effective scale is out/in
    er, ec = out_shape[0] / crop.rows, out_shape[1] / crop.cols
    boxes = np.column_stack(
        [
            r0 + origins[:, 0] / er,
            c0 + origins[:, 1] / ec,
            r0 + (origins[:, 0] + cfg.patch_px) / er,
            c0 + (origins[:, 1] + cfg.patch_px) / ec,
        ]
    )
    return PatchGrid(boxes_img=boxes, coverage=coverage), crop, origins


def _grid_origins(
    mask_rs: np.ndarray, start_r: float, start_c: float, cfg: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Grid anchored half a patch before the ROI's first row/column; coverage via an integral image."""
    p, s = cfg.patch_px, cfg.stride_px
    integral = cv2.integral(mask_rs.astype(np.uint8))  # (rows + 1, cols + 1) int32
    first_r, first_c = max(0, round(start_r) - p // 2), max(0, round(start_c) - p // 2)
    rs = np.arange(first_r, mask_rs.shape[0] - p + 1, s)
    cs = np.arange(first_c, mask_rs.shape[1] - p + 1, s)
    if len(rs) == 0 or len(cs) == 0:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.float32)
    rr, cc = np.meshgrid(rs, cs, indexing="ij")
    inside = integral[rr + p, cc + p] - integral[rr, cc + p] - integral[rr + p, cc] + integral[rr, cc]
    coverage = (inside / float(p * p)).astype(np.float32)
    keep = coverage >= cfg.min_roi_coverage - 1e-9
    return np.column_stack([rr[keep], cc[keep]]).astype(np.int64), coverage[keep]


def _resampled_crop(image: np.ndarray, crop: _Crop, interpolation: int) -> np.ndarray:
    """The crop of ``image`` (edge-replicated where it leaves the image), resized to ``crop.out_shape``."""
    rows, cols = image.shape
    top, left = max(0, crop.row0), max(0, crop.col0)
    bottom, right = min(rows, crop.row0 + crop.rows), min(cols, crop.col0 + crop.cols)
    region = cv2.copyMakeBorder(  # pads only what lies outside the image
        np.ascontiguousarray(image[top:bottom, left:right]),
        top - crop.row0,
        crop.row0 + crop.rows - bottom,
        left - crop.col0,
        crop.col0 + crop.cols - right,
        cv2.BORDER_REPLICATE,
    )
    if crop.out_shape == region.shape:
        return region
    return cv2.resize(region, (crop.out_shape[1], crop.out_shape[0]), interpolation=interpolation)


def _too_small_message(cfg: PreprocessConfig) -> str:
    size = f"{cfg.patch_mm:g} mm" if cfg.patch_mm else f"{cfg.patch_px} px"
    return (
        f"The outline is too small for one {size} patch (at least {cfg.min_roi_coverage:.0%} of it must lie "
        "inside); outline the whole tumour on the slice where it is largest."
    )

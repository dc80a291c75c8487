"""The patch grid on a lattice fixed to the slice, so that outlines of one slice share patches.

The rules are :mod:`core.patches`'s: the slice is resampled to ``cfg.target_spacing_mm``,
patches are ``patch_px`` square every ``stride_px``, and a patch is kept when at least
``min_roi_coverage`` of it lies inside the outline. The one difference is the anchor: the
lattice starts at the slice's own top-left corner, not at the outline's. Lattice cell
``(i, j)`` is the patch whose top-left resampled pixel is ``(i · stride_px, j · stride_px)``,
wherever the outline lies.

Why: every outline drawn on a slice then takes its patches from one lattice, and a patch is
identified by two integers. An edited outline, an outline eroded or dilated by a millimetre,
or a second model run over the same outline reuse the patches (and, through
:mod:`core.patch_cache`, the probabilities) they share, bit for bit. With the grid anchored
at the outline, moving its top edge by one pixel would shift every patch.

Resampling is separable linear interpolation computed from absolute coordinates
(resampled pixel ``u`` samples image row ``(u + 0.5) / scale − 0.5``, edges replicated), so
a patch's pixels do not depend on which other patches were cut with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import RoiError
from core.inference import quantise_grey
from core.patches import PatchGrid, resample_scale
from core.preprocess import PreprocessConfig


@dataclass(frozen=True)
class LatticeGrid(PatchGrid):
    """A :class:`~core.patches.PatchGrid` whose patches are lattice cells.

    Attributes:
        cells: (N, 2) int64 lattice indices (i, j); the patch's top-left resampled pixel is
            ``(i · stride_px, j · stride_px)`` counted from the slice's top-left corner.
    """

    cells: np.ndarray


def cell_boxes(cells: np.ndarray, spacing_mm: tuple[float, float] | None, cfg: PreprocessConfig) -> np.ndarray:
    """(N, 4) float64 (row0, col0, row1, col1) extents of lattice cells in continuous image pixels."""
    sr, sc = resample_scale(spacing_mm, cfg)
    top = cells[:, 0].astype(np.float64) * cfg.stride_px
    left = cells[:, 1].astype(np.float64) * cfg.stride_px
    return np.column_stack([top / sr, left / sc, (top + cfg.patch_px) / sr, (left + cfg.patch_px) / sc])


def plan_lattice(mask: np.ndarray, spacing_mm: tuple[float, float] | None, cfg: PreprocessConfig) -> LatticeGrid:
    """The lattice cells an outline keeps, without cutting pixels.

    Args:
        mask: (rows, cols) bool outline in image pixels.
        spacing_mm: (row, col) pixel size in mm, or ``None`` (native grid).
        cfg: the model's preprocessing.

    Raises:
        RoiError: the outline is empty, or no patch has enough of it inside.
    """
    if mask.ndim != 2 or not mask.any():
        raise RoiError("The outline is empty; draw around the tumour.")
    sr, sc = resample_scale(spacing_mm, cfg)
    rows, cols = np.nonzero(mask)
    i_range = _cells_touching(int(rows.min()), int(rows.max()) + 1, sr, cfg)
    j_range = _cells_touching(int(cols.min()), int(cols.max()) + 1, sc, cfg)
    p, s = cfg.patch_px, cfg.stride_px
    u0, v0 = i_range[0] * s, j_range[0] * s
    height = (i_range[1] - i_range[0]) * s + p
    width = (j_range[1] - j_range[0]) * s + p
    inside = resample_region(mask.astype(np.float32), u0, v0, height, width, sr, sc) >= 0.5
    integral = cv2.integral(inside.astype(np.uint8))  # (height + 1, width + 1) int32
    ii, jj = np.meshgrid(np.arange(i_range[0], i_range[1] + 1), np.arange(j_range[0], j_range[1] + 1), indexing="ij")
    r, c = ii * s - u0, jj * s - v0
    covered = integral[r + p, c + p] - integral[r, c + p] - integral[r + p, c] + integral[r, c]
    coverage = (covered / float(p * p)).astype(np.float32)
    keep = coverage >= cfg.min_roi_coverage - 1e-9
    if not keep.any():
        raise RoiError(_too_small_message(cfg))
    cells = np.column_stack([ii[keep], jj[keep]]).astype(np.int64)
    return LatticeGrid(boxes_img=cell_boxes(cells, spacing_mm, cfg), coverage=coverage[keep], cells=cells)


def cut_cells(
    grey: np.ndarray, spacing_mm: tuple[float, float] | None, cfg: PreprocessConfig, cells: np.ndarray
) -> np.ndarray:
    """The patches of the given lattice cells, as the network scores them.

    Args:
        grey: (rows, cols) float32 in [0, 1], in the model's window.
        cells: (N, 2) int lattice indices (any order, any subset of the lattice).

    Returns:
        (N, patch_px, patch_px) uint8 grey × 255 (:func:`core.inference.quantise_grey`'s form).
    """
    p, s = cfg.patch_px, cfg.stride_px
    if len(cells) == 0:
        return np.empty((0, p, p), dtype=np.uint8)
    sr, sc = resample_scale(spacing_mm, cfg)
    i0, j0 = int(cells[:, 0].min()), int(cells[:, 1].min())
    height = (int(cells[:, 0].max()) - i0) * s + p
    width = (int(cells[:, 1].max()) - j0) * s + p
    region = resample_region(grey, i0 * s, j0 * s, height, width, sr, sc)
    region = quantise_grey(region)
    windows = np.lib.stride_tricks.sliding_window_view(region, (p, p))
    return windows[(cells[:, 0] - i0) * s, (cells[:, 1] - j0) * s].copy()  # one gather, no Python loop


def cut_lattice(
    grey: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float] | None, cfg: PreprocessConfig
) -> tuple[LatticeGrid, np.ndarray]:
    """Plan the outline's lattice cells and cut them: (grid, (N, P, P) uint8 patches).

    Raises:
        RoiError: the outline yields no patch.
    """
    if grey.shape != mask.shape:
        raise ValueError(f"grey {grey.shape} and mask {mask.shape} differ in shape")
    grid = plan_lattice(mask, spacing_mm, cfg)
    return grid, cut_cells(grey, spacing_mm, cfg, grid.cells)


def resample_region(
    image: np.ndarray, u0: int, v0: int, height: int, width: int, scale_r: float, scale_c: float
) -> np.ndarray:
    """Resampled pixels [u0, u0 + height) × [v0, v0 + width) of ``image`` at ``scale`` resampled px per image px.

    Separable linear interpolation with edges replicated; each output pixel depends only on its
    absolute position, so overlapping regions agree exactly. Returns (height, width) float32.
    """
    r0, r1, wr = _axis_taps(u0, height, scale_r, image.shape[0])
    c0, c1, wc = _axis_taps(v0, width, scale_c, image.shape[1])
    lo, hi = int(min(c0.min(), c1.min())), int(max(c0.max(), c1.max())) + 1
    band = image[:, lo:hi].astype(np.float32, copy=False)
    rows = band[r0] * (1.0 - wr)[:, None] + band[r1] * wr[:, None]  # (height, hi - lo)
    return rows[:, c0 - lo] * (1.0 - wc)[None, :] + rows[:, c1 - lo] * wc[None, :]


def _axis_taps(start: int, count: int, scale: float, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (clipped: edge replication) and weights of resampled pixels start … start + count − 1."""
    position = (np.arange(start, start + count, dtype=np.float64) + 0.5) / scale - 0.5
    below = np.floor(position)
    weight = (position - below).astype(np.float32)
    first = np.clip(below, 0, size - 1).astype(np.int64)
    second = np.clip(below + 1, 0, size - 1).astype(np.int64)
    return first, second, weight


def _cells_touching(first_px: int, stop_px: int, scale: float, cfg: PreprocessConfig) -> tuple[int, int]:
    """Inclusive range of lattice indices whose patch overlaps image pixels [first_px, stop_px)."""
    p, s = cfg.patch_px, cfg.stride_px
    low = math.floor((first_px * scale - p) / s)  # one cell of slack each side; coverage decides
    high = math.ceil(stop_px * scale / s)
    return low, high


def _too_small_message(cfg: PreprocessConfig) -> str:
    size = f"{cfg.patch_mm:g} mm" if cfg.patch_mm else f"{cfg.patch_px} px"
    return (
        f"The outline is too small for one {size} patch (at least {cfg.min_roi_coverage:.0%} of it must lie "
        "inside); outline the whole tumour on the slice where it is largest."
    )

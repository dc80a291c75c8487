"""Outline measurements and mask ↔ canvas helpers: area, largest diameter, regions, patch count.

Conventions: a mask is (rows, cols) bool in the slice's image pixels; pixel (r, c) is the
square [c, c+1] × [r, r+1] in continuous image (x, y) — the convention of
:func:`core.roi.mask_from_outlines`. Physical sizes use PixelSpacing (row, col) in mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from core.errors import RoiError
from core.lattice import plan_lattice
from core.preprocess import PreprocessConfig
from core.roi import CanvasView, polygon_to_fabric

#: Tumours smaller than this (largest diameter, mm) are where the paper's model erred: in its
#: Table 4 the 11 cases whose patch accuracy fell in the lowest quartile (≤ 96.0 %) had a median
#: tumour size of 42 mm (range 16–60) against 57.5 mm (17–150) for the other 30 (P = 0.025), and
#: no tumour above 60 mm was mispredicted. The authors conclude the model "can perform
#: excellently, particularly with larger iCCA".
SMALL_TUMOUR_MM = 42.0
# The page warns below the patch count of a round SMALL_TUMOUR_MM tumour under the loaded
# model's grid (min_patches_for: 81 for 16 mm patches every 4 mm, half inside the outline).
# Fewer patches means a tumour smaller than the median mispredicted one, and a case risk
# averaged over fewer, more edge-dominated patches.

# 8-connectivity: pixels touching at a corner belong to one region (as a drawn outline's
# diagonal staircase does).
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class OutlineMeasurements:
    """What the page shows beside the canvas.

    Attributes:
        area_px: pixels inside the outline.
        area_mm2: area in mm², ``None`` without spacing.
        max_diameter_mm: largest diameter (maximum Feret diameter) in mm, ``None`` without spacing.
        max_diameter_px: the same in pixels (isotropic pixel units), always given.
        regions: number of separate regions (8-connected).
        patches: patches the loaded model would cut, ``None`` without a config or spacing it needs.
        warning: one sentence when the tumour is small for the model, else ``None``.
    """

    area_px: int
    area_mm2: float | None
    max_diameter_mm: float | None
    max_diameter_px: float
    regions: int
    patches: int | None
    warning: str | None


def measure_outline(
    mask: np.ndarray, spacing_mm: tuple[float, float] | None, cfg: PreprocessConfig | None = None
) -> OutlineMeasurements:
    """Area, largest diameter, region count and, with ``cfg``, patch count and small-tumour warning.

    Args:
        mask: (rows, cols) bool outline.
        spacing_mm: (row, col) pixel size in mm, or ``None`` (PNG/JPEG export without spacing).
        cfg: the loaded model's preprocessing; ``None`` skips the patch count.

    Raises:
        RoiError: the mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise RoiError("The outline is empty; draw around the tumour.")
    area_px = int(mask.sum())
    diameter_px = max_feret_diameter(mask, (1.0, 1.0))
    area_mm2 = diameter_mm = None
    if spacing_mm is not None:
        area_mm2 = area_px * spacing_mm[0] * spacing_mm[1]
        diameter_mm = max_feret_diameter(mask, spacing_mm)
    patches = warning = None
    if cfg is not None and (spacing_mm is not None or cfg.target_spacing_mm is None):
        try:
            patches = len(plan_lattice(mask, spacing_mm, cfg))
        except RoiError:
            patches = 0
        warning = small_tumour_warning(patches, cfg, diameter_mm)
    return OutlineMeasurements(
        area_px=area_px,
        area_mm2=area_mm2,
        max_diameter_mm=diameter_mm,
        max_diameter_px=diameter_px,
        regions=count_regions(mask),
        patches=patches,
        warning=warning,
    )


def max_feret_diameter(mask: np.ndarray, spacing_mm: tuple[float, float]) -> float:
    """Largest distance between two points of the outline, in the units of ``spacing_mm``.

    Measured between the outer corners of the mask's pixels (so one pixel measures its
    diagonal, and a straight run of n pixels n pixels), over the convex hull of the boundary
    pixels' corners, scaled by (row, col) spacing first so anisotropic pixels are measured
    correctly.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    boundary = mask & ~ndimage.binary_erosion(mask, border_value=0)
    rows, cols = np.nonzero(boundary)
    corners = np.concatenate([np.column_stack([cols + dx, rows + dy]) for dx in (0, 1) for dy in (0, 1)]).astype(
        np.float64
    )
    corners *= np.array([spacing_mm[1], spacing_mm[0]])
    hull = cv2.convexHull(corners.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    if len(hull) < 2:
        return 0.0
    diffs = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((diffs**2).sum(axis=2)).max())


def count_regions(mask: np.ndarray) -> int:
    """Separate regions of the mask (8-connected)."""
    return int(ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)[1])


def keep_largest_region(mask: np.ndarray) -> np.ndarray:
    """Only the largest 8-connected region (ties: the one found first, top-left); same shape, bool.

    Raises:
        RoiError: the mask is empty.
    """
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)
    if count == 0:
        raise RoiError("The outline is empty; draw around the tumour.")
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def small_tumour_warning(patches: int, cfg: PreprocessConfig, diameter_mm: float | None = None) -> str | None:
    """One sentence when the outline gives fewer patches than a round 42 mm tumour would.

    See :data:`SMALL_TUMOUR_MM` and :func:`min_patches_for` for why.
    """
    needed = min_patches_for(cfg)
    if patches >= needed:
        return None
    size = f" (largest diameter {diameter_mm:.0f} mm)" if diameter_mm is not None else ""
    return (
        f"This outline gives {patches} patches{size}, fewer than the {needed} of a round {SMALL_TUMOUR_MM:g} mm "
        "tumour: in the paper, mispredictions concentrated in smaller tumours (median 42 mm against 57.5 mm, "
        "P = 0.025), so treat this estimate with extra caution."
    )


@cache
def min_patches_for(cfg: PreprocessConfig) -> int:
    """Patches a round :data:`SMALL_TUMOUR_MM` tumour yields under ``cfg`` (81 for the default grid).

    Computed on a 0.5 mm grid (the resampling makes the count nearly independent of the
    slice's own spacing); on the native grid (``target_spacing_mm`` ``None``) the disc is
    drawn at 0.7 mm/px, a typical abdominal CT pixel.
    """
    spacing = 0.5 if cfg.target_spacing_mm is not None else 0.7
    radius_px = SMALL_TUMOUR_MM / 2.0 / spacing
    side = math.ceil(2 * radius_px) + 8
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= radius_px**2
    try:
        return len(plan_lattice(disc, (spacing, spacing), cfg))
    except RoiError:
        return 1


# --------------------------------------------------------------------------------- mask → canvas


def mask_to_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of each region, in continuous image (x, y): (K, 2) float64 each.

    Traced a quarter pixel inside the regions' pixel edges, so
    ``core.roi.mask_from_outlines(mask_to_outlines(m), m.shape)`` gives ``m`` back exactly for
    masks without holes (holes are filled: a canvas polygon cannot have one). Regions touching
    only at a corner become separate outlines.
    """
    mask = np.asarray(mask, dtype=bool)
    doubled = np.kron(mask.astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
    # 4-connectivity for the foreground on the doubled grid keeps corner-touching regions apart
    labels, count = ndimage.label(doubled)
    outlines: list[np.ndarray] = []
    for label in range(1, count + 1):
        region = (labels == label).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            points = contour.reshape(-1, 2).astype(np.float64)
            if len(points) < 3:
                continue
            # doubled-grid pixel centres (u + 0.5) / 2 lie 0.25 px inside the original edges
            outlines.append((points + 0.5) / 2.0)
    return outlines


def mask_to_fabric(mask: np.ndarray, view: CanvasView, stroke: str = "#00ff00") -> list[dict[str, Any]]:
    """The mask as Fabric polygons for the canvas's ``initial_drawing`` (editable like drawn ones)."""
    return [polygon_to_fabric(view.to_canvas(outline).tolist(), stroke=stroke) for outline in mask_to_outlines(mask)]

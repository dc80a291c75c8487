"""Per-patch probabilities → probability map → OpenCV JET overlay, as in the paper.

The paper scales the probability of early recurrence to grey 0–255 and colours it
with ``cv2.applyColorMap(..., COLORMAP_JET)``: blue for low risk, red for high.
Where patches overlap, a pixel takes the mean probability of the patches covering
it; the colour is shown inside the ROI only.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def probability_map(shape: tuple[int, int], boxes_img: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(rows, cols) float32 mean probability of the patches covering each pixel; NaN where none.

    Args:
        boxes_img: (N, 4) patch extents (row0, col0, row1, col1) in continuous image pixels
            (:attr:`core.patches.PatchGrid.boxes_img`); a patch covers the pixels whose
            centres fall inside its box.
        probabilities: (N,) one probability per patch.
    """
    if boxes_img.shape[0] != probabilities.shape[0]:
        raise ValueError("one probability per patch is needed")
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.int32)
    for (r0, c0, r1, c1), p in zip(boxes_img, probabilities, strict=True):
        rs, re = _pixel_span(r0, r1, shape[0])
        cs, ce = _pixel_span(c0, c1, shape[1])
        total[rs:re, cs:ce] += p
        count[rs:re, cs:ce] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        pmap = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return pmap.astype(np.float32)


def _pixel_span(start: float, stop: float, limit: int) -> tuple[int, int]:
    """Pixels i with centre i + 0.5 in [start, stop), clipped to the image."""
    first = max(0, math.ceil(start - 0.5))
    last = min(limit, math.ceil(stop - 0.5))
    return first, max(first, last)


def grey_from_probability(pmap: np.ndarray) -> np.ndarray:
    """Probability 0–1 → grey 0–255 uint8 (NaN → 0), the paper's scale."""
    return np.round(np.nan_to_num(np.clip(pmap, 0.0, 1.0), nan=0.0) * 255.0).astype(np.uint8)


def jet_overlay(display: np.ndarray, pmap: np.ndarray, mask: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """Blend the JET-coloured probability map over the grey slice inside the ROI.

    Args:
        display: (rows, cols) uint8 grey slice as shown to the surgeon.
        pmap: (rows, cols) float32 probabilities (NaN where no patch).
        mask: (rows, cols) bool ROI.
        opacity: weight of the colour, 0 (slice only) to 1 (colour only).

    Returns:
        (rows, cols, 3) uint8 RGB.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError("opacity must lie in [0, 1]")
    base = cv2.cvtColor(display, cv2.COLOR_GRAY2RGB)
    colour = cv2.cvtColor(cv2.applyColorMap(grey_from_probability(pmap), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    region = mask & ~np.isnan(pmap)
    blended = base.astype(np.float32)
    blended[region] = (1.0 - opacity) * blended[region] + opacity * colour[region].astype(np.float32)
    return np.round(blended).astype(np.uint8)


def draw_outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """The (rows, cols, 3) uint8 image with the outline's contour drawn one pixel wide (a copy).

    The contour is the mask's boundary pixels (inside the outline, next to a pixel outside),
    so it sits exactly on the outlined region and never covers the heatmap outside it.
    """
    inside = mask.astype(bool)
    eroded = cv2.erode(
        inside.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    out = rgb.copy()
    out[inside & (eroded == 0)] = colour
    return out


def roi_crop_box(mask: np.ndarray, margin: float = 0.35, min_side: int = 48) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of a square-ish view around the ROI, ``margin`` × its size on each side.

    The box is clipped to the image and at least ``min_side`` pixels a side where the image allows.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0, 0, mask.shape[0], mask.shape[1]
    side = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1, min_side)
    half = side * (0.5 + margin)
    centre_r, centre_c = (rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2
    r0, c0 = max(0, math.floor(centre_r - half)), max(0, math.floor(centre_c - half))
    r1, c1 = min(mask.shape[0], math.ceil(centre_r + half)), min(mask.shape[1], math.ceil(centre_c + half))
    return r0, c0, r1, c1


def colour_bar(height: int = 256, width: int = 24) -> np.ndarray:
    """(height, width, 3) uint8 RGB JET scale, probability 1 at the top, 0 at the bottom."""
    ramp = np.linspace(255, 0, height).round().astype(np.uint8)[:, None].repeat(width, axis=1)
    return cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)

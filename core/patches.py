"""What every patch grid shares: where its patches sit, and how the slice is resampled.

The grid itself is the slice-anchored lattice of :mod:`core.lattice` (what the dashboard,
the measurements beside the canvas, the benchmark and training all cut).
All coordinates are in the slice's own image pixels (row, col), so the heatmap can be drawn
on the image the surgeon outlined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

"""The preprocessing contract that travels inside every checkpoint.

Inference and training both rebuild every transform from a :class:`PreprocessConfig`;
nothing about patch geometry is hard-coded elsewhere.

Geometry, in physical terms. The paper cut 128×128-px patches with a 32-px stride
from viewer exports at an unknown magnification (71,081 patches from 41 tumours,
about 1,700 per tumour). A native 0.7 mm CT pixel would make a 128-px patch 90 mm
wide, larger than most tumours, so the default resamples the slice to
``target_spacing_mm = 0.125`` first: a patch then spans 16 mm of tissue and the
stride is 4 mm. A patch is kept when at least ``min_roi_coverage`` of its area lies
inside the outline. For a 50 mm round tumour this yields about 120 patches (see
``README.md`` and ``tests/core/test_patches.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

FORMAT_VERSION = 1


class UnknownPreprocessingError(ValueError):
    """Preprocessing fields this version of the tool does not know (``.fields`` lists them)."""

    def __init__(self, unknown: list[str]) -> None:
        self.fields = unknown
        super().__init__(f"unknown preprocessing field(s): {', '.join(unknown)}")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a slice becomes network input.

    Attributes:
        window_level_hu: centre of the HU window the network sees (HU).
        window_width_hu: width of that window (HU); HU outside map to 0 or 1.
        target_spacing_mm: pixel size the slice is resampled to before patching
            (mm / px); ``None`` keeps the native pixel grid.
        patch_px: patch side in resampled pixels.
        stride_px: grid step in resampled pixels.
        min_roi_coverage: share (0–1] of a patch's area that must lie inside the ROI.
        input_px: side of the square network input each patch is resized to.
        mean, std: per-channel normalisation applied to the [0, 1] grey value.
        labels: class names, index order of the network's outputs.
        positive_index: the output index of "early recurrence".
    """

    window_level_hu: float = 50.0
    window_width_hu: float = 250.0
    target_spacing_mm: float | None = 0.125
    patch_px: int = 128
    stride_px: int = 32
    min_roi_coverage: float = 0.5
    input_px: int = 224
    mean: float = 0.5
    std: float = 0.5
    labels: tuple[str, ...] = field(default=("no early recurrence", "early recurrence"))
    positive_index: int = 1

    def __post_init__(self) -> None:
        if self.patch_px <= 0 or self.stride_px <= 0 or self.input_px <= 0:
            raise ValueError("patch_px, stride_px and input_px must be positive")
        if not 0.0 < self.min_roi_coverage <= 1.0:
            raise ValueError("min_roi_coverage must lie in (0, 1]")
        if self.window_width_hu <= 0:
            raise ValueError("window_width_hu must be positive")
        if self.target_spacing_mm is not None and self.target_spacing_mm <= 0:
            raise ValueError("target_spacing_mm must be positive or None")

    @property
    def patch_mm(self) -> float | None:
        """Patch side in millimetres, or ``None`` on the native grid."""
        return None if self.target_spacing_mm is None else self.patch_px * self.target_spacing_mm

    @property
    def stride_mm(self) -> float | None:
        """Grid step in millimetres, or ``None`` on the native grid."""
        return None if self.target_spacing_mm is None else self.stride_px * self.target_spacing_mm

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the checkpoint loads with ``weights_only=True``."""
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            UnknownPreprocessingError: a key this version does not know. Such a checkpoint was
                made by a newer version whose preprocessing this one cannot reproduce; loading
                it with defaults would silently feed the network the wrong input.
            ValueError: a known key with an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UnknownPreprocessingError(unknown)
        kwargs = dict(data)
        if "labels" in kwargs:
            kwargs["labels"] = tuple(kwargs["labels"])
        return cls(**kwargs)

    def describe(self) -> str:
        """One line for the UI and reports."""
        if self.target_spacing_mm is None:
            geometry = f"{self.patch_px}-px patches, stride {self.stride_px} px on the native grid"
        else:
            geometry = (
                f"{self.patch_px}-px patches ({self.patch_mm:g} mm), stride {self.stride_px} px "
                f"({self.stride_mm:g} mm) at {self.target_spacing_mm:g} mm/px"
            )
        return (
            f"{geometry}, ≥{self.min_roi_coverage:.0%} inside the outline, resized to "
            f"{self.input_px}×{self.input_px}; window L{self.window_level_hu:g}/W{self.window_width_hu:g} HU"
        )

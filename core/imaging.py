"""Read one CT slice from uploaded bytes and turn it into display and model grey values.

DICOM: pixel values become Hounsfield units through the modality LUT
(RescaleSlope / RescaleIntercept); pixel spacing comes from PixelSpacing (mm).
PNG / JPEG: the export is already windowed (grey 0–255), carries no HU and no
spacing; callers must say so on screen.

Identifying DICOM tags (names, birth dates) are never copied out of the dataset: the
only identifier kept is ``PatientID``, and only so the caller can derive a
pseudonymised key from it (see :mod:`core.pseudonym`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import pydicom
import pydicom.pixels
from pydicom.errors import InvalidDicomError

from core.errors import UnreadableImageError, WrongModalityError
from core.preprocess import PreprocessConfig

MAX_SIDE_PX = 4096
MIN_SIDE_PX = 32

# Display presets (level, width) in HU. Liver first: plain-CT iCCA sits ~20 HU below liver.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "Liver (L60 / W160)": (60.0, 160.0),
    "Abdomen (L40 / W400)": (40.0, 400.0),
    "Wide soft tissue (L50 / W500)": (50.0, 500.0),
    "Bone (L400 / W1800)": (400.0, 1800.0),
}

SourceKind = Literal["dicom", "png", "jpeg"]


@dataclass(frozen=True)
class CtSlice:
    """One 2-D slice ready for windowing.

    Attributes:
        pixels: (rows, cols) float32; HU when ``is_hu`` else grey 0–255.
        is_hu: whether ``pixels`` are Hounsfield units.
        spacing_mm: (row, col) pixel size in mm, or ``None`` when unknown.
        source_kind: "dicom", "png" or "jpeg".
        modality: DICOM Modality, or "" for raster exports.
        patient_id: DICOM PatientID for pseudonymisation only, never stored or logged.
    """

    pixels: np.ndarray
    is_hu: bool
    spacing_mm: tuple[float, float] | None
    source_kind: SourceKind
    modality: str = ""
    patient_id: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def pixel_area_mm2(self) -> float | None:
        """Area of one pixel in mm², or ``None`` without spacing."""
        if self.spacing_mm is None:
            return None
        return self.spacing_mm[0] * self.spacing_mm[1]

    def summary(self) -> dict[str, object]:
        """Facts for ``python -m core inspect`` and the UI (no identifiers)."""
        values = self.pixels
        return {
            "source": self.source_kind,
            "modality": self.modality or "none (raster export)",
            "rows": self.shape[0],
            "columns": self.shape[1],
            "pixel_spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "hu_min": float(values.min()) if self.is_hu else None,
            "hu_max": float(values.max()) if self.is_hu else None,
            "grey_min": None if self.is_hu else float(values.min()),
            "grey_max": None if self.is_hu else float(values.max()),
        }


def load_slice(data: bytes, filename: str = "") -> CtSlice:
    """Read an uploaded file as one CT slice.

    Args:
        data: the file's bytes.
        filename: used only to pick a reader when the content is ambiguous.

    Raises:
        UnreadableImageError: not DICOM / PNG / JPEG, truncated, empty or absurd size.
        WrongModalityError: a readable DICOM that is not a CT image.
    """
    if not data:
        raise UnreadableImageError("The file is empty; upload a CT slice as DICOM, PNG or JPEG.")
    if data.startswith(b"\x89PNG") or data.startswith(b"\xff\xd8\xff"):
        return _read_raster(data)
    return _read_dicom(data, filename)


def _read_dicom(data: bytes, filename: str) -> CtSlice:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            raise _not_an_image(filename) from exc
        if "PixelData" not in ds and "Modality" not in ds:
            raise _not_an_image(filename) from None
    except Exception as exc:
        raise UnreadableImageError(
            "The DICOM file is damaged or incomplete; export the slice again from the PACS."
        ) from exc
    _check_modality(ds)
    hu = _hounsfield_units(ds)
    _check_size(hu.shape)
    return CtSlice(
        pixels=hu,
        is_hu=True,
        spacing_mm=_pixel_spacing(ds),
        source_kind="dicom",
        modality="CT",
        patient_id=str(ds.get("PatientID", "")) or None,
    )


def _not_an_image(filename: str) -> UnreadableImageError:
    shown = f" ({filename.rsplit('.', 1)[-1].upper()})" if "." in filename else ""
    return UnreadableImageError(
        f"This file{shown} is not a DICOM, PNG or JPEG image; export the CT slice in one of those formats."
    )


def _check_modality(ds: pydicom.Dataset) -> None:
    modality = str(ds.get("Modality", "")).upper()
    if modality == "SEG":
        raise WrongModalityError("This file is a DICOM segmentation, not an image; upload the CT slice itself.")
    if modality and modality != "CT":
        raise WrongModalityError(
            f"This file is a{'n' if modality[0] in 'AEIOUMR' else ''} {modality} image; a CT is needed."
        )
    if not modality:
        raise WrongModalityError("This DICOM file does not say it is a CT (Modality tag missing); upload a CT slice.")
    if "PixelData" not in ds:
        raise UnreadableImageError("This DICOM file holds no image (no pixel data); upload a CT slice.")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise UnreadableImageError(
            "This DICOM file holds several frames; upload the single axial slice with the largest tumour area."
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise WrongModalityError("This DICOM is a colour image; a greyscale CT slice is needed.")


def _hounsfield_units(ds: pydicom.Dataset) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise UnreadableImageError(
            "The CT pixel data cannot be decoded (damaged, truncated or an unsupported compression); "
            "export the slice uncompressed."
        ) from exc
    if stored.ndim != 2:
        raise UnreadableImageError("The CT pixel data is not a single 2-D slice; upload one axial slice.")
    hu = pydicom.pixels.apply_rescale(stored, ds)
    return np.asarray(hu, dtype=np.float32)


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    spacing = ds.get("PixelSpacing")
    try:
        row_mm, col_mm = float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (0.01 <= row_mm <= 10.0 and 0.01 <= col_mm <= 10.0):
        return None
    return row_mm, col_mm


def _read_raster(data: bytes) -> CtSlice:
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise UnreadableImageError("The PNG/JPEG file is damaged or incomplete; export the slice again.")
    _check_size(image.shape)
    kind: SourceKind = "png" if data.startswith(b"\x89PNG") else "jpeg"
    return CtSlice(pixels=image.astype(np.float32), is_hu=False, spacing_mm=None, source_kind=kind)


def _check_size(shape: tuple[int, ...]) -> None:
    rows, cols = shape[:2]
    if min(rows, cols) < MIN_SIDE_PX:
        raise UnreadableImageError(f"The image is only {cols}×{rows} pixels; upload a full CT slice.")
    if max(rows, cols) > MAX_SIDE_PX:
        raise UnreadableImageError(
            f"The image is {cols}×{rows} pixels, larger than {MAX_SIDE_PX} px a side; upload one CT slice."
        )


def window_to_unit(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to [0, 1] with a linear window; (rows, cols) float32."""
    low = level - width / 2.0
    return np.clip((hu.astype(np.float32) - low) / float(width), 0.0, 1.0)


def display_image(ct: CtSlice, level: float, width: float) -> np.ndarray:
    """Grey (rows, cols) uint8 for the screen; raster exports are shown as they are."""
    if not ct.is_hu:
        return np.clip(ct.pixels, 0, 255).astype(np.uint8)
    return np.round(window_to_unit(ct.pixels, level, width) * 255.0).astype(np.uint8)


def model_grey(ct: CtSlice, cfg: PreprocessConfig) -> np.ndarray:
    """Grey [0, 1] float32 (rows, cols) in the model's own window (not the display window)."""
    if not ct.is_hu:
        return np.clip(ct.pixels, 0, 255).astype(np.float32) / 255.0
    return window_to_unit(ct.pixels, cfg.window_level_hu, cfg.window_width_hu)

"""Where a slice sits in the patient, and a privacy-safe record of which DICOM slice it was.

Coordinates are DICOM patient coordinates (LPS: x to the patient's left, y to the
posterior, z to the head), in mm. For a slice with ImagePositionPatient ``P``,
ImageOrientationPatient ``(X, Y)`` and PixelSpacing ``(Δr, Δc)``, the centre of pixel
(row r, column c) is ``P + c·Δc·X + r·Δr·Y`` (PS3.3 C.7.6.2.1.1); the slice normal is
``X × Y`` and a slice's position along the stack is ``P · (X × Y)``.

The app stores pixels, not headers. A DICOM SEG exported later must nevertheless name
the study, series and SOP instance it was drawn on and share their frame of reference,
so :class:`SourceReference` keeps exactly that — UIDs and geometry, plain types, and no
patient name, ID, birth date or sex. UIDs are indirect identifiers (PS3.15 replaces them
when de-identifying), so what a saved case keeps is :meth:`SourceReference.hashed`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pydicom

# Direction cosines must be unit length and perpendicular to within this (DICOM writers
# print 6–16 digits; 1e-3 admits rounding and refuses nonsense).
_ORTHO_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SliceGeometry:
    """A slice's pixel grid in patient coordinates (LPS, mm).

    Attributes:
        position: ImagePositionPatient, centre of pixel (row 0, col 0), mm.
        row_direction: IOP[0:3], unit vector along a row (increasing column index).
        column_direction: IOP[3:6], unit vector down a column (increasing row index).
        spacing_mm: (row spacing, column spacing) = PixelSpacing, mm.
        shape: (rows, columns) in pixels.
    """

    position: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    spacing_mm: tuple[float, float]
    shape: tuple[int, int]

    @property
    def normal(self) -> np.ndarray:
        """(3,) float64 unit slice normal, row_direction × column_direction."""
        n = np.cross(np.array(self.row_direction), np.array(self.column_direction))
        return n / np.linalg.norm(n)

    @property
    def offset_mm(self) -> float:
        """Position of the slice along its normal, mm (ImagePositionPatient · normal)."""
        return float(np.dot(np.array(self.position), self.normal))

    def index_to_patient(self, step_mm: float = 1.0) -> np.ndarray:
        """(4, 4) float64 affine from (row, col, k, 1) to LPS mm; k steps ``step_mm`` along the normal."""
        affine = np.eye(4)
        affine[:3, 0] = np.array(self.column_direction) * self.spacing_mm[0]
        affine[:3, 1] = np.array(self.row_direction) * self.spacing_mm[1]
        affine[:3, 2] = self.normal * step_mm
        affine[:3, 3] = self.position
        return affine

    def same_orientation(self, other: SliceGeometry, tolerance: float = 1e-3) -> bool:
        """Both grids have parallel rows and parallel columns (to ``tolerance`` in direction cosine)."""
        return bool(
            np.allclose(self.row_direction, other.row_direction, atol=tolerance)
            and np.allclose(self.column_direction, other.column_direction, atol=tolerance)
        )


def geometry_of(ds: pydicom.Dataset) -> SliceGeometry | None:
    """The slice's geometry from its header, or ``None`` when any part is missing or implausible.

    Reads ImagePositionPatient (3 numbers), ImageOrientationPatient (6 numbers, two unit
    vectors at right angles), PixelSpacing (2 positive numbers), Rows and Columns.
    """
    try:
        position = _numbers(ds.get("ImagePositionPatient"), 3)
        orientation = _numbers(ds.get("ImageOrientationPatient"), 6)
        spacing = _numbers(ds.get("PixelSpacing"), 2)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except Exception:  # pydicom raises on malformed DS/IS values: treat as missing
        return None
    if position is None or orientation is None or spacing is None or rows <= 0 or cols <= 0:
        return None
    x, y = np.array(orientation[:3]), np.array(orientation[3:])
    if (
        abs(np.linalg.norm(x) - 1) > _ORTHO_TOLERANCE
        or abs(np.linalg.norm(y) - 1) > _ORTHO_TOLERANCE
        or abs(float(np.dot(x, y))) > _ORTHO_TOLERANCE
        or min(spacing) <= 0
    ):
        return None
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    return SliceGeometry(
        position=(position[0], position[1], position[2]),
        row_direction=(float(x[0]), float(x[1]), float(x[2])),
        column_direction=(float(y[0]), float(y[1]), float(y[2])),
        spacing_mm=(spacing[0], spacing[1]),
        shape=(rows, cols),
    )


def _numbers(value: object, count: int) -> list[float] | None:
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    if len(values) != count:
        return None
    out = [float(v) for v in values]
    return out if all(math.isfinite(v) for v in out) else None


def uid_hash(uid: str, secret: bytes | None = None) -> str:
    """A short stable stand-in for a DICOM UID: ``"u-"`` + 20 hex digits.

    HMAC-SHA256 with the installation's secret (:func:`core.pseudonym.load_secret`) when
    given, so a hash cannot be matched against UIDs from elsewhere without the secret;
    plain SHA-256 otherwise. The same UID always gives the same hash on one installation,
    so a re-uploaded series can be matched to a saved case.
    """
    data = uid.strip().encode()
    digest = hmac.new(secret, data, hashlib.sha256) if secret else hashlib.sha256(data)
    return "u-" + digest.hexdigest()[:20]


@dataclass(frozen=True)
class SourceReference:
    """What a DICOM SEG needs to point at the slice it was drawn on; no patient identifiers.

    Attributes:
        study_uid, series_uid, sop_uid: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID.
        sop_class_uid: SOPClassUID of the slice (CT Image Storage for a CT).
        frame_of_reference_uid: FrameOfReferenceUID, or ``None`` when absent.
        geometry: the slice's pixel grid in patient coordinates, or ``None`` when unknown.
        slice_thickness_mm: SliceThickness, or ``None``.
        modality: the slice's Modality.
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    frame_of_reference_uid: str | None
    geometry: SliceGeometry | None
    slice_thickness_mm: float | None
    modality: str = "CT"

    def as_dict(self) -> dict[str, Any]:
        """Plain types (str, float, int, list, None) for JSON; :func:`reference_from_dict` reverses it."""
        out = asdict(self)
        if self.geometry is not None:
            out["geometry"] = {key: list(value) for key, value in asdict(self.geometry).items()}
        return out

    def hashed(self, secret: bytes | None = None) -> dict[str, Any]:
        """What a saved case keeps: which series and slice, as UID hashes, and where the slice lies.

        Keys: ``study_uid_hash``, ``series_uid_hash``, ``sop_uid_hash``,
        ``frame_of_reference_uid_hash`` (``None`` when absent) and ``position_mm`` (the slice's
        position along the stack, mm, or ``None``).
        """
        return {
            "study_uid_hash": uid_hash(self.study_uid, secret),
            "series_uid_hash": uid_hash(self.series_uid, secret),
            "sop_uid_hash": uid_hash(self.sop_uid, secret),
            "frame_of_reference_uid_hash": (
                uid_hash(self.frame_of_reference_uid, secret) if self.frame_of_reference_uid else None
            ),
            "position_mm": None if self.geometry is None else round(self.geometry.offset_mm, 3),
        }


def reference_from_dict(data: dict[str, Any]) -> SourceReference:
    """Rebuild a :class:`SourceReference` from :meth:`SourceReference.as_dict`."""
    geometry = data.get("geometry")
    geo = None
    if geometry is not None:
        geo = SliceGeometry(
            position=tuple(float(v) for v in geometry["position"]),  # type: ignore[arg-type]
            row_direction=tuple(float(v) for v in geometry["row_direction"]),  # type: ignore[arg-type]
            column_direction=tuple(float(v) for v in geometry["column_direction"]),  # type: ignore[arg-type]
            spacing_mm=tuple(float(v) for v in geometry["spacing_mm"]),  # type: ignore[arg-type]
            shape=tuple(int(v) for v in geometry["shape"]),  # type: ignore[arg-type]
        )
    thickness = data.get("slice_thickness_mm")
    return SourceReference(
        study_uid=str(data["study_uid"]),
        series_uid=str(data["series_uid"]),
        sop_uid=str(data["sop_uid"]),
        sop_class_uid=str(data["sop_class_uid"]),
        frame_of_reference_uid=data.get("frame_of_reference_uid") or None,
        geometry=geo,
        slice_thickness_mm=None if thickness is None else float(thickness),
        modality=str(data.get("modality") or "CT"),
    )


def source_reference_of(ds: pydicom.Dataset) -> SourceReference | None:
    """The reference record of a parsed slice, or ``None`` without Study/Series/SOP Instance UIDs."""
    try:
        study, series, sop = (
            str(ds.get(k, "") or "").strip() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        )
        if not (study and series and sop):
            return None
        sop_class = str(ds.get("SOPClassUID", "") or "").strip() or "1.2.840.10008.5.1.4.1.1.2"
        frame = str(ds.get("FrameOfReferenceUID", "") or "").strip() or None
        thickness = _numbers(ds.get("SliceThickness"), 1)
        modality = str(ds.get("Modality", "") or "CT").strip() or "CT"
    except Exception:  # a malformed optional field never stops the image from loading
        return None
    return SourceReference(
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=sop_class,
        frame_of_reference_uid=frame,
        geometry=geometry_of(ds),
        slice_thickness_mm=thickness[0] if thickness and thickness[0] > 0 else None,
        modality=modality,
    )

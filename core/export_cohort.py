"""``python -m core export-cohort``: the saved cases with a known outcome as a training manifest.

What ``core train`` reads unchanged (:func:`core.cohort.read_manifest`): per case its slice
(a CT DICOM in HU, or the PNG/JPEG export's grey values with the spacing and window the
surgeon entered), its outline as a PNG mask, its label and its clinical inputs. This lets a
hospital retrain on its own patients.

Cases with an unknown outcome are left out, never written as negatives. What the images are
(``patients`` or ``synthetic``) is not known to the database, so the engineer must say it
(``--data-source``); it goes onto the model's card. The patient key is the case key, a
pseudonym. Only slices whose HU are whole numbers are written as DICOM, so the export is
lossless; others are refused with a sentence.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session

from core import db
from core.cohort import CALIBRATION_COLUMNS, DATA_SOURCE_COLUMN, REQUIRED_COLUMNS
from core.errors import UserFacingError
from core.files import replaced_on_success
from core.outcomes import FollowUp
from core.provenance import DATA_SOURCES

# the manifest's own column names (core.cohort), so that an export is always what `core train` reads
EXPORT_COLUMNS = (
    *REQUIRED_COLUMNS,
    "n_category",
    "t_category",
    "tumour_size_mm",
    DATA_SOURCE_COLUMN,
    *CALIBRATION_COLUMNS,
)


class ExportError(UserFacingError):
    """Nothing to export, or a case that cannot be written losslessly."""


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: the manifest, the cases written, and those left out for an unknown outcome."""

    manifest: Path
    written: int
    unknown_outcome: int


def hu_dicom_bytes(hu: np.ndarray, spacing_mm: tuple[float, float], key: str) -> bytes:
    """A CT DICOM (signed 16-bit, slope 1, intercept 0) holding (rows, cols) whole-number HU exactly."""
    rounded = np.round(hu)
    if not np.array_equal(rounded, hu) or rounded.min() < -32768 or rounded.max() > 32767:
        raise ExportError(
            f"Case {key} has Hounsfield units that are not whole numbers in 16 bits; it cannot be written losslessly."
        )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[key, "export", "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[key, "export", "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "export", "series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[key, "export", "frame"])
    ds.Modality = "CT"
    ds.PatientID = key  # the pseudonym, never the hospital's ID
    ds.PatientName = ""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SeriesDescription = "Exported from the iCCA dashboard"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [f"{spacing_mm[0]:.6f}", f"{spacing_mm[1]:.6f}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
    ds.PixelData = rounded.astype(np.int16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _label(outcome: FollowUp | None) -> int | None:
    known = outcome.early_recurrence if outcome else None
    return None if known is None else int(known)


def export_cohort(session: Session, out: Path, data_source: str) -> ExportSummary:
    """Write ``out/images``, ``out/masks`` and ``out/manifest.csv`` for the cases with a known outcome.

    Raises:
        ExportError: an unknown ``data_source``, no case with a known outcome, or a case that
            cannot be written losslessly.
    """
    if data_source not in DATA_SOURCES:
        raise ExportError(f"--data-source must be {' or '.join(DATA_SOURCES)}: say what these images are.")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows, unknown = [], 0
    for case in db.list_cases(session):
        label = _label(db.newest_outcome(case))
        if label is None:
            unknown += 1
            continue
        rows.append(_write_case(session, case, out, label, data_source))
    if not rows:
        raise ExportError(
            f"No saved case has a known outcome yet ({unknown} without one); record outcomes on the Cases page first."
        )
    manifest = out / "manifest.csv"
    with replaced_on_success(manifest) as partial, partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return ExportSummary(manifest, len(rows), unknown)


def _write_case(session: Session, case: db.Case, out: Path, label: int, data_source: str) -> dict[str, object]:
    key = case.case_key
    pixels, mask = db.case_array(session, case, "slice"), db.case_array(session, case, "mask")
    spacing = (case.spacing_row_mm, case.spacing_col_mm) if case.spacing_row_mm and case.spacing_col_mm else None
    row: dict[str, object] = {
        "patient_key": key,
        "mask_path": f"masks/{key}.png",
        "early_recurrence": label,
        "n_category": case.n_category,
        "t_category": case.t_category or "",
        "tumour_size_mm": case.tumour_size_mm if case.tumour_size_mm is not None else "",
        "data_source": data_source,
    }
    if case.is_hu:
        if spacing is None:
            raise ExportError(f"Case {key} has no pixel spacing; it cannot be used for training.")
        row["image_path"] = f"images/{key}.dcm"
        (out / str(row["image_path"])).write_bytes(hu_dicom_bytes(pixels, spacing, key))
    else:  # a PNG/JPEG export: its grey values, with the spacing and window the surgeon entered
        row["image_path"] = f"images/{key}.png"
        cv2.imwrite(str(out / str(row["image_path"])), np.clip(np.round(pixels), 0, 255).astype(np.uint8))
        row["pixel_spacing_mm"] = spacing[0] if spacing else ""
        row["export_window_level"] = case.export_window_level if case.export_window_level is not None else ""
        row["export_window_width"] = case.export_window_width if case.export_window_width is not None else ""
    cv2.imwrite(str(out / str(row["mask_path"])), mask.astype(np.uint8) * 255)
    return row

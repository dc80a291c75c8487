"""Cohort manifests: one CSV row per patient, validated as a whole before any training.

Columns: ``patient_key, image_path, mask_path, early_recurrence`` (required) and
optionally ``n_category, t_category, tumour_size_mm, margin, institution,
surgery_date, recurrence_date``. Paths are relative to the manifest's folder. An
image is a DICOM file, a folder holding exactly one DICOM slice, or a PNG/JPEG
export; a mask is a PNG of the same size (non-zero = tumour).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.errors import ManifestError, UserFacingError
from core.imaging import CtSlice, load_slice

REQUIRED_COLUMNS = ("patient_key", "image_path", "mask_path", "early_recurrence")
OPTIONAL_COLUMNS = (
    "n_category",
    "t_category",
    "tumour_size_mm",
    "margin",
    "institution",
    "surgery_date",
    "recurrence_date",
)


@dataclass(frozen=True)
class CohortPatient:
    """One validated manifest row (paths resolved)."""

    key: str
    image_path: Path
    mask_path: Path
    label: int
    clinical: dict[str, str] = field(default_factory=dict)

    @property
    def n_category(self) -> str:
        return self.clinical.get("n_category", "").strip().upper() or "unknown"

    @property
    def tumour_size_mm(self) -> float | None:
        try:
            return float(self.clinical.get("tumour_size_mm", ""))
        except ValueError:
            return None


def read_manifest(path: Path) -> list[CohortPatient]:
    """Read and validate a manifest; every problem is reported at once.

    Raises:
        ManifestError: listing each bad row (missing file, size mismatch, empty mask,
            unknown label, duplicate key) by row number and patient key.
    """
    if not path.is_file():
        raise UserFacingError(f"No manifest at {path}; check the path.")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError([f"missing column(s) {', '.join(missing)}"])
        rows = list(reader)
    if not rows:
        raise ManifestError(["the manifest has no patient rows"])
    problems: list[str] = []
    patients: list[CohortPatient] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        patient, row_problems = _validate_row(row, path.parent, number, seen)
        problems += row_problems
        if patient is not None:
            patients.append(patient)
    if problems:
        raise ManifestError(problems)
    return patients


def _validate_row(
    row: dict[str, str], root: Path, number: int, seen: set[str]
) -> tuple[CohortPatient | None, list[str]]:
    key = (row.get("patient_key") or "").strip()
    where = f"row {number} ({key or 'no key'})"
    problems: list[str] = []
    if not key:
        problems.append(f"{where}: empty patient_key")
    elif key in seen:
        problems.append(f"{where}: patient_key appears twice")
    seen.add(key)
    label_text = (row.get("early_recurrence") or "").strip()
    if label_text not in {"0", "1"}:
        problems.append(f"{where}: early_recurrence must be 0 or 1, got {label_text!r}")
    image_path, mask_path = root / (row.get("image_path") or ""), root / (row.get("mask_path") or "")
    ct, mask = None, None
    try:
        ct = load_patient_image(image_path)
    except (UserFacingError, OSError) as error:
        problems.append(f"{where}: image {row.get('image_path')!r}: {error}")
    try:
        mask = load_mask(mask_path)
    except UserFacingError as error:
        problems.append(f"{where}: mask {row.get('mask_path')!r}: {error}")
    if ct is not None and mask is not None and ct.shape != mask.shape:
        problems.append(
            f"{where}: mask is {mask.shape[1]}×{mask.shape[0]} px but the image is {ct.shape[1]}×{ct.shape[0]} px"
        )
    if problems:
        return None, problems
    clinical = {c: (row.get(c) or "").strip() for c in OPTIONAL_COLUMNS if row.get(c)}
    return CohortPatient(key, image_path, mask_path, int(label_text), clinical), []


def load_patient_image(path: Path) -> CtSlice:
    """A CT slice from a DICOM / PNG / JPEG file or a folder holding one DICOM slice."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if len(files) != 1:
            raise UserFacingError(f"the folder holds {len(files)} files; keep only the chosen slice in it")
        path = files[0]
    if not path.is_file():
        raise UserFacingError("file not found")
    return load_slice(path.read_bytes(), path.name)


def load_mask(path: Path) -> np.ndarray:
    """(rows, cols) bool mask from a PNG (any non-zero pixel is tumour)."""
    if not path.is_file():
        raise UserFacingError("file not found")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise UserFacingError("not a readable PNG")
    if not mask.any():
        raise UserFacingError("the mask is empty")
    return mask > 0

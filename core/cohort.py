"""Cohort manifests: one CSV row per patient, validated as a whole before any training.

Columns: ``patient_key, image_path, mask_path, early_recurrence`` (required) and
optionally ``n_category, t_category, tumour_size_mm, margin, institution,
surgery_date, recurrence_date`` (clinical), ``data_source`` (``patients`` or
``synthetic``, the same on every row: what the images are, written onto the model's
card), and ``pixel_spacing_mm, export_window_level, export_window_width`` (what a
PNG/JPEG export or a DICOM without usable PixelSpacing cannot say itself; applied
with :func:`core.imaging.calibrate`). Paths are relative to the manifest's folder.
An image is a DICOM file, a folder holding exactly one DICOM slice, or a PNG/JPEG
export; a mask is a PNG of the same size (non-zero = tumour).

A row the model could not analyse in the dashboard (no scale, or grey values without
HU: :func:`core.imaging.analysis_blocker`) is a manifest problem: a model must never be
trained on patches at a scale, or in grey values, it would not see at inference.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.clinical import parse_n_category
from core.errors import ManifestError, UserFacingError
from core.imaging import CtSlice, analysis_blocker, calibrate, load_slice, raster_size
from core.limits import MAX_SIDE_PX
from core.preprocess import PreprocessConfig
from core.provenance import DATA_SOURCES

REQUIRED_COLUMNS = ("patient_key", "image_path", "mask_path", "early_recurrence")
CLINICAL_COLUMNS = (
    "n_category",
    "t_category",
    "tumour_size_mm",
    "margin",
    "institution",
    "surgery_date",
    "recurrence_date",
)
DATA_SOURCE_COLUMN = "data_source"
CALIBRATION_COLUMNS = ("pixel_spacing_mm", "export_window_level", "export_window_width")
OPTIONAL_COLUMNS = (*CLINICAL_COLUMNS, DATA_SOURCE_COLUMN, *CALIBRATION_COLUMNS)
_CALIBRATION_HINT = "in a manifest, give the columns pixel_spacing_mm, export_window_level and export_window_width"


@dataclass(frozen=True)
class Calibration:
    """What the manifest states about an image its file cannot say.

    Attributes:
        spacing_mm: isotropic pixel size (mm/px), or ``None``.
        export_window: (level, width) in HU of a PNG/JPEG export, or ``None``.
    """

    spacing_mm: float | None = None
    export_window: tuple[float, float] | None = None


@dataclass(frozen=True)
class CohortPatient:
    """One validated manifest row (paths resolved)."""

    key: str
    image_path: Path
    mask_path: Path
    label: int
    clinical: dict[str, str] = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration)
    data_source: str | None = None  # a key of core.provenance.DATA_SOURCES, or None without the column

    @property
    def n_category(self) -> str:
        """N0, N1 or "unknown", by :func:`core.clinical.parse_n_category` (the one list of N categories)."""
        return parse_n_category(self.clinical.get("n_category"))

    @property
    def tumour_size_mm(self) -> float | None:
        try:
            return float(self.clinical.get("tumour_size_mm", ""))
        except ValueError:
            return None


def read_manifest(path: Path, cfg: PreprocessConfig | None = None) -> list[CohortPatient]:
    """Read and validate a manifest; every problem is reported at once.

    Args:
        path: the CSV file.
        cfg: the preprocessing the model will be trained with (default: the paper's); a row
            whose calibrated image this model could not analyse is a problem.

    Raises:
        ManifestError: listing each bad row (missing file, size mismatch, empty mask,
            unknown label, duplicate key, bad or mixed data_source, missing or implausible
            calibration) by row number and patient key.
    """
    cfg = cfg if cfg is not None else PreprocessConfig()
    if not path.is_file():
        raise UserFacingError(f"No manifest at {path}; check the path.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise ManifestError([f"missing column(s) {', '.join(missing)}"])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error):
        raise UserFacingError(
            f"The manifest {path.name} is not a readable UTF-8 CSV file; save it as CSV (UTF-8) and try again."
        ) from None
    if not rows:
        raise ManifestError(["the manifest has no patient rows"])
    problems: list[str] = []
    patients: list[CohortPatient] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        patient, row_problems = _validate_row(row, path.parent, number, seen, cfg, DATA_SOURCE_COLUMN in columns)
        problems += row_problems
        if patient is not None:
            patients.append(patient)
    sources = sorted({p.data_source for p in patients if p.data_source is not None})
    if len(sources) > 1:
        problems.append(f"data_source says {' and '.join(sources)} on different rows; a cohort is one or the other")
    if problems:
        raise ManifestError(problems)
    return patients


def manifest_data_source(patients: list[CohortPatient]) -> str | None:
    """The manifest's ``data_source`` ("patients" or "synthetic"), or ``None`` when it has no such column.

    :func:`read_manifest` has already refused a manifest whose rows disagree.
    """
    sources = {p.data_source for p in patients}
    if len(sources) != 1:
        raise ValueError("patients from a manifest whose data_source differs between rows")
    return next(iter(sources))


def _validate_row(
    row: dict[str, str], root: Path, number: int, seen: set[str], cfg: PreprocessConfig, has_source: bool
) -> tuple[CohortPatient | None, list[str]]:
    key = (row.get("patient_key") or "").strip()
    shown_key = "".join(ch if ch.isprintable() else "?" for ch in key)  # a quoted cell may hold a line break
    where = f"row {number} ({shown_key or 'no key'})"
    problems: list[str] = []
    if not key:
        problems.append(f"{where}: empty patient_key")
    elif key in seen:
        problems.append(f"{where}: patient_key appears twice")
    seen.add(key)
    label_text = (row.get("early_recurrence") or "").strip()
    if label_text not in {"0", "1"}:
        problems.append(f"{where}: early_recurrence must be 0 or 1, got {label_text!r}")
    source = None
    if has_source:
        source = (row.get(DATA_SOURCE_COLUMN) or "").strip().lower()
        if source not in DATA_SOURCES:
            problems.append(f"{where}: data_source must be {' or '.join(DATA_SOURCES)}, got {source!r}")
    calibration, calibration_problems = _parse_calibration(row)
    problems += [f"{where}: {p}" for p in calibration_problems]
    image_path, mask_path = root / (row.get("image_path") or ""), root / (row.get("mask_path") or "")
    ct, mask = None, None
    try:
        ct = calibrate(load_patient_image(image_path), calibration.spacing_mm, calibration.export_window)
    except UserFacingError as error:
        problems.append(f"{where}: image {_shown(row.get('image_path'))}: {error}")
    except OSError as error:  # a name too long, a folder that cannot be listed, a file that cannot be read
        problems.append(f"{where}: image {_shown(row.get('image_path'))}: {_cannot_read(error)}")
    try:
        mask = load_mask(mask_path)
    except UserFacingError as error:
        problems.append(f"{where}: mask {_shown(row.get('mask_path'))}: {error}")
    except OSError as error:
        problems.append(f"{where}: mask {_shown(row.get('mask_path'))}: {_cannot_read(error)}")
    if ct is not None and mask is not None and ct.shape != mask.shape:
        problems.append(
            f"{where}: mask is {mask.shape[1]}×{mask.shape[0]} px but the image is {ct.shape[1]}×{ct.shape[0]} px"
        )
    if ct is not None and not calibration_problems:
        blocker = analysis_blocker(ct, cfg)
        if blocker is not None:
            problems.append(f"{where}: {blocker.rstrip('.')} ({_CALIBRATION_HINT})")
    if problems:
        return None, problems
    clinical = {c: (row.get(c) or "").strip() for c in CLINICAL_COLUMNS if row.get(c)}
    return CohortPatient(key, image_path, mask_path, int(label_text), clinical, calibration, source or None), []


def _shown(text: str | None, limit: int = 80) -> str:
    """A manifest cell as the problem list quotes it: repr, cut short (a path can be thousands of characters)."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _cannot_read(error: OSError) -> str:
    """Why a file could not be read, in words ("the file cannot be read (file name too long)")."""
    reason = (error.strerror or type(error).__name__).lower()
    return f"the file cannot be read ({reason})"


def _parse_calibration(row: dict[str, str]) -> tuple[Calibration, list[str]]:
    """The row's calibration columns as numbers; problems for text that is not a finite number."""
    values: dict[str, float | None] = {}
    problems = []
    for column in CALIBRATION_COLUMNS:
        text = (row.get(column) or "").strip()
        if not text:
            values[column] = None
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            problems.append(f"{column} must be a number, got {text!r}")
        values[column] = value
    level, width = values["export_window_level"], values["export_window_width"]
    if (level is None) != (width is None):
        problems.append("give both export_window_level and export_window_width (HU), or neither")
    window = (level, width) if level is not None and width is not None else None
    return Calibration(values["pixel_spacing_mm"], window), problems


def image_file(path: Path) -> Path:
    """The image file itself: ``path``, or the one file inside the folder ``path``."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if len(files) != 1:
            raise UserFacingError(f"the folder holds {len(files)} files; keep only the chosen slice in it")
        return files[0]
    if not path.is_file():
        raise UserFacingError("file not found")
    return path


def load_patient_image(path: Path) -> CtSlice:
    """A CT slice from a DICOM / PNG / JPEG file or a folder holding one DICOM slice, as read (uncalibrated)."""
    path = image_file(path)
    return load_slice(path.read_bytes(), path.name)


def load_calibrated_image(patient: CohortPatient) -> CtSlice:
    """The patient's slice with the manifest's spacing / export window applied, as the dashboard would."""
    ct = load_patient_image(patient.image_path)
    return calibrate(ct, patient.calibration.spacing_mm, patient.calibration.export_window)


def load_mask(path: Path) -> np.ndarray:
    """(rows, cols) bool mask from a PNG (any non-zero pixel is tumour).

    Raises:
        UserFacingError: missing, not a PNG (or JPEG), larger than an image may be, or empty.
        OSError: the file cannot be read.
    """
    if not path.is_file():
        raise UserFacingError("file not found")
    data = path.read_bytes()
    size = raster_size(data)
    if size is None:
        raise UserFacingError("not a readable PNG")
    if max(size) > MAX_SIDE_PX:  # checked on the header: OpenCV allocates the declared size first
        raise UserFacingError(f"the mask is {size[1]}×{size[0]} pixels, larger than {MAX_SIDE_PX} px a side")
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise UserFacingError("not a readable PNG")
    if not mask.any():
        raise UserFacingError("the mask is empty")
    return mask > 0


def content_sha256(patient: CohortPatient) -> str:
    """SHA-256 (hex) of what one patient contributes to training.

    Covers the key, the label, the N category, the calibration and the bytes of the image
    and the mask files; a change to any of them changes the trained models.
    """
    digest = hashlib.sha256()
    facts = [
        patient.key,
        patient.label,
        patient.n_category,
        patient.calibration.spacing_mm,
        list(patient.calibration.export_window or []),
    ]
    digest.update(json.dumps(facts).encode())
    for path in (image_file(patient.image_path), patient.mask_path):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()

"""Synthetic plain-CT phantoms of intrahepatic cholangiocarcinoma: the test bed and demo data.

They claim nothing about real patients. The cohort mirrors the paper's Table 1:
41 patients, 20 with early recurrence; N category N0/N1 = 19/2 without and 9/11
with early recurrence; tumour sizes 16–150 mm with a median near 50 mm.

Generative model of one slice (512 × 512, HU stored via RescaleIntercept −1024):

* Anatomy: air (−1000 HU) outside an elliptical body of fat (−100 HU) holding an
  elliptical liver (55–65 HU) on the patient's right; spacing 0.6–0.8 mm/px.
* Tumour: an irregular ellipse inside the liver, 20–30 HU below the liver
  (plain-CT iCCA is hypodense), with diameter ``tumour_size_mm``.
* Signal of early recurrence: a latent aggressiveness
  ``z = ±1 (label) + N(0, 0.8²)``, squashed to ``t = sigmoid(2.5 z)`` in (0, 1),
  sets the tumour's texture: a Gaussian random field with correlation length
  ``0.8 + 2.2 t`` mm and amplitude ``4 + 12 t`` HU, plus ``round(8 t)`` hypodense
  necrotic foci (−25 HU, 2–5 mm). Coarse, heterogeneous texture therefore goes with
  early recurrence, but about one patient in ten (where the noise term flips the
  sign of ``z``) looks like the other class: a working pipeline clearly beats
  chance, and no pipeline can be perfect.
* Quantum noise: white Gaussian, SD 12 HU, everywhere.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from core.clinical import T_CATEGORIES
from core.roi import FABRIC_VERSION, CanvasView, mask_from_outlines, polygon_to_fabric

IMAGE_PX = 512
INTERCEPT = -1024.0
NOISE_SD_HU = 12.0
MANIFEST_COLUMNS = (
    "patient_key",
    "image_path",
    "mask_path",
    "early_recurrence",
    "n_category",
    "t_category",
    "tumour_size_mm",
    "institution",
    "data_source",
)
# Phantom manifests say what they are, so a model trained on them is labelled synthetic by the data.
PHANTOM_DATA_SOURCE = "synthetic"
# Per label (0 = no early recurrence, 1 = early recurrence): patients and N1 count, Table 1.
TABLE1_GROUPS = {0: {"patients": 21, "n1": 2}, 1: {"patients": 20, "n1": 11}}
T_WEIGHTS = {0: (2, 2, 14, 2, 1), 1: (4, 1, 10, 3, 2)}


@dataclass(frozen=True)
class PhantomPatient:
    """One synthetic patient's slice, mask and clinical fields.

    Attributes:
        hu: (512, 512) float32 Hounsfield units.
        mask: (512, 512) bool tumour.
        spacing_mm: isotropic in-plane pixel size (mm).
    """

    key: str
    label: int
    n_category: str
    t_category: str
    tumour_size_mm: float
    institution: str
    spacing_mm: float
    aggressiveness: float
    hu: np.ndarray
    mask: np.ndarray
    outline_xy: np.ndarray  # (K, 2) float64 tumour outline in continuous image (x, y)


def make_patient(
    key: str, label: int, n_category: str, rng: np.random.Generator, size_mm: float | None = None
) -> PhantomPatient:
    """Draw one phantom patient from the generative model in the module docstring."""
    spacing = float(rng.uniform(0.6, 0.8))
    size = float(size_mm if size_mm is not None else np.clip(rng.lognormal(np.log(50.0), 0.45), 16.0, 150.0))
    z = (1.0 if label else -1.0) + rng.normal(0.0, 0.8)
    t = float(1.0 / (1.0 + np.exp(-2.5 * z)))
    yy, xx = np.mgrid[0:IMAGE_PX, 0:IMAGE_PX].astype(np.float32) + 0.5
    centre = IMAGE_PX / 2.0
    fov_mm = IMAGE_PX * spacing

    hu = np.full((IMAGE_PX, IMAGE_PX), -1000.0, dtype=np.float32)
    body = ((xx - centre) / (0.44 * IMAGE_PX)) ** 2 + ((yy - centre) / (0.34 * IMAGE_PX)) ** 2 <= 1.0
    hu[body] = -100.0
    radius_px = size / 2.0 / spacing
    liver_a = max(0.2 * fov_mm, size / 2.0 + 12.0) / spacing
    liver_b = max(0.17 * fov_mm, size / 2.0 + 10.0) / spacing
    liver_cx, liver_cy = centre - 0.12 * IMAGE_PX, centre
    liver = (((xx - liver_cx) / liver_a) ** 2 + ((yy - liver_cy) / liver_b) ** 2 <= 1.0) & body
    hu[liver] = float(rng.uniform(55.0, 65.0))

    outline = _tumour_outline(liver_cx, liver_cy, radius_px, liver_a, liver_b, rng)
    mask = mask_from_outlines([outline], (IMAGE_PX, IMAGE_PX)) & body
    tumour_hu = hu[liver].mean() - float(rng.uniform(20.0, 30.0))
    texture = _texture(t, spacing, rng)
    hu[mask] = tumour_hu + texture[mask]
    _add_necrosis(hu, mask, t, spacing, rng)
    hu += rng.normal(0.0, NOISE_SD_HU, size=hu.shape).astype(np.float32)
    weights = np.array(T_WEIGHTS[label], dtype=np.float64)
    return PhantomPatient(
        key=key,
        label=label,
        n_category=n_category,
        t_category=str(rng.choice(T_CATEGORIES, p=weights / weights.sum())),
        tumour_size_mm=round(size, 1),
        institution=str(rng.choice(["A", "B", "C"])),
        spacing_mm=spacing,
        aggressiveness=t,
        hu=np.round(np.clip(hu, -1024.0, 3071.0)),  # whole HU, as a 12-bit CT stores them
        mask=mask,
        outline_xy=outline,
    )


def _tumour_outline(
    cx: float, cy: float, radius: float, liver_a: float, liver_b: float, rng: np.random.Generator
) -> np.ndarray:
    theta = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
    wobble = 1.0 + 0.08 * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.05 * np.sin(5 * theta + rng.uniform(0, 6.3))
    room_x, room_y = max(0.0, liver_a - radius * 1.15), max(0.0, liver_b - radius * 1.15)
    tx, ty = cx + rng.uniform(-0.5, 0.5) * room_x, cy + rng.uniform(-0.5, 0.5) * room_y
    r = radius * wobble / wobble.max()
    return np.column_stack([tx + r * np.cos(theta), ty + r * np.sin(theta)])


def _texture(t: float, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean Gaussian random field, correlation length 0.8 + 2.2 t mm, SD 4 + 12 t HU."""
    sigma_px = (0.8 + 2.2 * t) / spacing
    field = cv2.GaussianBlur(rng.normal(0.0, 1.0, (IMAGE_PX, IMAGE_PX)).astype(np.float32), (0, 0), sigma_px)
    field /= max(float(field.std()), 1e-6)
    return field * (4.0 + 12.0 * t)


def _add_necrosis(hu: np.ndarray, mask: np.ndarray, t: float, spacing: float, rng: np.random.Generator) -> None:
    rows, cols = np.nonzero(mask)
    for _ in range(round(8 * t)):
        i = rng.integers(len(rows))
        radius = rng.uniform(2.0, 5.0) / spacing
        spot = np.zeros(mask.shape, dtype=np.uint8)
        cv2.circle(spot, (int(cols[i]), int(rows[i])), max(1, int(radius)), 1, -1)
        hu[(spot > 0) & mask] -= 25.0


def dicom_bytes(patient: PhantomPatient, seed: int = 0) -> bytes:
    """The slice as a CT DICOM file (uncompressed, HU = stored − 1024)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient.key, str(seed), "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient.key, str(seed), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient.key, str(seed), "series"])
    # as on a real CT: the frame of reference lets an outline exported as DICOM SEG be placed on the series
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[patient.key, str(seed), "frame"])
    ds.Modality = "CT"
    ds.PatientID = patient.key
    ds.PatientName = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = "Synthetic plain CT phantom (not a patient)"
    ds.KVP = "120"
    ds.SliceThickness = "5"
    ds.ImagePositionPatient = [-IMAGE_PX * patient.spacing_mm / 2, -IMAGE_PX * patient.spacing_mm / 2, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows, ds.Columns = patient.hu.shape
    ds.PixelSpacing = [f"{patient.spacing_mm:.6f}", f"{patient.spacing_mm:.6f}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{INTERCEPT:g}", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "60", "160"
    stored = np.clip(np.round(patient.hu - INTERCEPT), 0, 4095).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def cohort_plan(n_patients: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """(label, N category) per patient; the paper's Table 1 for 41, scaled otherwise."""
    plan: list[tuple[int, str]] = []
    scale = n_patients / 41.0
    counts = {label: round(group["patients"] * scale) for label, group in TABLE1_GROUPS.items()}
    counts[1] = n_patients - counts[0]
    for label, count in counts.items():
        n1 = round(TABLE1_GROUPS[label]["n1"] / TABLE1_GROUPS[label]["patients"] * count)
        plan += [(label, "N1")] * n1 + [(label, "N0")] * (count - n1)
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def iter_cohort(n_patients: int = 41, seed: int = 0) -> Iterator[PhantomPatient]:
    """Phantom patients in a fixed order for a given seed."""
    rng = np.random.default_rng(seed)
    for index, (label, n_category) in enumerate(cohort_plan(n_patients, rng)):
        yield make_patient(f"PHANTOM-{index + 1:03d}", label, n_category, np.random.default_rng([seed, index]))


def write_cohort(out: Path, n_patients: int = 41, seed: int = 0, progress: bool = True) -> Path:
    """Write DICOM slices, PNG masks and ``manifest.csv`` under ``out``; returns the manifest path.

    Every row's ``data_source`` is ``synthetic``: ``core train`` reads it onto the model's card.
    """
    from tqdm import tqdm

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for patient in tqdm(iter_cohort(n_patients, seed), total=n_patients, desc="phantoms", disable=not progress):
            image_rel, mask_rel = f"images/{patient.key}.dcm", f"masks/{patient.key}.png"
            (out / image_rel).write_bytes(dicom_bytes(patient, seed))
            cv2.imwrite(str(out / mask_rel), patient.mask.astype(np.uint8) * 255)
            writer.writerow(
                [
                    patient.key,
                    image_rel,
                    mask_rel,
                    patient.label,
                    patient.n_category,
                    patient.t_category,
                    patient.tumour_size_mm,
                    patient.institution,
                    PHANTOM_DATA_SOURCE,
                ]
            )
    return manifest


@dataclass(frozen=True)
class SampleCase:
    """A ready-made case for the demo: a phantom CT and its outline."""

    dicom_bytes: bytes
    outline_xy: np.ndarray
    shape: tuple[int, int]

    def fabric_json(self, view: CanvasView) -> dict:
        """The outline as a Fabric drawing for a canvas laid out as ``view``."""
        return {"version": FABRIC_VERSION, "objects": [polygon_to_fabric(view.to_canvas(self.outline_xy))]}


SAMPLE_TUMOUR_MM = 55.0


def sample_case(seed: int = 2022) -> SampleCase:
    """One early-recurrence phantom with a ``SAMPLE_TUMOUR_MM`` tumour and its outline (simplified to 24 vertices)."""
    patient = make_patient("SAMPLE-001", 1, "N1", np.random.default_rng(seed), size_mm=SAMPLE_TUMOUR_MM)
    return SampleCase(dicom_bytes(patient, seed), patient.outline_xy[::4].copy(), patient.hu.shape)

"""Synthetic plain-CT phantoms of intrahepatic cholangiocarcinoma: the test bed and demo data.

They claim nothing about real patients. The cohort mirrors the paper's Table 1:
41 patients, 20 with early recurrence; N category N0/N1 = 19/2 without and 9/11
with early recurrence; tumour sizes 16–150 mm with a median near 50 mm.

Generative model of one slice (512 × 512, HU stored via RescaleIntercept −1024):

* Anatomy (:mod:`core.phantom_anatomy`): a non-contrast axial slice at the level of the
  liver and kidneys, sized to the image as a scanner's field of view is; spacing 0.6–0.8
  mm/px. Skin, subcutaneous fat, abdominal wall muscle, ribs, liver (55–65 HU) with hepatic
  and portal veins, spine with paraspinal muscles, aorta and IVC, kidneys, spleen, stomach
  with an air–fluid level, bowel loops with gas, the CT table.
* Tumour: a lobulated mass with infiltrative prongs inside the liver, 20–30 HU below it
  (plain-CT iCCA is hypodense), longest diameter ``tumour_size_mm`` (the liver is enlarged
  to hold a large one); its margin fades into the liver over ~1.5 mm; two to four dilated
  bile ducts run from it; where it reaches the liver's surface the capsule is retracted
  over it. The outline is the mass's boundary in the liver.
* Signal of early recurrence: a latent aggressiveness
  ``z = ±1 (label) + N(0, 0.8²)``, squashed to ``t = sigmoid(2.5 z)`` in (0, 1),
  sets the tumour's texture: a Gaussian random field with correlation length
  ``0.8 + 2.2 t`` mm and amplitude ``4 + 12 t`` HU, plus ``round(8 t)`` hypodense
  necrotic foci (−25 HU, 2–5 mm). Coarse, heterogeneous texture therefore goes with
  early recurrence, but about one patient in ten (where the noise term flips the
  sign of ``z``) looks like the other class: a working pipeline clearly beats
  chance, and no pipeline can be perfect.
* Acquisition: partial-volume blur (Gaussian, 0.5 mm) and correlated quantum noise, SD 12 HU.

Only the texture and the necrosis depend on the label, and they are drawn inside the outline
from a stream of their own: the same patient drawn with the other label differs only there.
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
from core.phantom_anatomy import IMAGE_PX, Abdomen, draw_line, ellipse, make_abdomen
from core.roi import FABRIC_VERSION, CanvasView, mask_from_outlines, polygon_to_fabric

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
    liver: np.ndarray  # (512, 512) bool liver parenchyma around the tumour (tumour included)


def make_patient(
    key: str, label: int, n_category: str, rng: np.random.Generator, size_mm: float | None = None
) -> PhantomPatient:
    """Draw one phantom patient from the generative model in the module docstring."""
    spacing = float(rng.uniform(0.6, 0.8))
    size = float(size_mm if size_mm is not None else np.clip(rng.lognormal(np.log(50.0), 0.45), 16.0, 150.0))
    # Every draw that depends on the label comes from its own stream, so that the anatomy, the
    # outline and the noise of a patient are the same whichever label it is drawn with.
    signal_rng = np.random.default_rng(rng.integers(2**63))
    z = (1.0 if label else -1.0) + signal_rng.normal(0.0, 0.8)
    t = float(1.0 / (1.0 + np.exp(-2.5 * z)))
    radius_px = size / 2.0 / spacing

    abdomen = make_abdomen(rng, room_px=radius_px * 1.1 + 6.0)
    hu = abdomen.hu
    outline = _tumour_outline(abdomen, radius_px, rng)
    mask = mask_from_outlines([outline], (IMAGE_PX, IMAGE_PX))
    _infiltrate(hu, abdomen, mask, spacing, rng)
    _dilated_ducts(hu, abdomen, mask, outline, spacing, rng)
    tumour_hu = abdomen.liver_hu - float(rng.uniform(20.0, 30.0))
    hu[mask] = tumour_hu + _texture(t, spacing, signal_rng)[mask]
    _add_necrosis(hu, mask, t, spacing, signal_rng)
    hu = _acquire(hu, spacing, rng)
    weights = np.array(T_WEIGHTS[label], dtype=np.float64)
    return PhantomPatient(
        key=key,
        label=label,
        n_category=n_category,
        t_category=str(rng.choice(T_CATEGORIES, p=weights / weights.sum())),
        tumour_size_mm=round(longest_diameter_px(outline) * spacing, 1),
        institution=str(rng.choice(["A", "B", "C"])),
        spacing_mm=spacing,
        aggressiveness=t,
        hu=np.round(np.clip(hu, -1024.0, 3071.0)),  # whole HU, as a 12-bit CT stores them
        mask=mask,
        outline_xy=outline,
        liver=abdomen.liver,
    )


def _tumour_outline(abdomen: Abdomen, radius_px: float, rng: np.random.Generator) -> np.ndarray:
    """(K, 2) outline of an irregular, lobulated mass in the liver; the capsule over it retracted.

    The centre is drawn where the liver is deep enough to hold the mass (or, for a mass larger
    than any room the liver has, where it is deepest); the outline is the liver's share of the
    mass, so a peripheral tumour meets the capsule, which is then pulled in over it (capsular
    retraction, typical of iCCA): the liver and the tumour both lose a shallow notch to fat.
    """
    depth = cv2.distanceTransform(abdomen.liver.astype(np.uint8), cv2.DIST_L2, 5)
    fits = np.argwhere(depth >= min(0.95 * radius_px, 0.97 * float(depth.max())))
    row, col = fits[rng.integers(len(fits))]
    cx, cy = col + 0.5, row + 0.5
    theta = np.linspace(0.0, 2.0 * np.pi, 192, endpoint=False)
    wobble = np.ones_like(theta)
    for k in range(2, 8):  # lobulation: lower harmonics carry more of the irregularity
        wobble += rng.uniform(0.0, 0.13 / np.sqrt(k)) * np.sin(k * theta + rng.uniform(0.0, 2.0 * np.pi))
    for spike in rng.uniform(0.0, 2.0 * np.pi, int(rng.integers(2, 6))):  # infiltrative prongs
        gap = np.angle(np.exp(1j * (theta - spike)))
        wobble += rng.uniform(0.06, 0.16) * np.exp(-((gap / 0.07) ** 2))
    # scaled so that the longest diameter through the centre is the requested size
    r = 2.0 * radius_px * wobble / float((wobble + np.roll(wobble, len(theta) // 2)).max())
    mass = mask_from_outlines([np.column_stack([cx + r * np.cos(theta), cy + r * np.sin(theta)])], abdomen.liver.shape)
    mass &= abdomen.liver
    _retract_capsule(abdomen, mass, (cx, cy), radius_px, rng)
    return _largest_outline(mass)


def longest_diameter_px(outline_xy: np.ndarray) -> float:
    """The longest distance between two points of a (K, 2) outline (its maximal Feret diameter), in px."""
    hull = cv2.convexHull(outline_xy.astype(np.float32))[:, 0, :].astype(np.float64)
    return float(np.sqrt(((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=-1)).max())


def _retract_capsule(
    abdomen: Abdomen, mass: np.ndarray, centre: tuple[float, float], radius_px: float, rng: np.random.Generator
) -> None:
    """Notch the capsule nearest a tumour within 1.3 radii of it; edits the liver, the mass and the HU."""
    edge = abdomen.liver & ~cv2.erode(abdomen.liver.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    rows, cols = np.nonzero(edge)
    if len(rows) == 0:
        return
    distance = np.hypot(cols + 0.5 - centre[0], rows + 0.5 - centre[1])
    nearest = int(np.argmin(distance))
    if distance[nearest] > 1.3 * radius_px:
        return
    px, py = cols[nearest] + 0.5, rows[nearest] + 0.5
    away = np.array([px - centre[0], py - centre[1]]) / max(float(distance[nearest]), 1e-6)
    depth = max(3.0, 0.35 * radius_px) * float(rng.uniform(0.7, 1.0))
    notch = ellipse(
        px + away[0] * depth * 0.5,
        py + away[1] * depth * 0.5,
        depth,
        depth * 0.6,
        float(np.degrees(np.arctan2(away[1], away[0]))) + 90.0,
    )
    notch &= abdomen.liver
    abdomen.hu[notch] = abdomen.fat_hu
    abdomen.liver[notch] = False
    mass[notch] = False


def _largest_outline(mass: np.ndarray) -> np.ndarray:
    """(K, 2) float64 outline, continuous (x, y), of the largest connected part of ``mass``."""
    contours, _ = cv2.findContours(mass.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    simplified = cv2.approxPolyDP(contour, 0.5, True)[:, 0, :].astype(np.float64)
    return simplified + 0.5  # pixel centres: the mask re-filled from it is the mass, to the boundary's half pixel


def _infiltrate(hu: np.ndarray, abdomen: Abdomen, mask: np.ndarray, spacing: float, rng: np.random.Generator) -> None:
    """An ill-defined margin: the liver next to the tumour darkens over ~1.5 mm, fading outward."""
    halo = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5 / spacing)
    around = abdomen.liver & ~mask
    hu[around] -= float(rng.uniform(10.0, 18.0)) * halo[around]


def _dilated_ducts(
    hu: np.ndarray, abdomen: Abdomen, mask: np.ndarray, outline: np.ndarray, spacing: float, rng: np.random.Generator
) -> None:
    """Two to four dilated bile ducts (≈ 15 HU, 2–4 mm) running from the tumour into the liver upstream of it."""
    centre = outline.mean(axis=0)
    for _ in range(int(rng.integers(2, 5))):
        start = outline[rng.integers(len(outline))]
        direction = (start - centre) / max(float(np.linalg.norm(start - centre)), 1e-6)
        bend = rng.normal(0.0, 0.3, 2)
        length = float(rng.uniform(15.0, 40.0)) / spacing
        steps = np.linspace(0.0, 1.0, 8)[:, None]
        path = start + (direction + bend * steps) * length * steps
        duct = draw_line(path, float(rng.uniform(2.0, 4.0)) / spacing) & abdomen.liver & ~mask
        hu[duct] = 15.0


def _acquire(hu: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """The scanner's view: partial-volume blur (0.5 mm) and correlated quantum noise (SD 12 HU)."""
    blurred = cv2.GaussianBlur(hu, (0, 0), 0.5 / spacing)
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, hu.shape).astype(np.float32), (0, 0), 0.6)
    noise *= NOISE_SD_HU / max(float(noise.std()), 1e-6)
    return blurred + noise


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
    tumour_size_mm: float  # longest diameter of the outline

    def fabric_json(self, view: CanvasView) -> dict:
        """The outline as a Fabric drawing for a canvas laid out as ``view``."""
        return {"version": FABRIC_VERSION, "objects": [polygon_to_fabric(view.to_canvas(self.outline_xy))]}


SAMPLE_TUMOUR_MM = 55.0


def sample_case(seed: int = 2022) -> SampleCase:
    """One early-recurrence phantom with a tumour of about ``SAMPLE_TUMOUR_MM`` and its outline."""
    patient = make_patient("SAMPLE-001", 1, "N1", np.random.default_rng(seed), size_mm=SAMPLE_TUMOUR_MM)
    return SampleCase(dicom_bytes(patient, seed), patient.outline_xy.copy(), patient.hu.shape, patient.tumour_size_mm)

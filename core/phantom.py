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
from core.files import replaced_on_success
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
    """One synthetic patient's slice, tumour and clinical fields.

    Attributes:
        hu: (512, 512) float32 Hounsfield units, whole numbers in [-1024, 3071].
        mask: (512, 512) bool tumour: exactly the pixels ``outline_xy`` encloses.
        outline_xy: (K, 2) float64 tumour outline in continuous image (x, y) px.
        liver: (512, 512) bool liver parenchyma, tumour included.
        spacing_mm: isotropic in-plane pixel size (mm).
        tumour_size_mm: longest diameter of the tumour (mm), measured on its pixels' edges.
        aggressiveness: the latent ``t`` in (0, 1) that sets the texture (module docstring).
        landmarks: (x, y) px of the spine, aorta, IVC, liver hilum and stomach
            (:class:`core.phantom_anatomy.Abdomen`).
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
    outline_xy: np.ndarray
    liver: np.ndarray
    landmarks: dict[str, tuple[float, float]]


MIN_SIZE_MM, MAX_SIZE_MM = 16.0, 150.0  # Table 1's range of tumour sizes


def make_patient(
    key: str, label: int, n_category: str, rng: np.random.Generator, size_mm: float | None = None
) -> PhantomPatient:
    """Draw one phantom patient from the generative model in the module docstring.

    ``size_mm`` is the tumour's longest diameter (mm), drawn from Table 1's range when ``None``;
    the recorded ``tumour_size_mm`` is measured on the mask and lies within 1 mm of it unless
    the liver cannot hold the tumour (then it is cut by the liver's edge and measured smaller).
    """
    size = float(
        size_mm if size_mm is not None else np.clip(rng.lognormal(np.log(50.0), 0.45), MIN_SIZE_MM, MAX_SIZE_MM)
    )
    # a scanner's field of view fits the patient; a large liver tumour needs a larger abdomen
    spacing = max(float(rng.uniform(0.6, 0.8)), min(0.8, size / 190.0))
    # Every draw that depends on the label comes from its own stream, so that the anatomy, the
    # outline and the noise of a patient are the same whichever label it is drawn with.
    signal_rng = np.random.default_rng(rng.integers(2**63))
    z = (1.0 if label else -1.0) + signal_rng.normal(0.0, 0.8)
    t = float(1.0 / (1.0 + np.exp(-2.5 * z)))

    # the liver must hold most of the tumour; a peripheral one may meet its capsule (and be cut by it)
    abdomen = make_abdomen(rng, room_px=0.75 * size / 2.0 / spacing)
    mask, outline = _place_tumour(abdomen, size / spacing, rng)
    hu = abdomen.hu
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
        tumour_size_mm=round(longest_diameter_px(mask) * spacing, 1),
        institution=str(rng.choice(["A", "B", "C"])),
        spacing_mm=spacing,
        aggressiveness=t,
        hu=np.round(np.clip(hu, -1024.0, 3071.0)),  # whole HU, as a 12-bit CT stores them
        mask=mask,
        outline_xy=outline,
        liver=abdomen.liver,
        landmarks=abdomen.landmarks,
    )


def _place_tumour(abdomen: Abdomen, size_px: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """((512, 512) bool mask, (K, 2) float64 outline in px) of a mass of longest diameter ``size_px`` in the liver.

    Where a first draw of the mass reaches the liver's surface the capsule is retracted over it
    (:func:`_retract_capsule`); the mass is then redrawn, in the retracted liver, at the scale
    that makes its longest diameter the size asked for (rasterising loses up to a pixel, which
    matters at 16 mm, and the notch and the liver's edge cut some).
    """
    if not abdomen.liver.any():
        raise ValueError("the phantom's liver is empty: no room for a tumour")
    depth = cv2.distanceTransform(abdomen.liver.astype(np.uint8), cv2.DIST_L2, 5)
    radius = size_px / 2.0
    fits = np.argwhere(depth >= min(radius, 0.97 * float(depth.max())))
    # two tumours in three reach the capsule, as peripheral iCCA often does: centred a little
    # less than a radius from the surface, the liver's edge cuts them there
    touching = np.argwhere((depth >= 0.75 * radius) & (depth <= 0.92 * radius))
    pool = touching if len(touching) and rng.random() < 0.67 else fits
    row, col = pool[rng.integers(len(pool))]
    centre = (col + 0.5, row + 0.5)
    profile = _lobulated_profile(rng)
    mass = _mass(abdomen, centre, radius, profile)
    _retract_capsule(abdomen, mass, centre, radius, rng)
    measured = longest_diameter_px(mass)
    if measured > 0:
        mass = _mass(abdomen, centre, radius * size_px / measured, profile)
    return _traced(mass)


def _lobulated_profile(rng: np.random.Generator) -> np.ndarray:
    """(192,) float64 radial profile, its longest diameter 2 (peaks up to ~1.2): lobulation (harmonics 2–7) and two to five infiltrative prongs."""
    theta = np.linspace(0.0, 2.0 * np.pi, 192, endpoint=False)
    wobble = np.ones_like(theta)
    for k in range(2, 8):  # lower harmonics carry more of the irregularity
        wobble += rng.uniform(0.0, 0.13 / np.sqrt(k)) * np.sin(k * theta + rng.uniform(0.0, 2.0 * np.pi))
    for spike in rng.uniform(0.0, 2.0 * np.pi, int(rng.integers(2, 6))):
        gap = np.angle(np.exp(1j * (theta - spike)))
        wobble += rng.uniform(0.06, 0.16) * np.exp(-((gap / 0.07) ** 2))
    # scaled so that the longest diameter through the centre is 2
    return 2.0 * wobble / float((wobble + np.roll(wobble, len(theta) // 2)).max())


def _mass(abdomen: Abdomen, centre: tuple[float, float], radius: float, profile: np.ndarray) -> np.ndarray:
    """(512, 512) bool: the profile at ``radius`` px around ``centre``, the part inside the liver."""
    theta = np.linspace(0.0, 2.0 * np.pi, len(profile), endpoint=False)
    r = radius * profile
    polygon = np.column_stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)])
    return _largest_part(mask_from_outlines([polygon], abdomen.liver.shape) & abdomen.liver)


def _largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of ``mask`` (an empty mask stays empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return mask.copy()
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def longest_diameter_px(mask: np.ndarray) -> float:
    """The longest distance (px) across ``mask``'s pixels, edge to edge (its maximal Feret diameter)."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return 0.0
    corners = np.concatenate([np.column_stack([cols + dx, rows + dy]) for dx in (0, 1) for dy in (0, 1)])
    hull = cv2.convexHull(corners.astype(np.float32))[:, 0, :].astype(np.float64)
    return float(np.sqrt(((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=-1)).max())


def _retract_capsule(
    abdomen: Abdomen, mass: np.ndarray, centre: tuple[float, float], radius: float, rng: np.random.Generator
) -> None:
    """Pull the capsule in where the mass reaches the liver's surface (capsular retraction).

    A notch of fat, about 0.3 radii deep, is cut into the liver and the mass at the middle of
    their contact with the surface; a notch that would split the mass is made shallower, and
    none is made if it still would. Edits ``abdomen.hu``, ``abdomen.liver`` and ``mass`` in place.
    """
    surface = abdomen.liver & ~cv2.erode(abdomen.liver.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    rows, cols = np.nonzero(mass & surface)
    if len(rows) < 3:
        return
    middle = int(np.argmin(np.hypot(cols - cols.mean(), rows - rows.mean())))
    px, py = cols[middle] + 0.5, rows[middle] + 0.5
    outward = np.array([px - centre[0], py - centre[1]])
    outward /= max(float(np.linalg.norm(outward)), 1e-6)
    angle = float(np.degrees(np.arctan2(outward[1], outward[0])))
    for depth in np.array([0.3, 0.2, 0.12]) * radius * float(rng.uniform(0.8, 1.0)):
        if depth < 2.0:
            return
        # an ellipse reaching ``depth`` inside the surface point (1.5 depth deep from its centre
        # half a depth outside it), wider along the surface than deep
        notch = ellipse(px + outward[0] * 0.5 * depth, py + outward[1] * 0.5 * depth, 1.5 * depth, 2.0 * depth, angle)
        kept = mass & ~notch
        if cv2.connectedComponents(kept.astype(np.uint8), connectivity=4)[0] == 2:  # background + one piece
            cut = notch & abdomen.liver
            abdomen.hu[cut] = abdomen.fat_hu
            abdomen.liver[cut] = False
            mass[notch] = False
            return


def _traced(mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((512, 512) bool mask, (K, 2) float64 outline): the mass's boundary and what it encloses.

    The boundary is traced on a ×2 grid, a quarter pixel inside the mass's outer pixel edges,
    so every pixel centre of the mass is inside and every other one outside; the mask returned
    is the outline filled again (:func:`core.roi.mask_from_outlines`), the one definition of the
    tumour every later step uses.
    """
    fine = cv2.resize(mass.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(fine, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    simplified = cv2.approxPolyDP(contour, 0.5, True)[:, 0, :].astype(np.float64)
    outline = (simplified + 0.5) / 2.0  # a fine pixel's centre, in coarse pixel units
    return _largest_part(mask_from_outlines([outline], mass.shape)), outline


def _infiltrate(hu: np.ndarray, abdomen: Abdomen, mask: np.ndarray, spacing: float, rng: np.random.Generator) -> None:
    """An ill-defined margin: the liver beside the tumour darkens by 15–25 HU at the edge, fading over ~1.5 mm."""
    halo = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5 / spacing)
    around = abdomen.liver & ~mask
    hu[around] -= float(rng.uniform(30.0, 50.0)) * halo[around]  # the halo is ~0.5 at the edge


def _dilated_ducts(
    hu: np.ndarray, abdomen: Abdomen, mask: np.ndarray, outline: np.ndarray, spacing: float, rng: np.random.Generator
) -> None:
    """Two to four dilated bile ducts (15 HU, 2–4 mm wide, 15–40 mm long) upstream of the tumour.

    Bile flows toward the hilum, so a mass obstructs the ducts on its far side: each duct
    starts on the half of the outline facing away from the hilum and runs outward.
    """
    centre = outline.mean(axis=0)
    away = centre - np.array(abdomen.landmarks["hilum"])
    away /= max(float(np.linalg.norm(away)), 1e-6)
    directions = outline - centre
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-6)
    far_side = np.nonzero(directions @ away > 0.2)[0]
    if len(far_side) == 0:
        return
    for _ in range(int(rng.integers(2, 5))):
        i = far_side[rng.integers(len(far_side))]
        bend = rng.normal(0.0, 0.3, 2)
        length = float(rng.uniform(15.0, 40.0)) / spacing
        steps = np.linspace(0.0, 1.0, 8)[:, None]
        path = outline[i] + (directions[i] + bend * steps) * length * steps
        duct = draw_line(path, float(rng.uniform(2.0, 4.0)) / spacing) & abdomen.liver & ~mask
        hu[duct] = 15.0


def _acquire(hu: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """(512, 512) float32: the scanner's view, partial-volume blur (0.5 mm) and correlated quantum noise (SD 12 HU)."""
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
    if len(rows) == 0:
        return
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
    """Phantom patients in a fixed order for a given seed, each with at least one patch to train on.

    A lobulated tumour near Table 1's 16 mm minimum can fail to fill half of one 16 mm patch;
    such a patient is drawn again from the next stream (``[seed, index, attempt]``), so a
    cohort never holds a patient the training pipeline would refuse.
    """
    rng = np.random.default_rng(seed)
    for index, (label, n_category) in enumerate(cohort_plan(n_patients, rng)):
        key = f"PHANTOM-{index + 1:03d}"
        patient = make_patient(key, label, n_category, np.random.default_rng([seed, index]))
        attempt = 1
        while not has_a_patch(patient):
            patient = make_patient(key, label, n_category, np.random.default_rng([seed, index, attempt]))
            attempt += 1
        yield patient


def has_a_patch(patient: PhantomPatient) -> bool:
    """Whether the default patch lattice (:class:`core.preprocess.PreprocessConfig`) finds a patch in the tumour."""
    from core.errors import RoiError
    from core.lattice import plan_lattice
    from core.preprocess import PreprocessConfig

    try:
        return len(plan_lattice(patient.mask, (patient.spacing_mm, patient.spacing_mm), PreprocessConfig())) > 0
    except RoiError:  # "too small for one patch"
        return False


def write_cohort(out: Path, n_patients: int = 41, seed: int = 0, progress: bool = True) -> Path:
    """Write DICOM slices, PNG masks and ``manifest.csv`` under ``out``; returns the manifest path.

    Every row's ``data_source`` is ``synthetic``: ``core train`` reads it onto the model's card.
    The manifest appears only once every patient is written, so a build stopped half-way leaves
    none (``make demo-model`` then writes the cohort again) rather than a short one it would train on.
    """
    from tqdm import tqdm

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    manifest.unlink(missing_ok=True)  # an old manifest must not outlive the files rewritten under it
    with replaced_on_success(manifest) as partial, partial.open("w", newline="") as handle:
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
    tumour_size_mm: float  # longest diameter (mm), measured on the mask's pixel edges

    def fabric_json(self, view: CanvasView) -> dict:
        """The outline as a Fabric drawing for a canvas laid out as ``view``."""
        return {"version": FABRIC_VERSION, "objects": [polygon_to_fabric(view.to_canvas(self.outline_xy))]}


SAMPLE_TUMOUR_MM = 55.0


def sample_case(seed: int = 2022) -> SampleCase:
    """One early-recurrence phantom with a tumour of about ``SAMPLE_TUMOUR_MM`` and its outline."""
    patient = make_patient("SAMPLE-001", 1, "N1", np.random.default_rng(seed), size_mm=SAMPLE_TUMOUR_MM)
    return SampleCase(dicom_bytes(patient, seed), patient.outline_xy.copy(), patient.hu.shape, patient.tumour_size_mm)

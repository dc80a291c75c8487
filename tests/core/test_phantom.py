from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.imaging import load_slice
from core.phantom import MANIFEST_COLUMNS, cohort_plan, dicom_bytes, iter_cohort, make_patient, write_cohort
from core.phantom_anatomy import IMAGE_PX, make_abdomen
from core.roi import mask_from_outlines


def test_default_cohort_mirrors_table_1() -> None:
    plan = cohort_plan(41, np.random.default_rng(0))
    assert len(plan) == 41 and sum(label for label, _ in plan) == 20
    assert sum(1 for label, n in plan if label == 0 and n == "N1") == 2
    assert sum(1 for label, n in plan if label == 1 and n == "N1") == 11


def test_cohort_is_deterministic_for_a_seed() -> None:
    a = next(iter_cohort(3, seed=5))
    b = next(iter_cohort(3, seed=5))
    np.testing.assert_array_equal(a.hu, b.hu)


def test_dicom_carries_ct_tags_hu_and_spacing() -> None:
    patient = make_patient("T-1", 0, "N0", np.random.default_rng(1), size_mm=40.0)
    ct = load_slice(dicom_bytes(patient))
    assert ct.shape == (512, 512) and 0.6 <= ct.spacing_mm[0] <= 0.8
    np.testing.assert_allclose(ct.pixels, np.round(patient.hu), atol=0.5)
    liver_tumour_gap = np.median(ct.pixels[patient.mask]) - np.median(ct.pixels[patient.liver & ~patient.mask])
    assert liver_tumour_gap < -10  # plain-CT iCCA is hypodense


def test_the_slice_reads_as_a_plain_abdominal_ct() -> None:
    """Air around the body, fat under the skin, liver in its plain-CT range, bone, gas in the bowel."""
    patient = make_patient("T-2", 1, "N1", np.random.default_rng(3), size_mm=45.0)
    hu, liver, tumour = patient.hu, patient.liver, patient.mask
    assert np.median(hu[:20, :]) < -900  # air above the patient
    core = liver & ~cv2.dilate(tumour.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert 50 <= np.median(hu[core]) <= 70 and liver.sum() > 0.08 * hu.size
    assert (hu > 500).sum() > 1000  # cortical bone: vertebra and ribs
    body = hu > -400
    assert ((hu < -60) & (hu > -150) & body).sum() > 0.1 * body.sum()  # fat, subcutaneous and visceral
    contours, _ = cv2.findContours(body.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = cv2.drawContours(np.zeros(hu.shape, np.uint8), [max(contours, key=cv2.contourArea)], -1, 1, -1)
    inside = cv2.erode(filled, np.ones((25, 25), np.uint8)).astype(bool)
    assert (inside & (hu < -900)).sum() > 200  # gas in the stomach and bowel


def test_the_slice_is_in_the_radiological_orientation() -> None:
    """Patient's right on the image's left, anterior at the top: liver and IVC left, aorta and stomach right, spine below."""
    abdomen = make_abdomen(np.random.default_rng(5))
    marks = abdomen.landmarks
    assert marks["ivc"][0] < IMAGE_PX / 2 < marks["aorta"][0]
    assert marks["stomach"][0] > IMAGE_PX / 2 and marks["stomach"][1] < marks["spine"][1]
    assert marks["spine"][1] > IMAGE_PX / 2 + 30
    assert abdomen.liver[:, : IMAGE_PX // 2].sum() > 2 * abdomen.liver[:, IMAGE_PX // 2 :].sum()
    rows, _ = np.nonzero(abdomen.hu < -900)
    gas_in_body = rows[(rows > 100) & (rows < marks["spine"][1])]
    assert len(gas_in_body) > 0  # gas floats to the front of a supine patient: above the spine


@pytest.mark.parametrize("size_mm", [16.0, 55.0, 150.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_tumour_is_one_piece_in_the_liver_of_its_recorded_size(size_mm: float, seed: int) -> None:
    patient = make_patient("T-4", seed % 2, "N0", np.random.default_rng(seed), size_mm=size_mm)
    mask = patient.mask
    assert cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)[0] == 2  # background + one piece
    np.testing.assert_array_equal(mask, mask_from_outlines([patient.outline_xy], mask.shape))
    assert not (mask & ~patient.liver).any()
    assert 0.6 <= patient.spacing_mm <= 0.8
    # recorded = measured on the mask; within 1 mm of the request unless the liver's edge cuts a large one
    assert patient.tumour_size_mm <= size_mm + 1.0
    assert patient.tumour_size_mm >= (size_mm - 1.0 if size_mm <= 55 else 0.85 * size_mm)


@pytest.mark.parametrize("seed", [0, 4])
def test_the_tumour_spares_the_great_vessels_and_spine(seed: int) -> None:
    """However large, the tumour grows in the liver: it never covers the IVC, the aorta or the vertebra."""
    patient = make_patient("T-5", 1, "N1", np.random.default_rng(seed), size_mm=150.0)
    for name in ("ivc", "aorta", "spine"):
        x, y = patient.landmarks[name]
        assert not patient.mask[int(y), int(x)], name


def test_the_label_changes_only_the_inside_of_the_tumour() -> None:
    """The learnable signal of early recurrence stays inside the outline: anatomy and noise do not carry it."""
    calm = make_patient("T-3", 0, "N0", np.random.default_rng(11), size_mm=60.0)
    aggressive = make_patient("T-3", 1, "N0", np.random.default_rng(11), size_mm=60.0)
    np.testing.assert_array_equal(calm.mask, aggressive.mask)
    # the partial-volume blur (0.5 mm, under 1 px) spreads the tumour's inside by at most a few px
    near = cv2.dilate(calm.mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    np.testing.assert_array_equal(calm.hu[~near], aggressive.hu[~near])
    assert calm.aggressiveness < aggressive.aggressiveness
    assert np.std(aggressive.hu[calm.mask]) > np.std(calm.hu[calm.mask])


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_tumour_sizes_span_the_paper_range(seed: int) -> None:
    """Table 1: 16–150 mm, median near 50; measured sizes may fall a few tenths of a mm short of 16."""
    sizes = [p.tumour_size_mm for p in iter_cohort(41, seed=seed)]
    assert min(sizes) >= 15.5 and max(sizes) <= 150 and 35 <= float(np.median(sizes)) <= 65


def test_texture_heterogeneity_tracks_the_label_imperfectly() -> None:
    patients = list(iter_cohort(41, seed=0))
    t = np.array([p.aggressiveness for p in patients])
    y = np.array([p.label for p in patients])
    assert t[y == 1].mean() > t[y == 0].mean() + 0.3
    # imperfect: at least one patient looks like the other class
    assert ((t > 0.5) != (y == 1)).any()


def test_manifest_marks_every_row_synthetic(tmp_path: Path) -> None:
    from core.provenance import DATA_SOURCES

    manifest = write_cohort(tmp_path, n_patients=3, seed=1, progress=False)
    rows = list(csv.DictReader(manifest.open()))
    assert list(rows[0]) == list(MANIFEST_COLUMNS) and "data_source" in MANIFEST_COLUMNS
    assert {row["data_source"] for row in rows} == {"synthetic"}
    assert DATA_SOURCES["synthetic"] == "synthetic phantoms"


def test_a_cohort_stopped_while_writing_leaves_no_manifest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from core import phantom

    write_cohort(tmp_path, n_patients=3, seed=1, progress=False)
    masks: list[str] = []
    imwrite = cv2.imwrite

    def stopped_after_one_patient(path: str, image: np.ndarray) -> bool:
        if masks:
            raise KeyboardInterrupt
        masks.append(path)
        return imwrite(path, image)

    monkeypatch.setattr(phantom.cv2, "imwrite", stopped_after_one_patient)
    with pytest.raises(KeyboardInterrupt):
        write_cohort(tmp_path, n_patients=3, seed=2, progress=False)
    assert len((tmp_path / "manifest.csv.tmp").read_text().splitlines()) == 2  # header and the one patient
    assert not (tmp_path / "manifest.csv").exists()  # neither the old manifest nor a short new one


def test_the_sample_outline_exports_as_a_seg_that_reads_back_exactly() -> None:
    """The sample has a frame of reference, as a real CT does: its outline can be exported as DICOM SEG."""
    import io

    import highdicom as hd

    from core.phantom import sample_case
    from core.roi import mask_from_outlines
    from core.segmentation import export_seg

    sample = sample_case()
    assert abs(sample.tumour_size_mm - 55.0) <= 1.0
    ct = load_slice(sample.dicom_bytes)
    assert ct.source_ref is not None and ct.source_ref.frame_of_reference_uid
    mask = mask_from_outlines([sample.outline_xy], sample.shape)
    seg = hd.seg.segread(io.BytesIO(export_seg(mask, ct.source_ref)))
    pixels = seg.get_pixels_by_source_instance([ct.source_ref.sop_uid], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask)
    assert seg.FrameOfReferenceUID == ct.source_ref.frame_of_reference_uid


@pytest.mark.parametrize("seed", [0, 4])
def test_every_cohort_patient_has_a_patch_to_train_on(seed: int) -> None:
    """Seed 4 once drew a 16 mm tumour with no patch, and training refused the whole cohort."""
    from core.phantom import has_a_patch

    assert all(has_a_patch(p) for p in iter_cohort(41, seed=seed))

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from core.imaging import load_slice
from core.phantom import MANIFEST_COLUMNS, cohort_plan, dicom_bytes, iter_cohort, make_patient, write_cohort


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
    liver_tumour_gap = np.median(ct.pixels[patient.mask]) - np.median(ct.pixels[(ct.pixels > 30) & ~patient.mask])
    assert liver_tumour_gap < -10  # plain-CT iCCA is hypodense


def test_tumour_sizes_span_the_paper_range() -> None:
    sizes = [p.tumour_size_mm for p in iter_cohort(41, seed=0)]
    assert min(sizes) >= 16 and max(sizes) <= 150 and 35 <= float(np.median(sizes)) <= 65


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

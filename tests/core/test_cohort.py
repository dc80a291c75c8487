from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from core.clinical import N_CATEGORIES
from core.cohort import load_calibrated_image, manifest_data_source, read_manifest
from core.errors import ManifestError
from core.imaging import window_to_unit
from core.phantom import write_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("cohort"), n_patients=6, seed=3, progress=False)


def test_phantom_manifest_is_valid(cohort: Path) -> None:
    patients = read_manifest(cohort)
    assert len(patients) == 6 and {p.label for p in patients} == {0, 1}
    assert all(p.image_path.exists() and p.mask_path.exists() for p in patients)


def test_every_bad_row_is_reported_at_once(cohort: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(cohort.parent, root)
    manifest = root / "manifest.csv"
    lines = manifest.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    rows[0][1] = "images/missing.dcm"  # missing file
    rows[1][3] = "maybe"  # unknown label
    cv2.imwrite(str(root / rows[2][2]), np.zeros((512, 512), np.uint8))  # empty mask
    cv2.imwrite(str(root / rows[3][2]), np.full((100, 100), 255, np.uint8))  # size mismatch
    rows[4][0] = rows[5][0]  # duplicate key
    manifest.write_text("\n".join([lines[0], *[",".join(r) for r in rows]]) + "\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    problems = caught.value.problems
    assert len(problems) == 5
    text = " ".join(problems)
    for phrase in (
        "file not found",
        "must be 0 or 1",
        "mask is empty",
        "100×100 px but the image is 512×512",
        "appears twice",
    ):
        assert phrase in text


def test_missing_columns(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_key,image_path\nA,a.dcm\n")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(manifest)


def _rewrite(manifest: Path, edit) -> None:
    """Rewrite a manifest through ``edit(rows: list[dict]) -> (columns, rows)``."""
    rows = list(csv.DictReader(manifest.open()))
    columns, rows = edit(rows)
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_phantom_manifest_says_synthetic(cohort: Path) -> None:
    patients = read_manifest(cohort)
    assert {p.data_source for p in patients} == {"synthetic"} and manifest_data_source(patients) == "synthetic"


def test_data_source_must_be_stated_the_same_on_every_row(cohort: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    manifest = root / "manifest.csv"

    def mixed(rows: list[dict]) -> tuple[list[str], list[dict]]:
        rows[0]["data_source"] = "patients"
        rows[1]["data_source"] = "real"
        rows[2]["data_source"] = ""
        return list(rows[0]), rows

    _rewrite(manifest, mixed)
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    text = " ".join(caught.value.problems)
    assert "data_source must be patients or synthetic, got 'real'" in text
    assert "data_source must be patients or synthetic, got ''" in text
    assert "data_source says patients and synthetic on different rows" in text


def test_manifest_without_data_source_column_says_nothing(cohort: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    _rewrite(root / "manifest.csv", lambda rows: ([c for c in rows[0] if c != "data_source"], rows))
    assert manifest_data_source(read_manifest(root / "manifest.csv")) is None


def test_n_category_uses_the_one_list(cohort: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)

    def odd(rows: list[dict]) -> tuple[list[str], list[dict]]:
        rows[0]["n_category"], rows[1]["n_category"], rows[2]["n_category"] = " n1 ", "NX", ""
        return list(rows[0]), rows

    _rewrite(root / "manifest.csv", odd)
    patients = read_manifest(root / "manifest.csv")
    assert [p.n_category for p in patients[:3]] == ["N1", "unknown", "unknown"]
    assert {p.n_category for p in patients} <= {*N_CATEGORIES, "unknown"}


def _png_export_cohort(cohort: Path, root: Path) -> tuple[Path, float]:
    """One patient as a PNG export (liver window) and one as a DICOM without PixelSpacing."""
    root.mkdir()
    first, second = read_manifest(cohort)[:2]
    ds = pydicom.dcmread(first.image_path)
    spacing = float(ds.PixelSpacing[0])
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    cv2.imwrite(str(root / "a.png"), np.round(window_to_unit(hu, 60, 160) * 255).astype(np.uint8))
    shutil.copyfile(first.mask_path, root / "a_mask.png")
    ds = pydicom.dcmread(second.image_path)
    del ds.PixelSpacing
    ds.save_as(root / "b.dcm")
    shutil.copyfile(second.mask_path, root / "b_mask.png")
    return root / "manifest.csv", spacing


HEADER = "patient_key,image_path,mask_path,early_recurrence,data_source"


def test_uncalibrated_exports_are_manifest_problems(cohort: Path, tmp_path: Path) -> None:
    manifest, _ = _png_export_cohort(cohort, tmp_path / "c")
    manifest.write_text(f"{HEADER}\nA,a.png,a_mask.png,1,patients\nB,b.dcm,b_mask.png,0,patients\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    a, b = caught.value.problems
    assert a.startswith("row 2 (A): The model cannot run on this PNG export yet: enter its pixel spacing")
    assert b.startswith("row 3 (B): This DICOM slice has no usable pixel spacing (it has no PixelSpacing)")
    assert "pixel_spacing_mm" in a and "export_window_level" in a  # says which manifest columns fix it


def test_spacing_without_window_still_blocks_a_png(cohort: Path, tmp_path: Path) -> None:
    manifest, spacing = _png_export_cohort(cohort, tmp_path / "c")
    manifest.write_text(f"{HEADER},pixel_spacing_mm\nA,a.png,a_mask.png,1,patients,{spacing}\n")
    with pytest.raises(ManifestError, match="enter the window"):
        read_manifest(manifest)


def test_calibration_columns_are_applied(cohort: Path, tmp_path: Path) -> None:
    manifest, spacing = _png_export_cohort(cohort, tmp_path / "c")
    manifest.write_text(
        f"{HEADER},pixel_spacing_mm,export_window_level,export_window_width\n"
        f"A,a.png,a_mask.png,1,patients,{spacing},60,160\n"
        f"B,b.dcm,b_mask.png,0,patients,{spacing},,\n"
    )
    a, b = read_manifest(manifest)
    assert a.calibration.spacing_mm == spacing and a.calibration.export_window == (60.0, 160.0)
    ct = load_calibrated_image(a)
    assert ct.is_hu and ct.spacing_mm == (spacing, spacing) and ct.export_window == (60.0, 160.0)
    assert ct.pixels.min() >= -21 and ct.pixels.max() <= 141  # grey 0–255 back onto L60/W160
    assert load_calibrated_image(b).spacing_mm == (spacing, spacing)


def test_bad_calibration_values_are_reported(cohort: Path, tmp_path: Path) -> None:
    manifest, _ = _png_export_cohort(cohort, tmp_path / "c")
    manifest.write_text(
        f"{HEADER},pixel_spacing_mm,export_window_level,export_window_width\n"
        "A,a.png,a_mask.png,1,patients,abc,60,\n"
        "B,b.dcm,b_mask.png,0,patients,50,,\n"
    )
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    text = " ".join(caught.value.problems)
    assert "pixel_spacing_mm must be a number, got 'abc'" in text
    assert "give both export_window_level and export_window_width" in text
    assert "A pixel spacing of 50 mm/px is not plausible" in text

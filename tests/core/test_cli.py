from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.core.test_imaging import _us, ct_with

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_inspect_ct_as_json() -> None:
    result = _run("inspect", get_testdata_file("CT_small.dcm"), "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["modality"] == "CT" and facts["rows"] == 128 and facts["columns"] == 128
    assert facts["pixel_spacing_mm"] == [0.661468, 0.661468]
    assert facts["hu_min"] < facts["hu_max"]


def test_inspect_text_output_has_units() -> None:
    result = _run("inspect", get_testdata_file("CT_small.dcm"))
    assert result.returncode == 0 and " mm" in result.stdout and " HU" in result.stdout


def test_inspect_mr_fails_with_one_line_and_status_2() -> None:
    result = _run("inspect", get_testdata_file("MR_small.dcm"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: This file is an MR image; a CT is needed."
    assert "Traceback" not in result.stderr


def test_inspect_missing_file(tmp_path: Path) -> None:
    result = _run("inspect", str(tmp_path / "nope.dcm"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "names"),
    [
        ("RescaleIntercept", None, None, "RescaleIntercept"),
        ("RescaleSlope", "DS", b"abc ", "RescaleSlope"),
        ("NumberOfFrames", "IS", b"x1", "NumberOfFrames"),
        ("BitsAllocated", "US", _us(12), "BitsAllocated"),
        ("PhotometricInterpretation", "CS", b"RGB ", "PhotometricInterpretation"),
        ("Rows", "US", b"", "Rows"),
        ("PixelData", "OW", b"\0" * 1000, "pixel data"),
    ],
    ids=["no intercept", "slope abc", "frames x1", "12 bits", "RGB", "empty rows", "short pixel data"],
)
def test_inspect_malformed_header_fails_with_one_line_and_status_2(
    tmp_path: Path, keyword: str, vr: str | None, value: bytes | None, names: str
) -> None:
    path = tmp_path / "slice.dcm"
    path.write_bytes(ct_with(keyword, vr, value))
    result = _run("inspect", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: This ") and lines[0].endswith(".")
    assert names in lines[0] and "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("value", "why"),
    [(None, "it has no PixelSpacing"), (b"0\\0 ", "its PixelSpacing (0\\0) is not positive")],
    ids=["missing", "zero"],
)
def test_inspect_dicom_without_spacing_says_why_not_raster(tmp_path: Path, value: bytes | None, why: str) -> None:
    path = tmp_path / "slice.dcm"
    path.write_bytes(ct_with("PixelSpacing", "DS", value))
    result = _run("inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert f"pixel spacing   unusable: {why}" in result.stdout
    assert "raster" not in result.stdout and " HU" in result.stdout
    facts = json.loads(_run("inspect", str(path), "--json").stdout)
    assert facts["pixel_spacing_mm"] is None and facts["pixel_spacing_problem"] == why


# ---------------------------------------------------------------- inspect: folders, ZIPs, outline files


def _inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from core.cli import main

    status = main(["inspect", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _study_zip(tmp_path: Path) -> Path:
    from tests.core.ct_series import as_files, series_datasets, zip_of

    plain = as_files(series_datasets(3, description="Plain 5mm"), "S1/IM", seed=1)
    portal = as_files(series_datasets(2, description="Portal venous", contrast=True), "S2/IM", seed=2)
    with open(get_testdata_file("liver_1frame.dcm"), "rb") as handle:
        seg = handle.read()
    path = tmp_path / "study.zip"
    path.write_bytes(zip_of([*portal, *plain, ("SEG/seg.dcm", seg), ("README.txt", b"export")]))
    return path


def test_inspect_zip_as_json_reports_every_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _inspect(capsys, str(_study_zip(tmp_path)), "--json")
    report = json.loads(out)
    assert status == 0 and report["source"] == "zip" and report["files"] == 7
    plain, portal = sorted(report["series"], key=lambda s: s["description"])
    assert plain["description"] == "Plain 5mm" and plain["slices"] == 3 and plain["modality"] == "CT"
    assert (plain["rows"], plain["columns"]) == (128, 128) and plain["slice_thickness_mm"] == 5.0
    assert plain["pixel_spacing_mm"] == [0.661468, 0.661468] and plain["kernel"] == "STANDARD"
    assert plain["contrast_given"] is False and portal["contrast_given"] is True
    assert plain["decode"] == {"decoded": 3, "failed": 0, "status": "ok", "hu_min": -896.0, "hu_max": 1169.0}
    assert {o["name"]: o["importable_as_outline"] for o in report["other_files"]} == {
        "SEG/seg.dcm": True,
        "README.txt": False,
    }


def test_inspect_folder_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.core.ct_series import as_files, series_datasets

    folder = tmp_path / "export"
    for name, data in as_files(series_datasets(3, description="Plain 5mm"), "IM"):
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        (folder / "sub" / name).write_bytes(data)
    status, out, _ = _inspect(capsys, str(folder))
    assert status == 0 and out.startswith("folder: 3 files, 1 series")
    assert "slices          3 (ordered by position)" in out and "HU min / max    -896 / 1169 HU" in out
    assert "decode          ok (3 slices decoded)" in out and "contrast        no" in out
    status, out, _ = _inspect(capsys, str(folder), "--headers-only")
    assert status == 0 and "decode          not decoded (--headers-only)" in out and "HU min" not in out


def test_inspect_single_seg_exits_2_saying_it_is_an_outline() -> None:
    result = _run("inspect", get_testdata_file("liver_1frame.dcm"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        "error: This file is a DICOM segmentation (SEG) with 1 segment ('Liver'), not a CT image; it can be imported "
        "as an outline on its CT series."
    )


@pytest.mark.parametrize(
    ("name", "sentence"),
    [
        ("rtstruct.dcm", "This file is an RT structure set (RTSTRUCT), not an image; a CT is needed."),
        ("test-SR.dcm", "This file is a DICOM structured report (SR), not an image; a CT is needed."),
        ("rtdose.dcm", "This file is an RTDOSE image; a CT is needed."),
    ],
)
def test_inspect_single_non_ct_file_exits_2_with_one_sentence(
    name: str, sentence: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = _inspect(capsys, get_testdata_file(name))
    assert status == 2 and out == "" and err.strip() == f"error: {sentence}"


def test_inspect_nifti_exits_2_saying_it_is_an_outline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import nibabel as nib
    import numpy as np

    path = tmp_path / "tumour.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.uint8), np.eye(4)), path)
    status, _, err = _inspect(capsys, str(path))
    assert status == 2 and err.strip() == (
        "error: This file is a NIfTI volume, not a CT image; it can be imported as an outline on its CT series."
    )


def test_inspect_refuses_an_unsafe_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.core.ct_series import zip_of

    path = tmp_path / "evil.zip"
    path.write_bytes(zip_of([("../../evil.dcm", b"x")]))
    status, _, err = _inspect(capsys, str(path))
    assert status == 2 and err.strip() == (
        "error: The ZIP contains an entry with a '..' path ('../../evil.dcm'), so it was not opened; export the "
        "images again from the PACS."
    )


def test_inspect_missing_path_says_file_or_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _inspect(capsys, str(tmp_path / "nope"))
    assert status == 2 and err.strip() == f"error: No file or folder at {tmp_path / 'nope'}; check the path."

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

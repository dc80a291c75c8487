from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydicom.data import get_testdata_file

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

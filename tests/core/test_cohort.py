from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.cohort import read_manifest
from core.errors import ManifestError
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

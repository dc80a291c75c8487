"""``python -m core analyze``: the page's analysis for scripting; bad input exits 2 with one sentence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.phantom import sample_case
from core.roi import mask_from_outlines

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("cli_case")
    sample = sample_case()
    (folder / "slice.dcm").write_bytes(sample.dicom_bytes)
    mask = mask_from_outlines([sample.outline_xy], sample.shape)
    cv2.imwrite(str(folder / "outline.png"), mask.astype(np.uint8) * 255)
    cv2.imwrite(str(folder / "small.png"), np.full((64, 64), 255, np.uint8))
    return folder / "slice.dcm", folder / "outline.png", folder / "small.png"


def _analyze(*args: str, model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", "analyze", *args, "--model", str(model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_json_carries_both_risks_and_the_model(case_files: tuple[Path, Path, Path], test_checkpoint: Path) -> None:
    from core.analysis import analyze_case
    from core.imaging import load_slice
    from models.checkpoint import load_checkpoint

    image, outline, _ = case_files
    result = _analyze(str(image), "--outline", str(outline), "--n-category", "N1", "--json", model=test_checkpoint)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    model = load_checkpoint(test_checkpoint)
    page = analyze_case(load_slice(image.read_bytes()), cv2.imread(str(outline), cv2.IMREAD_GRAYSCALE) > 0, model)
    assert payload["dl"]["mean_patch_probability"] == pytest.approx(page.dl_risk.probability, abs=1e-6)
    assert payload["dl"]["n_patches"] == page.dl_risk.n_patches and payload["dl"]["rule"] == page.dl_risk.rule
    assert payload["clinical"]["probability"] == pytest.approx(11 / 13)
    low, high = payload["clinical"]["ci_95"]
    assert low < 11 / 13 < high
    assert payload["model"]["sha256"] == model.sha256 and payload["model"]["warning"]
    assert payload["image"]["spacing_source"] == "header" and payload["image"]["export_window"] is None


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--outline", "small"], "px but the slice is"),
        (["--outline", "missing"], "No outline file"),
        (["--export-window", "sixty"], "--export-window takes LEVEL,WIDTH"),
        (["--spacing-mm", "0.7"], None),  # the header's spacing wins: exit 0, with a note
    ],
)
def test_bad_input_exits_2_with_one_sentence(
    case_files: tuple[Path, Path, Path], test_checkpoint: Path, extra: list[str], phrase: str | None
) -> None:
    image, outline, small = case_files
    named = {"small": str(small), "missing": str(small.parent / "nope.png")}
    args = [named.get(a, a) for a in extra]
    if "--outline" not in args:
        args += ["--outline", str(outline)]
    result = _analyze(str(image), *args, model=test_checkpoint)
    if phrase is None:
        assert result.returncode == 0, result.stderr
        assert "--spacing-mm ignored; the DICOM header gives them" in result.stderr
        return
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert phrase in line


def test_png_export_without_spacing_exits_2_saying_what_to_enter(
    case_files: tuple[Path, Path, Path], test_checkpoint: Path, tmp_path: Path
) -> None:
    _, outline, _ = case_files
    export = tmp_path / "export.png"
    cv2.imwrite(str(export), np.full((512, 512), 100, np.uint8))
    result = _analyze(str(export), "--outline", str(outline), model=test_checkpoint)
    assert result.returncode == 2
    assert "enter its pixel spacing (mm/px) and the window" in result.stderr
    ok = _analyze(
        str(export),
        "--outline",
        str(outline),
        "--spacing-mm",
        "0.7",
        "--export-window",
        "60,160",
        model=test_checkpoint,
    )
    assert ok.returncode == 0, ok.stderr

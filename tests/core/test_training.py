"""The training pipeline on a tiny phantom cohort: folds, reports, checkpoint, resume, determinism, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.phantom import write_cohort
from core.preprocess import PreprocessConfig
from core.report import card_metric_rows
from core.training import TrainConfig, assign_folds, cross_validate
from models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# Tiny geometry so a CPU epoch takes about a second: 8 mm patches at 0.25 mm/px, 32-px input.
TINY = PreprocessConfig(target_spacing_mm=0.25, patch_px=32, stride_px=32, input_px=32)
TINY_TRAIN = TrainConfig(
    folds=3, epochs=1, batch_size=8, max_patches_per_patient=8, seed=7, training_data="synthetic phantoms", device="cpu"
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("cohort"), n_patients=9, seed=11, progress=False)


@pytest.fixture(scope="module")
def run(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    return out, cross_validate(manifest, out, TINY_TRAIN, TINY)


def _folds(path: Path) -> dict[str, str]:
    with path.open() as handle:
        return {row["patient_key"]: row["fold"] for row in csv.DictReader(handle)}


def test_folds_are_by_patient_and_stratified() -> None:
    keys = [f"P{i}" for i in range(41)]
    labels = [1] * 20 + [0] * 21
    folds = assign_folds(keys, labels, 5, seed=0)
    assert sorted(folds) == sorted(keys)  # every patient exactly once
    for k in range(5):
        members = [lab for key, lab in zip(keys, labels, strict=True) if folds[key] == k]
        assert len(members) in (8, 9) and sum(members) == 4  # 20 positives → 4 per fold


def test_outputs_exist_with_both_levels(run: tuple[Path, dict]) -> None:
    out, _summary = run
    for name in ("folds.csv", "metrics.json", "report.md", "roc.html", "model.pt", "fold1/model.pt"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["folds"]) == 3
    for fold in metrics["folds"]:
        for level in ("patient_level", "patch_level"):
            for split in ("train", "validation"):
                assert set(fold[level][split]) >= {"sensitivity", "specificity", "ppv", "npv", "accuracy", "auc"}
    report = (out / "report.md").read_text()
    assert report.index("## Patient level") < report.index("## Patch level")
    assert "Table 4" in report and "mean of its patch probabilities" in report


def test_fold_file_has_every_patient_once(run: tuple[Path, dict], manifest: Path) -> None:
    out, _ = run
    folds = _folds(out / "folds.csv")
    assert len(folds) == 9 and set(folds.values()) == {"1", "2", "3"}


def test_deployable_checkpoint_loads_with_its_card(run: tuple[Path, dict]) -> None:
    out, _ = run
    model = load_checkpoint(out / "model.pt")
    assert model.preprocess == TINY
    assert model.card["provenance"] == "trained on synthetic phantoms — not for clinical use"
    assert model.card["cohort"]["patients"] == 9 and "patient_level" in model.card["cv_metrics"]
    rows = card_metric_rows(model.card["cv_metrics"])
    assert [r["metric"] for r in rows][-1] == "AUC" and " ± " in rows[-1]["patient level"]


def test_resume_reuses_finished_folds(run: tuple[Path, dict], manifest: Path) -> None:
    out, summary = run
    stamp = (out / "fold1" / "model.pt").stat().st_mtime_ns
    again = cross_validate(manifest, out, TINY_TRAIN, TINY)
    assert (out / "fold1" / "model.pt").stat().st_mtime_ns == stamp
    assert json.dumps(again["folds"][0]) == json.dumps(summary["folds"][0])  # NaN-safe comparison


def test_same_seed_same_result(run: tuple[Path, dict], manifest: Path, tmp_path: Path) -> None:
    _, summary = run
    again = cross_validate(manifest, tmp_path, TINY_TRAIN, TINY)
    first = [p["dl_probability"] for p in summary["table4"]["patients"]]
    second = [p["dl_probability"] for p in again["table4"]["patients"]]
    np.testing.assert_allclose(second, first, atol=1e-6)


def test_other_settings_refuse_to_resume(run: tuple[Path, dict], manifest: Path) -> None:
    from core.errors import ManifestError

    out, _ = run
    with pytest.raises(ManifestError, match="other settings"):
        cross_validate(manifest, out, replace(TINY_TRAIN, epochs=2), TINY)


def test_permuted_labels_keep_the_class_balance(manifest: Path, tmp_path: Path) -> None:
    summary = cross_validate(manifest, tmp_path, replace(TINY_TRAIN, permute_labels=True, final_model=False), TINY)
    assert summary["cohort"]["permuted_labels"] and summary["cohort"]["early_recurrence"] == 4
    truth = {row["patient_key"]: int(row["early_recurrence"]) for row in csv.DictReader(manifest.open())}
    used = {p["patient_key"]: p["label"] for p in summary["table4"]["patients"]}
    assert used != truth and sum(used.values()) == sum(truth.values())


def test_torchrun_two_cpu_processes_match_single_process_folds(
    run: tuple[Path, dict], manifest: Path, tmp_path: Path
) -> None:
    single_out, _ = run
    out = tmp_path / "ddp"
    args = [
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--folds",
        "3",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-patches-per-patient",
        "8",
        "--seed",
        "7",
        "--device",
        "cpu",
        "--synthetic",
    ]
    preprocess = tmp_path / "preprocess.json"
    preprocess.write_text(json.dumps(TINY.to_dict()))
    geometry = ["--preprocess", str(preprocess)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # picks a free loopback port
            "--nproc-per-node",
            "2",
            "-m",
            "core",
            "train",
            *args,
            *geometry,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _folds(out / "folds.csv") == _folds(single_out / "folds.csv")
    model = load_checkpoint(out / "model.pt")
    assert model.card["training"]["epochs"] == 1
    assert json.loads((out / "metrics.json").read_text())["throughput"]["processes"] == 2

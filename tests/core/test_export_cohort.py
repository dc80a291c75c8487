"""export-cohort: saved cases with a known outcome → a manifest ``core train`` accepts, pixels and masks exact."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from core import db
from core.analysis import analyze_case
from core.cli import main
from core.cohort import load_calibrated_image, load_mask, read_manifest
from core.export_cohort import ExportError, export_cohort
from core.imaging import load_slice
from core.outcomes import FollowUp
from core.phantom import dicom_bytes, iter_cohort
from tests.core.test_db import _new_case


def _save_phantoms(url: str, n: int) -> list:
    """n phantom patients saved as analysed cases; all but the last get a known outcome."""
    engine = db.make_engine(url)
    db.migrate(engine)
    patients = list(iter_cohort(n, seed=3))
    _, analysis = _new_case()
    with Session(engine) as session:
        for i, patient in enumerate(patients):
            ct = load_slice(dicom_bytes(patient, 3))
            template, _ = _new_case(patient.key)
            case = db.add_case(
                session,
                replace(
                    template,
                    pixels=ct.pixels,
                    spacing_mm=ct.spacing_mm,
                    mask=patient.mask,
                    n_category=patient.n_category,
                    t_category=patient.t_category,
                ),
                analysis,
            )
            session.flush()
            if i < n - 1:
                outcome = FollowUp(200, None) if patient.label else FollowUp(None, 500)
                db.record_outcome(session, case.id, outcome)
        session.commit()
    engine.dispose()
    return patients


def test_export_writes_a_manifest_train_accepts_with_exact_pixels_and_masks(sqlite_url: str, tmp_path: Path) -> None:
    patients = _save_phantoms(sqlite_url, 5)
    out = tmp_path / "cohort"
    assert main(["export-cohort", "--out", str(out), "--data-source", "synthetic", "--database", sqlite_url]) == 0
    rows = {p.key: p for p in read_manifest(out / "manifest.csv")}  # the validation `core train` runs
    assert sorted(rows) == sorted(p.key for p in patients[:-1])  # the unknown outcome is left out
    for patient in patients[:-1]:
        row = rows[patient.key]
        assert row.label == patient.label and row.n_category == patient.n_category and row.data_source == "synthetic"
        exported = load_calibrated_image(row)
        np.testing.assert_array_equal(exported.pixels, load_slice(dicom_bytes(patient, 3)).pixels)
        assert exported.spacing_mm == pytest.approx((patient.spacing_mm, patient.spacing_mm), abs=1e-6)
        np.testing.assert_array_equal(load_mask(row.mask_path), patient.mask)


def test_nothing_to_export_and_an_unknown_source_are_sentences(sqlite_url: str, tmp_path: Path) -> None:
    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    with Session(engine) as session:
        with pytest.raises(ExportError, match="No saved case has a known outcome yet"):
            export_cohort(session, tmp_path, "patients")
        with pytest.raises(ExportError, match="say what these images are"):
            export_cohort(session, tmp_path, "hospital")
    engine.dispose()


def test_an_exported_cohort_trains_unchanged(sqlite_url: str, tmp_path: Path) -> None:
    """The round trip a hospital makes to retrain: saved cases → export-cohort → core train (tiny recipe)."""
    from models.checkpoint import load_checkpoint

    _save_phantoms(sqlite_url, 9)
    out = tmp_path / "cohort"
    assert main(["export-cohort", "--out", str(out), "--data-source", "synthetic", "--database", sqlite_url]) == 0
    run = tmp_path / "run"
    args = ["train", "--manifest", str(out / "manifest.csv"), "--out", str(run), "--folds", "2", "--epochs", "1"]
    assert main([*args, "--batch-size", "8", "--max-patches-per-patient", "4", "--input-px", "32"]) == 0
    refused = ["predict", "--manifest", str(out / "manifest.csv"), "--out", str(tmp_path / "refused")]
    assert main([*refused, "--model", str(run / "model.pt")]) == 2  # trained, not yet approved
    assert main(["model", "allow", str(run / "model.pt")]) == 0  # a new model scores patients once approved
    model = load_checkpoint(run / "model.pt")
    assert model.card["training_data"] == "synthetic phantoms" and model.card["cohort"]["patients"] == 8
    # … and predict scores the cohort with it, resumably, on the dashboard's code path
    predictions = tmp_path / "predictions"
    predict = [
        "predict",
        "--manifest",
        str(out / "manifest.csv"),
        "--out",
        str(predictions),
        "--model",
        str(run / "model.pt"),
    ]
    assert main(predict) == 0
    rows = list(csv.DictReader((predictions / "predictions.csv").open()))
    assert len(rows) == 8 and {r["model_sha256"] for r in rows} == {model.sha256}
    first = next(p for p in read_manifest(out / "manifest.csv") if p.key == rows[0]["patient_key"])
    expected = analyze_case(load_calibrated_image(first), load_mask(first.mask_path), model).dl_risk.probability
    assert float(rows[0]["dl_mean_patch_probability"]) == pytest.approx(expected, abs=1e-6)
    assert main(predict) == 0  # resumed: nothing new to score, no duplicate rows
    assert len(list(csv.DictReader((predictions / "predictions.csv").open()))) == 8
    assert main([*predict[:-1], str(_other_checkpoint(tmp_path))]) == 2  # another model: refused, not mixed
    # data-parallel, as core train: two processes under torchrun write the same predictions
    parallel = tmp_path / "parallel"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "core"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*torchrun, *predict[:4], str(parallel), *predict[5:]], env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert not list(parallel.glob("predictions.part*.csv"))  # merged into one file
    by_key = {r["patient_key"]: r for r in rows}
    parallel_rows = list(csv.DictReader((parallel / "predictions.csv").open()))
    assert sorted(r["patient_key"] for r in parallel_rows) == sorted(by_key)
    for row in parallel_rows:  # the same scores (to fp32 rounding: the processes run one thread each)
        single = by_key[row["patient_key"]]
        assert float(row["dl_mean_patch_probability"]) == pytest.approx(
            float(single["dl_mean_patch_probability"]), abs=1e-5
        )
        assert row["clinical_probability"] == single["clinical_probability"] and row["model_sha256"] == model.sha256


def _other_checkpoint(tmp_path: Path) -> Path:
    """A second, untrained model (another sha256)."""
    from core.preprocess import PreprocessConfig
    from models.checkpoint import allow_checkpoint, make_card, save_checkpoint
    from models.resnet import build_resnet50

    path = tmp_path / "other.pt"
    save_checkpoint(
        path, build_resnet50(), replace(PreprocessConfig(), input_px=32), make_card("other", "untrained", "untrained")
    )
    allow_checkpoint(path, "other")  # approved: what refuses it below is the mix of models
    return path

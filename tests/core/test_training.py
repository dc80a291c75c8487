"""The training pipeline on a tiny phantom cohort: folds, reports, checkpoint, resume, determinism, DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core import provenance, training
from core.cohort import load_calibrated_image, load_mask, read_manifest
from core.errors import (
    ControlRunError,
    DataSourceError,
    ManifestError,
    ResumeMismatchError,
    TrainingDivergedError,
)
from core.imaging import load_slice, window_to_unit
from core.inference import PATIENT_RULE, to_network_input
from core.lattice import plan_lattice
from core.modelcard import patient_level_auc, same_patients_comparison
from core.phantom import write_cohort
from core.preprocess import PreprocessConfig
from core.report import card_metric_rows, fitting_clause, render_markdown
from core.training import (
    PatientPatches,
    TrainConfig,
    assign_folds,
    backward_and_step,
    build_patient_patches,
    check_resume,
    coverage,
    cross_validate,
    epoch_draw,
    grad_scaler_enabled,
    make_grad_scaler,
    patch_probabilities,
    patches_per_epoch,
    record_run,
    resolve_data_source,
    run_fingerprint,
    train_network,
)
from models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# Tiny geometry so a CPU epoch takes about a second: 8 mm patches at 0.25 mm/px, 32-px input.
TINY = PreprocessConfig(target_spacing_mm=0.25, patch_px=32, stride_px=32, input_px=32)
TINY_TRAIN = TrainConfig(folds=3, epochs=1, batch_size=8, max_patches_per_patient=8, seed=7, device="cpu")
OOF_KEYS = {"all_patients", "same_patients", "ci_method"}


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


def _manifest_without_data_source(manifest: Path, target: Path) -> Path:
    """A copy of the cohort whose manifest has no data_source column."""
    shutil.copytree(manifest.parent, target)
    rows = list(csv.DictReader(manifest.open()))
    with (target / "manifest.csv").open("w", newline="") as handle:
        columns = [c for c in rows[0] if c != "data_source"]
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return target / "manifest.csv"


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
    for name in ("folds.csv", "metrics.json", "report.md", "roc.html", "model.pt", "fold1/model.pt", "run.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["folds"]) == 3
    for fold in metrics["folds"]:
        for level in ("patient_level", "patch_level"):
            for split in ("train", "validation"):
                assert set(fold[level][split]) >= {"sensitivity", "specificity", "ppv", "npv", "accuracy", "auc"}
    report = (out / "report.md").read_text()
    assert report.index("## Patient level") < report.index("## Patch level")
    assert "Table 4" in report and PATIENT_RULE in report


def test_report_leads_with_pooled_auc_then_same_patients_then_folds(run: tuple[Path, dict]) -> None:
    out, summary = run
    report = (out / "report.md").read_text()
    pooled = report.index("## Patient level, out of fold")
    same = report.index("deep learning vs clinical model on the same patients")
    folds = report.index("training set (Table 2 layout)")
    assert report.startswith("# Cross-validation report") and pooled < same < folds
    # the one definition of "not trained on patients", before any number
    assert report.index("Trained on synthetic phantoms, not on patients") < pooled
    assert "95% CI" in report[pooled:same] and "n = 9 patients" in report[pooled:same]
    assert "the interval is wide" in report[pooled:same]
    # every table says which patients it covers; the training table says how the networks were fitted
    assert report.count("Patients: ") >= 6
    assert "fitted on a fresh draw of at most 8 of them per patient each epoch" in report
    assert "fitting drew at most 8 per patient afresh each epoch" in report
    assert "network input 32 px (the paper: 224)" in report
    oof = summary["out_of_fold_patient_level"]
    assert set(oof) == OOF_KEYS and oof["ci_method"] == "DeLong"
    assert set(oof["all_patients"]) == {"n", "events", "dl_auc", "dl_auc_ci"}
    assert set(oof["same_patients"]) == {"n", "events", "dl_auc", "dl_auc_ci", "clinical_auc", "clinical_auc_ci"}
    assert oof["all_patients"]["n"] == 9 and oof["all_patients"]["events"] == 4
    low, high = oof["all_patients"]["dl_auc_ci"]
    assert 0.0 <= low <= oof["all_patients"]["dl_auc"] <= high <= 1.0


def test_same_patients_means_the_same_patients(run: tuple[Path, dict]) -> None:
    from core.metrics import roc_auc

    _, summary = run
    patients = summary["table4"]["patients"]
    known = [p for p in patients if p["clinical_probability"] is not None]
    same = summary["out_of_fold_patient_level"]["same_patients"]
    assert same["n"] == len(known) and same["events"] == sum(p["label"] for p in known)
    labels = np.array([p["label"] for p in known])
    assert same["dl_auc"] == pytest.approx(roc_auc(labels, np.array([p["dl_probability"] for p in known])))
    assert same["clinical_auc"] == pytest.approx(roc_auc(labels, np.array([p["clinical_probability"] for p in known])))


def test_validation_scores_every_patch_of_the_grid(run: tuple[Path, dict], manifest: Path) -> None:
    """The cap of 8 patches per patient applies to training only: validation uses the whole grid."""
    _, summary = run
    by_key = {p.key: p for p in read_manifest(manifest, TINY)}
    counts = {}
    for row in summary["table4"]["patients"]:
        patient = by_key[row["patient_key"]]
        ct = load_calibrated_image(patient)
        counts[row["patient_key"]] = (
            row["n_patches"],
            len(plan_lattice(load_mask(patient.mask_path), ct.spacing_mm, TINY)),
        )
    assert all(n == grid for n, grid in counts.values()), counts
    assert max(n for n, _ in counts.values()) > TINY_TRAIN.max_patches_per_patient
    assert summary["cohort"]["patches"] == sum(n for n, _ in counts.values())


def test_validation_score_is_what_the_dashboard_shows(run: tuple[Path, dict], manifest: Path) -> None:
    """A validation patient's out-of-fold score equals the Analyze page's number with that fold's model."""
    from core.analysis import analyze_case

    out, summary = run
    by_key = {p.key: p for p in read_manifest(manifest, TINY)}
    for row in summary["table4"]["patients"][:4]:
        patient = by_key[row["patient_key"]]
        fold_model = load_checkpoint(out / f"fold{row['fold']}" / "model.pt", require_allowed=False)
        page = analyze_case(load_calibrated_image(patient), load_mask(patient.mask_path), fold_model)
        assert page.dl_risk.probability == pytest.approx(row["dl_probability"], abs=1e-9)
        assert page.dl_risk.n_patches == row["n_patches"]


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--folds", "1"], "--folds must be at least 2"),
        (["--batch-size", "0"], "--batch-size must be at least 2"),
        (["--max-patches-per-patient", "0"], "--max-patches-per-patient must be at least 1"),
        (["--input-px", "0"], "--input-px must be at least 8"),
        (["--folds", "20"], "20 folds need at least 20 patients with and 20 without"),
        (["--preprocess", "missing.json"], "No readable preprocessing file"),
        (["--preprocess", "future.json"], "settings this version does not know (bias_field_correction)"),
    ],
)
def test_unusable_train_arguments_exit_2_before_any_work(
    manifest: Path, tmp_path: Path, args: list[str], phrase: str
) -> None:
    (tmp_path / "future.json").write_text(json.dumps({**TINY.to_dict(), "bias_field_correction": True}))
    args = [str(tmp_path / a) if a.endswith(".json") else a for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "core", "train", "--manifest", str(manifest), "--out", str(tmp_path / "out"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert phrase in line
    assert not (tmp_path / "out" / "fold1").exists()


def test_a_manifest_that_is_not_utf8_is_one_sentence(tmp_path: Path) -> None:
    from core.errors import UserFacingError

    path = tmp_path / "manifest.csv"
    path.write_bytes("patient_key,image_path,mask_path,early_recurrence\nM\xfcller,a,b,1\n".encode("latin-1"))
    with pytest.raises(UserFacingError, match="not a readable UTF-8 CSV"):
        read_manifest(path, TINY)


def _patients(sizes: list[int], side: int = 4, offset: int = 0) -> list[PatientPatches]:
    """Patients whose patch i is filled with the value ``n · offset + i`` (patient n), so a drawn patch tells where it came from."""
    return [
        PatientPatches(
            f"P{n}",
            n % 2,
            "N0",
            None,
            (n * offset + np.arange(size, dtype=np.uint8))[:, None, None].repeat(side, 1).repeat(side, 2),
        )
        for n, size in enumerate(sizes)
    ]


def test_each_epoch_draws_at_most_the_cap_per_patient_with_its_label() -> None:
    data = _patients([20, 3, 22])
    patches, labels = epoch_draw(data, 5, seed=1, epoch=0)
    assert patches.shape == (13, 4, 4) and patches.dtype == np.uint8
    assert labels.tolist() == [0] * 5 + [1] * 3 + [0] * 5  # patient order, each patch with its patient's label
    assert patches[5:8, 0, 0].tolist() == [0, 1, 2]  # a patient under the cap gives all its patches
    assert len(set(patches[:5, 0, 0].tolist())) == 5  # without replacement
    assert patches_per_epoch(data, 5) == 13 and patches_per_epoch(data, None) == 45


def test_epochs_draw_afresh_and_over_a_run_cover_the_whole_grid() -> None:
    data = _patients([40])
    draws = [set(epoch_draw(data, 8, seed=3, epoch=e)[0][:, 0, 0].tolist()) for e in range(30)]
    assert draws[0] != draws[1]  # a fixed subset would show the network the same 8 patches every epoch
    assert set().union(*draws) == set(range(40))
    again = epoch_draw(data, 8, seed=3, epoch=1)[0]
    assert np.array_equal(again, epoch_draw(data, 8, seed=3, epoch=1)[0])  # reproducible: resumes and DDP ranks agree
    assert not np.array_equal(again, epoch_draw(data, 8, seed=4, epoch=1)[0])


def _spy_on_training(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Record, in order, each epoch's draw (cap, seed, epoch, the patch values drawn) and each batch's values."""
    events: list[tuple[str, object]] = []

    def draw(data: list[PatientPatches], cap: int | None, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        patches, labels = epoch_draw(data, cap, seed, epoch)
        events.append(("draw", (cap, seed, epoch, set(patches[:, 0, 0].tolist()))))
        return patches, labels

    def network_input(batch: np.ndarray, *args: object, **kwargs: object) -> torch.Tensor:
        events.append(("batch", set(batch[:, 0, 0].tolist())))
        return to_network_input(batch, *args, **kwargs)

    monkeypatch.setattr(training, "epoch_draw", draw)
    monkeypatch.setattr(training, "to_network_input", network_input)
    return events


def test_training_fits_each_epoch_on_that_epochs_fresh_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _spy_on_training(monkeypatch)
    data = _patients([12, 12], side=TINY.patch_px, offset=50)
    train_network(data, TINY, replace(TINY_TRAIN, epochs=2, batch_size=4), torch.device("cpu"), seed=5)
    draws = [(i, value) for i, (kind, value) in enumerate(events) if kind == "draw"]
    assert [value[:3] for _, value in draws] == [(8, 5, 0), (8, 5, 1)]
    assert draws[0][1][3] != draws[1][1][3]
    for (start, (_, _, _, drawn)), end in zip(draws, [draws[1][0], len(events)], strict=True):
        fitted = set().union(*(value for _, value in events[start + 1 : end]))
        assert fitted == drawn  # every batch from this epoch's draw, and the whole draw used (16 = 4 batches of 4)


class _Killed(Exception):
    """Stands for the process being stopped in the middle of an epoch."""


def test_a_run_stopped_mid_epoch_resumes_to_what_the_uninterrupted_run_gives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    events = _spy_on_training(monkeypatch)
    data = _patients([12, 12], side=TINY.patch_px, offset=50)
    tc = replace(TINY_TRAIN, epochs=2, batch_size=4)
    uninterrupted, _ = train_network(data, TINY, tc, torch.device("cpu"), seed=5)
    draws = [value for kind, value in events if kind == "draw"]
    spied_input = training.to_network_input

    def stopped_in_epoch_2(batch: np.ndarray, *args: object, **kwargs: object) -> torch.Tensor:
        if sum(kind == "draw" for kind, _ in events) == 2:
            raise _Killed
        return spied_input(batch, *args, **kwargs)

    events.clear()
    state = tmp_path / "state.pt"
    with monkeypatch.context() as patch:
        patch.setattr(training, "to_network_input", stopped_in_epoch_2)
        with pytest.raises(_Killed):
            train_network(data, TINY, tc, torch.device("cpu"), seed=5, state_path=state)
    assert "optimizer" in torch.load(state, weights_only=True)  # epoch 1 of 2: Adam's moments kept for the resume
    events.clear()
    resumed, _ = train_network(data, TINY, tc, torch.device("cpu"), seed=5, state_path=state)
    assert [value for kind, value in events if kind == "draw"] == draws[1:]  # only the missing epoch, alike
    for name, weight in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], weight, msg=name)  # wrong without Adam's moments
    assert "optimizer" not in torch.load(state, weights_only=True)  # finished: weights only
    # stopped after the last epoch, before its result was written: the weights come back, nothing is trained
    events.clear()
    finished, throughput = train_network(data, TINY, tc, torch.device("cpu"), seed=5, state_path=state)
    assert not events and throughput is None
    for name, weight in uninterrupted.state_dict().items():
        torch.testing.assert_close(finished.state_dict()[name], weight, msg=name)


def test_a_finished_run_keeps_no_fold_resume_state_and_a_slim_final_one(
    run: tuple[Path, dict], manifest: Path, tmp_path: Path
) -> None:
    out, _ = run
    assert not list(out.glob("fold*/state.*")) and all((out / f"fold{k}" / "model.pt").exists() for k in (1, 2, 3))
    final = torch.load(out / "final" / "state.pt", weights_only=True)
    assert set(final) == {"model", "epoch"} and final["epoch"] == TINY_TRAIN.epochs
    # a run stopped between writing a fold's result and deleting its state: the next run deletes it
    copy = shutil.copytree(out, tmp_path / "run")
    (copy / "fold2" / "state.pt").write_bytes(b"left behind")
    (copy / "fold2" / "state.pt.tmp").write_bytes(b"half written")
    again = cross_validate(manifest, copy, TINY_TRAIN, TINY)
    assert not list(copy.glob("fold*/state.*"))
    assert again["throughput"]["final_train_patches_per_s"] is None  # resumed after its last epoch: not timed


def test_a_fold_resumed_after_its_last_epoch_reports_its_throughput_as_not_timed(run: tuple[Path, dict]) -> None:
    summary = json.loads(json.dumps(run[1]))
    summary["throughput"]["train_patches_per_s_per_fold"][1] = None
    lines = [line for line in render_markdown(summary).splitlines() if line.startswith("Training throughput")]
    assert lines and ", — (resumed after training, not timed), " in lines[0]


def test_without_a_cap_every_epoch_trains_on_every_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _spy_on_training(monkeypatch)
    data = _patients([6, 6], side=TINY.patch_px, offset=50)
    train_network(
        data,
        TINY,
        replace(TINY_TRAIN, epochs=2, batch_size=4, max_patches_per_patient=None),
        torch.device("cpu"),
        seed=5,
    )
    batches = [value for kind, value in events if kind == "batch"]
    everything = set(range(6)) | set(range(50, 56))
    assert len(batches) == 6 and set().union(*batches[:3]) == set().union(*batches[3:]) == everything


def test_a_patients_draw_follows_its_key_not_its_place_in_the_list() -> None:
    a, b = _patients([30, 30], offset=100)
    alone = epoch_draw([b], 6, seed=2, epoch=3)[0]
    assert np.array_equal(alone, epoch_draw([a, b], 6, seed=2, epoch=3)[0][6:])
    moved = replace(b, key="another key")
    assert not np.array_equal(alone, epoch_draw([moved], 6, seed=2, epoch=3)[0])


def test_uncapped_runs_are_described_as_every_patch_every_epoch() -> None:
    uncapped = replace(TINY_TRAIN, max_patches_per_patient=None)
    assert (
        coverage(uncapped)["train"] == "each fold's training patients, on all their patches; mean ± SD over the 3 folds"
    )
    assert fitting_clause(None, 71081) == "every patch, every epoch"
    assert fitting_clause(32, 1226).startswith("fitting drew at most 32 per patient afresh each epoch, 1,226 over all")


def test_without_a_cap_every_patch_trains_every_epoch() -> None:
    data = _patients([7, 9])
    patches, _ = epoch_draw(data, None, seed=0, epoch=5)
    assert patches[:, 0, 0].tolist() == list(range(7)) + list(range(9))


def test_deployable_checkpoint_loads_with_its_card(run: tuple[Path, dict]) -> None:
    out, _ = run
    model = load_checkpoint(out / "model.pt", require_allowed=False)
    assert model.preprocess == TINY
    assert model.card["training_data"] == provenance.SYNTHETIC_PHANTOMS  # from the manifest's data_source
    assert model.card["provenance"] == "trained on synthetic phantoms — not for clinical use"
    assert model.card["cohort"]["patients"] == 9 and "patient_level" in model.card["cv_metrics"]
    cv = model.card["cv_metrics"]
    assert next(iter(cv)) == "out_of_fold_patient_level"  # the pooled AUC leads, fold means second
    assert set(cv) == {"out_of_fold_patient_level", "patient_level", "patch_level", "covers", "patient_rule", "note"}
    assert set(cv["out_of_fold_patient_level"]) == OOF_KEYS and cv["patient_rule"] == PATIENT_RULE
    pooled = patient_level_auc(model.card)  # what the model card page shows first
    assert pooled is not None and pooled.ci is not None and (pooled.n, pooled.events) == (9, 4)
    assert same_patients_comparison(model.card) is not None
    rows = card_metric_rows(cv)
    assert [r["metric"] for r in rows][-1] == "AUC" and " ± " in rows[-1]["patient level"]
    fold_card = load_checkpoint(out / "fold1" / "model.pt", require_allowed=False).card
    assert fold_card["training_data"] == provenance.SYNTHETIC_PHANTOMS


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
    out, _ = run
    with pytest.raises(ResumeMismatchError, match=r"different settings; choose another --out") as caught:
        cross_validate(manifest, out, replace(TINY_TRAIN, epochs=2), TINY)
    assert not isinstance(caught.value, ManifestError)  # not presented as a manifest row problem
    assert "data" not in str(caught.value) and "code" not in str(caught.value)


def _demo_work(run: tuple[Path, dict], manifest: Path, work: Path) -> Path:
    """A demo work folder holding the module's cohort and its finished TINY_TRAIN build."""
    shutil.copytree(manifest.parent, work / "cohort")
    shutil.copytree(run[0], work / "train")
    (work / "cohort" / "left by the old build").touch()
    return work


def test_the_demo_build_resumes_a_build_of_the_same_settings(
    run: tuple[Path, dict], manifest: Path, tmp_path: Path
) -> None:
    from core.training_cli import cross_validate_demo

    work = _demo_work(run, manifest, tmp_path)
    stamp = (work / "train" / "fold1" / "model.pt").stat().st_mtime_ns
    cross_validate_demo(work, TINY_TRAIN, TINY, patients=9, seed=11)
    assert (work / "train" / "fold1" / "model.pt").stat().st_mtime_ns == stamp
    assert (work / "cohort" / "left by the old build").exists()


def test_the_demo_build_starts_afresh_phantoms_included_over_a_build_of_other_settings(
    run: tuple[Path, dict], manifest: Path, tmp_path: Path
) -> None:
    """`make demo-model` owns its work folder: a build left there by an older recipe must not block it for good."""
    from core.training_cli import cross_validate_demo

    work = _demo_work(run, manifest, tmp_path)
    summary = cross_validate_demo(work, replace(TINY_TRAIN, epochs=2), TINY, patients=9, seed=11)
    assert summary["config"]["epochs"] == 2
    assert not (work / "cohort" / "left by the old build").exists()  # the phantoms were written again
    assert (work / "cohort" / "manifest.csv").read_bytes() == manifest.read_bytes()
    cross_validate(work / "cohort" / "manifest.csv", work / "train", replace(TINY_TRAIN, epochs=2), TINY)  # resumable


def test_run_json_holds_three_fingerprints(run: tuple[Path, dict]) -> None:
    out, _ = run
    stamp = json.loads((out / "run.json").read_text())
    assert {"data", "settings", "code", "patients"} <= stamp.keys() and len(stamp["patients"]) == 9


def test_changed_image_data_names_the_patient(manifest: Path, tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    shutil.copytree(manifest.parent, root)
    patients = read_manifest(root / "manifest.csv", TINY)
    training_data = provenance.SYNTHETIC_PHANTOMS
    (tmp_path / "out").mkdir()
    record_run(tmp_path / "out", run_fingerprint(patients, TINY_TRAIN, TINY, training_data))
    changed = patients[4]
    mask = load_mask(changed.mask_path)
    mask[np.nonzero(mask)[0][0], :] = True  # one more row of tumour
    cv2.imwrite(str(changed.mask_path), mask.astype(np.uint8) * 255)
    current = run_fingerprint(read_manifest(root / "manifest.csv", TINY), TINY_TRAIN, TINY, training_data)
    with pytest.raises(ResumeMismatchError) as caught:
        check_resume(tmp_path / "out", current)
    message = str(caught.value)
    assert f"different data (patient {changed.key}'s" in message and "settings" not in message
    assert "choose another --out or delete that folder" in message and not isinstance(caught.value, ManifestError)


def test_changed_code_is_named(manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.training as training

    patients = read_manifest(manifest, TINY)
    record_run(tmp_path, run_fingerprint(patients, TINY_TRAIN, TINY, provenance.SYNTHETIC_PHANTOMS))
    source = tmp_path / "src"
    for name in training.TRAINING_CODE_FILES:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, source / name)
    (source / "core/patches.py").write_text((ROOT / "core/patches.py").read_text() + "\n# changed\n")
    monkeypatch.setattr(training, "ROOT", source)
    current = run_fingerprint(patients, TINY_TRAIN, TINY, provenance.SYNTHETIC_PHANTOMS)
    with pytest.raises(ResumeMismatchError, match=r"holds a run that has different code \("):
        check_resume(tmp_path, current)


def test_run_of_an_older_version_is_refused(manifest: Path, tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"fingerprint": "0123456789abcdef"}))
    current = run_fingerprint(read_manifest(manifest, TINY), TINY_TRAIN, TINY, provenance.SYNTHETIC_PHANTOMS)
    with pytest.raises(ResumeMismatchError, match="written by an older version of this tool; choose another --out"):
        check_resume(tmp_path, current)


# ---------------------------------------------------------------- what the data is


def test_manifest_without_data_source_is_refused(manifest: Path, tmp_path: Path) -> None:
    bare = _manifest_without_data_source(manifest, tmp_path / "cohort")
    with pytest.raises(DataSourceError, match="does not say whether its images are of real patients or synthetic"):
        cross_validate(bare, tmp_path / "run", TINY_TRAIN, TINY)
    assert not (tmp_path / "run").exists()


def test_stated_data_source_labels_the_card(manifest: Path, tmp_path: Path) -> None:
    bare = _manifest_without_data_source(manifest, tmp_path / "cohort")
    tc = replace(TINY_TRAIN, folds=2, data_source="patients")
    summary = cross_validate(bare, tmp_path / "run", tc, TINY)
    assert summary["training_data"] == provenance.REAL_PATIENTS
    card = load_checkpoint(tmp_path / "run" / "model.pt", require_allowed=False).card
    assert card["training_data"] == provenance.REAL_PATIENTS and card["provenance"].startswith("trained on 9 patients")


def test_disagreeing_data_sources_are_refused(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="data_source says synthetic but --data-source says patients"):
        cross_validate(manifest, tmp_path, replace(TINY_TRAIN, data_source="patients"), TINY)
    assert resolve_data_source("synthetic", "synthetic") == "synthetic"
    assert resolve_data_source(None, "patients") == "patients"


def test_command_line_takes_data_source_not_synthetic() -> None:
    from core.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--manifest", "m.csv", "--out", "o", "--data-source", "patients"])
    assert args.data_source == "patients"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--manifest", "m.csv", "--out", "o", "--synthetic"])
    assert "training_data" not in TrainConfig.__dataclass_fields__


# ---------------------------------------------------------------- calibration of exports


def test_png_export_with_calibration_gives_the_dicom_patches(manifest: Path, tmp_path: Path) -> None:
    """A PNG export in the model's own window, with its spacing stated, yields the DICOM's grid and grey values."""
    patient = read_manifest(manifest, TINY)[0]
    ct = load_slice(patient.image_path.read_bytes())
    grey = np.round(window_to_unit(ct.pixels, TINY.window_level_hu, TINY.window_width_hu) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "export.png"), grey)
    shutil.copyfile(patient.mask_path, tmp_path / "mask.png")
    header = "patient_key,image_path,mask_path,early_recurrence,data_source"
    bare = tmp_path / "bare.csv"
    bare.write_text(f"{header}\nX,export.png,mask.png,1,patients\n")
    with pytest.raises(ManifestError, match=r"row 2 \(X\): The model cannot run on this PNG export"):
        read_manifest(bare, TINY)
    stated = tmp_path / "manifest.csv"
    stated.write_text(
        f"{header},pixel_spacing_mm,export_window_level,export_window_width\n"
        f"X,export.png,mask.png,1,patients,{ct.spacing_mm[0]!r},{TINY.window_level_hu},{TINY.window_width_hu}\n"
    )
    [png_patient] = read_manifest(stated, TINY)
    [from_png] = build_patient_patches([png_patient], [1], TINY, show_progress=False)
    [from_dicom] = build_patient_patches([patient], [1], TINY, show_progress=False)
    assert from_png.patches.shape == from_dicom.patches.shape
    # uint8 export then uint8 patches: at most a grey step or two apart after resampling
    assert np.abs(from_png.patches.astype(int) - from_dicom.patches.astype(int)).max() <= 2


# ---------------------------------------------------------------- permuted-label control


def test_permuted_labels_are_a_control_without_a_model(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "permuted-control"
    summary = cross_validate(manifest, out, replace(TINY_TRAIN, permute_labels=True), TINY)
    assert summary["cohort"]["permuted_labels"] and summary["cohort"]["early_recurrence"] == 4
    truth = {row["patient_key"]: int(row["early_recurrence"]) for row in csv.DictReader(manifest.open())}
    used = {p["patient_key"]: p["label"] for p in summary["table4"]["patients"]}
    assert used != truth and sum(used.values()) == sum(truth.values())
    assert not list(out.rglob("model.pt")), "a control must never write a deployable model"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training_data"] == provenance.PERMUTED_CONTROL and "permuted-label control" in metrics["control"]
    report = (out / "report.md").read_text()
    assert report.startswith("# Permuted-label control") and "control" in report.splitlines()[2]


def test_control_into_a_folder_not_named_control_is_refused(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ControlRunError, match=r"use --out .*cv-control\."):
        cross_validate(manifest, tmp_path / "cv", replace(TINY_TRAIN, permute_labels=True), TINY)
    assert not (tmp_path / "cv").exists()


# ---------------------------------------------------------------- mixed precision and divergence


def test_grad_scaler_only_for_float16() -> None:
    assert grad_scaler_enabled(torch.float16)
    assert not grad_scaler_enabled(torch.bfloat16) and not grad_scaler_enabled(None)
    assert make_grad_scaler(torch.device("cpu"), torch.float16).is_enabled()
    assert not make_grad_scaler(torch.device("cpu"), torch.bfloat16).is_enabled()


def test_scaled_step_equals_plain_step_and_skips_overflow() -> None:
    """The fp16 path's update, run on the CPU: scaling must not change a step, and an inf gradient skips it."""

    def step(scaled: bool, poison: bool = False) -> tuple[torch.Tensor, torch.amp.GradScaler]:
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=scaled)
        loss = layer(torch.ones(2, 3)).pow(2).mean() * (math.inf if poison else 1.0)
        backward_and_step(loss, optimizer, scaler)
        return layer.weight.detach().clone(), scaler

    plain, _ = step(False)
    scaled, scaler = step(True)
    torch.testing.assert_close(scaled, plain)
    skipped, scaler = step(True, poison=True)
    torch.manual_seed(0)
    torch.testing.assert_close(skipped, torch.nn.Linear(3, 1).weight.detach())  # weights untouched
    assert scaler.get_scale() < 2.0**12  # and the scale backed off


def test_absurd_learning_rate_stops_with_a_sentence(manifest: Path, tmp_path: Path) -> None:
    # lr 1e30: after one Adam step the weights are ~1e30 and the next forward pass overflows float32
    tc = replace(TINY_TRAIN, lr=1e30, final_model=False)
    with pytest.raises(TrainingDivergedError, match=r"fold 1/3, epoch 1, batch \d+: the loss became nan; lower"):
        cross_validate(manifest, tmp_path, tc, TINY)


def test_nan_probabilities_are_never_scored() -> None:
    data = [PatientPatches("P1", 1, "N0", None, np.zeros((3, 32, 32), np.uint8))]

    def broken_network(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2), math.nan)

    with pytest.raises(TrainingDivergedError, match=r"NaN probabilities .* patient P1"):
        patch_probabilities(broken_network, data, TINY, torch.device("cpu"), "fold 1/3")


# ---------------------------------------------------------------- scale-out


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
        "--data-source",
        "synthetic",  # agrees with the phantom manifest's column
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
    model = load_checkpoint(out / "model.pt", require_allowed=False)
    assert model.card["training"]["epochs"] == 1
    assert model.card["training_data"] == provenance.SYNTHETIC_PHANTOMS
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["throughput"]["processes"] == 2
    assert [p["n_patches"] for p in metrics["table4"]["patients"]] == [
        p["n_patches"] for p in json.loads((single_out / "metrics.json").read_text())["table4"]["patients"]
    ]


def test_the_fold_ensemble_is_the_deployable_model_without_a_final_training(
    run: tuple[Path, dict], manifest: Path, tmp_path: Path
) -> None:
    """--deploy ensemble: the K fold networks in one checkpoint; CV results and folds are the same run's."""
    from core.analysis import analyze_case

    out, summary = run
    shutil.copytree(out, tmp_path / "run")  # resume the finished folds into the other kind of deployable model
    (tmp_path / "run" / "model.pt").unlink()
    shutil.rmtree(tmp_path / "run" / "final")
    again = cross_validate(manifest, tmp_path / "run", replace(TINY_TRAIN, deployable="ensemble"), TINY)
    assert json.dumps(again["folds"]) == json.dumps(summary["folds"])  # nothing retrained
    assert again["throughput"]["final_train_patches_per_s"] is None
    assert not (tmp_path / "run" / "final").exists()
    model = load_checkpoint(tmp_path / "run" / "model.pt", require_allowed=False)
    assert model.is_ensemble and model.names == ("fold 1", "fold 2", "fold 3")
    assert "fold networks" in model.card["deployable"] and model.card["ensemble"]["members"] == 3
    assert next(iter(model.card["cv_metrics"])) == "out_of_fold_patient_level"
    # the ensemble's case number is the mean of its folds' numbers (the mean rule), fold k being fold k's model
    patient = read_manifest(manifest, TINY)[0]
    ct, mask = load_calibrated_image(patient), load_mask(patient.mask_path)
    result = analyze_case(ct, mask, model, cache=None)
    folds = [
        analyze_case(ct, mask, load_checkpoint(out / f"fold{k}" / "model.pt", require_allowed=False), cache=None)
        for k in (1, 2, 3)
    ]
    assert result.spread.risks == pytest.approx([f.dl_risk.probability for f in folds], abs=1e-9)
    assert result.dl_risk.probability == pytest.approx(np.mean([f.dl_risk.probability for f in folds]), abs=1e-9)


def test_deploy_must_be_final_or_ensemble(manifest: Path, tmp_path: Path) -> None:
    from core.errors import UserFacingError

    with pytest.raises(UserFacingError, match="--deploy must be final or ensemble"):
        cross_validate(manifest, tmp_path, replace(TINY_TRAIN, deployable="both"), TINY)

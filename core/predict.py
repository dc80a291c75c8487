"""``python -m core predict --manifest CSV --out DIR``: score a cohort with the installed model.

Every patient goes through the dashboard's own code path (:func:`core.analysis.analyze_case`:
same lattice, same preprocessing, same case rule) on the plain fp32 engine, the reference
every faster engine is checked against (within 0.02), on this process's device (its own GPU
under torchrun on a GPU machine), beside the paper's N-category risk (named in the file) and
the model's sha256: the input of a local validation. Resumable: rows already in ``predictions.csv`` for the same model
are kept and their patients skipped; a file written by another model is refused, never mixed.

Data-parallel like ``core train``: under ``torchrun --nproc-per-node K -m core predict …`` each
process scores every K-th patient still to do into its own ``predictions.part<rank>.csv``; the
first process then merges the parts into ``predictions.csv`` (also the parts a killed run left,
at the next start), so the file is the same as one process would write, rows in another order.
On a CPU machine torchrun gives each process one thread unless ``OMP_NUM_THREADS`` says
otherwise: set it to the cores divided by K.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.analysis import analyze_case, clinical_risk_for
from core.clinical import PAPER_MODEL_NAME
from core.cohort import load_calibrated_image, load_mask, read_manifest
from core.engine import Engine, default_engine
from core.errors import UserFacingError
from core.training import barrier, world

PREDICTION_COLUMNS = (
    "patient_key",
    "early_recurrence",
    "n_category",
    "dl_mean_patch_probability",
    "dl_patches",
    "clinical_probability",
    "clinical_ci_low",
    "clinical_ci_high",
    "model_sha256",
    "clinical_model",
)


@dataclass(frozen=True)
class PredictionSummary:
    """Where the predictions are, how many were scored now and how many were already there."""

    path: Path
    scored: int
    reused: int


def _done_rows(path: Path, model_sha256: str) -> dict[str, dict[str, str]]:
    """The complete rows of ``path`` by patient key (a row a killed run cut short is left out, to be scored again).

    Raises:
        UserFacingError: rows of another model, or a file of an older version without every column.
    """
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None and list(reader.fieldnames) != list(PREDICTION_COLUMNS):
            raise UserFacingError(
                f"{path} was written with other columns (an older version); write to a new --out folder."
            )
        rows = [row for row in reader if len(row.get("model_sha256") or "") == 64 and row.get("clinical_model")]
    others = {row["model_sha256"] for row in rows} - {model_sha256}
    if others:
        raise UserFacingError(
            f"{path} holds predictions of another model (sha256 {sorted(others)[0][:12]}); write to a new --out folder "
            "so that two models' scores are never mixed."
        )
    return {row["patient_key"]: row for row in rows}


def predict_manifest(
    manifest: Path, out: Path, model: Any, progress: bool = True, device: torch.device | None = None
) -> PredictionSummary:
    """Score every patient of ``manifest`` into ``out/predictions.csv`` (appending; resumable; one shard per process).

    Raises:
        UserFacingError: a bad manifest (every problem listed), or predictions of another model in ``out``.
    """
    from tqdm import tqdm

    rank, size = world()
    patients = read_manifest(manifest, model.preprocess)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.csv"
    if rank == 0:
        _merge_parts(out, path, model.sha256)
    barrier()
    done = _done_rows(path, model.sha256)
    todo = [p for p in patients if p.key not in done]
    mine = todo[rank::size]
    target = path if size == 1 else out / f"predictions.part{rank}.csv"
    engine = default_engine(model.ensemble, device)
    new_file = not target.exists()
    with target.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS)
        if new_file:
            writer.writeheader()
        for patient in tqdm(mine, desc="patients", disable=not progress or rank != 0):
            writer.writerow(_score(patient, model, engine))
            handle.flush()  # a killed run keeps every patient scored so far
    barrier()
    if rank == 0:
        _merge_parts(out, path, model.sha256)
    barrier()
    return PredictionSummary(path, len(todo), len(patients) - len(todo))


def _merge_parts(out: Path, path: Path, model_sha256: str) -> None:
    """Append the rows of every ``predictions.part*.csv`` not yet in ``path``, then delete the parts."""
    parts = sorted(out.glob("predictions.part*.csv"))
    if not parts:
        return
    done = _done_rows(path, model_sha256)
    new_file = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS)
        if new_file:
            writer.writeheader()
        for part in parts:
            for key, row in _done_rows(part, model_sha256).items():
                if key not in done:
                    writer.writerow({column: row[column] for column in PREDICTION_COLUMNS})
                    done[key] = row
    for part in parts:
        part.unlink()


def _score(patient: Any, model: Any, engine: Engine) -> dict[str, object]:
    result = analyze_case(load_calibrated_image(patient), load_mask(patient.mask_path), model, engine=engine)
    clinical = clinical_risk_for(patient.n_category)
    return {
        "patient_key": patient.key,
        "early_recurrence": patient.label,
        "n_category": patient.n_category,
        "dl_mean_patch_probability": f"{result.dl_risk.probability:.6f}",
        "dl_patches": result.dl_risk.n_patches,
        "clinical_probability": f"{clinical.probability:.6f}" if clinical else "",
        "clinical_ci_low": f"{clinical.ci_low:.6f}" if clinical else "",
        "clinical_ci_high": f"{clinical.ci_high:.6f}" if clinical else "",
        "model_sha256": model.sha256,
        "clinical_model": PAPER_MODEL_NAME,
    }

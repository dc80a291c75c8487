"""A working pipeline must beat chance on the phantom cohort at patient level; shuffled labels must not.

Marked slow (3 min 15 s on 2 idle cores of an AVX-512 BF16 EPYC, both tests and the cohort): it
really trains ResNet50s, on a reduced geometry (16 mm patches seen at 0.5 mm per input pixel) so
that CI can afford it. 6 epochs, not 4: on the anatomical phantoms 4 epochs gave 0.72 (training
seed 0, 2 threads), too close to the 0.70 bar for a figure that moves with the CPU's arithmetic.
6 epochs, cohort seed 0 throughout. Since training draws its (at most) 24 patches per patient afresh each
epoch (2026-12-03): 0.77 (95% CI 0.59–0.95), training seed 0, 2 threads (this test). Before, with
one fixed subset: seed 0 gave 0.76 with 2 threads and 0.78 with one; seeds 1 and 2 gave 0.77 and
0.84 with one thread.
Both tests use the same 30-patient cohort and recipe, so the only difference between
them is whether the labels mean anything.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from core.phantom import write_cohort
from core.preprocess import PreprocessConfig
from core.provenance import PERMUTED_CONTROL
from core.training import TrainConfig, cross_validate

pytestmark = pytest.mark.slow

GEOMETRY = PreprocessConfig(target_spacing_mm=0.25, patch_px=64, stride_px=16, input_px=32)
RECIPE = TrainConfig(
    folds=3,
    epochs=6,
    batch_size=32,
    max_patches_per_patient=24,
    seed=0,
    device="cpu",
    final_model=False,
)
N_PATIENTS = 30  # 15 with early recurrence, 15 without (core.phantom.cohort_plan)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("signal"), n_patients=N_PATIENTS, seed=0, progress=False)


def test_patient_level_auc_clearly_beats_chance(manifest: Path, tmp_path: Path) -> None:
    summary = cross_validate(manifest, tmp_path, RECIPE, GEOMETRY)
    pooled = summary["out_of_fold_patient_level"]["all_patients"]
    # 0.77 (95% CI 0.59–0.95), seed 0, every validation patch scored; the control below gives 0.59
    assert pooled["n"] == N_PATIENTS and pooled["dl_auc"] >= 0.70


def null_auc_sd(positives: int, negatives: int) -> float:
    """SD of the AUC (Mann–Whitney U / mn) when scores carry no information about the labels."""
    return math.sqrt((positives + negatives + 1) / (12.0 * positives * negatives))


def test_permuted_label_control_sits_near_chance(manifest: Path, tmp_path: Path) -> None:
    """Shuffled labels: the pooled out-of-fold patient-level AUC must look like chance.

    Tolerance: under the null (scores independent of the labels) the AUC of 15 + 15 patients
    has mean 0.5 and SD sqrt((m + n + 1) / (12 m n)) = 0.107. We accept |AUC − 0.5| ≤ 0.25,
    about 2.3 null SDs (a 2 % two-sided false alarm for an arbitrary seed; the seed here is
    fixed, so the test is deterministic). It cannot be tighter with 30 patients, and it is a
    coarse check: with training seed 1 the control reached 0.72, above the real-label bar of
    0.70 (a 3 % event under the null). It catches held-out patients leaking into training,
    which would score them like training patients: 0.78 ± 0.14 in this control's own training
    folds (every training patch scored, seed 0), only just above the 0.75 the tolerance allows, so
    the margin is thin. Labels read from the manifest instead of the permutation would give the
    real-label level (0.77; 0.76–0.84 with the fixed subset before), which it may miss. Measured, 6 epochs, fresh draws each
    epoch: 0.59 (training seed 0, 2 threads: this test). With one fixed subset before: 0.52 (seed
    0, 2 threads), 0.56 (seed 0, one thread), 0.72 and 0.45 (seeds 1 and 2, one thread).
    """
    summary = cross_validate(manifest, tmp_path / "permuted-control", replace(RECIPE, permute_labels=True), GEOMETRY)
    assert summary["training_data"] == PERMUTED_CONTROL
    pooled = summary["out_of_fold_patient_level"]["all_patients"]
    assert (pooled["n"], pooled["events"]) == (N_PATIENTS, 15)
    tolerance = 0.25
    assert tolerance >= 2.3 * null_auc_sd(15, 15)
    assert abs(pooled["dl_auc"] - 0.5) <= tolerance, pooled
    assert not list((tmp_path / "permuted-control").rglob("model.pt"))

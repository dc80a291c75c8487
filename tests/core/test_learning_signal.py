"""A working pipeline must beat chance on the phantom cohort at patient level; shuffled labels must not help.

Marked slow (about a minute on 2 cores): it really trains ResNet50s, on a reduced
geometry (16 mm patches seen at 0.5 mm per input pixel) so that CI can afford it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.phantom import write_cohort
from core.preprocess import PreprocessConfig
from core.training import TrainConfig, cross_validate

pytestmark = pytest.mark.slow

GEOMETRY = PreprocessConfig(target_spacing_mm=0.25, patch_px=64, stride_px=16, input_px=32)
RECIPE = TrainConfig(
    folds=3,
    epochs=4,
    batch_size=32,
    max_patches_per_patient=24,
    seed=0,
    device="cpu",
    final_model=False,
    training_data="synthetic phantoms",
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("signal"), n_patients=30, seed=0, progress=False)


def test_patient_level_auc_clearly_beats_chance(manifest: Path, tmp_path: Path) -> None:
    summary = cross_validate(manifest, tmp_path, RECIPE, GEOMETRY)
    # 0.83 on this machine (seed 0); shuffled labels give 0.58 with the same recipe
    assert summary["out_of_fold_patient_level"]["dl"]["auc"] >= 0.70

"""Scoring a slice's cells: a converted engine that fails on a request gives way to the fp32 networks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core import engine as engines
from core.engine import Engine, ReleasedNetwork, release_networks
from core.errors import CheckpointError
from core.imaging import CtSlice
from core.lattice import plan_lattice
from core.preprocess import PreprocessConfig
from core.scoring import score_cells, slice_context
from models.checkpoint import LoadedModel, load_checkpoint

CFG = PreprocessConfig(target_spacing_mm=0.5, patch_px=16, stride_px=8, input_px=32)
SPACING = (0.5, 0.5)


def _case(cfg: PreprocessConfig = CFG) -> tuple[object, np.ndarray]:
    """A fixed random slice in HU and the lattice cells of a disc outline on it."""
    hu = np.random.default_rng(0).uniform(-75.0, 175.0, (96, 96)).astype(np.float32)
    ct = CtSlice(pixels=hu, is_hu=True, spacing_mm=SPACING, source_kind="dicom")
    yy, xx = np.mgrid[0:96, 0:96] + 0.5
    mask = (yy - 48) ** 2 + (xx - 48) ** 2 <= 30**2
    return slice_context(ct, cfg), plan_lattice(mask, SPACING, cfg).cells


class MeanBrightness(torch.nn.Module):
    """P(positive) = mean de-normalised grey of the input, exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (x[:, 0] * CFG.std + CFG.mean).mean(dim=(1, 2)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def _failing_engine(members: int = 1) -> Engine:
    def fail(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the runtime lost its compiled graph")

    return Engine("openvino-bf16", "OpenVINO bf16", torch.device("cpu"), (fail,) * members, "measured")


def test_a_failing_converted_engine_gives_way_to_the_fp32_networks_for_good() -> None:
    context, cells = _case()
    model = LoadedModel(MeanBrightness(), CFG, {}, "0" * 64, Path("m.pt"))
    expected, _ = score_cells(context, cells, model)  # no engine prepared: the default one
    model.engine = _failing_engine()

    got, counts = score_cells(context, cells, model)

    np.testing.assert_array_equal(got, expected)
    assert model.engine.backend == engines.DEFAULT_BACKEND
    assert "OpenVINO bf16 failed during an analysis" in model.engine.how
    assert "lost its compiled graph" in model.engine.how
    assert counts.engine == "torch channels-last fp32" == model.engine.name


def test_released_weights_are_read_again_from_the_models_file(test_checkpoint: Path) -> None:
    model = load_checkpoint(test_checkpoint)
    context, cells = _case(model.preprocess)
    expected, _ = score_cells(context, cells, model)
    model.engine = _failing_engine()
    assert release_networks(model) and isinstance(model.network, ReleasedNetwork)

    got, counts = score_cells(context, cells, model)

    np.testing.assert_array_equal(got, expected)
    assert isinstance(model.network, torch.nn.Module)
    assert counts.engine == model.engine.name == "torch channels-last fp32"


def test_a_model_file_changed_since_loading_is_said_in_one_sentence(
    test_checkpoint: Path, test_ensemble_checkpoint: Path, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    shutil.copyfile(test_checkpoint, path)
    model = load_checkpoint(path)
    context, cells = _case(model.preprocess)
    model.engine = _failing_engine()
    release_networks(model)
    shutil.copyfile(test_ensemble_checkpoint, path)  # replaced on disk while the app ran

    with pytest.raises(CheckpointError, match=r"model\.pt changed since it was loaded"):
        score_cells(context, cells, model)


def test_the_default_engine_and_a_callers_own_engine_fail_as_they_are() -> None:
    context, cells = _case()

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("broken network")

    model = LoadedModel(Broken(), CFG, {}, "0" * 64, Path("m.pt"))
    with pytest.raises(RuntimeError, match="broken network"):
        score_cells(context, cells, model)  # nothing to give way to
    working = LoadedModel(MeanBrightness(), CFG, {}, "0" * 64, Path("m.pt"))
    with pytest.raises(RuntimeError, match="compiled graph"):
        score_cells(context, cells, working, engine=_failing_engine())  # the caller's engine is the caller's
    assert working.engine is None

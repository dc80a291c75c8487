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
    assert "the faster OpenVINO bf16 stopped working during an analysis" in model.engine.how
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

    with pytest.raises(CheckpointError, match=r"model\.pt is gone or changed since it was loaded"):
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


def _two_member_model() -> LoadedModel:
    nets = (MeanBrightness(), MeanBrightness())
    return LoadedModel(nets[0], CFG, {}, "0" * 64, Path("m.pt"), members=nets)


def test_answers_kept_before_the_failure_never_mix_with_fp32_ones() -> None:
    """Member 1 answers (wrongly, by 0.3), member 2 fails: the result is all fp32, whatever the cache kept."""
    from core.patch_cache import PatchCache

    context, cells = _case()
    model = _two_member_model()
    expected, _ = score_cells(context, cells, model)

    def off(x: torch.Tensor) -> torch.Tensor:
        return MeanBrightness()(x) + torch.tensor([0.0, 0.3])

    failing = _failing_engine(2)
    model.engine = Engine(failing.backend, failing.name, failing.device, (off, failing.predictors[1]), "measured")
    cache = PatchCache(max_entries=10_000)

    got, _ = score_cells(context, cells, model, cache=cache)
    again, counts_again = score_cells(context, cells, model, cache=cache)

    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(again, expected)
    assert counts_again.computed == 0 and counts_again.engine == "torch channels-last fp32"


def test_an_engine_set_aside_since_a_caller_took_it_sends_the_caller_to_the_models_engine() -> None:
    """The page keeps the engine of its analysis for the sensitivity table: after a fallback that engine is gone."""
    context, cells = _case()
    model = LoadedModel(MeanBrightness(), CFG, {}, "0" * 64, Path("m.pt"))
    expected, _ = score_cells(context, cells, model)
    taken = model.engine = _failing_engine()
    score_cells(context, cells, model, engine=taken)  # the analysis: falls back

    got, counts = score_cells(context, cells, model, engine=taken)  # the sensitivity, with the engine it kept

    assert taken.set_aside and taken.predictors == ()
    np.testing.assert_array_equal(got, expected)
    assert counts.engine == "torch channels-last fp32"


def test_a_failure_outside_the_runtime_or_memory_running_out_is_not_the_engines() -> None:
    context, cells = _case()
    model = LoadedModel(MeanBrightness(), CFG, {}, "0" * 64, Path("m.pt"))
    working = model.engine = Engine("openvino-bf16", "OpenVINO bf16", torch.device("cpu"), (MeanBrightness(),), "m")

    def broken_progress(done: int, total: int) -> None:
        raise ValueError("a bug in a progress bar")

    with pytest.raises(ValueError, match="progress bar"):
        score_cells(context, cells, model, progress=broken_progress)
    assert model.engine is working and not working.set_aside

    for error in (MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")):

        def out_of_memory(x: torch.Tensor, error: Exception = error) -> torch.Tensor:
            raise error

        model.engine = Engine("openvino-bf16", "OpenVINO bf16", torch.device("cpu"), (out_of_memory,), "m")
        with pytest.raises(type(error)):
            score_cells(context, cells, model)
        assert model.engine.backend == "openvino-bf16" and not model.engine.set_aside


def test_networks_that_cannot_be_read_again_are_said_so_on_every_request() -> None:
    """A model built in memory (no file) whose networks were released: one sentence, now and later."""
    context, cells = _case()
    model = LoadedModel(MeanBrightness(), CFG, {}, "0" * 64, Path("built-in-memory.pt"))
    model.engine = _failing_engine()
    assert release_networks(model)

    raised = []
    for _ in range(2):
        with pytest.raises(CheckpointError, match=r"built-in-memory\.pt is gone or changed") as info:
            score_cells(context, cells, model)
        raised.append(info.value)
    assert "restart the app" in model.engine.how
    assert raised[0] is not raised[1]  # a fresh error each time: no request's frames pile up on one traceback


def test_a_restore_that_runs_out_of_memory_is_tried_again_and_any_other_failure_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context, cells = _case()
    model = LoadedModel(MeanBrightness(), CFG, {}, "0" * 64, Path("m.pt"))
    expected, _ = score_cells(context, cells, model)
    failing = model.engine = _failing_engine()
    networks = model.network
    release_networks(model)

    def no_memory(m: LoadedModel) -> None:
        raise MemoryError

    monkeypatch.setattr(engines, "restore_networks", no_memory)
    with pytest.raises(MemoryError):
        score_cells(context, cells, model)
    assert model.engine is failing and not failing.set_aside  # left as it was: the next request tries again

    def restored(m: LoadedModel) -> None:
        m.network = networks

    monkeypatch.setattr(engines, "restore_networks", restored)
    got, _ = score_cells(context, cells, model)
    np.testing.assert_array_equal(got, expected)

    other = LoadedModel(MeanBrightness(), CFG, {}, "0" * 64, Path("m.pt"))
    other.engine = _failing_engine()
    release_networks(other)

    def unreadable(m: LoadedModel) -> None:
        raise PermissionError("permission denied")

    monkeypatch.setattr(engines, "restore_networks", unreadable)
    for _ in range(2):
        with pytest.raises(CheckpointError, match=r"could not be read again \(PermissionError\); restart the app"):
            score_cells(context, cells, other)


def test_an_analysis_records_the_engine_that_answered() -> None:
    from core.analysis import analyze_case

    hu = np.random.default_rng(0).uniform(-75.0, 175.0, (96, 96)).astype(np.float32)
    ct = CtSlice(pixels=hu, is_hu=True, spacing_mm=SPACING, source_kind="dicom")
    yy, xx = np.mgrid[0:96, 0:96] + 0.5
    model = LoadedModel(MeanBrightness(), CFG, {}, "0" * 64, Path("m.pt"))
    model.engine = _failing_engine()

    result = analyze_case(ct, (yy - 48) ** 2 + (xx - 48) ** 2 <= 30**2, model, cache=None)

    assert result.engine == "torch channels-last fp32"


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"),
        RuntimeError("std::bad_alloc"),
        RuntimeError("Failed to allocate memory for requested buffer of size 8"),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
)
def test_memory_running_out_is_told_by_type_or_by_the_runtimes_words(error: BaseException) -> None:
    from core.errors import out_of_memory

    assert out_of_memory(error)
    assert not out_of_memory(RuntimeError("the runtime lost its compiled graph"))


def test_a_checkpoint_read_that_runs_out_of_memory_is_not_called_damaged(
    test_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models import checkpoint

    def no_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(checkpoint.torch, "load", no_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        checkpoint.read_checkpoint(test_checkpoint)


def test_weights_parked_for_a_conversion_come_back_into_memory_on_the_fallback(test_checkpoint: Path) -> None:
    model = load_checkpoint(test_checkpoint)
    context, cells = _case(model.preprocess)
    expected, _ = score_cells(context, cells, model)
    engines.park_weights(model.network)  # as build_engine leaves them when the torch weights are not released
    if not getattr(model.network, "_icca_parked", False):
        pytest.skip("weights are not parked where $TMPDIR is memory or cannot be written")
    model.engine = _failing_engine()

    got, _ = score_cells(context, cells, model)

    np.testing.assert_array_equal(got, expected)
    assert not model.network._icca_parked and model.engine.backend == engines.DEFAULT_BACKEND


def test_a_second_analysis_failing_on_the_same_engine_takes_the_first_ones_replacement() -> None:
    model = LoadedModel(MeanBrightness(), CFG, {}, "0" * 64, Path("m.pt"))
    failed = model.engine = _failing_engine()
    replacement = engines.fall_back_to_default(model, failed)

    # a second analysis held the same engine and failed on it after the first fell back
    assert engines.fall_back_to_default(model, failed) is replacement is model.engine
    assert failed.set_aside and failed.predictors == ()
    assert replacement.how.startswith("the standard engine: the faster OpenVINO bf16 stopped working")

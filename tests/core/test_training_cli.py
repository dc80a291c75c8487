from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from core import training_cli
from core.files import beside
from models import checkpoint
from models.checkpoint import ALLOWLIST_ENV, allowed_sha256s, file_sha256


def test_the_demo_model_appears_whole_and_already_approved(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, test_checkpoint: Path
) -> None:
    """The dashboard polls for the model file and loads it once it exists: never half a copy, never unapproved."""
    allowlist, work, target = tmp_path / "allowed.txt", tmp_path / "work", tmp_path / "weights" / "model.pt"
    monkeypatch.setenv(ALLOWLIST_ENV, str(allowlist))
    (work / "train").mkdir(parents=True)
    shutil.copyfile(test_checkpoint, work / "train" / "model.pt")
    pooled = {"dl_auc": 0.81, "dl_auc_ci": [0.67, 0.95], "n": 41}
    monkeypatch.setattr(
        training_cli, "cross_validate_demo", lambda *_: {"out_of_fold_patient_level": {"all_patients": pooled}}
    )
    served_while: list[tuple[str, bool]] = []
    copy, allow = shutil.copyfile, checkpoint.allow_checkpoint

    def copy_and_look(source: Path, destination: Path) -> Path:
        served_while.append(("copying", Path(destination) == target))
        return copy(source, destination)

    def allow_and_look(path: Path, note: str) -> str:
        served_while.append(("approving", target.exists()))
        return allow(path, note)

    monkeypatch.setattr(shutil, "copyfile", copy_and_look)
    monkeypatch.setattr(checkpoint, "allow_checkpoint", allow_and_look)
    args = argparse.Namespace(workdir=str(work), out=str(target), no_engine_choice=True)
    assert training_cli._build_demo_model(args) == 0
    assert served_while == [("copying", False), ("approving", False)]  # nothing under the served name until then
    assert file_sha256(target) in allowed_sha256s(allowlist) and not beside(target).exists()


def test_the_demo_build_ranks_again_a_ranking_made_before_memory_was_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from core import engine as engines
    from core.preprocess import PreprocessConfig

    if engines.resident_anonymous_mib() is None:
        pytest.skip("memory is measured on Linux only")
    cfg = PreprocessConfig(target_spacing_mm=0.5, patch_px=16, stride_px=8, input_px=32)
    path = tmp_path / "choice.json"
    monkeypatch.setenv(engines.ENGINE_CACHE_ENV, str(path))
    measured: list[str] = []
    monkeypatch.setattr(engines, "measure_machine", lambda *args, **kwargs: measured.append("ranked"))
    signature = engines.machine_signature(cfg, len(cfg.labels), torch.device("cpu"))
    old = engines.Candidate(engines.DEFAULT_BACKEND, "torch channels-last fp32", 10.0, 0.0, 0.1, True)
    engines.store_choice(engines.Choice(signature, (old,)), path)
    training_cli.measure_engines(cfg)
    assert measured == ["ranked"]
    weighed = engines.Candidate(engines.DEFAULT_BACKEND, "torch channels-last fp32", 10.0, 0.0, 0.1, True, None, 91.0)
    engines.store_choice(engines.Choice(signature, (weighed,)), path)
    training_cli.measure_engines(cfg)
    assert measured == ["ranked"]  # ranked with its memory: not again

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.errors import CheckpointError, ModelNotInstalledError
from core.preprocess import PreprocessConfig
from models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import TEST_MODEL_NAME


def test_round_trip_keeps_weights_preprocess_and_card(test_checkpoint: Path) -> None:
    loaded = load_checkpoint(test_checkpoint)
    assert loaded.card["name"] == TEST_MODEL_NAME and loaded.weights_warning
    assert loaded.preprocess == PreprocessConfig()
    assert len(loaded.sha256) == 64
    out = loaded.network(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 2)


def test_missing_model_is_a_plain_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotInstalledError, match="No model is installed"):
        load_checkpoint(tmp_path / "none.pt")


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_file_that_would_execute_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": Exploit()}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="not a safe checkpoint"):
        load_checkpoint(path)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_atomic_save_leaves_no_temp_file(tmp_path: Path, test_checkpoint: Path) -> None:
    loaded = load_checkpoint(test_checkpoint)
    save_checkpoint(tmp_path / "m.pt", loaded.network, loaded.preprocess, loaded.card)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def _rewrite(source: Path, target: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the checkpoint ``source`` with its payload changed by ``edit``."""
    payload = torch.load(source, map_location="cpu", weights_only=True)
    edit(payload)
    torch.save(payload, target)
    return target


def test_preprocessing_this_version_does_not_know_is_refused(tmp_path: Path, test_checkpoint: Path) -> None:
    path = _rewrite(
        test_checkpoint, tmp_path / "newer.pt", lambda payload: payload["preprocess"].update(bias_field_correction=1)
    )
    with pytest.raises(CheckpointError, match=r"needs a newer version.*bias_field_correction"):
        load_checkpoint(path)


def test_a_newer_format_is_refused_with_the_reason(tmp_path: Path, test_checkpoint: Path) -> None:
    path = _rewrite(test_checkpoint, tmp_path / "v2.pt", lambda payload: payload.update(format_version=2))
    with pytest.raises(CheckpointError, match="written by a newer version"):
        load_checkpoint(path)


def test_training_data_must_be_a_known_kind() -> None:
    from models.checkpoint import make_card

    with pytest.raises(ValueError, match="training_data"):
        make_card("m", "p", "probably patients")

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.errors import CheckpointError, CheckpointNotAllowedError, ModelNotInstalledError
from core.preprocess import PreprocessConfig
from models.checkpoint import (
    CHECKPOINT_FORMAT,
    allow_checkpoint,
    allowed_sha256s,
    checkpoint_members,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from models.resnet import build_resnet50
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
        load_checkpoint(path, require_allowed=False)  # the reader itself, before any approval


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(path, require_allowed=False)  # the reader itself, before any approval


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
        load_checkpoint(path, require_allowed=False)  # the reader itself, before any approval


def test_a_newer_format_is_refused_with_the_reason(tmp_path: Path, test_checkpoint: Path) -> None:
    newer = CHECKPOINT_FORMAT + 1
    path = _rewrite(test_checkpoint, tmp_path / "newer.pt", lambda payload: payload.update(format_version=newer))
    with pytest.raises(CheckpointError, match="written by a newer version"):
        load_checkpoint(path, require_allowed=False)  # the reader itself, before any approval


def test_a_format_1_checkpoint_still_loads_as_one_network(tmp_path: Path, test_checkpoint: Path) -> None:
    """Format 1 (one "state_dict"), as the first release wrote it."""

    def to_format_1(payload: dict) -> None:
        [member] = payload.pop("members")
        payload.pop("ensemble_rule")
        payload.update(format_version=1, state_dict=member["state_dict"])

    path = _rewrite(test_checkpoint, tmp_path / "v1.pt", to_format_1)
    old, new = load_checkpoint(path, require_allowed=False), load_checkpoint(test_checkpoint)
    assert not old.is_ensemble and old.names == ("single network",) and old.cache_id == old.sha256
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(old.network(x), new.network(x))


def test_an_ensemble_round_trips_with_its_member_names(tmp_path: Path) -> None:
    nets = [build_resnet50(seed=k).eval() for k in (1, 2)]
    card = {"name": "ensemble", "training_data": "untrained"}
    save_checkpoint(tmp_path / "e.pt", nets, PreprocessConfig(), card, member_names=["fold 1", "fold 2"])
    loaded = load_checkpoint(tmp_path / "e.pt", require_allowed=False)
    assert loaded.is_ensemble and loaded.names == ("fold 1", "fold 2") and loaded.network is loaded.ensemble[0]
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        for original, member in zip(nets, loaded.ensemble, strict=True):
            torch.testing.assert_close(original(x), member(x))  # same weights (member is channels-last)
    with pytest.raises(ValueError, match="one name per member"):
        save_checkpoint(tmp_path / "bad.pt", nets, PreprocessConfig(), card, member_names=["fold 1"])


def test_a_checkpoint_without_networks_is_refused(tmp_path: Path, test_checkpoint: Path) -> None:
    path = _rewrite(test_checkpoint, tmp_path / "empty.pt", lambda payload: payload.update(members=[]))
    with pytest.raises(CheckpointError, match="holds no network"):
        load_checkpoint(path, require_allowed=False)  # the reader itself, before any approval


def test_training_data_must_be_a_known_kind() -> None:
    from models.checkpoint import make_card

    with pytest.raises(ValueError, match="training_data"):
        make_card("m", "p", "probably patients")


def _copy_on_own_allowlist(tmp_path: Path, test_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(a copy of the test model at tmp_path/model.pt, an empty allow-list in force)."""
    allowlist = tmp_path / "allowed-models.txt"
    monkeypatch.setenv("ICCA_MODEL_ALLOWLIST", str(allowlist))
    path = tmp_path / "model.pt"
    path.write_bytes(test_checkpoint.read_bytes())
    return path, allowlist


def test_only_checkpoints_on_the_allow_list_load_and_a_swapped_file_is_refused(
    tmp_path: Path, test_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Approval is by content: the same file approved loads; a file rewritten in place is refused before loading."""
    path, allowlist = _copy_on_own_allowlist(tmp_path, test_checkpoint, monkeypatch)
    with pytest.raises(CheckpointNotAllowedError) as refused:
        load_checkpoint(path)
    assert str(refused.value).startswith("The model file model.pt (sha256 ")
    assert f"an administrator approves it with `python -m core model allow {path}`" in str(refused.value)

    sha256 = allow_checkpoint(path, "copy of the test model")
    assert allow_checkpoint(path, "again") == sha256 and allowlist.read_text().count(sha256) == 1
    assert load_checkpoint(path).sha256 == sha256

    loads: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    _rewrite_in_place = path.read_bytes()[:-8] + b"swapped!"
    path.write_bytes(_rewrite_in_place)
    with pytest.raises(CheckpointNotAllowedError):
        load_checkpoint(path)
    assert loads == []  # refused before the file was deserialised


def test_a_file_replaced_after_its_approval_was_checked_is_not_what_loads(
    tmp_path: Path, test_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashed and read through one handle: a rebuild renamed over the file in between is not loaded under the old sha256."""
    import models.checkpoint as checkpoints

    path, _ = _copy_on_own_allowlist(tmp_path, test_checkpoint, monkeypatch)
    approved = allow_checkpoint(path, "the test model")
    original = load_checkpoint(path)

    def another_model(payload: dict) -> None:
        payload["card"]["name"] = "another model"
        for _, state_dict in checkpoint_members(payload, "other.pt"):
            for tensor in state_dict.values():
                if tensor.is_floating_point():
                    tensor.add_(1.0)

    other = _rewrite(test_checkpoint, tmp_path / "other.pt", another_model)
    check = checkpoints.check_allowed

    def swap_after_checking(checked: Path, sha256: str) -> None:
        check(checked, sha256)
        other.replace(checked)  # a rebuild's atomic rename, between the check and the read

    monkeypatch.setattr(checkpoints, "check_allowed", swap_after_checking)
    loaded = load_checkpoint(path)
    assert loaded.sha256 == approved and loaded.card["name"] == original.card["name"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.network.state_dict().values(), original.network.state_dict().values(), strict=True)
    )
    assert file_sha256(path) != approved  # the rebuild is in place for the next load, which checks it


def test_a_file_written_over_in_place_while_it_is_read_is_refused(
    tmp_path: Path, test_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy or sync onto the same file (no rename) changes what the open handle reads: refused, not loaded."""
    import models.checkpoint as checkpoints

    path = tmp_path / "model.pt"
    path.write_bytes(test_checkpoint.read_bytes())
    other = _rewrite(test_checkpoint, tmp_path / "other.pt", lambda p: p["card"].__setitem__("name", "another model"))
    check = checkpoints.check_allowed

    def write_over_after_checking(checked: Path, sha256: str) -> None:
        check(checked, sha256)
        with checked.open("r+b") as handle:  # the same inode, as `cp` or `rsync --inplace` writes
            handle.truncate(0)
            handle.write(other.read_bytes())

    monkeypatch.setattr(checkpoints, "check_allowed", write_over_after_checking)
    with pytest.raises(CheckpointError, match=r"^The model file model\.pt was written to while it was being read"):
        load_checkpoint(path)


def test_a_model_path_that_is_a_folder_is_one_sentence(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=r"^The model file models cannot be read \(Is a directory\)\.$"):
        load_checkpoint(folder, require_allowed=False)


def test_model_allow_on_the_command_line_approves_a_readable_checkpoint_only(
    tmp_path: Path, test_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.cli import main

    allowlist = tmp_path / "allowed.txt"
    monkeypatch.setenv("ICCA_MODEL_ALLOWLIST", str(allowlist))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["model", "allow", str(garbage)]) == 2 and not allowlist.exists()
    capsys.readouterr()
    assert main(["model", "allow", str(tmp_path)]) == 2 and not allowlist.exists()  # a folder
    assert f"The model file {tmp_path.name} cannot be read (Is a directory)." in capsys.readouterr().err
    assert main(["model", "allow", str(test_checkpoint)]) == 0
    [line] = allowlist.read_text().splitlines()
    assert line.startswith(load_checkpoint(test_checkpoint).sha256) and TEST_MODEL_NAME in line
    assert allowed_sha256s(allowlist) == {line.split()[0]}
    capsys.readouterr()
    assert main(["model", "allowed"]) == 0 and line in capsys.readouterr().out

"""Checkpoint save / load: weights, preprocessing and model card, in plain types only.

A checkpoint is a ``torch.save`` dict. Format 2 holds one network or an ensemble (the K
fold networks of a cross-validation, deployed together as nnU-Net deploys its folds)::

    {"format_version": 2, "architecture": "resnet50", "num_classes": 2,
     "members": [{"name": "fold 1", "state_dict": {...tensors...}}, ...],
     "ensemble_rule": "mean of the members' patch probabilities",
     "preprocess": {...}, "card": {...}}

Format 1 (one ``"state_dict"``) still loads, as a one-member model. A checkpoint is always
loaded with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers, so a model file cannot execute code.

Only checkpoints whose sha256 is on the installation's allow-list are loaded
(``$ICCA_MODEL_ALLOWLIST``, default ``models/weights/allowed-models.txt``): a file that
was swapped, damaged or never approved is refused before it is deserialised. The demo
model adds itself when it is built; an administrator adds others with
``python -m core model allow PATH``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import torch

from core.errors import CheckpointError, CheckpointNotAllowedError, ModelNotInstalledError, out_of_memory
from core.files import replaced_on_success
from core.preprocess import PreprocessConfig, UnknownPreprocessingError
from core.provenance import CARD_VERSION, TRAINING_DATA_KINDS, training_data_of, weights_warning
from models.resnet import build_resnet50

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "weights" / "model.pt"
MODEL_PATH_ENV = "ICCA_MODEL_PATH"
DEFAULT_ALLOWLIST = Path(__file__).resolve().parent / "weights" / "allowed-models.txt"
ALLOWLIST_ENV = "ICCA_MODEL_ALLOWLIST"
CHECKPOINT_FORMAT = 2  # 2: "members" (one network or an ensemble); 1: one "state_dict"
READABLE_FORMATS = (1, 2)
ENSEMBLE_RULE = "mean of the members' patch probabilities"
SINGLE_MEMBER_NAME = "single network"


def configured_model_path() -> Path:
    """The checkpoint path: ``$ICCA_MODEL_PATH`` or ``models/weights/model.pt``."""
    return Path(os.environ.get(MODEL_PATH_ENV) or DEFAULT_MODEL_PATH)


def configured_allowlist() -> Path:
    """The allow-list file: ``$ICCA_MODEL_ALLOWLIST`` or ``models/weights/allowed-models.txt``."""
    return Path(os.environ.get(ALLOWLIST_ENV) or DEFAULT_ALLOWLIST)


def allowed_sha256s(allowlist: Path | None = None) -> frozenset[str]:
    """The sha256s on the allow-list: one per line, first field; ``#`` starts a comment. Missing file: none."""
    allowlist = allowlist or configured_allowlist()
    if not allowlist.is_file():
        return frozenset()
    lines = (line.split("#", 1)[0].split() for line in allowlist.read_text().splitlines())
    return frozenset(fields[0].lower() for fields in lines if fields)


def allow_checkpoint(path: Path, note: str, allowlist: Path | None = None) -> str:
    """Add the checkpoint's sha256 to the allow-list (once) with a note on what it is; returns the sha256."""
    sha256 = file_sha256(path)
    add_to_allowlist(sha256, note, allowlist)
    return sha256


def add_to_allowlist(sha256: str, note: str, allowlist: Path | None = None) -> None:
    """Add ``sha256`` to the allow-list (once) with a note on what it is."""
    allowlist = allowlist or configured_allowlist()
    if sha256 not in allowed_sha256s(allowlist):
        allowlist.parent.mkdir(parents=True, exist_ok=True)
        with allowlist.open("a") as handle:
            handle.write(f"{sha256}  # {' '.join(note.split())[:200]}, added {datetime.now(UTC):%Y-%m-%d}\n")


def check_allowed(path: Path, sha256: str) -> None:
    """Refuse a checkpoint whose sha256 is not on the allow-list.

    Raises:
        CheckpointNotAllowedError: with one sentence on how an administrator approves it.
    """
    if sha256 not in allowed_sha256s():
        raise CheckpointNotAllowedError(
            f"The model file {path.name} (sha256 {sha256[:12]}…) is not on this installation's list of approved "
            f"models ({configured_allowlist()}); an administrator approves it with `python -m core model allow "
            f"{path}`, or rebuild the demo model with `make demo-model`."
        )


def _instance_id() -> str:
    return f"instance-{uuid.uuid4().hex}"


@dataclass
class LoadedModel:
    """A network (or an ensemble of them) ready for inference, with everything needed to use and describe it.

    Attributes:
        network: the first member; for a one-network model, the network.
        preprocess, card, sha256, path: as the checkpoint holds them.
        members: every member network (empty: just ``network``); see :attr:`ensemble`.
        member_names: one name per member, e.g. "fold 1".
        engine: the :class:`core.engine.Engine` that runs the members, once prepared
            (:func:`core.engine.prepare_engine`); ``None`` runs plain fp32.
        cache_id: identity in the patch cache: the file's sha256 for a loaded checkpoint; a
            model built in memory gets a fresh id, so two of them never share cached answers.
    """

    network: Any  # torch.nn.Module, or any callable (B, 3, S, S) → (B, C) logits in tests
    preprocess: PreprocessConfig
    card: dict[str, Any]
    sha256: str
    path: Path
    members: tuple[Any, ...] = ()
    member_names: tuple[str, ...] = ()
    engine: Any = None
    cache_id: str = field(default_factory=_instance_id)

    @property
    def ensemble(self) -> tuple[Any, ...]:
        """The member networks, in order; ``(network,)`` for a one-network model."""
        return self.members or (self.network,)

    @property
    def names(self) -> tuple[str, ...]:
        """One name per member of :attr:`ensemble`."""
        if self.member_names and len(self.member_names) == len(self.ensemble):
            return self.member_names
        if len(self.ensemble) == 1:
            return (SINGLE_MEMBER_NAME,)
        return tuple(f"member {i + 1}" for i in range(len(self.ensemble)))

    @property
    def is_ensemble(self) -> bool:
        return len(self.ensemble) > 1

    @property
    def engine_name(self) -> str:
        """The engine that runs the model, for the sidebar ("OpenVINO bf16", …)."""
        return getattr(self.engine, "name", "torch channels-last fp32")

    @property
    def training_data(self) -> str:
        """What the weights were trained on, as the card says (see :mod:`core.provenance`)."""
        return training_data_of(self.card)

    @property
    def weights_warning(self) -> str | None:
        """The sentence shown beside every risk of a model not trained on patients; ``None`` otherwise."""
        return weights_warning(self.training_data)

    @property
    def name(self) -> str:
        return str(self.card.get("name", "unnamed model"))

    @property
    def provenance(self) -> str:
        """One line on where the weights came from, for every page that shows a risk."""
        return str(self.card.get("provenance", "unknown provenance"))


def library_versions() -> dict[str, str]:
    # no torchvision: the network is models/resnet.py's, and importing torchvision costs 164 MiB
    return {"python": platform.python_version(), "torch": str(torch.__version__)}


def make_card(name: str, provenance: str, training_data: str, **extra: Any) -> dict[str, Any]:
    """A model card with the fields every checkpoint carries.

    Args:
        name: short model name shown in the sidebar.
        provenance: where the weights came from, in one line.
        training_data: one of :data:`core.provenance.TRAINING_DATA_KINDS`, as the data said.
    """
    if training_data not in TRAINING_DATA_KINDS:
        raise ValueError(f"training_data must be one of {TRAINING_DATA_KINDS}, got {training_data!r}")
    card: dict[str, Any] = {
        "name": name,
        "provenance": provenance,
        "training_data": training_data,
        "card_version": CARD_VERSION,
        "intended_use": "Research use only. Not a medical device; not for clinical decisions.",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "library_versions": library_versions(),
    }
    card.update(extra)
    return card


def save_checkpoint(
    path: Path,
    network: torch.nn.Module | Sequence[torch.nn.Module],
    preprocess: PreprocessConfig,
    card: dict[str, Any],
    *,
    member_names: Sequence[str] | None = None,
) -> str:
    """Write a checkpoint atomically (format 2); returns its SHA-256.

    Args:
        network: one network, or the members of an ensemble (e.g. the K fold networks).
        member_names: one name per member ("fold 1", …); default "single network" / "member k".
    """
    networks = [network] if isinstance(network, torch.nn.Module) else list(network)
    if not networks:
        raise ValueError("a checkpoint needs at least one network")
    if member_names is None:
        member_names = [SINGLE_MEMBER_NAME] if len(networks) == 1 else [f"member {i + 1}" for i in range(len(networks))]
    if len(member_names) != len(networks):
        raise ValueError("one name per member is needed")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": CHECKPOINT_FORMAT,
        "architecture": "resnet50",
        "num_classes": len(preprocess.labels),
        "members": [
            {"name": str(name), "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
            for name, net in zip(member_names, networks, strict=True)
        ],
        "ensemble_rule": ENSEMBLE_RULE,
        "preprocess": preprocess.to_dict(),
        "card": card,
    }
    with replaced_on_success(path) as tmp:
        torch.save(payload, tmp)
    return file_sha256(path)


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return stream_sha256(handle)


def stream_sha256(handle: BinaryIO) -> str:
    """sha256 (hex) of what is left to read in ``handle``, read 1 MiB at a time."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _not_installed(path: Path) -> ModelNotInstalledError:
    return ModelNotInstalledError(
        f"No model is installed at {path}; run `make demo-model` or set {MODEL_PATH_ENV} to a checkpoint."
    )


def read_checkpoint(path: Path, source: BinaryIO | None = None) -> dict[str, Any]:
    """The raw checkpoint dict, loaded safely (``weights_only=True``).

    ``source``: the file already open (at its start), so that what is read is what was hashed
    through the same handle; ``path`` then only names it in messages.
    """
    if source is None and not path.exists():
        raise _not_installed(path)
    try:
        payload = torch.load(source or path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if out_of_memory(exc):
            raise  # the file may be intact: "damaged" would send its owner to rebuild it for nothing
        raise CheckpointError(
            f"The model file {path.name} is damaged or not a safe checkpoint; rebuild it with `make demo-model`."
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("format_version"), int):
        raise CheckpointError(
            f"The model file {path.name} has an unknown format; rebuild it with this version of the tool."
        )
    if payload["format_version"] > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"The model file {path.name} was written by a newer version of this tool (format "
            f"{payload['format_version']}, this version reads up to {CHECKPOINT_FORMAT}); update the tool to use it."
        )
    weights = "state_dict" if payload["format_version"] == 1 else "members"
    if payload["format_version"] not in READABLE_FORMATS or not {weights, "preprocess", "card"} <= payload.keys():
        raise CheckpointError(
            f"The model file {path.name} has an outdated or incomplete format; rebuild it with this version of the tool."
        )
    return payload


def read_hashed_checkpoint(path: Path, may_read: Callable[[str], None] = lambda _: None) -> tuple[dict[str, Any], str]:
    """The checkpoint's payload and the sha256 of the very bytes it was read from.

    Hashed, then read, through one open handle, ``may_read(sha256)`` in between (it raises to
    refuse the file before anything is deserialised). A file renamed over the path meanwhile (a
    rebuild) is not what is read; one written over in place meanwhile (a copy, a sync) changes
    the handle's size or times, and is refused in one sentence.

    Raises:
        ModelNotInstalledError, CheckpointError: one sentence each; whatever ``may_read`` raises.
    """
    with _open_model_file(path) as handle:
        before = _stamp(handle)
        try:
            sha256 = stream_sha256(handle)
        except OSError as exc:
            raise CheckpointError(f"The model file {path.name} cannot be read ({exc.strerror}).") from exc
        may_read(sha256)
        handle.seek(0)
        payload = read_checkpoint(path, source=handle)
        if _stamp(handle) != before:
            raise CheckpointError(
                f"The model file {path.name} was written to while it was being read; try again once it is complete."
            )
    return payload, sha256


def _stamp(handle: BinaryIO) -> tuple[int, int, int]:
    """(inode, size, modification time in ns) of an open file, which a write to it changes.

    Not the ctime: a rename over the path changes the old file's (its link count drops), and
    reading the old file through its handle is then right.
    """
    status = os.fstat(handle.fileno())
    return status.st_ino, status.st_size, status.st_mtime_ns


def _open_model_file(path: Path) -> BinaryIO:
    """``path`` opened for reading, or one sentence: not installed, or not readable (a folder, no permission)."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise _not_installed(path) from None
    except OSError as exc:
        raise CheckpointError(f"The model file {path.name} cannot be read ({exc.strerror}).") from exc


def checkpoint_members(payload: dict[str, Any], name: str) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(member name, state dict) of every network in a format-1 or format-2 payload."""
    if payload["format_version"] == 1:
        return [(SINGLE_MEMBER_NAME, payload["state_dict"])]
    members = payload["members"]
    if not isinstance(members, list) or not members:
        raise CheckpointError(f"The model file {name} holds no network; rebuild it.")
    try:
        return [(str(m["name"]), m["state_dict"]) for m in members]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"The model file {name} has an incomplete list of networks; rebuild it.") from exc


def preprocess_from_checkpoint(payload: dict[str, Any], name: str) -> PreprocessConfig:
    """The checkpoint's preprocessing, refused whole when this version cannot reproduce it."""
    try:
        return PreprocessConfig.from_dict(dict(payload["preprocess"]))
    except UnknownPreprocessingError as error:
        raise CheckpointError(
            f"The model file {name} needs a newer version of this tool: its preprocessing has settings this "
            f"version does not know ({', '.join(error.fields)}), and running it without them would give wrong risks."
        ) from error
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"The model file {name} has invalid preprocessing settings; rebuild it.") from error


def load_checkpoint(
    path: Path | None = None, *, require_allowed: bool = True, expected_sha256: str | None = None
) -> LoadedModel:
    """Load the network(s), preprocessing and card; networks are in eval mode, channels-last, on the CPU.

    Format 1 (one network) and format 2 (one network or an ensemble) both load.
    ``require_allowed=False`` is for the training pipeline re-reading the fold files it
    has just written; everything that scores patients loads allowed checkpoints only.
    ``expected_sha256`` refuses, before reading it, a file other than the one a model was
    loaded from (reading its networks again). The sha256 approved is that of the bytes read
    (:func:`read_hashed_checkpoint`).

    Raises:
        ModelNotInstalledError, CheckpointNotAllowedError, CheckpointError: one sentence each.
    """
    path = Path(path) if path is not None else configured_model_path()

    def may_read(sha256: str) -> None:
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise CheckpointError(
                f"The model file {path.name} is gone or changed since it was loaded; restart the app to load it again."
            )
        if require_allowed:
            check_allowed(path, sha256)

    payload, sha256 = read_hashed_checkpoint(path, may_read)
    preprocess = preprocess_from_checkpoint(payload, path.name)
    networks, names = [], []
    for name, state_dict in checkpoint_members(payload, path.name):
        network = build_resnet50(num_classes=int(payload.get("num_classes", 2)))
        try:
            network.load_state_dict(state_dict)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"The model file {path.name} does not hold ResNet50 weights.") from exc
        networks.append(network.eval().to(memory_format=torch.channels_last))
        names.append(name)
    return LoadedModel(
        networks[0],
        preprocess,
        dict(payload["card"]),
        sha256,
        path,
        members=tuple(networks) if len(networks) > 1 else (),
        member_names=tuple(names),
        cache_id=sha256,
    )

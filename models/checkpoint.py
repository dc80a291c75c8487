"""Checkpoint save / load: weights, preprocessing and model card, in plain types only.

A checkpoint is a ``torch.save`` dict::

    {"format_version": 1, "architecture": "resnet50", "num_classes": 2,
     "state_dict": {...tensors...}, "preprocess": {...}, "card": {...}}

It is always loaded with ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers, so a model file cannot execute code.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from core.errors import CheckpointError, ModelNotInstalledError
from core.preprocess import FORMAT_VERSION, PreprocessConfig, UnknownPreprocessingError
from core.provenance import CARD_VERSION, TRAINING_DATA_KINDS, training_data_of, weights_warning
from models.resnet import build_resnet50

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "weights" / "model.pt"
MODEL_PATH_ENV = "ICCA_MODEL_PATH"


def configured_model_path() -> Path:
    """The checkpoint path: ``$ICCA_MODEL_PATH`` or ``models/weights/model.pt``."""
    return Path(os.environ.get(MODEL_PATH_ENV) or DEFAULT_MODEL_PATH)


@dataclass
class LoadedModel:
    """A network ready for inference with everything needed to use and describe it."""

    network: torch.nn.Module
    preprocess: PreprocessConfig
    card: dict[str, Any]
    sha256: str
    path: Path

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
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


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


def save_checkpoint(path: Path, network: torch.nn.Module, preprocess: PreprocessConfig, card: dict[str, Any]) -> str:
    """Write a checkpoint atomically; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "architecture": "resnet50",
        "num_classes": len(preprocess.labels),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "preprocess": preprocess.to_dict(),
        "card": card,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict, loaded safely (``weights_only=True``)."""
    if not path.exists():
        raise ModelNotInstalledError(
            f"No model is installed at {path}; run `make demo-model` or set {MODEL_PATH_ENV} to a checkpoint."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"The model file {path.name} is damaged or not a safe checkpoint; rebuild it with `make demo-model`."
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("format_version"), int):
        raise CheckpointError(
            f"The model file {path.name} has an unknown format; rebuild it with this version of the tool."
        )
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"The model file {path.name} was written by a newer version of this tool (format "
            f"{payload['format_version']}, this version reads {FORMAT_VERSION}); update the tool to use it."
        )
    if payload["format_version"] < FORMAT_VERSION or not {"state_dict", "preprocess", "card"} <= payload.keys():
        raise CheckpointError(
            f"The model file {path.name} has an outdated or incomplete format; rebuild it with this version of the tool."
        )
    return payload


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


def load_checkpoint(path: Path | None = None) -> LoadedModel:
    """Load the network, preprocessing and card; the network is in eval mode on the CPU."""
    path = Path(path) if path is not None else configured_model_path()
    payload = read_checkpoint(path)
    preprocess = preprocess_from_checkpoint(payload, path.name)
    network = build_resnet50(num_classes=int(payload.get("num_classes", 2)))
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"The model file {path.name} does not hold ResNet50 weights.") from exc
    network.eval().to(memory_format=torch.channels_last)
    return LoadedModel(network, preprocess, dict(payload["card"]), file_sha256(path), path)

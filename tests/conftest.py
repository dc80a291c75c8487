"""Shared fixtures: a real, randomly initialised ResNet50 checkpoint and a fresh SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import db
from core.preprocess import PreprocessConfig
from models.checkpoint import make_card, save_checkpoint
from models.resnet import build_resnet50

TEST_MODEL_NAME = "untrained test model"


@pytest.fixture(scope="session")
def test_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ResNet50 with random weights (seed 0) and the paper's default preprocessing."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    card = make_card(TEST_MODEL_NAME, "untrained test model (random weights, seed 0)", "untrained")
    save_checkpoint(path, build_resnet50(seed=0), PreprocessConfig(), card)
    return path


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cases.db'}"


@pytest.fixture()
def engine(sqlite_url: str):
    eng = db.make_engine(sqlite_url)
    db.migrate(eng)
    yield eng
    eng.dispose()

"""Shared fixtures: a real, randomly initialised ResNet50 checkpoint and a fresh SQLite database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from core import db
from core.preprocess import PreprocessConfig
from models.checkpoint import ALLOWLIST_ENV, allow_checkpoint, make_card, save_checkpoint
from models.resnet import build_resnet50

TEST_MODEL_NAME = "untrained test model"
TEST_ENSEMBLE_NAME = "untrained test ensemble"


@pytest.fixture(autouse=True)
def _engine_choice_of_the_test_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Tests never read the machine's own ranking (data/engine-choice.json): what runs must not depend on it."""
    from core.engine import ENGINE_CACHE_ENV

    monkeypatch.setenv(ENGINE_CACHE_ENV, str(tmp_path_factory.getbasetemp() / "engine-choice.json"))


TEST_ACTOR_SUBJECT = "test:admin"


@pytest.fixture(autouse=True)
def _an_administrator_acts() -> Iterator[None]:
    """Core's role checks need an actor; tests of the roles themselves act as someone else inside."""
    from core.access import Actor, Role, acting_as

    with acting_as(Actor(TEST_ACTOR_SUBJECT, Role.ADMIN)):
        yield


def _test_allowlist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "allowed-models.txt"


@pytest.fixture(autouse=True)
def _allowlist_of_the_test_session(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests approve models on their own allow-list, never the installation's (models/weights/allowed-models.txt)."""
    monkeypatch.setenv(ALLOWLIST_ENV, str(_test_allowlist(tmp_path_factory)))
    monkeypatch.setenv("ICCA_DEMO_AUTOBUILD", "0")  # a test never starts the 15-minute demo build


@pytest.fixture(scope="session")
def test_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ResNet50 with random weights (seed 0) and the paper's default preprocessing."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    card = make_card(TEST_MODEL_NAME, "untrained test model (random weights, seed 0)", "untrained")
    save_checkpoint(path, build_resnet50(seed=0), PreprocessConfig(), card)
    allow_checkpoint(path, TEST_MODEL_NAME, _test_allowlist(tmp_path_factory))
    return path


@pytest.fixture(scope="session")
def test_ensemble_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real ResNet50s with random weights (seeds 0 and 1) as a fold ensemble, 64-px input (fast)."""
    path = tmp_path_factory.mktemp("ensemble") / "model.pt"
    card = make_card(TEST_ENSEMBLE_NAME, "untrained test ensemble (random weights, seeds 0 and 1)", "untrained")
    cfg = replace(PreprocessConfig(), input_px=64)
    save_checkpoint(
        path, [build_resnet50(seed=0), build_resnet50(seed=1)], cfg, card, member_names=["fold 1", "fold 2"]
    )
    allow_checkpoint(path, TEST_ENSEMBLE_NAME, _test_allowlist(tmp_path_factory))
    return path


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cases.db'}"


POSTGRES_URL_ENV = "ICCA_TEST_POSTGRES_URL"


def postgres_url() -> str:
    """The test PostgreSQL URL (``make test`` starts a server); skip, or fail in CI, without one."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_URL_ENV} is not set; .ci/run must start PostgreSQL (.ci/postgres.sh).")
        pytest.skip(f"no PostgreSQL: set {POSTGRES_URL_ENV} or run `make test` as root")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, sqlite_url: str):
    """A freshly migrated database: the same tests run on SQLite and on a real PostgreSQL."""
    if request.param == "sqlite":
        eng = db.make_engine(sqlite_url)
    else:
        eng = db.make_engine(postgres_url())
        with eng.begin() as conn:  # start from an empty schema every time
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    db.migrate(eng)
    yield eng
    eng.dispose()

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from core import db
from core.cases import load_saved_case
from core.pseudonym import case_key


def _new_case(key: str = "P-abc") -> tuple[db.NewCase, db.NewAnalysis]:
    pixels = np.random.default_rng(0).normal(40, 10, (64, 64)).astype(np.float32)
    mask = np.zeros((64, 64), bool)
    mask[10:30, 12:40] = True
    case = db.NewCase(
        case_key=key,
        source_kind="dicom",
        is_hu=True,
        pixels=pixels,
        spacing_mm=(0.7, 0.7),
        mask=mask,
        n_category="N1",
        t_category="T2",
        tumour_size_mm=50.0,
        solitary=True,
        display_level=60.0,
        display_width=160.0,
    )
    analysis = db.NewAnalysis(
        model_sha256="f" * 64,
        model_name="test",
        model_provenance="untrained test model",
        preprocess={"patch_px": 128},
        dl_probability=0.7,
        dl_share_above=0.8,
        dl_threshold=0.5,
        aggregation_rule="mean",
        clinical_model="N",
        clinical_probability=0.85,
        clinical_ci_low=0.5,
        clinical_ci_high=0.96,
        probabilities=np.array([0.6, 0.8]),
        boxes_img=np.array([[10.0, 12.0, 20.0, 22.0], [15.0, 20.0, 25.0, 30.0]]),
        seconds=1.0,
    )
    return case, analysis


def test_migration_creates_every_table_and_is_idempotent(engine) -> None:
    db.migrate(engine)  # second run: nothing to do
    tables = set(inspect(engine).get_table_names())
    assert {"cases", "stored_arrays", "analyses", "outcomes", "audit_events", "alembic_version"} <= tables


def test_sqlite_pragmas(engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite-only connection settings")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_save_and_reopen_round_trip(engine) -> None:
    new_case, analysis = _new_case()
    with Session(engine) as session:
        case = db.add_case(session, new_case, analysis)
        session.commit()
        case_id = case.id
    with Session(engine) as session:
        saved = load_saved_case(session, case_id)
    assert saved is not None
    np.testing.assert_array_equal(saved.pixels, new_case.pixels)
    np.testing.assert_array_equal(saved.mask, new_case.mask)
    assert saved.dl_risk.probability == 0.7 and saved.clinical_risk.ci_high == 0.96
    assert saved.pmap[12, 14] == pytest.approx(0.6) and saved.pmap[17, 21] == pytest.approx(0.7)


def test_delete_cascades_and_leaves_an_audit_record(engine) -> None:
    with Session(engine) as session:
        db.add_case(session, *_new_case("P-del"))
        session.commit()
        case_id = db.list_cases(session)[0].id
        assert db.delete_case(session, case_id)
        session.commit()
    with Session(engine) as session:
        assert session.scalar(select(db.StoredArray).limit(1)) is None
        assert session.scalar(select(db.Analysis).limit(1)) is None
        actions = [e.action for e in session.scalars(select(db.AuditEvent).order_by(db.AuditEvent.id))]
    assert actions == ["case_saved", "case_deleted"]


def test_case_key_is_a_keyed_hash_never_the_id() -> None:
    secret = b"k" * 32
    key = case_key("MRN-12345", secret)
    assert key.startswith("P-") and "12345" not in key
    assert key == case_key("MRN-12345", secret) != case_key("MRN-12345", b"other")
    assert case_key("", secret).startswith("R-")


def test_migrations_match_the_models(engine) -> None:
    """The ORM and the Alembic history describe the same schema (no pending autogenerate diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.Base.metadata)
    assert diff == []

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import inspect, select, text, update
from sqlalchemy.orm import Session

from core import arrays, db
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
        training_data="untrained",
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
    latest = saved.summary.latest
    assert latest.dl_risk.probability == 0.7 and latest.clinical_risk.ci_high == 0.96
    assert saved.pmap[12, 14] == pytest.approx(0.6) and saved.pmap[17, 21] == pytest.approx(0.7)


def test_delete_cascades_and_leaves_an_audit_record(engine) -> None:
    with Session(engine) as session:
        db.add_case(session, *_new_case("P-del"))
        session.commit()
        case_id = db.list_cases(session)[0].id
        deleted = db.delete_case(session, case_id)
        session.commit()
        assert deleted == db.DeletedCase("P-del", analyses=1, arrays=4, outcomes=0)
        assert db.delete_case(session, case_id) is None  # deleted meanwhile: nothing to say but that
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


def test_saving_again_updates_the_same_case(engine) -> None:
    from core.cases import save_case

    new_case, analysis = _new_case("P-once")
    update = db.ClinicalUpdate("N1", "T2", 50.0, True, 0.85, 0.5, 0.96)
    with Session(engine) as session:
        first = save_case(session, new_case, analysis, update, saved_case_id=None)
        session.commit()
        again = save_case(session, new_case, analysis, update, saved_case_id=first.case_id)
        changed = save_case(
            session, new_case, analysis, db.ClinicalUpdate("N0", "T2", 50.0, True, 0.32, 0.17, 0.52), first.case_id
        )
        session.commit()
    assert (first.action, again.action, changed.action) == ("saved", "unchanged", "updated")
    assert changed.changed == ("n_category",) and again.case_id == changed.case_id == first.case_id
    with Session(engine) as session:
        [case] = db.list_cases(session)
        assert case.n_category == "N0" and case.analyses[-1].clinical_probability == 0.32
        actions = [e.action for e in session.scalars(select(db.AuditEvent).order_by(db.AuditEvent.id))]
        assert actions == ["case_saved", "case_updated"]
        db.delete_case(session, case.id)
        session.commit()
        # the case was deleted meanwhile (another tab): saving again makes a new one, nothing is lost
        assert save_case(session, new_case, analysis, update, saved_case_id=first.case_id).action == "saved"


def test_case_list_loads_analyses_without_a_query_per_row(engine) -> None:
    from sqlalchemy import event

    from core.cases import list_case_summaries

    with Session(engine) as session:
        for i in range(5):
            db.add_case(session, *_new_case(f"P-{i}"))
        session.commit()
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with Session(engine) as session:
        summaries = list_case_summaries(session)
    assert len(summaries) == 5 and all(s.latest.training_data == "untrained" for s in summaries)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 3  # cases, analyses, outcomes


def test_migration_0002_maps_first_release_provenance_to_training_data(engine) -> None:
    """Analyses saved by the first release: synthetic stays synthetic; its unproven "patients" claim is unknown."""
    db.migrate(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO cases (id, case_key, created_at, updated_at, source_kind, is_hu, rows, cols, "
                "spacing_row_mm, spacing_col_mm, roi_area_px, n_category, display_level, display_width) VALUES "
                "(1, 'P-old', '2026-11-27', '2026-11-27', 'dicom', true, 8, 8, 0.7, 0.7, 10, 'N0', 60, 160)"
            )
        )
        for i, provenance in enumerate(
            [
                "trained on synthetic phantoms — not for clinical use",
                "untrained test model (random weights, seed 0)",
                "trained on 41 patients of the local cohort",
                "fold 1 of 5",
            ]
        ):
            conn.execute(
                text(
                    "INSERT INTO analyses (case_id, created_at, model_sha256, model_name, model_provenance, "
                    "preprocess, dl_probability, dl_share_above, dl_threshold, n_patches, aggregation_rule, "
                    "clinical_model, probabilities_id, boxes_id) VALUES (1, :at, 'x', 'm', :p, '{}', 0.5, 0.5, "
                    "0.5, 1, 'mean', 'N', 'a', 'b')"
                ),
                {"p": provenance, "at": f"2026-11-27 00:00:0{i}"},
            )
    db.migrate(engine)
    with Session(engine) as session:
        [case] = db.list_cases(session)
        kinds = [a.training_data for a in case.analyses]
        assert case.spacing_source == "header"
    assert kinds == ["synthetic phantoms", "untrained", "unknown", "unknown"]


def test_uncertainty_is_saved_reopened_and_a_later_sensitivity_updates_the_saved_case(engine) -> None:
    from dataclasses import replace

    from core.cases import save_case

    new_case, analysis = _new_case("P-spread")
    spread = {"analysis": {"spread": {"names": ["fold 1", "fold 2"], "risks": [0.6, 0.8]}, "engine": "eager"}}
    update = db.ClinicalUpdate("N1", "T2", 50.0, True, 0.85, 0.5, 0.96)
    with_sensitivity = {**spread, "sensitivity": {"rows": [{"offset_mm": 0.0, "risk": 0.7}]}}
    with Session(engine) as session:
        first = save_case(session, new_case, replace(analysis, uncertainty=spread), update, saved_case_id=None)
        session.commit()
        again = save_case(session, new_case, replace(analysis, uncertainty=spread), update, first.case_id)
        later = save_case(session, new_case, replace(analysis, uncertainty=with_sensitivity), update, first.case_id)
        session.commit()
    assert (again.action, later.action, later.changed) == ("unchanged", "updated", ("uncertainty",))
    with Session(engine) as session:
        saved = load_saved_case(session, first.case_id)
        assert saved.summary.analyses[-1].uncertainty == with_sensitivity
        [event] = session.scalars(select(db.AuditEvent).where(db.AuditEvent.action == "case_updated")).all()
        assert event.detail == {"fields": ["uncertainty"]}


def test_migration_0004_adds_uncertainty_and_keeps_older_analyses(engine) -> None:
    """Analyses saved before 0004 reopen with no uncertainty; a downgrade drops only that column."""
    from core.cases import list_case_summaries

    with Session(engine) as session:
        db.add_case(session, *_new_case("P-before-0004"))
        session.commit()
    db.migrate(engine, "0003")
    assert "uncertainty" not in {c["name"] for c in inspect(engine).get_columns("analyses")}
    db.migrate(engine)
    with Session(engine) as session:
        [summary] = list_case_summaries(session)
    assert summary.case_key == "P-before-0004" and summary.analyses[-1].uncertainty is None
    assert summary.analyses[-1].dl_risk.probability == 0.7


def test_an_outcome_change_adds_a_row_and_an_audit_event_with_old_and_new_intervals(engine) -> None:
    from core.cases import list_case_summaries
    from core.outcomes import FollowUp

    with Session(engine) as session:
        case = db.add_case(session, *_new_case("P-outcome"))
        session.commit()
        case_id = case.id
    short = FollowUp(days_to_recurrence=None, days_followed=200)
    recurred = FollowUp(days_to_recurrence=300, days_followed=None)
    with Session(engine) as session:
        assert db.record_outcome(session, case_id, short)
        session.commit()
        assert not db.record_outcome(session, case_id, short)  # the same again: nothing to record
        assert db.record_outcome(session, case_id, recurred)
        session.commit()
    with Session(engine) as session:
        assert db.latest_outcome(session, case_id) == recurred
        [summary] = list_case_summaries(session)
        assert summary.outcome == recurred and summary.outcome.status == "early recurrence"
        rows = session.scalars(select(db.Outcome).order_by(db.Outcome.id)).all()
        assert [(r.early_recurrence, r.days_followed, r.days_to_recurrence) for r in rows] == [
            (None, 200, None),  # unknown: stored as NULL, never as False
            (True, None, 300),
        ]
        events = session.scalars(select(db.AuditEvent).where(db.AuditEvent.action == "outcome_recorded")).all()
        assert [e.detail for e in events] == [
            {"old": None, "new": short.to_dict()},
            {"old": short.to_dict(), "new": recurred.to_dict()},
        ]
        with pytest.raises(LookupError):
            db.record_outcome(session, case_id + 99, short)


def test_case_table_csv_is_pseudonymised_and_carries_the_outcome(engine) -> None:
    import csv
    import io

    from core.cases import CASE_TABLE_COLUMNS, case_table_csv, list_case_summaries
    from core.outcomes import FollowUp

    with Session(engine) as session:
        case = db.add_case(session, *_new_case("P-csv"))
        db.add_case(session, *_new_case("P-csv-2"))
        session.flush()
        db.record_outcome(session, case.id, FollowUp(days_to_recurrence=120, days_followed=None))
        session.commit()
        text = case_table_csv(list_case_summaries(session))
    rows = {row["case_key"]: row for row in csv.DictReader(io.StringIO(text))}
    assert next(csv.reader(io.StringIO(text))) == list(CASE_TABLE_COLUMNS)
    assert rows["P-csv"]["outcome"] == "early recurrence" and rows["P-csv"]["days_to_recurrence"] == "120"
    assert rows["P-csv-2"]["outcome"] == "not recorded" and rows["P-csv-2"]["days_followed"] == ""
    assert rows["P-csv"]["dl_mean_patch_probability"] == "0.7000" and rows["P-csv"]["clinical_probability"] == "0.8500"
    assert rows["P-csv"]["model_sha256"] == "f" * 64
    assert not {"patient_id", "patient_name", "birth_date"} & set(CASE_TABLE_COLUMNS)


def test_every_stored_array_is_checked_against_its_checksum_on_load(engine) -> None:
    """A byte changed after writing is found on load and named for that case and kind; intact rows load."""
    from core.errors import StoredArrayDamagedError

    with Session(engine) as session:
        case = db.add_case(session, *_new_case("P-checksum"))
        session.commit()
        case_id = case.id
        assert all(row.sha256 == arrays.checksum(row.data) for row in case.arrays)
        mask = db.case_array(session, case, "mask")
        row = next(r for r in case.arrays if r.kind == "mask")
        middle = len(row.data) // 2
        flipped = row.data[:middle] + bytes([row.data[middle] ^ 0x01]) + row.data[middle + 1 :]
        session.execute(update(db.StoredArray).where(db.StoredArray.id == row.id).values(data=flipped))
        session.commit()
    with Session(engine) as session:
        case = session.get(db.Case, case_id)
        assert db.case_array(session, case, "slice").shape == (64, 64)
        with pytest.raises(StoredArrayDamagedError, match=rf"Case #{case_id} .* stored mask is damaged"):
            db.case_array(session, case, "mask")
    assert mask.dtype == bool


def test_migration_0006_gives_older_arrays_their_checksum(engine) -> None:
    """Arrays written before 0006 get the checksum of their bytes and keep loading."""
    with Session(engine) as session:
        db.add_case(session, *_new_case("P-before-0006"))
        session.commit()
    db.migrate(engine, "0005")
    assert "sha256" not in {c["name"] for c in inspect(engine).get_columns("stored_arrays")}
    db.migrate(engine)
    with Session(engine) as session:
        [case] = db.list_cases(session)
        assert len(case.arrays) == 4
        assert all(row.sha256 == arrays.checksum(row.data) for row in case.arrays)
        assert db.case_array(session, case, "slice").shape == (64, 64)


def test_a_downgrade_to_the_first_releases_and_back_keeps_every_case_whole(engine) -> None:
    """Batch migrations rebuild tables on SQLite: with foreign keys on, that would cascade-delete children."""
    with Session(engine) as session:
        db.add_case(session, *_new_case("P-round-trip"))
        session.commit()
    db.migrate(engine, "0001")
    db.migrate(engine)
    with Session(engine) as session:
        [case] = db.list_cases(session)
        assert (len(case.analyses), len(case.arrays)) == (1, 4)
        assert db.case_array(session, case, "slice").shape == (64, 64)

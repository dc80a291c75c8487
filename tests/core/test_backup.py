"""Backups, restores and upgrades of the case database, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import MetaData, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from core import backup, db
from core.cases import load_saved_case
from core.cli import main
from core.outcomes import FollowUp
from tests.core.test_db import _new_case


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _save_cases(engine: Engine, keys: list[str]) -> dict[str, np.ndarray]:
    """Save one case per key, each with its own slice; returns the slices by key."""
    slices: dict[str, np.ndarray] = {}
    with Session(engine) as session:
        for i, key in enumerate(keys):
            new_case, analysis = _new_case(key)
            pixels = np.random.default_rng(i).normal(40, 10, (64, 64)).astype(np.float32)
            case = db.add_case(session, _with_pixels(new_case, pixels), analysis)
            session.flush()
            db.record_outcome(session, case.id, FollowUp(days_to_recurrence=100 + i, days_followed=None))
            slices[key] = pixels
        session.commit()
    return slices


def _with_pixels(new_case: db.NewCase, pixels: np.ndarray) -> db.NewCase:
    from dataclasses import replace

    return replace(new_case, pixels=pixels)


def _saved(engine: Engine) -> dict[str, tuple[np.ndarray, int | None]]:
    """Every case's key → (slice, days to recurrence), read back through the Cases page's loader."""
    found = {}
    with Session(engine) as session:
        for case in db.list_cases(session):
            saved = load_saved_case(session, case.id)
            assert saved is not None
            found[case.case_key] = (saved.pixels, saved.summary.outcome.days_to_recurrence)
    return found


def test_backup_then_restore_brings_back_every_case_and_keeps_what_it_replaced(engine, tmp_path: Path) -> None:
    """The round trip through the command line: cases, arrays and outcomes come back bit for bit."""
    url = _url(engine)
    slices = _save_cases(engine, ["P-1", "P-2", "P-3"])
    archive = tmp_path / f"icca-backup.{engine.dialect.name}"
    assert main(["db", "backup", str(archive), "--database", url]) == 0

    with Session(engine) as session:  # after the backup: one case deleted, another added
        db.delete_case(session, next(c.id for c in db.list_cases(session) if c.case_key == "P-2"))
        session.commit()
    _save_cases(engine, ["P-after-backup"])

    assert main(["db", "restore", str(archive), "--database", url]) == 2  # holds cases: refused without --replace
    assert set(_saved(engine)) == {"P-1", "P-3", "P-after-backup"}
    assert main(["db", "restore", str(archive), "--database", url, "--replace"]) == 0
    engine.dispose()
    restored = _saved(engine)
    assert set(restored) == set(slices)
    for key, (pixels, days) in restored.items():
        np.testing.assert_array_equal(pixels, slices[key])
        assert days == 100 + int(key[-1]) - 1

    [safety] = tmp_path.glob("icca-backup-before-restore-*")  # what the restore replaced is kept
    engine.dispose()
    assert main(["db", "restore", str(safety), "--database", url, "--replace"]) == 0
    engine.dispose()
    assert set(_saved(engine)) == {"P-1", "P-3", "P-after-backup"}


def test_a_backup_never_overwrites_a_file_and_a_restore_refuses_another_kind_of_backup(
    engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(engine)
    _save_cases(engine, ["P-1"])
    existing = tmp_path / "taken.bak"
    existing.write_bytes(b"an earlier backup")
    assert main(["db", "backup", str(existing), "--database", url]) == 2
    assert existing.read_bytes() == b"an earlier backup"
    assert "already exists; choose a new file name" in capsys.readouterr().err

    other = tmp_path / "other.bak"
    other.write_bytes(b"PGDMP" if engine.dialect.name == "sqlite" else b"SQLite format 3\x00")
    assert main(["db", "restore", str(other), "--database", url, "--replace"]) == 2
    kind = "postgresql" if engine.dialect.name == "sqlite" else "sqlite"
    assert f"other.bak is a {kind} backup and cannot be restored into a {engine.dialect.name} database" in (
        capsys.readouterr().err
    )
    assert set(_saved(engine)) == {"P-1"}


def test_check_reports_each_damaged_array_by_case(engine, capsys: pytest.CaptureFixture[str]) -> None:
    _save_cases(engine, ["P-1", "P-2"])
    with Session(engine) as session:
        row = session.scalars(select(db.StoredArray).where(db.StoredArray.kind == "mask").limit(1)).one()
        session.execute(update(db.StoredArray).where(db.StoredArray.id == row.id).values(sha256="0" * 64))
        session.commit()
        case_id = row.case_id
    assert main(["db", "check", "--database", _url(engine)]) == 1
    assert capsys.readouterr().out.strip() == (
        f"2 case(s), 8 stored array(s); 1 damaged: case #{case_id} (mask). "
        "Restore those cases from an older backup or delete them."
    )


def test_a_database_written_by_the_oldest_schema_upgrades_with_every_case_intact(engine, tmp_path: Path) -> None:
    """Cases saved by the first release (revision 0001), backed up then, restore into this release intact."""
    scratch = db.make_engine(f"sqlite:///{tmp_path / 'scratch.db'}")
    db.migrate(scratch)
    slices = _save_cases(scratch, ["P-old-1", "P-old-2", "P-old-3"])
    db.migrate(engine, "0001")
    _copy_rows_as_the_first_release_wrote_them(scratch, engine)
    scratch.dispose()

    archive = tmp_path / "first-release.bak"
    backup.backup(_url(engine), archive)
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM outcomes")
        connection.exec_driver_sql("DELETE FROM analyses")
        connection.exec_driver_sql("DELETE FROM stored_arrays")
        connection.exec_driver_sql("DELETE FROM cases")
        connection.exec_driver_sql("DELETE FROM audit_events")
    db.migrate(engine)  # an empty database of this release
    check = backup.restore(_url(engine), archive).check

    assert (check.cases, check.arrays, check.damaged) == (3, 12, ())
    restored = _saved(engine)
    assert set(restored) == set(slices)
    for key, (pixels, _days) in restored.items():
        np.testing.assert_array_equal(pixels, slices[key])


def _copy_rows_as_the_first_release_wrote_them(source: Engine, target: Engine) -> None:
    """Copy every case's rows into a database at revision 0001, keeping only the columns 0001 had."""
    old = MetaData()
    old.reflect(target)
    new = MetaData()
    new.reflect(source)
    with source.connect() as read, target.begin() as write:
        for name in ("cases", "stored_arrays", "analyses", "outcomes", "audit_events"):
            columns = {c.name for c in old.tables[name].columns}
            rows = [
                {k: v for k, v in row._mapping.items() if k in columns}
                for row in read.execute(new.tables[name].select())
            ]
            write.execute(old.tables[name].insert(), rows)
        if target.dialect.name == "postgresql":  # ids were given explicitly: move the sequences past them
            for name in ("cases", "analyses", "outcomes", "audit_events"):
                write.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))"
                )


def test_a_damaged_or_newer_backup_is_refused_and_the_database_is_left_as_it_was(engine, tmp_path: Path) -> None:
    """A truncated backup, or one from a newer release, changes nothing, and no half copy is left behind."""
    url = _url(engine)
    _save_cases(engine, ["P-kept"])
    archive = tmp_path / "good.bak"
    backup.backup(url, archive)
    truncated = tmp_path / "truncated.bak"
    truncated.write_bytes(archive.read_bytes()[: len(archive.read_bytes()) * 2 // 3])
    with pytest.raises(backup.BackupError, match=r"left as it was|not a readable SQLite|cannot read"):
        backup.restore(url, truncated, replace=True)
    engine.dispose()
    assert set(_saved(engine)) == {"P-kept"}

    if engine.dialect.name == "sqlite":  # a backup whose schema revision this release does not know
        newer = tmp_path / "newer.bak"
        newer.write_bytes(archive.read_bytes())
        other = db.make_engine(f"sqlite:///{newer}")
        with other.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        other.dispose()
        with pytest.raises(backup.BackupError, match="written by a newer release"):
            backup.restore(url, newer, replace=True)
        assert set(_saved(engine)) == {"P-kept"}
    assert sorted(p.name for p in tmp_path.iterdir() if ".partial" in p.name or ".restoring" in p.name) == []


def test_a_restore_is_audited_and_says_where_the_replaced_database_went(
    engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(engine)
    _save_cases(engine, ["P-1"])
    archive = tmp_path / "a.bak"
    backup.backup(url, archive)
    capsys.readouterr()
    assert main(["db", "restore", str(archive), "--database", url, "--replace"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Restored a.bak: 1 case(s), 4 stored array(s), every checksum verified. What it replaced")
    assert str(tmp_path / "a-before-restore-") in out
    engine.dispose()
    with Session(engine) as session:
        last = session.scalars(select(db.AuditEvent).order_by(db.AuditEvent.id.desc()).limit(1)).one()
    assert (last.action, last.detail["backup"]) == ("database_restored", "a.bak") and last.actor.startswith("cli:")

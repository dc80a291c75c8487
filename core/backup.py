"""Backups of the case database, their restore, and a check of every stored array.

SQLite is copied with its online backup API (``sqlite3.Connection.backup``), which gives
a consistent snapshot while the dashboard keeps writing. PostgreSQL is dumped with
``pg_dump --format=custom`` and read back with ``pg_restore``, the tools of the server's
own installation. A restored database is upgraded to the newest schema and every array's
checksum is verified, so a backup taken by an older release restores into this one.

The password of a PostgreSQL URL goes to the tools through ``PGPASSWORD``, never on a
command line another user could read.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from core import arrays, db
from core.errors import UserFacingError

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_DUMP_MAGIC = b"PGDMP"


class BackupError(UserFacingError):
    """A backup or a restore cannot be made; nothing was changed."""


@dataclass(frozen=True)
class DatabaseCheck:
    """What a database holds and whether its stored arrays are intact."""

    cases: int
    arrays: int
    damaged: tuple[tuple[int, str], ...]  # (case id, array kind) of each array failing its checksum
    verified: bool = True  # False: written by a release before checksums (schema < 0006); checked once upgraded

    def sentence(self) -> str:
        held = f"{self.cases} case(s), {self.arrays} stored array(s)"
        if not self.verified:
            return f"{held}, from a release before checksums: they are written and verified once it is upgraded."
        if not self.damaged:
            return f"{held}, every checksum verified."
        listed = ", ".join(f"case #{case_id} ({kind})" for case_id, kind in self.damaged[:20])
        if len(self.damaged) > 20:
            listed += f" and {len(self.damaged) - 20} more"
        return (
            f"{held}; {len(self.damaged)} damaged: {listed}. Restore those cases from an older backup or delete them."
        )


def check_database(engine: Engine) -> DatabaseCheck:
    """Verify every stored array against its checksum, one row at a time (bounded memory)."""
    from sqlalchemy import inspect

    with Session(engine) as session:
        cases = session.scalar(select(func.count()).select_from(db.Case)) or 0
        ids = list(session.scalars(select(db.StoredArray.id).order_by(db.StoredArray.case_id)))
        if "sha256" not in {c["name"] for c in inspect(engine).get_columns("stored_arrays")}:
            return DatabaseCheck(cases=cases, arrays=len(ids), damaged=(), verified=False)
        damaged: list[tuple[int, str]] = []
        for array_id in ids:
            row = session.execute(
                select(db.StoredArray.case_id, db.StoredArray.kind, db.StoredArray.data, db.StoredArray.sha256).where(
                    db.StoredArray.id == array_id
                )
            ).one()
            if arrays.checksum(row.data) != row.sha256:
                damaged.append((row.case_id, row.kind))
    return DatabaseCheck(cases=cases, arrays=len(ids), damaged=tuple(damaged))


def backup(url: str, path: Path) -> str:
    """Write a consistent backup of the database at ``url`` to ``path`` (a new file) and read it back.

    Returns:
        One sentence on what the backup holds: for SQLite the check of the copy itself
        (:func:`check_database`), for PostgreSQL the tables ``pg_restore --list`` reads in it.

    Raises:
        BackupError: ``path`` exists, the database cannot be read, or ``pg_dump`` fails.
    """
    if path.exists():
        raise BackupError(f"{path} already exists; choose a new file name so no earlier backup is overwritten.")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a backup cut short never looks complete
    dialect = make_url(url).get_backend_name()
    try:
        if dialect == "sqlite":
            _sqlite_copy(_sqlite_file(url, must_exist=True), partial)
            held = _check_file(partial).sentence()
        elif dialect == "postgresql":
            _run_pg_tool(["pg_dump", "--format=custom", "--no-owner", "--file", str(partial)], url)
            held = f"pg_restore reads the data of {_dump_tables(partial)} table(s) in it."
        else:
            raise BackupError(f"Backups of {dialect} databases are not supported; use SQLite or PostgreSQL.")
    except BaseException:
        partial.unlink(missing_ok=True)  # never leave half a copy of patient data behind
        raise
    partial.replace(path)  # only a backup that was read back gets its name
    return f"Backup {path.name} ({path.stat().st_size / 2**20:.1f} MiB): {held}"


@dataclass(frozen=True)
class Restored:
    """What a restore did: the check of the restored database and where the replaced one was saved."""

    check: DatabaseCheck
    safety_copy: Path | None

    def sentence(self, backup_name: str) -> str:
        kept = f" What it replaced is saved in {self.safety_copy}." if self.safety_copy else ""
        return f"Restored {backup_name}: {self.check.sentence()}{kept}"


def restore(url: str, path: Path, replace: bool = False) -> Restored:
    """Restore the backup ``path`` into the database at ``url``, upgrade it, check it and audit it.

    Stop the dashboard first: saves made while a restore runs are not in the restored database.
    A database that holds anything (cases, audit events, clinical models) is replaced only with
    ``replace=True``, and its content is first saved beside ``path``
    (``…-before-restore-<UTC time>``). A SQLite backup is checked and upgraded in a staging copy
    before it replaces anything; a PostgreSQL dump is read completely before the one transaction
    that replaces the schema.

    Raises:
        BackupError: not a backup of this kind of database, written by a newer release, damaged,
            a target holding data without ``replace``, or a failing ``pg_restore``/``psql``.
    """
    if not path.is_file():
        raise BackupError(f"No backup file at {path}; check the path.")
    dialect = make_url(url).get_backend_name()
    kind = _backup_kind(path)
    if kind != dialect:
        raise BackupError(
            f"{path.name} is a {kind or 'unknown kind of'} backup and cannot be restored into a {dialect} database."
        )
    engine = db.make_engine(url)
    try:
        staged = _staged_sqlite(path, _sqlite_file(url, must_exist=False)) if dialect == "sqlite" else None
        safety = None
        if _holds_data(engine):
            if not replace:
                raise BackupError(
                    "The database already holds data (cases, audit events or clinical models); add --replace to "
                    "replace it (it is saved to a backup file first)."
                )
            safety = path.with_name(f"{path.stem}-before-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}{path.suffix}")
            backup(url, safety)
        engine.dispose()
        if staged is not None:
            try:
                _sqlite_copy(staged, _sqlite_file(url, must_exist=False))
            finally:
                staged.unlink(missing_ok=True)
        else:
            _pg_restore(path, url)
            _migrate_restored(engine, path)
        with Session(engine) as session:  # the trail records that it was rewound to the backup's
            db.audit(session, "database_restored", detail={"backup": path.name, "backup_sha256": _sha256(path)})
            session.commit()
        return Restored(check_database(engine), safety)
    finally:
        engine.dispose()


def _staged_sqlite(path: Path, target: Path) -> Path:
    """The backup copied beside the target, integrity-checked, upgraded and verified there; nothing replaced yet."""
    staged = target.with_name(target.name + ".restoring")
    staged.unlink(missing_ok=True)
    try:
        _sqlite_copy(path, staged)
        engine = db.make_engine(f"sqlite:///{staged}")
        try:
            _migrate_restored(engine, path)
        finally:
            engine.dispose()
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged


def _migrate_restored(engine: Engine, path: Path) -> None:
    from alembic.util import CommandError

    try:
        db.migrate(engine)  # a backup from an older release comes back at today's schema
    except CommandError:
        raise BackupError(
            f"{path.name} was written by a newer release of this tool (its schema is unknown here); update the "
            "tool before restoring it."
        ) from None


def _sha256(path: Path) -> str:
    from models.checkpoint import file_sha256

    return file_sha256(path)


def _holds_data(engine: Engine) -> bool:
    from sqlalchemy import inspect

    tables = set(inspect(engine).get_table_names())
    with Session(engine) as session:
        for model in (db.Case, db.AuditEvent, db.ClinicalModelVersion):
            if model.__tablename__ in tables and session.scalar(select(func.count()).select_from(model)):
                return True
    return False


def _backup_kind(path: Path) -> str | None:
    with path.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PG_DUMP_MAGIC):
        return "postgresql"
    return None


def _check_file(path: Path) -> DatabaseCheck:
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        return check_database(engine)
    finally:
        engine.dispose()


def _dump_tables(path: Path) -> int:
    """How many tables' data ``pg_restore --list`` finds in a custom-format dump."""
    listing = subprocess.run(["pg_restore", "--list", str(path)], capture_output=True, text=True, check=False)
    tables = listing.stdout.count(" TABLE DATA ")
    if listing.returncode != 0 or tables == 0:
        raise BackupError(f"pg_restore cannot read the dump {path.name} back; do not rely on it as a backup.")
    return tables


def _sqlite_file(url: str, must_exist: bool) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("An in-memory SQLite database has nothing to back up or restore into.")
    file = Path(database)
    if must_exist and not file.is_file():
        raise BackupError(f"No SQLite database at {file}; check --database or ICCA_DATABASE_URL.")
    return file


def _sqlite_copy(source: Path, target: Path) -> None:
    """Copy with SQLite's online backup API: consistent even while another process writes ``source``."""
    try:
        with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
            # in one step: under WAL it does not block writers, and a stepwise copy restarts at every
            # write from another connection, so it might never finish on a busy database
            src.backup(dst, pages=-1)
            verdict = dst.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.DatabaseError as error:
        raise BackupError(f"{source.name} is not a readable SQLite database ({type(error).__name__}).") from None
    if verdict != ("ok",):
        raise BackupError(f"The copy of {source.name} fails SQLite's integrity check; it is not a usable backup.")


def _pg_restore(path: Path, url: str) -> None:
    """Replace the database's schema by the dump's in ONE transaction: a failure leaves it as it was.

    ``pg_restore --clean`` would keep tables the dump does not have (a newer release's), and
    the migrations would then trip over them; so the schema is emptied first, in the same
    transaction as the restore.
    """
    for tool in ("pg_restore", "psql"):
        if shutil.which(tool) is None:
            raise BackupError(f"{tool} is not installed; install the PostgreSQL client tools (postgresql-client).")
    env, libpq = _libpq(url)
    with tempfile.TemporaryDirectory() as work:
        script = Path(work) / "restore.sql"
        # the whole dump is read first: a truncated or damaged one fails here, before anything changes
        read = subprocess.run(
            ["pg_restore", "--no-owner", "--no-privileges", "--file", str(script), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if read.returncode != 0:
            raise BackupError(f"pg_restore cannot read {path.name} completely; the database was left as it was.")
        whole = Path(work) / "whole.sql"  # the schema is emptied in the same transaction as the restore
        with whole.open("wb") as out, script.open("rb") as body:
            out.write(b"DROP SCHEMA public CASCADE;\nCREATE SCHEMA public;\n")
            shutil.copyfileobj(body, out)  # on disk, never whole in memory
        script = whole
        done = subprocess.run(
            [
                "psql",
                "--quiet",
                "--single-transaction",
                "-v",
                "ON_ERROR_STOP=1",
                "--dbname",
                libpq,
                "--file",
                str(script),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or ["no message"]
            raise BackupError(f"The restore failed: {last[0][:200]}. The database was left as it was.")


def _run_pg_tool(command: list[str], url: str) -> None:
    """Run a PostgreSQL client tool on the database at ``url``; its password goes by ``PGPASSWORD``."""
    if shutil.which(command[0]) is None:
        raise BackupError(f"{command[0]} is not installed; install the PostgreSQL client tools (postgresql-client).")
    env, libpq = _libpq(url)
    done = subprocess.run([*command, "--dbname", libpq], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise BackupError(f"{command[0]} failed: {last[0][:200]}. Nothing was changed.")


def _libpq(url: str) -> tuple[dict[str, str], str]:
    """(environment with PGPASSWORD, the URL without its password) for the libpq tools."""
    parsed = make_url(url)
    env = {**os.environ, "PGPASSWORD": parsed.password or ""}
    return env, parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)

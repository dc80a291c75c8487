"""Saves from many threads and processes at once, and processes killed mid-save, on SQLite and PostgreSQL.

What must hold: every case saved is present exactly once with its arrays intact (checksums
and content), and a killed writer leaves each case complete or absent, never half.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from core import db
from core.access import Actor, Role, acting_as
from tests.core.db_writer import consistency_problems, save_one

ROOT = Path(__file__).resolve().parents[2]
THREADS, PROCESSES, CASES_EACH = 8, 2, 50


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _case_keys(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(db.Case.case_key)))


def _writer(url: str, prefix: str, count: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.core.db_writer", url, prefix, str(count)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _read_until(writer: subprocess.Popen, prefix: str) -> None:
    """Read the writer's lines until one starts with ``prefix``; a writer that ends first fails the test."""
    assert writer.stdout is not None
    for line in writer.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the writer exited (status {writer.wait()}) before printing {prefix!r}")


def test_eight_threads_saving_fifty_cases_each_lose_and_double_nothing(engine) -> None:
    def save_fifty(thread: int) -> list[int]:
        with acting_as(Actor(f"test:thread-{thread}", Role.ANALYST)):  # a context variable: set per thread
            return [save_one(engine, f"T{thread}-{i:03d}") for i in range(CASES_EACH)]

    with ThreadPoolExecutor(THREADS) as pool:
        ids = [i for batch in pool.map(save_fifty, range(THREADS)) for i in batch]

    keys = _case_keys(engine)
    assert len(ids) == len(set(ids)) == THREADS * CASES_EACH
    assert sorted(keys) == sorted(f"T{t}-{i:03d}" for t in range(THREADS) for i in range(CASES_EACH))
    assert consistency_problems(engine) == []


def test_two_processes_saving_fifty_cases_each_lose_and_double_nothing(engine) -> None:
    writers = [_writer(_url(engine), f"P{p}", CASES_EACH) for p in range(PROCESSES)]
    outputs = [w.communicate(timeout=600)[0] for w in writers]
    assert [w.returncode for w in writers] == [0] * PROCESSES
    assert all(out.count("committed") == CASES_EACH for out in outputs)
    assert sorted(_case_keys(engine)) == sorted(f"P{p}-{i:03d}" for p in range(PROCESSES) for i in range(CASES_EACH))
    assert consistency_problems(engine) == []


KILLS = 6


def test_a_writer_killed_at_random_points_leaves_every_case_whole_or_absent(engine) -> None:
    """SIGKILL a saving process KILLS times at random moments: committed cases stay, none is half-written."""
    rng = random.Random(20261202)
    url = _url(engine)
    committed_total, inside_a_save = 0, 0
    for kill in range(KILLS):
        writer = _writer(url, f"K{kill}", 10_000)
        assert writer.stdout is not None
        _read_until(writer, "committed")  # started: the first commit is done
        time.sleep(rng.uniform(0.05, 1.5))
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate(timeout=60)
        committed = 1 + rest.count("committed")
        inside_a_save += rest.rstrip().rsplit("\n", 1)[-1].startswith("saving")
        keys = [k for k in _case_keys(engine) if k.startswith(f"K{kill}-")]
        # every reported commit is there; at most the one in flight at the kill committed unreported
        assert committed <= len(keys) <= committed + 1
        assert sorted(keys) == [f"K{kill}-{i:03d}" for i in range(len(keys))]
        committed_total += len(keys)
    assert inside_a_save >= 1  # the kills did land inside saves, not only between them
    assert consistency_problems(engine) == []
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(db.Case)) == committed_total
    print(f"{KILLS} kills ({inside_a_save} inside a save) on {engine.dialect.name}: {committed_total} whole cases")


def test_the_consistency_check_finds_a_half_written_case(sqlite_url: str) -> None:
    """The checker itself: a case missing its mask (as a non-atomic save could leave it) is reported."""
    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    save_one(engine, "H-000")
    with Session(engine) as session:
        mask = session.scalars(select(db.StoredArray).where(db.StoredArray.kind == "mask")).one()
        session.delete(mask)
        session.commit()
    assert consistency_problems(engine) == [
        "case H-000 is incomplete: arrays ['patch_boxes', 'patch_probabilities', 'slice'], 1 analyses"
    ]


def test_a_backup_taken_while_a_process_saves_is_consistent(engine, tmp_path: Path) -> None:
    """The online backup (SQLite API, pg_dump's snapshot) of a database being written holds whole cases only."""
    from core.backup import backup, restore

    writer = _writer(_url(engine), "B", 10_000)
    assert writer.stdout is not None
    _read_until(writer, "committed 20")  # saving well under way
    archive = tmp_path / "during-writes.bak"
    backup(_url(engine), archive)
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=60)

    target = db.make_engine(f"sqlite:///{tmp_path / 'restored.db'}")
    if engine.dialect.name == "postgresql":  # restore into the emptied server database instead
        target = engine
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
    check = restore(_url(target), archive).check
    assert check.cases >= 21 and check.damaged == ()
    assert consistency_problems(target) == []

"""A process that saves cases the way the Analyze page does, for the concurrency and crash tests.

``python -m tests.core.db_writer URL PREFIX COUNT`` saves COUNT cases keyed PREFIX-000…,
each in its own transaction through :func:`core.cases.save_case`. It prints ``saving N``
before and ``committed N`` after each save, so a parent that kills it knows which cases
must exist and whether the kill landed inside a save.
Each case's arrays follow from its key, so a reader can check them bit for bit.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import replace

import numpy as np
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from core import db
from core.backup import check_database
from core.cases import save_case
from tests.core.test_db import _new_case

SIDE_PX = 96  # big enough that a save takes a few writes, small enough for hundreds of cases


def arrays_for(key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The slice (float32 HU), mask (bool) and patch probabilities (float64) saved under ``key``."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    pixels = rng.normal(40, 15, (SIDE_PX, SIDE_PX)).astype(np.float32)
    mask = rng.random((SIDE_PX, SIDE_PX)) < 0.3
    probabilities = rng.random(int(rng.integers(1, 40)))
    return pixels, mask, probabilities


def save_one(engine: Engine, key: str) -> int:
    """Save the case ``key`` in one transaction; returns its id."""
    new_case, analysis = _new_case(key)
    pixels, mask, probabilities = arrays_for(key)
    boxes = np.tile(np.arange(4.0), (probabilities.size, 1))
    update = db.ClinicalUpdate("N1", "T2", 50.0, True, 0.85, 0.5, 0.96)
    with Session(engine) as session:
        outcome = save_case(
            session,
            replace(new_case, pixels=pixels, mask=mask),
            replace(analysis, probabilities=probabilities, boxes_img=boxes),
            update,
            saved_case_id=None,
        )
        session.commit()
    return outcome.case_id


def consistency_problems(engine: Engine) -> list[str]:
    """Every case must be whole: its 4 arrays intact and as written, one analysis pointing at them, one audit event.

    Returns:
        One line per problem (empty when the database is consistent).
    """
    from sqlalchemy import select

    problems = [f"damaged array: case #{i} ({kind})" for i, kind in check_database(engine).damaged]
    with Session(engine) as session:
        audited = list(session.scalars(select(db.AuditEvent.case_key).where(db.AuditEvent.action == "case_saved")))
        for case in db.list_cases(session):
            kinds = sorted(a.kind for a in case.arrays)
            if kinds != ["mask", "patch_boxes", "patch_probabilities", "slice"] or len(case.analyses) != 1:
                problems.append(f"case {case.case_key} is incomplete: arrays {kinds}, {len(case.analyses)} analyses")
                continue
            pixels, mask, probabilities = arrays_for(case.case_key)
            stored = db.array_by_id(session, case.analyses[0].probabilities_id)
            same = (
                np.array_equal(db.case_array(session, case, "slice"), pixels)
                and np.array_equal(db.case_array(session, case, "mask"), mask)
                and np.array_equal(stored, probabilities)
            )
            if not same:
                problems.append(f"case {case.case_key}: arrays differ from what was written")
            if audited.count(case.case_key) != 1:
                problems.append(f"case {case.case_key}: {audited.count(case.case_key)} audit events")
    return problems


def main(url: str, prefix: str, count: int) -> None:
    from core.access import command_line_actor, set_actor

    set_actor(command_line_actor())
    engine = db.make_engine(url)
    for i in range(count):
        print(f"saving {i}", flush=True)
        save_one(engine, f"{prefix}-{i:03d}")
        print(f"committed {i}", flush=True)
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

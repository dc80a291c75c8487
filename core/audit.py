"""The audit trail: record what is read and exported, list and export the trail (administrators only).

Saves, edits, follow-ups, deletions and clinical-model changes are audited where they happen
(:mod:`core.db`); this module adds the acts that change nothing stored: a case opened, data
exported, a case analysed. Each event carries the actor's subject, never a patient identifier:
cases appear by their pseudonymised key.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import access, db

AUDIT_COLUMNS = ("id", "at_utc", "actor", "action", "case_key", "model_sha256", "input_sha256", "detail")


def record_opened(session: Session, case_id: int) -> None:
    """Audit that the current actor opened a saved case (caller commits); needs the viewer role."""
    access.require(access.Act.READ)
    case = session.get(db.Case, case_id)
    if case is not None:
        latest = case.analyses[-1] if case.analyses else None
        db.audit(session, "case_opened", case.case_key, model_sha256=latest.model_sha256 if latest else None)


def record_export(session: Session, what: str, case_key: str | None = None, model_sha256: str | None = None) -> None:
    """Audit an export (caller commits). Raises NotPermittedError below the analyst role: data leaves here."""
    access.require(access.Act.EXPORT)
    db.audit(session, "exported", case_key, {"what": what}, model_sha256=model_sha256)


def record_analysed(session: Session, model_sha256: str, pixels: np.ndarray, n_patches: int) -> None:
    """Audit an analysis run on screen, saved or not (caller commits); the case has no key until saved.

    Args:
        pixels: (rows, cols) the slice as analysed; only its sha256 is recorded (:func:`core.db.pixels_sha256`).
    """
    access.require(access.Act.ANALYSE)
    db.audit(
        session,
        "case_analysed",
        None,
        {"n_patches": n_patches},
        model_sha256=model_sha256,
        input_sha256=db.pixels_sha256(pixels),
    )


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str | None
    action: str
    case_key: str | None
    model_sha256: str | None
    input_sha256: str | None
    detail: dict

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at_utc": as_utc(self.at).strftime("%Y-%m-%d %H:%M:%S"),
            "actor": self.actor or "(before sign-in was recorded)",
            "action": self.action,
            "case_key": self.case_key or "",
            "model_sha256": self.model_sha256 or "",
            "input_sha256": self.input_sha256 or "",
            "detail": _detail_text(self.detail),
        }


def list_events(session: Session, limit: int = 500, action: str | None = None) -> list[AuditRow]:
    """The newest ``limit`` events (optionally of one action), newest first. Needs the admin role."""
    access.require(access.Act.READ_AUDIT)
    query = select(db.AuditEvent).order_by(db.AuditEvent.id.desc()).limit(limit)
    if action:
        query = query.where(db.AuditEvent.action == action)
    return [
        AuditRow(e.id, e.at, e.actor, e.action, e.case_key, e.model_sha256, e.input_sha256, dict(e.detail or {}))
        for e in session.scalars(query)
    ]


def audit_csv(rows: list[AuditRow]) -> str:
    """The events as CSV (one row each, times in UTC); pseudonymised like the rest of the store."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=AUDIT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.as_dict() for row in rows)
    return buffer.getvalue()


def as_utc(moment: datetime) -> datetime:
    """A stored time in UTC: PostgreSQL returns it in the session's time zone, SQLite naive (already UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _detail_text(detail: dict) -> str:
    return "; ".join(f"{key}={value}" for key, value in sorted(detail.items()))

"""The case database: SQLAlchemy 2.0 models, engine set-up and unit-of-work helpers.

One engine per process; callers own the session (``with Session(engine) as s``).
The schema is created and upgraded only by Alembic migrations
(``core/migrations``), so the same code runs on SQLite and PostgreSQL.

Privacy: a case is keyed by a pseudonymised key (:mod:`core.pseudonym`); no name,
birth date or other DICOM header is stored, and images are stored as compressed
arrays in rows with generated ids, never under a name taken from the upload.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

from core import access, arrays
from core.errors import StoredArrayDamagedError
from core.outcomes import FollowUp

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL_ENV = "ICCA_DATABASE_URL"
DEFAULT_DATABASE_URL = f"sqlite:///{REPO_ROOT / 'data' / 'icca.db'}"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_ID = 4_224_201  # the PostgreSQL advisory lock held while migrating (any fixed number)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Case(Base):
    """One patient's preoperative slice, outline and clinical inputs."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_key: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    source_kind: Mapped[str] = mapped_column(String(16))
    is_hu: Mapped[bool] = mapped_column(Boolean)
    rows: Mapped[int] = mapped_column(Integer)
    cols: Mapped[int] = mapped_column(Integer)
    spacing_row_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
    spacing_col_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
    spacing_source: Mapped[str | None] = mapped_column(String(8), nullable=True)  # "header" or "user"
    export_window_level: Mapped[float | None] = mapped_column(Float, nullable=True)  # HU, PNG/JPEG exports
    export_window_width: Mapped[float | None] = mapped_column(Float, nullable=True)
    # series / slice / study as keyed UID hashes and the slice position (core.dicomref.SourceReference.hashed)
    source_ref: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    roi_area_px: Mapped[int] = mapped_column(Integer)
    roi_area_mm2: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_category: Mapped[str] = mapped_column(String(16))
    t_category: Mapped[str | None] = mapped_column(String(16), nullable=True)
    tumour_size_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
    solitary: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    display_level: Mapped[float] = mapped_column(Float)
    display_width: Mapped[float] = mapped_column(Float)

    arrays: Mapped[list[StoredArray]] = relationship(
        back_populates="case", cascade="all, delete-orphan", passive_deletes=True
    )
    analyses: Mapped[list[Analysis]] = relationship(
        back_populates="case", cascade="all, delete-orphan", passive_deletes=True, order_by="Analysis.created_at"
    )
    outcomes: Mapped[list[Outcome]] = relationship(
        back_populates="case", cascade="all, delete-orphan", passive_deletes=True
    )


class StoredArray(Base):
    """A compressed numpy array (slice, mask, probabilities) under a generated id."""

    __tablename__ = "stored_arrays"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))  # of ``data``, verified on every load
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    case: Mapped[Case] = relationship(back_populates="arrays")

    def load(self) -> np.ndarray:
        """The array, after checking its bytes against the checksum written with them.

        Raises:
            StoredArrayDamagedError: the bytes changed since they were written (disk or
                storage fault, a manual edit), or no longer unpack.
        """
        if arrays.checksum(self.data) != self.sha256:
            raise StoredArrayDamagedError(self.case_id, self.kind)
        try:
            return arrays.unpack(self.data)
        except (ValueError, OSError, KeyError) as error:  # np.load's ways of refusing damaged bytes
            raise StoredArrayDamagedError(self.case_id, self.kind) from error


class Analysis(Base):
    """One model run on a case: both risks, per-patch probabilities and the model's identity."""

    __tablename__ = "analyses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model_sha256: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_provenance: Mapped[str] = mapped_column(String(256))
    training_data: Mapped[str] = mapped_column(String(32), server_default="unknown")  # core.provenance
    preprocess: Mapped[dict[str, Any]] = mapped_column(JSON)
    dl_probability: Mapped[float] = mapped_column(Float)
    dl_share_above: Mapped[float] = mapped_column(Float)
    dl_threshold: Mapped[float] = mapped_column(Float)
    n_patches: Mapped[int] = mapped_column(Integer)
    aggregation_rule: Mapped[str] = mapped_column(String(128))
    clinical_model: Mapped[str] = mapped_column(String(128))
    clinical_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    clinical_ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    clinical_ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    probabilities_id: Mapped[str] = mapped_column(String(36))
    boxes_id: Mapped[str] = mapped_column(String(36))
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    # fold spread, engine and (when computed) outline sensitivity: core.analysis.uncertainty_record
    uncertainty: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    case: Mapped[Case] = relationship(back_populates="analyses")


class Outcome(Base):
    """Follow-up: whether early recurrence (≤ 365 days after resection) happened."""

    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    early_recurrence: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    days_to_recurrence: Mapped[int | None] = mapped_column(Integer, nullable=True)
    days_followed: Mapped[int | None] = mapped_column(Integer, nullable=True)

    case: Mapped[Case] = relationship(back_populates="outcomes")


class AuditEvent(Base):
    """Who did what to which case, with which model and input; append-only, kept when the case is deleted.

    ``actor`` is the subject of :mod:`core.access` (an OIDC ``sub``, ``local:…`` or ``cli:…``;
    ``None`` on rows written before revision 0007). Triggers (revision 0007) refuse UPDATE and
    DELETE on this table, on SQLite and PostgreSQL alike.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    action: Mapped[str] = mapped_column(String(32))
    case_key: Mapped[str | None] = mapped_column(String(32), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the slice's pixels


class ClinicalModelVersion(Base):
    """A clinical model refitted on local patients (:mod:`core.clinical_refit`); the id is its version.

    At most one row is in use; with none, the dashboard uses the paper's N-category model.
    """

    __tablename__ = "clinical_models"
    # at most one version in use, even when two people switch at once
    __table_args__ = (
        Index(
            "ix_clinical_models_one_in_use",
            "in_use",
            unique=True,
            sqlite_where=text("in_use"),
            postgresql_where=text("in_use"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    formula: Mapped[str] = mapped_column(String(32))
    fitted_to: Mapped[str] = mapped_column(String(128))
    fit: Mapped[dict[str, Any]] = mapped_column(JSON)
    in_use: Mapped[bool] = mapped_column(Boolean, default=False)


# ---------------------------------------------------------------- engine


def configured_url() -> str:
    return os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL


def make_engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (default: ``$ICCA_DATABASE_URL`` or ``data/icca.db``)."""
    url = url or configured_url()
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default the newest), upgrading or downgrading; idempotent.

    A downgrade is for going back to an earlier release; it drops what later revisions added.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # a batch migration rebuilds a table by DROP and re-CREATE: with foreign keys on, dropping
            # `cases` would cascade to every analysis, array and outcome (the pragma is ignored inside
            # a transaction, so it is set before this one starts)
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        with connection.begin():
            if connection.dialect.name == "postgresql":  # replicas starting together migrate one after the other
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            config.attributes["connection"] = connection
            current = MigrationContext.configure(connection).get_current_revision()
            if revision == "head" or current is None or current < revision:  # revisions are zero-padded numbers
                command.upgrade(config, revision)
            elif current > revision:
                command.downgrade(config, revision)
            if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                raise RuntimeError("the migration left rows whose parent is missing; it was rolled back")
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


# ---------------------------------------------------------------- unit-of-work helpers


@dataclass(frozen=True)
class NewCase:
    """Everything the Analyze page hands over to save one case."""

    case_key: str
    source_kind: str
    is_hu: bool
    pixels: np.ndarray  # (rows, cols) float32 HU or grey
    spacing_mm: tuple[float, float] | None
    mask: np.ndarray  # (rows, cols) bool
    n_category: str
    t_category: str | None
    tumour_size_mm: float | None
    solitary: bool | None
    display_level: float
    display_width: float
    spacing_source: str | None = None
    export_window: tuple[float, float] | None = None
    source_ref: dict[str, Any] | None = None  # UID hashes, never UIDs


@dataclass(frozen=True)
class NewAnalysis:
    model_sha256: str
    model_name: str
    model_provenance: str
    training_data: str
    preprocess: dict[str, Any]
    dl_probability: float
    dl_share_above: float
    dl_threshold: float
    aggregation_rule: str
    clinical_model: str
    clinical_probability: float | None
    clinical_ci_low: float | None
    clinical_ci_high: float | None
    probabilities: np.ndarray  # (N,) float64
    boxes_img: np.ndarray  # (N, 4) float64
    seconds: float | None
    uncertainty: dict[str, Any] | None = None  # core.analysis.uncertainty_record


def _stored(kind: str, array: np.ndarray) -> StoredArray:
    data = arrays.pack(array)
    return StoredArray(
        id=str(uuid.uuid4()),
        kind=kind,
        dtype=str(array.dtype),
        shape=json.dumps(list(array.shape)),
        data=data,
        sha256=arrays.checksum(data),
    )


def audit(
    session: Session,
    action: str,
    case_key: str | None = None,
    detail: dict[str, Any] | None = None,
    model_sha256: str | None = None,
    input_sha256: str | None = None,
) -> AuditEvent:
    """Stage one audit event by the current actor (:func:`core.access.current_actor`); the caller commits."""
    actor = access.current_actor()
    event = AuditEvent(
        action=action,
        case_key=case_key,
        detail=detail or {},
        actor=actor.subject if actor else None,
        model_sha256=model_sha256,
        input_sha256=input_sha256,
    )
    session.add(event)
    return event


def pixels_sha256(pixels: np.ndarray) -> str:
    """The sha256 of a slice's pixel values (C order, the dtype stored): the audit trail's input identity."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()


def add_case(session: Session, new: NewCase, analysis: NewAnalysis) -> Case:
    """Stage a case with its arrays, first analysis and an audit event; the caller commits.

    Raises:
        NotPermittedError: the current actor may not save cases.
    """
    access.require(access.Act.SAVE)
    area_px = int(new.mask.sum())
    area_mm2 = area_px * new.spacing_mm[0] * new.spacing_mm[1] if new.spacing_mm else None
    case = Case(
        case_key=new.case_key,
        source_kind=new.source_kind,
        is_hu=new.is_hu,
        rows=int(new.pixels.shape[0]),
        cols=int(new.pixels.shape[1]),
        spacing_row_mm=new.spacing_mm[0] if new.spacing_mm else None,
        spacing_col_mm=new.spacing_mm[1] if new.spacing_mm else None,
        spacing_source=new.spacing_source if new.spacing_mm else None,
        export_window_level=new.export_window[0] if new.export_window else None,
        export_window_width=new.export_window[1] if new.export_window else None,
        source_ref=new.source_ref,
        roi_area_px=area_px,
        roi_area_mm2=area_mm2,
        n_category=new.n_category,
        t_category=new.t_category,
        tumour_size_mm=new.tumour_size_mm,
        solitary=new.solitary,
        display_level=new.display_level,
        display_width=new.display_width,
    )
    case.arrays.append(_stored("slice", new.pixels.astype(np.float32)))
    case.arrays.append(_stored("mask", new.mask.astype(bool)))
    add_analysis(case, analysis)
    session.add(case)
    audit(
        session,
        "case_saved",
        new.case_key,
        {"n_patches": int(analysis.probabilities.size)},
        model_sha256=analysis.model_sha256,
        input_sha256=pixels_sha256(new.pixels),
    )
    return case


def add_analysis(case: Case, new: NewAnalysis) -> Analysis:
    """Attach one analysis (and its arrays) to a case."""
    probs, boxes = _stored("patch_probabilities", new.probabilities), _stored("patch_boxes", new.boxes_img)
    case.arrays.extend([probs, boxes])
    analysis = Analysis(
        model_sha256=new.model_sha256,
        model_name=new.model_name,
        model_provenance=new.model_provenance,
        training_data=new.training_data,
        preprocess=new.preprocess,
        dl_probability=new.dl_probability,
        dl_share_above=new.dl_share_above,
        dl_threshold=new.dl_threshold,
        n_patches=int(new.probabilities.size),
        aggregation_rule=new.aggregation_rule,
        clinical_model=new.clinical_model,
        clinical_probability=new.clinical_probability,
        clinical_ci_low=new.clinical_ci_low,
        clinical_ci_high=new.clinical_ci_high,
        probabilities_id=probs.id,
        boxes_id=boxes.id,
        seconds=new.seconds,
        uncertainty=new.uncertainty,
    )
    case.analyses.append(analysis)
    return analysis


def list_cases(session: Session) -> list[Case]:
    """All cases, newest first, with their analyses and outcomes loaded in one extra query each (not one per row)."""
    access.require(access.Act.READ)
    query = (
        select(Case)
        .options(selectinload(Case.analyses), selectinload(Case.outcomes))
        .order_by(Case.created_at.desc(), Case.id.desc())
    )
    return list(session.scalars(query))


@dataclass(frozen=True)
class ClinicalUpdate:
    """Clinical inputs of a saved case and the clinical risk they give (``None`` where unknown)."""

    n_category: str
    t_category: str | None
    tumour_size_mm: float | None
    solitary: bool | None
    clinical_probability: float | None
    clinical_ci_low: float | None
    clinical_ci_high: float | None
    clinical_model: str | None = None  # the clinical model that gave the risk; None leaves the saved name


def update_saved_case(
    session: Session,
    case_id: int,
    case_key: str,
    update: ClinicalUpdate,
    uncertainty: dict[str, Any] | None = None,
) -> list[str]:
    """Replace a saved case's key and clinical inputs (and its latest analysis's clinical risk); caller commits.

    The key changes when the surgeon corrects the patient ID after saving: the same
    analysis then belongs to another (pseudonymised) patient, not to a second case.
    ``uncertainty`` (when given) replaces the latest analysis's: an outline sensitivity
    computed after saving is kept too.

    Returns:
        The names of the fields that changed (empty when nothing did); the audit trail
        records them by name only.

    Raises:
        LookupError: no such case (deleted meanwhile).
        NotPermittedError: the current actor may not edit cases.
    """
    access.require(access.Act.SAVE)
    case = session.get(Case, case_id)
    if case is None:
        raise LookupError(f"no case {case_id}")
    fields = [
        name
        for name in ("n_category", "t_category", "tumour_size_mm", "solitary")
        if getattr(case, name) != getattr(update, name)
    ]
    latest = case.analyses[-1] if case.analyses else None
    new_uncertainty = latest is not None and uncertainty is not None and latest.uncertainty != uncertainty
    # another clinical model in use since the save: the risk is recomputed with it, and said so
    new_clinical_model = (
        latest is not None and update.clinical_model is not None and latest.clinical_model != update.clinical_model
    )
    changed = (
        (["case_key"] if case.case_key != case_key else [])
        + fields
        + (["uncertainty"] if new_uncertainty else [])
        + (["clinical_model"] if new_clinical_model else [])
    )
    if not changed:
        return []
    case.case_key = case_key
    for name in fields:
        setattr(case, name, getattr(update, name))
    if latest is not None:
        if new_uncertainty:
            latest.uncertainty = uncertainty
        latest.clinical_probability = update.clinical_probability
        latest.clinical_ci_low = update.clinical_ci_low
        latest.clinical_ci_high = update.clinical_ci_high
        if update.clinical_model is not None:
            latest.clinical_model = update.clinical_model
    audit(session, "case_updated", case.case_key, {"fields": changed})
    return changed


def case_array(session: Session, case: Case, kind: str) -> np.ndarray:
    """The case's stored array of one kind (``slice`` or ``mask``)."""
    row = session.scalars(select(StoredArray).where(StoredArray.case_id == case.id, StoredArray.kind == kind)).first()
    if row is None:
        raise LookupError(f"case {case.id} has no stored {kind}")
    return row.load()


def array_by_id(session: Session, array_id: str) -> np.ndarray:
    row = session.get(StoredArray, array_id)
    if row is None:
        raise LookupError(f"no stored array {array_id}")
    return row.load()


@dataclass(frozen=True)
class DeletedCase:
    """What a deletion removed, for the page to say."""

    case_key: str
    analyses: int
    arrays: int
    outcomes: int


def delete_case(session: Session, case_id: int) -> DeletedCase | None:
    """Delete a case with everything attached; the audit trail keeps a record. Caller commits.

    Returns:
        What was deleted, or ``None`` when the case did not exist (deleted meanwhile).

    Raises:
        NotPermittedError: the current actor is not an administrator.
    """
    access.require(access.Act.DELETE)
    case = session.get(Case, case_id)
    if case is None:
        return None
    deleted = DeletedCase(case.case_key, len(case.analyses), len(case.arrays), len(case.outcomes))
    audit(
        session,
        "case_deleted",
        case.case_key,
        {"analyses": deleted.analyses, "arrays": deleted.arrays, "outcomes": deleted.outcomes},
    )
    session.delete(case)
    return deleted


def newest_outcome(case: Case) -> FollowUp | None:
    """The case's current follow-up (its newest outcome row), or ``None`` when none was recorded.

    Reads ``case.outcomes`` (loaded with the case list in one query, see :func:`list_cases`).
    """
    if not case.outcomes:
        return None
    row = max(case.outcomes, key=lambda o: o.id)
    return FollowUp(days_to_recurrence=row.days_to_recurrence, days_followed=row.days_followed)


def latest_outcome(session: Session, case_id: int) -> FollowUp | None:
    """:func:`newest_outcome` of the case with id ``case_id`` (``None`` also when there is no such case)."""
    case = session.get(Case, case_id)
    return newest_outcome(case) if case is not None else None


def record_outcome(session: Session, case_id: int, follow_up: FollowUp) -> bool:
    """Record a case's follow-up; a change adds a row (the old ones stay) and an audit event. Caller commits.

    The audit event holds the old and the new intervals and status, never dates.

    Returns:
        Whether anything changed (recording the same follow-up again does nothing).

    Raises:
        LookupError: no such case (deleted meanwhile).
        NotPermittedError: the current actor may not record follow-ups.
    """
    access.require(access.Act.RECORD_OUTCOME)
    case = session.get(Case, case_id)
    if case is None:
        raise LookupError(f"no case {case_id}")
    old = newest_outcome(case)
    if old == follow_up:
        return False
    session.add(
        Outcome(
            case_id=case_id,
            early_recurrence=follow_up.early_recurrence,
            days_to_recurrence=follow_up.days_to_recurrence,
            days_followed=follow_up.days_followed,
        )
    )
    audit(
        session, "outcome_recorded", case.case_key, {"old": old.to_dict() if old else None, "new": follow_up.to_dict()}
    )
    return True


# ---------------------------------------------------------------- clinical model versions


def add_clinical_model(session: Session, fit: dict[str, Any], fitted_to: str) -> ClinicalModelVersion:
    """Store a refitted clinical model (``ClinicalRefit.to_dict()``) as a new version, not in use. Caller commits."""
    access.require(access.Act.CHANGE_CLINICAL_MODEL)
    row = ClinicalModelVersion(formula=fit["formula"], fitted_to=fitted_to[:128], fit=fit, in_use=False)
    session.add(row)
    session.flush()
    audit(
        session,
        "clinical_model_fitted",
        detail={"version": row.id, "formula": row.formula, "n": fit["n"], "events": fit["events"]},
    )
    return row


def list_clinical_models(session: Session) -> list[ClinicalModelVersion]:
    """Every stored clinical model version, newest first."""
    return list(session.scalars(select(ClinicalModelVersion).order_by(ClinicalModelVersion.id.desc())))


def clinical_model_in_use(session: Session) -> ClinicalModelVersion | None:
    """The local clinical model in use, or ``None`` for the paper's."""
    query = select(ClinicalModelVersion).where(ClinicalModelVersion.in_use.is_(True))
    return session.scalars(query.order_by(ClinicalModelVersion.id.desc())).first()


def use_clinical_model(session: Session, version: int | None) -> None:
    """Put version ``version`` in use (``None``: back to the paper's model), with an audit event. Caller commits.

    A unique partial index keeps one version in use: of two switches at once, the second to
    commit fails with an ``IntegrityError`` rather than leaving two.

    Raises:
        LookupError: no such version.
        ValueError: the version is not a preoperative model (it uses the surgical margin).
        NotPermittedError: the current actor is not an administrator.
    """
    access.require(access.Act.CHANGE_CLINICAL_MODEL)
    row = None
    if version is not None:
        row = session.get(ClinicalModelVersion, version)
        if row is None:
            raise LookupError(f"no clinical model version {version}")
        if not row.fit.get("preoperative", False):
            raise ValueError(f"clinical model version {version} ({row.formula}) needs data known only after surgery")
    previous = clinical_model_in_use(session)
    for other in session.scalars(select(ClinicalModelVersion).where(ClinicalModelVersion.in_use.is_(True))):
        other.in_use = False
    session.flush()  # the old version leaves use before the new one enters it (one in use at a time)
    if row is not None:
        row.in_use = True
    audit(session, "clinical_model_in_use", detail={"old": previous.id if previous else None, "new": version})

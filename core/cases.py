"""The read model of saved cases: the Cases page, reports and validation all read through here.

Reopening a case rebuilds its overlay from the database, without running the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from core import access, db, provenance
from core.audit import as_utc
from core.clinical import N_CATEGORIES, PAPER_MODEL_NAME, ClinicalRisk
from core.heatmap import probability_map
from core.inference import CaseRisk
from core.outcomes import FollowUp


@dataclass(frozen=True)
class AnalysisSummary:
    """One saved analysis: its risks and the identity of the model that made it."""

    analysis_id: int
    created_at: datetime
    dl_risk: CaseRisk
    clinical_risk: ClinicalRisk | None
    model_name: str
    model_provenance: str
    model_sha256: str
    training_data: str
    uncertainty: dict[str, Any] | None = None  # core.analysis.uncertainty_record; None before migration 0004
    clinical_model: str = PAPER_MODEL_NAME  # which clinical model gave clinical_risk

    @property
    def weights_warning(self) -> str | None:
        """The sentence shown beside this analysis's risk when its model was not trained on patients."""
        return provenance.weights_warning(self.training_data)


@dataclass(frozen=True)
class CaseSummary:
    """A saved case as the case list shows it: clinical inputs, outline size and its analyses (oldest first)."""

    case_id: int
    case_key: str
    created_at: datetime
    n_category: str
    t_category: str | None
    tumour_size_mm: float | None
    solitary: bool | None
    roi_area_px: int
    roi_area_mm2: float | None
    analyses: tuple[AnalysisSummary, ...]
    outcome: FollowUp | None = None  # the newest recorded follow-up (core.outcomes)

    @property
    def latest(self) -> AnalysisSummary | None:
        return self.analyses[-1] if self.analyses else None


@dataclass(frozen=True)
class SavedCase:
    """A case with its pixels, outline and the probability map of its latest analysis, ready to render.

    Attributes:
        pixels: (rows, cols) float32, HU when ``is_hu`` else grey 0–255.
        mask: (rows, cols) bool outline.
        pmap: (rows, cols) float32 probability map, NaN where no patch.
        spacing_mm: (row, col) mm, or ``None``; ``spacing_source`` says whether the header
            or the user gave it.
    """

    summary: CaseSummary
    pixels: np.ndarray
    is_hu: bool
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    export_window: tuple[float, float] | None
    source_kind: str
    mask: np.ndarray
    pmap: np.ndarray
    display_level: float
    display_width: float


def _analysis_summary(case: db.Case, analysis: db.Analysis) -> AnalysisSummary:
    clinical = (
        ClinicalRisk(
            analysis.clinical_probability,
            analysis.clinical_ci_low if analysis.clinical_ci_low is not None else 0.0,
            analysis.clinical_ci_high if analysis.clinical_ci_high is not None else 1.0,
            case.n_category,
        )
        if analysis.clinical_probability is not None
        else None
    )
    return AnalysisSummary(
        analysis_id=analysis.id,
        created_at=analysis.created_at,
        dl_risk=CaseRisk(
            analysis.dl_probability,
            analysis.dl_share_above,
            analysis.n_patches,
            analysis.dl_threshold,
            analysis.aggregation_rule,
        ),
        clinical_risk=clinical,
        model_name=analysis.model_name,
        model_provenance=analysis.model_provenance,
        model_sha256=analysis.model_sha256,
        training_data=analysis.training_data,
        uncertainty=analysis.uncertainty,
        clinical_model=analysis.clinical_model,
    )


def _case_summary(case: db.Case) -> CaseSummary:
    return CaseSummary(
        case_id=case.id,
        case_key=case.case_key,
        created_at=case.created_at,
        n_category=case.n_category,
        t_category=case.t_category,
        tumour_size_mm=case.tumour_size_mm,
        solitary=case.solitary,
        roi_area_px=case.roi_area_px,
        roi_area_mm2=case.roi_area_mm2,
        analyses=tuple(_analysis_summary(case, a) for a in case.analyses),
        outcome=db.newest_outcome(case),
    )


def list_case_summaries(session: Session) -> list[CaseSummary]:
    """Every saved case, newest first, in three queries whatever the number of cases."""
    return [_case_summary(case) for case in db.list_cases(session)]


def load_saved_case(session: Session, case_id: int) -> SavedCase | None:
    """The case with the probability map of its latest analysis, or ``None`` if it does not exist."""
    access.require(access.Act.READ)
    case = session.get(db.Case, case_id)
    if case is None or not case.analyses:
        return None
    latest = case.analyses[-1]
    pixels = db.case_array(session, case, "slice")
    probabilities = db.array_by_id(session, latest.probabilities_id)
    boxes = db.array_by_id(session, latest.boxes_id)
    spacing = (case.spacing_row_mm, case.spacing_col_mm) if case.spacing_row_mm and case.spacing_col_mm else None
    export_window = (
        (case.export_window_level, case.export_window_width)
        if case.export_window_level is not None and case.export_window_width is not None
        else None
    )
    return SavedCase(
        summary=_case_summary(case),
        pixels=pixels,
        is_hu=case.is_hu,
        spacing_mm=spacing,
        spacing_source=case.spacing_source,
        export_window=export_window,
        source_kind=case.source_kind,
        mask=db.case_array(session, case, "mask"),
        pmap=probability_map(pixels.shape, boxes, probabilities),
        display_level=case.display_level,
        display_width=case.display_width,
    )


@dataclass(frozen=True)
class SaveOutcome:
    """What pressing Save did: ``action`` is "saved", "updated" or "unchanged"; ``changed`` names fields."""

    case_id: int
    case_key: str
    action: str
    changed: tuple[str, ...] = ()


def save_case(
    session: Session,
    new_case: db.NewCase,
    new_analysis: db.NewAnalysis,
    update: db.ClinicalUpdate,
    saved_case_id: int | None,
) -> SaveOutcome:
    """Save an analysed case once; pressing Save again updates that case instead of adding another.

    Args:
        new_case, new_analysis: the records of what is on screen.
        update: the clinical inputs on screen and the risk they give.
        saved_case_id: the case this same analysis was saved as earlier in the session, if any;
            it is updated (its key too, when the patient ID was corrected), never duplicated.

    The caller commits. A case deleted meanwhile is saved afresh.
    """
    if saved_case_id is not None:
        try:
            changed = db.update_saved_case(session, saved_case_id, new_case.case_key, update, new_analysis.uncertainty)
        except LookupError:
            pass
        else:
            return SaveOutcome(saved_case_id, new_case.case_key, "updated" if changed else "unchanged", tuple(changed))
    case = db.add_case(session, new_case, new_analysis)
    session.flush()
    return SaveOutcome(case.id, case.case_key, "saved")


CASE_TABLE_COLUMNS = (
    "case_key",
    "saved_utc",
    "n_category",
    "t_category",
    "tumour_size_mm",
    "number",
    "outline_mm2",
    "dl_mean_patch_probability",
    "clinical_probability",
    "clinical_ci_low",
    "clinical_ci_high",
    "clinical_model",
    "model_name",
    "model_sha256",
    "training_data",
    "outcome",
    "days_to_recurrence",
    "days_followed",
)


def case_table_csv(summaries: list[CaseSummary]) -> str:
    """The case list as CSV (one row per case, its latest analysis), pseudonymised: the case key, never an ID.

    Probabilities are fractions 0–1; sizes in mm and mm²; an empty cell is unknown.
    """
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CASE_TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for case in summaries:
        latest, outcome = case.latest, case.outcome
        clinical = latest.clinical_risk if latest else None
        writer.writerow(
            {
                "case_key": case.case_key,
                "saved_utc": as_utc(case.created_at).strftime("%Y-%m-%d %H:%M"),
                "n_category": case.n_category,
                "t_category": case.t_category or "",
                "tumour_size_mm": case.tumour_size_mm if case.tumour_size_mm is not None else "",
                "number": tumour_number(case.solitary),
                "outline_mm2": f"{case.roi_area_mm2:.1f}" if case.roi_area_mm2 is not None else "",
                "dl_mean_patch_probability": f"{latest.dl_risk.probability:.4f}" if latest else "",
                "clinical_probability": f"{clinical.probability:.4f}" if clinical else "",
                "clinical_ci_low": f"{clinical.ci_low:.4f}" if clinical else "",
                "clinical_ci_high": f"{clinical.ci_high:.4f}" if clinical else "",
                "clinical_model": latest.clinical_model if clinical and latest else "",
                "model_name": latest.model_name if latest else "",
                "model_sha256": latest.model_sha256 if latest else "",
                "training_data": latest.training_data if latest else "",
                "outcome": outcome.status if outcome else "not recorded",
                "days_to_recurrence": outcome.days_to_recurrence
                if outcome and outcome.days_to_recurrence is not None
                else "",
                "days_followed": outcome.days_followed if outcome and outcome.days_followed is not None else "",
            }
        )
    return buffer.getvalue()


def tumour_number(solitary: bool | None) -> str:
    """ "solitary", "multiple", or "" when not entered: how the case CSV and Table 1 write the number."""
    return "" if solitary is None else ("solitary" if solitary else "multiple")


def one_case_per_patient(summaries: Sequence[CaseSummary]) -> list[CaseSummary]:
    """Each patient (case key) once: their newest case with a known outcome, else their newest case.

    A patient saved twice (another slice, a corrected outline) would otherwise count twice in
    a cohort: twice the events, narrower CIs than the patients warrant.
    """
    chosen: dict[str, CaseSummary] = {}
    for case in sorted(summaries, key=lambda c: c.case_id):
        known = case.outcome is not None and case.outcome.early_recurrence is not None
        held = chosen.get(case.case_key)
        held_known = held is not None and held.outcome is not None and held.outcome.early_recurrence is not None
        if held is None or known or not held_known:
            chosen[case.case_key] = case
    return sorted(chosen.values(), key=lambda c: c.case_id)


def cohort_rows(summaries: Sequence[CaseSummary]) -> list[dict[str, str]]:
    """Saved cases with a known outcome as rows of a Table 1 (:func:`core.table1.table1_from_rows`).

    The keys are a cohort CSV's column names; "" where a value was not entered. The outline's
    own largest diameter is not used for size: the entered tumour size is what the paper reports.
    One case per patient (:func:`one_case_per_patient`).
    """
    rows = []
    for case in one_case_per_patient(summaries):
        known = case.outcome.early_recurrence if case.outcome else None
        if known is None:
            continue
        rows.append(
            {
                "early_recurrence": "early recurrence" if known else "no early recurrence",
                "n_category": case.n_category if case.n_category in N_CATEGORIES else "",
                "t_category": case.t_category or "",
                "tumour_size_mm": f"{case.tumour_size_mm:g}" if case.tumour_size_mm else "",
                "tumour_number": tumour_number(case.solitary),
            }
        )
    return rows

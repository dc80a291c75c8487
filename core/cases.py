"""Rebuild a saved case for display from the database, without running the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from core import db
from core.clinical import ClinicalRisk
from core.heatmap import probability_map
from core.inference import CaseRisk


@dataclass(frozen=True)
class SavedCase:
    """A case and its latest analysis, ready to render. Arrays as stored (see :mod:`core.db`)."""

    case_id: int
    case_key: str
    pixels: np.ndarray
    is_hu: bool
    spacing_mm: tuple[float, float] | None
    source_kind: str
    mask: np.ndarray
    pmap: np.ndarray
    display_level: float
    display_width: float
    n_category: str
    dl_risk: CaseRisk
    clinical_risk: ClinicalRisk | None
    model_name: str
    model_provenance: str
    model_sha256: str

    @property
    def synthetic(self) -> bool:
        return "synthetic" in self.model_provenance.lower() or "untrained" in self.model_provenance.lower()


def load_saved_case(session: Session, case_id: int) -> SavedCase | None:
    """The case with its latest analysis, or ``None`` if it does not exist."""
    case = session.get(db.Case, case_id)
    if case is None or not case.analyses:
        return None
    analysis = case.analyses[-1]
    pixels = db.case_array(session, case, "slice")
    probabilities = db.array_by_id(session, analysis.probabilities_id)
    boxes = db.array_by_id(session, analysis.boxes_id)
    spacing = (case.spacing_row_mm, case.spacing_col_mm) if case.spacing_row_mm and case.spacing_col_mm else None
    clinical = (
        ClinicalRisk(
            analysis.clinical_probability,
            analysis.clinical_ci_low or 0.0,
            analysis.clinical_ci_high or 1.0,
            case.n_category,
        )
        if analysis.clinical_probability is not None
        else None
    )
    return SavedCase(
        case_id=case.id,
        case_key=case.case_key,
        pixels=pixels,
        is_hu=case.is_hu,
        spacing_mm=spacing,
        source_kind=case.source_kind,
        mask=db.case_array(session, case, "mask"),
        pmap=probability_map(pixels.shape, boxes, probabilities),
        display_level=case.display_level,
        display_width=case.display_width,
        n_category=case.n_category,
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
    )

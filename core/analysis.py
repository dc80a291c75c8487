"""One case, end to end: slice + outline + model → patch probabilities, risks and heatmap.

This is the only function the Analyze page calls to compute; it is also what the
benchmark times. Nothing here knows about Streamlit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from core import clinical, db
from core.heatmap import probability_map
from core.imaging import CtSlice, model_grey
from core.inference import CaseRisk, ProgressFn, aggregate, predict_patches
from core.patches import PatchGrid, extract_patches
from models.checkpoint import LoadedModel

CLINICAL_MODEL_NAME = "Logistic regression on UICC N category (paper Table 1, n = 41)"


@dataclass(frozen=True)
class ClinicalInputs:
    """What the surgeon entered beside the image; ``None`` means not entered."""

    n_category: str  # "N0", "N1" or "unknown"
    t_category: str | None = None
    tumour_size_mm: float | None = None
    solitary: bool | None = None


@dataclass(frozen=True)
class CaseAnalysis:
    """Everything shown after pressing Analyze.

    Attributes:
        grid: where the patches sit, in image pixels.
        probabilities: (N,) float64 per-patch probability of early recurrence.
        dl_risk: aggregated deep-learning risk.
        clinical_risk: N-category risk, or ``None`` when N is unknown.
        pmap: (rows, cols) float32 probability map, NaN outside patches.
        seconds: wall time from patch cutting to probability map (s).
    """

    grid: PatchGrid
    probabilities: np.ndarray
    dl_risk: CaseRisk
    clinical_risk: clinical.ClinicalRisk | None
    pmap: np.ndarray
    seconds: float


def clinical_risk_for(n_category: str) -> clinical.ClinicalRisk | None:
    """Risk from the paper's N-category model, or ``None`` for an unknown category."""
    if n_category not in clinical.N_CATEGORIES:
        return None
    return clinical.paper_model().risk(n_category)


def analyze_case(
    ct: CtSlice,
    mask: np.ndarray,
    model: LoadedModel,
    n_category: str,
    *,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
) -> CaseAnalysis:
    """Cut the patch grid, run the network, aggregate, and build the probability map.

    Raises:
        RoiError: the outline yields no patch.
    """
    started = time.perf_counter()
    cfg = model.preprocess
    grid, patches = extract_patches(model_grey(ct, cfg), mask, ct.spacing_mm, cfg)
    probabilities = predict_patches(model.network, patches, cfg, batch_size=batch_size, progress=progress)
    pmap = probability_map(ct.shape, grid.boxes_img, probabilities)
    return CaseAnalysis(
        grid=grid,
        probabilities=probabilities,
        dl_risk=aggregate(probabilities),
        clinical_risk=clinical_risk_for(n_category),
        pmap=pmap,
        seconds=time.perf_counter() - started,
    )


def case_record(
    ct: CtSlice, mask: np.ndarray, key: str, inputs: ClinicalInputs, display_window: tuple[float, float]
) -> db.NewCase:
    """The database record of a case: the slice's pixels and spacing, never its DICOM header."""
    return db.NewCase(
        case_key=key,
        source_kind=ct.source_kind,
        is_hu=ct.is_hu,
        pixels=ct.pixels,
        spacing_mm=ct.spacing_mm,
        mask=mask,
        n_category=inputs.n_category,
        t_category=inputs.t_category,
        tumour_size_mm=inputs.tumour_size_mm,
        solitary=inputs.solitary,
        display_level=float(display_window[0]),
        display_width=float(display_window[1]),
    )


def analysis_record(result: CaseAnalysis, model: LoadedModel) -> db.NewAnalysis:
    """The database record of one analysis, with the model's identity and preprocessing."""
    risk = result.clinical_risk
    return db.NewAnalysis(
        model_sha256=model.sha256,
        model_name=model.name,
        model_provenance=model.provenance,
        preprocess=model.preprocess.to_dict(),
        dl_probability=result.dl_risk.probability,
        dl_share_above=result.dl_risk.share_above,
        dl_threshold=result.dl_risk.threshold,
        aggregation_rule=result.dl_risk.rule,
        clinical_model=CLINICAL_MODEL_NAME,
        clinical_probability=risk.probability if risk else None,
        clinical_ci_low=risk.ci_low if risk else None,
        clinical_ci_high=risk.ci_high if risk else None,
        probabilities=result.probabilities,
        boxes_img=result.grid.boxes_img,
        seconds=result.seconds,
    )

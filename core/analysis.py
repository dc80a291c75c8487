"""One case, end to end: slice + outline + model → patch probabilities, risk and heatmap.

The Analyze page, ``python -m core analyze`` and the benchmark all call :func:`analyze_case`;
the clinical risk is separate (:func:`clinical_risk_for`) because it depends only on the
N category, which the surgeon may change after the network has run. Nothing here knows
about Streamlit.

Patches come from the slice's lattice (:mod:`core.lattice`) and their probabilities go
through the process-wide patch cache (:mod:`core.patch_cache`): analysing the same outline
again runs nothing, an edited outline runs only its new patches. A model that is an
ensemble (the K fold networks of its cross-validation) scores every patch with every member;
the case risk is the ensemble mean, with the members' spread beside it
(:class:`core.uncertainty.EnsembleSpread`). The outline sensitivity is computed on demand
(:func:`core.uncertainty.outline_sensitivity`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from core import access, clinical, db
from core.clinical_refit import PAPER_CLINICAL_MODEL, ClinicalModelInUse
from core.engine import Engine, engine_of
from core.errors import ModelOutputError, NotCalibratedError
from core.heatmap import probability_map
from core.imaging import CtSlice, analysis_blocker
from core.inference import INFERENCE_BATCH, CaseRisk, ProgressFn, aggregate
from core.lattice import plan_lattice
from core.patch_cache import PATCH_CACHE, PatchCache
from core.patches import PatchGrid
from core.scoring import score_cells, slice_context
from core.uncertainty import EnsembleSpread, OutlineSensitivity, ensemble_spread
from models.checkpoint import LoadedModel

CLINICAL_MODEL_NAME = clinical.PAPER_MODEL_NAME


@dataclass(frozen=True)
class ClinicalInputs:
    """What the surgeon entered beside the image; ``None`` means not entered."""

    n_category: str  # one of core.clinical.N_CHOICES
    t_category: str | None = None
    tumour_size_mm: float | None = None
    solitary: bool | None = None


@dataclass(frozen=True)
class Coverage:
    """How much of the outline the patch grid covers.

    Patches are kept only when enough of them lies inside the outline, so a rim along the
    outline's edge, or a narrow protrusion, can be covered by no patch: it has no colour
    on the heatmap and does not enter the risk.

    Attributes:
        outline_px: pixels inside the outline.
        uncovered_px: of those, pixels no patch covers.
        pixel_area_mm2: area of one pixel (mm²), or ``None`` without spacing.
    """

    outline_px: int
    uncovered_px: int
    pixel_area_mm2: float | None

    @property
    def uncovered_share(self) -> float:
        return self.uncovered_px / self.outline_px if self.outline_px else 0.0

    @property
    def uncovered_mm2(self) -> float | None:
        return None if self.pixel_area_mm2 is None else self.uncovered_px * self.pixel_area_mm2


@dataclass(frozen=True)
class CaseAnalysis:
    """What pressing Analyze computes.

    Attributes:
        grid: where the patches sit, in image pixels (a :class:`core.lattice.LatticeGrid`).
        probabilities: (N,) float64 per-patch probability of early recurrence; for an
            ensemble, the mean over its members.
        dl_risk: aggregated deep-learning risk (:func:`core.inference.aggregate` of
            ``probabilities``); for an ensemble, the ensemble's case risk.
        pmap: (rows, cols) float32 probability map, NaN outside patches.
        coverage: how much of the outline the patches cover.
        seconds: wall time from patch cutting to probability map (s).
        member_probabilities: (N, K) float64 per-patch probability under each of the K members.
        spread: the members' case risks and their range (K = 1: a range of one value).
        engine: the name of the engine that ran the network ("OpenVINO bf16", …).
        patches_computed, patches_reused: (patch, member) evaluations run now, and taken
            from the patch cache.
    """

    grid: PatchGrid
    probabilities: np.ndarray
    dl_risk: CaseRisk
    pmap: np.ndarray
    coverage: Coverage
    seconds: float
    member_probabilities: np.ndarray | None = None
    spread: EnsembleSpread | None = None
    engine: str = ""
    patches_computed: int = 0
    patches_reused: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain types (no arrays) for saving with the case: risk, spread, engine, counts."""
        return {
            "dl_probability": self.dl_risk.probability,
            "dl_share_above": self.dl_risk.share_above,
            "n_patches": self.dl_risk.n_patches,
            "aggregation_rule": self.dl_risk.rule,
            "spread": self.spread.to_dict() if self.spread is not None else None,
            "engine": self.engine,
            "patches_computed": self.patches_computed,
            "patches_reused": self.patches_reused,
            "seconds": self.seconds,
            "uncovered_share": self.coverage.uncovered_share,
        }


def clinical_risk_for(
    n_category: str, model: ClinicalModelInUse = PAPER_CLINICAL_MODEL
) -> clinical.ClinicalRisk | None:
    """Risk from the clinical model in use (default: the paper's), or ``None`` for an unknown category."""
    return model.risk(n_category)


def outline_coverage(pmap: np.ndarray, mask: np.ndarray, pixel_area_mm2: float | None) -> Coverage:
    """Pixels of the (rows, cols) bool outline that the (rows, cols) probability map leaves NaN."""
    inside = int(mask.sum())
    uncovered = int((mask & np.isnan(pmap)).sum())
    return Coverage(outline_px=inside, uncovered_px=uncovered, pixel_area_mm2=pixel_area_mm2)


def analyze_case(
    ct: CtSlice,
    mask: np.ndarray,
    model: LoadedModel,
    *,
    batch_size: int = INFERENCE_BATCH,
    progress: ProgressFn | None = None,
    cache: PatchCache | None = PATCH_CACHE,
    engine: Engine | None = None,
) -> CaseAnalysis:
    """Plan the patch lattice, score the patches with every member, aggregate, and build the probability map.

    Args:
        ct: the slice, calibrated (:func:`core.imaging.calibrate`) where its header could not say.
        mask: (rows, cols) bool outline in image pixels.
        progress: ``progress(done, total)`` over the (patch, member) evaluations run; not
            called when the cache holds them all.
        cache: the patch cache (default: the process-wide one); ``None`` computes every patch.
        engine: what runs the networks; default the model's prepared engine, or plain fp32.

    Raises:
        NotCalibratedError: the slice lacks the scale or HU the model needs.
        RoiError: the outline yields no patch.
        ModelOutputError: the network returned NaN or infinite probabilities.
        NotPermittedError: the current actor may not analyse (:mod:`core.access`).
    """
    access.require(access.Act.ANALYSE)
    cfg = model.preprocess
    blocker = analysis_blocker(ct, cfg)
    if blocker is not None:
        raise NotCalibratedError(blocker)
    started = time.perf_counter()
    engine = engine or engine_of(model)
    grid = plan_lattice(mask, ct.spacing_mm, cfg)
    members, counts = score_cells(
        slice_context(ct, cfg), grid.cells, model, engine=engine, cache=cache, batch_size=batch_size, progress=progress
    )
    if not np.all(np.isfinite(members)):
        raise ModelOutputError(
            "The model returned invalid probabilities (not a number) for this case, so no risk is shown; "
            "check that the model file is intact."
        )
    probabilities = members.mean(axis=1)
    pmap = probability_map(ct.shape, grid.boxes_img, probabilities)
    return CaseAnalysis(
        grid=grid,
        probabilities=probabilities,
        dl_risk=aggregate(probabilities),
        pmap=pmap,
        coverage=outline_coverage(pmap, mask, ct.pixel_area_mm2),
        seconds=time.perf_counter() - started,
        member_probabilities=members,
        spread=ensemble_spread(members, model.names),
        engine=counts.engine,  # the model's own engine may have given way to fp32 on the way
        patches_computed=counts.computed,
        patches_reused=counts.reused,
    )


def uncertainty_record(result: CaseAnalysis, sensitivity: OutlineSensitivity | None = None) -> dict[str, Any]:
    """Plain-type record of the analysis's spread, engine and (when computed) outline sensitivity, to save with the case."""
    return {"analysis": result.to_dict(), "sensitivity": sensitivity.to_dict() if sensitivity is not None else None}


def case_record(
    ct: CtSlice,
    mask: np.ndarray,
    key: str,
    inputs: ClinicalInputs,
    display_window: tuple[float, float],
    secret: bytes | None = None,
) -> db.NewCase:
    """The database record of a case: the slice's pixels and spacing, never its DICOM header.

    A calibrated PNG/JPEG export is stored in HU; its display window is the window it was
    exported with, so that it reopens looking as it was exported. A DICOM slice keeps which
    study, series and slice it came from as UID hashes keyed with ``secret`` (never the UIDs).
    """
    if ct.export_window is not None:
        display_window = ct.export_window
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
        spacing_source=ct.spacing_source,
        export_window=ct.export_window,
        source_ref=ct.source_ref.hashed(secret) if ct.source_ref is not None else None,
    )


def analysis_record(
    result: CaseAnalysis,
    model: LoadedModel,
    clinical_risk: clinical.ClinicalRisk | None,
    sensitivity: OutlineSensitivity | None = None,
    clinical_model: ClinicalModelInUse = PAPER_CLINICAL_MODEL,
) -> db.NewAnalysis:
    """The database record of one analysis, with the model's identity and preprocessing, its fold
    spread and engine, the outline sensitivity when it was computed, and which clinical model
    gave ``clinical_risk``."""
    return db.NewAnalysis(
        model_sha256=model.sha256,
        model_name=model.name,
        model_provenance=model.provenance,
        training_data=model.training_data,
        preprocess=model.preprocess.to_dict(),
        dl_probability=result.dl_risk.probability,
        dl_share_above=result.dl_risk.share_above,
        dl_threshold=result.dl_risk.threshold,
        aggregation_rule=result.dl_risk.rule,
        clinical_model=clinical_model.name,
        clinical_probability=clinical_risk.probability if clinical_risk else None,
        clinical_ci_low=clinical_risk.ci_low if clinical_risk else None,
        clinical_ci_high=clinical_risk.ci_high if clinical_risk else None,
        probabilities=result.probabilities,
        boxes_img=result.grid.boxes_img,
        seconds=result.seconds,
        uncertainty=uncertainty_record(result, sensitivity),
    )


def clinical_update(
    inputs: ClinicalInputs, clinical_model: ClinicalModelInUse = PAPER_CLINICAL_MODEL
) -> db.ClinicalUpdate:
    """The inputs and the clinical risk the model in use gives them, to update a saved case."""
    risk = clinical_risk_for(inputs.n_category, clinical_model)
    return db.ClinicalUpdate(
        n_category=inputs.n_category,
        t_category=inputs.t_category,
        tumour_size_mm=inputs.tumour_size_mm,
        solitary=inputs.solitary,
        clinical_probability=risk.probability if risk else None,
        clinical_ci_low=risk.ci_low if risk else None,
        clinical_ci_high=risk.ci_high if risk else None,
        clinical_model=clinical_model.name,
    )

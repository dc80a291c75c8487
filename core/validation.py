"""Local validation on the hospital's own patients: discrimination, calibration, decision curves.

Patient level only: one saved case = one patient's latest analysis, with a known outcome
(:mod:`core.outcomes`; unknown outcomes are left out, never counted as negatives). The deep
learning risk and the clinical risk are compared on exactly the same patients, and only
cases scored by one model (one checkpoint sha256) are pooled: mixing models would report a
performance no single model has.

Why :data:`MIN_EVENTS_PER_CLASS` = 10: with fewer than 10 patients with, or without, early
recurrence, DeLong's 95% CI of an AUC of 0.8 spans about ±0.2 or more, and the calibration
slope is estimated from a handful of events. The page then warns that the figures are
descriptive only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.cases import one_case_per_patient
from core.clinical import PAPER_MODEL_NAME
from core.logistic import fit_logistic
from core.metrics import (
    AucDifference,
    AucEstimate,
    binary_metrics,
    delong_auc,
    delong_test,
    risk_groups,
    roc_curve,
)

MIN_EVENTS_PER_CLASS = 10
MAX_PLAUSIBLE_SLOPE = 10.0  # beyond it the recalibration fit is running off to infinity (separation)
DCA_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)
DECISION_CURVE_REPORT_THRESHOLDS = np.array([0.1, 0.2, 0.3, 0.4, 0.5])  # the report's table: the plausible range
CALIBRATION_BINS = 5
SMOOTHING_BANDWIDTH = 0.1  # Gaussian kernel width on the predicted probability (0–1 scale)
_EPS = 1e-6


@dataclass(frozen=True)
class Calibration:
    """How well predicted probabilities match observed rates.

    Attributes:
        brier: mean squared error of the probabilities (0 is perfect; 0.25 is a coin at 50%).
        slope: logistic recalibration slope of the outcome on logit(p): 1 is ideal, < 1 means
            predictions too extreme (overfitting). NaN when it cannot be fitted.
        intercept: calibration-in-the-large (intercept with logit(p) as offset): 0 is ideal,
            > 0 means the model under-predicts on average.
        bins: per quantile bin of p: mean predicted, observed rate, patients.
        smooth_x, smooth_y: a kernel-smoothed observed rate along the predicted probability.
    """

    brier: float
    slope: float
    intercept: float
    bins: tuple[tuple[float, float, int], ...]
    smooth_x: np.ndarray
    smooth_y: np.ndarray


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _logistic_fit(x: np.ndarray, y: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Maximum-likelihood coefficients of y ~ x (design with its own intercept column) + offset.

    NaN where there is no finite maximum: a singular design, or no convergence (separation,
    where the likelihood keeps growing as a coefficient runs off to infinity).
    """
    fit = fit_logistic(x, y, offset=offset)
    return fit.coef if fit.converged else np.full(x.shape[1], math.nan)


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> Calibration:
    """Brier score, calibration slope and intercept, quantile bins and a smoothed curve of (n,) p against 0/1 y."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    lp = _logit(p)
    ones = np.ones((len(y), 1))
    slope = float(_logistic_fit(np.column_stack([ones, lp]), y, np.zeros(len(y)))[1])
    intercept = float(_logistic_fit(ones, y, lp)[0])
    if not abs(slope) <= MAX_PLAUSIBLE_SLOPE:
        slope = math.nan
    # quantile bins of patients, tied predictions (a two-valued clinical model) always in one bin
    group = risk_groups(p, bins)
    members = [group == g for g in np.unique(group)]
    binned = tuple((float(p[m].mean()), float(y[m].mean()), int(m.sum())) for m in members)
    grid = np.linspace(0, 1, 51)
    weights = np.exp(-0.5 * ((grid[:, None] - p[None, :]) / SMOOTHING_BANDWIDTH) ** 2)
    enough = weights.sum(axis=1) > 1.0  # less than about one patient's weight nearby: no curve there
    smooth = np.where(enough, (weights @ y) / np.maximum(weights.sum(axis=1), _EPS), np.nan)
    return Calibration(float(np.mean((p - y) ** 2)), slope, intercept, binned, grid, smooth)


def net_benefit(labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray = DCA_THRESHOLDS) -> np.ndarray:
    """Net benefit TP/n − FP/n · pt/(1 − pt) of treating when p ≥ pt, at each threshold pt (Vickers & Elkin 2006)."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    n = len(y)
    treat = p[None, :] >= thresholds[:, None]
    tp = (treat & y[None, :]).sum(axis=1)
    fp = (treat & ~y[None, :]).sum(axis=1)
    return tp / n - fp / n * thresholds / (1 - thresholds)


def treat_all_net_benefit(labels: np.ndarray, thresholds: np.ndarray = DCA_THRESHOLDS) -> np.ndarray:
    """Net benefit of treating everyone: prevalence − (1 − prevalence) · pt/(1 − pt)."""
    prevalence = float(np.mean(np.asarray(labels, dtype=np.float64)))
    return prevalence - (1 - prevalence) * thresholds / (1 - thresholds)


@dataclass(frozen=True)
class ModelValidation:
    """One model's (or the clinical model's) performance on the local patients."""

    name: str
    auc: AucEstimate
    roc_fpr: np.ndarray
    roc_tpr: np.ndarray
    calibration: Calibration
    at_threshold: dict[str, float]
    net_benefit: np.ndarray


@dataclass(frozen=True)
class LocalValidation:
    """The deep-learning and clinical risks on the same local patients.

    Attributes:
        n, events: patients, and those with early recurrence.
        dl, clinical: each model's figures (clinical ``None`` when fewer than 2 patients have an N category).
        difference: DeLong's test of AUC(DL) − AUC(clinical) on the same patients, or ``None``.
        treat_all: net benefit of treating everyone, at :data:`DCA_THRESHOLDS`.
        threshold: the decision threshold the sensitivity etc. are given at.
        warning: a sentence when there are too few patients for more than a description.
    """

    n: int
    events: int
    dl: ModelValidation
    clinical: ModelValidation | None
    difference: AucDifference | None
    treat_all: np.ndarray
    threshold: float
    warning: str | None


def _model_validation(name: str, labels: np.ndarray, scores: np.ndarray, threshold: float) -> ModelValidation:
    fpr, tpr = roc_curve(labels, scores)
    return ModelValidation(
        name=name,
        auc=delong_auc(labels, scores),
        roc_fpr=fpr,
        roc_tpr=tpr,
        calibration=calibration(labels, scores),
        at_threshold=binary_metrics(labels, scores, threshold),
        net_benefit=net_benefit(labels, scores),
    )


def _enough_per_class(y: np.ndarray) -> bool:
    return min(int(y.sum()), int((~y).sum())) >= 2


def can_validate(labels: Sequence[bool]) -> bool:
    """Whether :func:`validate` has the 2 patients per class an AUC needs."""
    return _enough_per_class(np.asarray(labels, dtype=bool))


def format_p(p: float) -> str:
    """A p-value as a page shows it: "< 0.001", three decimals, or "—" when undefined."""
    if not math.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def format_auc(auc: AucEstimate) -> str:
    """AUC with its DeLong CI, or the AUC alone when the CI is undefined (no spread, SE 0)."""
    if not (math.isfinite(auc.se) and auc.se > 0):
        return f"{auc.auc:.3f} (CI undefined: no spread in these patients' scores)"
    return f"{auc.auc:.3f} ({auc.ci_low:.3f}–{auc.ci_high:.3f})"


def _fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "—"


def too_few_sentence(n: int, events: int) -> str | None:
    """The warning below :data:`MIN_EVENTS_PER_CLASS` patients in either class; ``None`` above it."""
    smaller = min(events, n - events)
    if smaller >= MIN_EVENTS_PER_CLASS:
        return None
    return (
        f"Only {events} patients with and {n - events} without early recurrence: below {MIN_EVENTS_PER_CLASS} in a "
        "class the confidence intervals are very wide and calibration rests on a handful of events; read these "
        "figures as a description, not as evidence."
    )


def validate(
    labels: Sequence[bool],
    dl_scores: Sequence[float],
    clinical_scores: Sequence[float | None],
    threshold: float = 0.5,
) -> LocalValidation:
    """Validate both models on the same patients.

    Args:
        labels: early recurrence per patient (known outcomes only).
        dl_scores: the deep-learning risk per patient.
        clinical_scores: the clinical risk per patient, ``None`` where the N category is unknown;
            when some are missing, both models are compared on the patients that have both.

    Raises:
        ValueError: fewer than 2 patients in a class (no AUC can be computed).
    """
    y = np.asarray(labels, dtype=bool)
    dl = np.asarray(dl_scores, dtype=np.float64)
    both = np.array([c is not None for c in clinical_scores], dtype=bool)
    clinical = np.array([c if c is not None else math.nan for c in clinical_scores], dtype=np.float64)
    # the clinical model is compared only where it can be: then on exactly its patients, DL included
    comparable = _enough_per_class(y[both]) and len(np.unique(clinical[both])) > 1
    if comparable:
        y, dl, clinical = y[both], dl[both], clinical[both]
    if not _enough_per_class(y):
        raise ValueError("at least 2 patients with and 2 without early recurrence are needed")
    dl_validation = _model_validation("ResNet50 (mean patch probability)", y, dl, threshold)
    clinical_validation = difference = None
    if comparable:
        clinical_validation = _model_validation("N-category logistic regression", y, clinical, threshold)
        difference = delong_test(y, dl, clinical)
    return LocalValidation(
        n=len(y),
        events=int(y.sum()),
        dl=dl_validation,
        clinical=clinical_validation,
        difference=difference,
        treat_all=treat_all_net_benefit(y),
        threshold=threshold,
        warning=too_few_sentence(len(y), int(y.sum())),
    )


def difference_sentence(result: LocalValidation) -> str:
    """DeLong's test of AUC(DL) − AUC(clinical) in words, or why there is none."""
    d = result.difference
    if d is None:
        return "The clinical model is not compared: too few of these patients have an N category, or all have the same one."
    if d.se > 0:
        return (
            f"DeLong test, AUC(deep learning) − AUC(clinical): {d.difference:+.3f} (SE {d.se:.3f}), "
            f"p = {format_p(d.p_value)}."
        )
    return f"AUC(deep learning) − AUC(clinical): {d.difference:+.3f}; DeLong's test is undefined here (SE 0)."


def summary_rows(result: LocalValidation) -> list[dict[str, Any]]:
    """One row per model for the page's table: AUC with CI, Brier, calibration, rates at the threshold."""
    rows = []
    for model in (result.dl, result.clinical):
        if model is None:
            continue
        m, c = model.at_threshold, model.calibration
        rows.append(
            {
                "model": model.name,
                "AUC (95% CI, DeLong)": format_auc(model.auc),
                "Brier": f"{c.brier:.3f}",
                "calibration slope": _fixed(c.slope, 2),
                "calibration intercept": _fixed(c.intercept, 2),
                f"sensitivity at {result.threshold:g}": f"{m['sensitivity']:.0%}",
                "specificity": f"{m['specificity']:.0%}",
                "PPV": f"{m['ppv']:.0%}" if math.isfinite(m["ppv"]) else "—",
                "NPV": f"{m['npv']:.0%}" if math.isfinite(m["npv"]) else "—",
            }
        )
    return rows


@dataclass(frozen=True)
class ScoredPatients:
    """The saved cases with a known outcome whose latest analysis was scored by one model and one clinical model.

    Attributes:
        labels: early recurrence per case; dl: the deep-learning risk; clinical: the clinical
            risk, ``None`` where the N category is unknown.
        unknown_outcome: cases of this model left out because their outcome is unknown or unrecorded.
    """

    model_sha256: str
    model_name: str
    labels: tuple[bool, ...]
    dl: tuple[float, ...]
    clinical: tuple[float | None, ...]
    unknown_outcome: int
    weights_warning: str | None = None  # e.g. trained on synthetic phantoms (core.provenance)
    clinical_model: str = PAPER_MODEL_NAME  # the clinical model that gave ``clinical``

    @property
    def key(self) -> str:
        """What identifies the group: the checkpoint's sha256 and the clinical model's name."""
        return f"{self.model_sha256}|{self.clinical_model}"

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def events(self) -> int:
        return sum(self.labels)


def local_cohorts(summaries: Sequence[Any]) -> list[ScoredPatients]:
    """Saved cases (:class:`core.cases.CaseSummary`) grouped by the models of their latest analysis, largest first.

    A group is one checkpoint (sha256) and one clinical model (the paper's, or a local
    version): cases scored by different models are never pooled. A patient counts once
    (:func:`core.cases.one_case_per_patient`), with
    its latest analysis; cases whose outcome is unknown or not recorded are counted per group
    but left out of its patients.
    """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for case in one_case_per_patient(summaries):
        latest = case.latest
        if latest is None:
            continue
        group = groups.setdefault(
            (latest.model_sha256, latest.clinical_model),
            {
                "name": latest.model_name,
                "warning": latest.weights_warning,
                "labels": [],
                "dl": [],
                "clinical": [],
                "unknown": 0,
            },
        )
        known = case.outcome.early_recurrence if case.outcome else None
        if known is None:
            group["unknown"] += 1
            continue
        group["labels"].append(bool(known))
        group["dl"].append(latest.dl_risk.probability)
        group["clinical"].append(latest.clinical_risk.probability if latest.clinical_risk else None)
    cohorts = [
        ScoredPatients(
            sha,
            g["name"],
            tuple(g["labels"]),
            tuple(g["dl"]),
            tuple(g["clinical"]),
            g["unknown"],
            g["warning"],
            clinical_model,
        )
        for (sha, clinical_model), g in groups.items()
    ]
    return sorted(cohorts, key=lambda c: (-c.n, c.key))


def cohort_sentence(cohort: ScoredPatients, result: LocalValidation) -> str:
    """Who is in the validation and who was left out, e.g. "40 patients, 12 with early recurrence · …"."""
    parts = [f"{result.n} patients, {result.events} with early recurrence"]
    if cohort.unknown_outcome:
        parts.append(f"{cohort.unknown_outcome} case(s) of this model left out: outcome unknown or not recorded")
    if cohort.n > result.n:
        parts.append(f"{cohort.n - result.n} left out: N category unknown (both models on the same patients)")
    return " · ".join(parts)

"""Binary classification metrics in the layout of the paper's Tables 2 and 3, and DeLong's AUC variance.

All rates are fractions in [0, 1]; reports print them as percentages. A score that is
NaN or infinite is an error, never a silent 0.5: a network that diverged must not be
reported as "chance".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRIC_NAMES = (
    "sensitivity",
    "specificity",
    "false_negative_rate",
    "false_positive_rate",
    "ppv",
    "npv",
    "accuracy",
    "auc",
)
Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
CI_METHOD = "DeLong"


def _checked(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) bool labels and (…, n) float64 scores, refusing NaN / infinite scores and length mismatches."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[-1] != labels.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels but {scores.shape[-1]} scores")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity; a metric is never computed over them")
    return labels, scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count one half); NaN with one class only.

    Raises:
        ValueError: a score is NaN or infinite.
    """
    labels, scores = _checked(labels, scores)
    if labels.all() or not labels.any():
        return math.nan
    return float(_midrank_components(labels, scores[None, :])[0][0])


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) from (0, 0) to (1, 1) over every threshold."""
    labels, scores = _checked(labels, scores)
    thresholds = np.unique(scores)[::-1]
    n_pos, n_neg = max(labels.sum(), 1), max((~labels).sum(), 1)
    fpr = [0.0] + [float(((scores >= t) & ~labels).sum() / n_neg) for t in thresholds]
    tpr = [0.0] + [float(((scores >= t) & labels).sum() / n_pos) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Tables 2/3 metrics for 0/1 labels and scores in [0, 1]; undefined ratios are NaN.

    Raises:
        ValueError: a score is NaN or infinite.
    """
    labels, scores = _checked(labels, scores)
    predicted = scores >= threshold
    tp, tn = int((predicted & labels).sum()), int((~predicted & ~labels).sum())
    fp, fn = int((predicted & ~labels).sum()), int((~predicted & labels).sum())
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "false_negative_rate": _ratio(fn, tp + fn),
        "false_positive_rate": _ratio(fp, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, len(labels)),
        "auc": roc_auc(labels, scores),
        "n": len(labels),
        "n_positive": int(labels.sum()),
    }


def mean_sd(per_fold: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample SD of each metric over folds, ignoring NaN (a fold with one class has no AUC)."""
    summary = {}
    for name in METRIC_NAMES:
        values = np.array([fold[name] for fold in per_fold], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary[name] = {
            "mean": float(values.mean()) if len(values) else math.nan,
            "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
        }
    return summary


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


# ---------------------------------------------------------------- DeLong


@dataclass(frozen=True)
class AucEstimate:
    """An AUC with DeLong's standard error and 95% CI.

    Attributes:
        auc: area under the ROC curve, 0–1 (NaN with one class only).
        se: DeLong standard error (NaN with fewer than 2 patients in a class).
        ci_low, ci_high: AUC ∓ 1.96 SE clipped to [0, 1], as pROC does.
        n: patients; n_positive: patients with the event.
    """

    auc: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    n_positive: int

    @property
    def ci(self) -> list[float]:
        """[low, high], JSON-ready."""
        return [self.ci_low, self.ci_high]


def _midranks(x: np.ndarray) -> np.ndarray:
    """(k, n) → (k, n) float64 ranks 1…n along the last axis, ties given their mean rank."""
    out = np.empty_like(x, dtype=np.float64)
    for row, values in enumerate(x):
        order = np.argsort(values, kind="mergesort")
        ordered = values[order]
        # boundaries of runs of equal values: each run gets the mean of its 1-based positions
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], len(ordered)]
        ranks = np.repeat((starts + ends + 1) / 2.0, ends - starts)
        out[row, order] = ranks
    return out


def _midrank_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun & Xu's (2014) fast DeLong: AUCs and structural components from midranks, O(k n log n).

    Args:
        labels: (n,) bool, both classes present.
        scores: (k, n) float64, higher = more likely positive.

    Returns:
        aucs (k,); v10 (k, m): for each positive, the share of negatives it outranks (ties ½);
        v01 (k, n_neg): for each negative, the share of positives that outrank it.
    """
    pos, neg = scores[:, labels], scores[:, ~labels]
    m, n = pos.shape[1], neg.shape[1]
    tz = _midranks(np.concatenate([pos, neg], axis=1))
    tx, ty = _midranks(pos), _midranks(neg)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k scores on the same patients and DeLong's (k, k) covariance matrix of them.

    Args:
        labels: (n,) 0/1 outcomes.
        scores: (k, n) or (n,) float scores, higher = more likely positive; ties allowed.

    Returns:
        (k,) AUCs and (k, k) covariance (variances on the diagonal). The covariance is NaN
        when a class has fewer than 2 patients (its structural components have no variance);
        everything is NaN with one class only.

    Raises:
        ValueError: NaN / infinite scores or a length mismatch.
    """
    labels, scores = _checked(labels, np.atleast_2d(scores))
    k = scores.shape[0]
    m, n = int(labels.sum()), int((~labels).sum())
    if m == 0 or n == 0:
        return np.full(k, math.nan), np.full((k, k), math.nan)
    aucs, v10, v01 = _midrank_components(labels, scores)
    if m < 2 or n < 2:
        return aucs, np.full((k, k), math.nan)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def delong_auc(labels: np.ndarray, scores: np.ndarray) -> AucEstimate:
    """AUC of one (n,) score vector with DeLong's SE and a Wald 95% CI clipped to [0, 1].

    Raises:
        ValueError: NaN / infinite scores or a length mismatch.
    """
    labels = np.asarray(labels).astype(bool)
    aucs, cov = delong_covariance(labels, np.asarray(scores, dtype=np.float64)[None, :])
    auc, var = float(aucs[0]), float(cov[0, 0])
    se = math.sqrt(var) if var >= 0 else math.nan  # var is NaN or ≥ 0; guard the sqrt anyway
    low, high = (max(0.0, auc - Z_95 * se), min(1.0, auc + Z_95 * se)) if math.isfinite(se) else (math.nan, math.nan)
    return AucEstimate(auc, se, low, high, len(labels), int(labels.sum()))


@dataclass(frozen=True)
class AucDifference:
    """DeLong's test of AUC_a − AUC_b on the same patients (two-sided)."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> AucDifference:
    """DeLong, DeLong & Clarke-Pearson (1988) test that two correlated AUCs are equal.

    Args:
        labels: (n,) 0/1 outcomes.
        scores_a, scores_b: (n,) scores of two models on the same patients.

    Returns:
        The difference, its SE (Var a + Var b − 2 Cov), z and the two-sided normal p-value;
        z and p are NaN when the SE is 0 or undefined.
    """
    aucs, cov = delong_covariance(labels, np.vstack([scores_a, scores_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(var) if var > 0 else (0.0 if var == 0 else math.nan)
    z = diff / se if se > 0 else math.nan
    p = math.erfc(abs(z) / math.sqrt(2.0)) if math.isfinite(z) else math.nan
    return AucDifference(float(aucs[0]), float(aucs[1]), diff, se, z, p)


def risk_groups(probabilities: np.ndarray, groups: int) -> np.ndarray:
    """(n,) int group of each of (n,) predicted risks: up to ``groups`` groups of about n / groups patients.

    Patients are taken in order of risk and a group closes once the running count reaches its
    share; tied risks always share a group, so a model with few distinct risks (the two of an
    N-only model) gives fewer, larger groups, never a split tie. Groups are numbered 0, 1, …
    from the lowest risk. Used by the calibration bins and the Hosmer–Lemeshow test.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    values, counts = np.unique(p, return_counts=True)
    share = len(p) / max(1, groups)
    labels = np.zeros(len(values), dtype=np.int64)
    group, seen = 0, 0
    for i, count in enumerate(counts):
        labels[i] = group
        seen += count
        if seen >= share * (group + 1) - 1e-9:
            group += 1
    return labels[np.searchsorted(values, p)]

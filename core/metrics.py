"""Binary classification metrics in the layout of the paper's Tables 2 and 3.

All rates are fractions in [0, 1]; reports print them as percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count one half); NaN with one class only."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), dtype=np.float64)
    ranks[order] = np.arange(1, len(order) + 1)
    all_scores = np.concatenate([pos, neg])
    for value in np.unique(all_scores):  # average ranks of ties
        tied = all_scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) from (0, 0) to (1, 1) over every threshold."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(scores)[::-1]
    n_pos, n_neg = max(labels.sum(), 1), max((~labels).sum(), 1)
    fpr = [0.0] + [float(((scores >= t) & ~labels).sum() / n_neg) for t in thresholds]
    tpr = [0.0] + [float(((scores >= t) & labels).sum() / n_pos) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Tables 2/3 metrics for 0/1 labels and scores in [0, 1]; undefined ratios are NaN."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
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
    """Mean and sample SD of each metric over folds, ignoring NaN."""
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

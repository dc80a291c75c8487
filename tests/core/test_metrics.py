from __future__ import annotations

import math

import numpy as np
import pytest

from core.metrics import METRIC_NAMES, binary_metrics, mean_sd, roc_auc, roc_curve


def test_auc_known_values() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5  # ties count one half
    # 2 positives × 2 negatives, one discordant pair of four
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.5, 0.9])) == 0.75
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_confusion_rates_match_hand_counts() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.7, 0.2, 0.6, 0.1, 0.3, 0.4])  # TP 2, FN 1, FP 1, TN 3
    m = binary_metrics(labels, scores)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(3 / 4)
    assert m["false_negative_rate"] == pytest.approx(1 / 3) and m["false_positive_rate"] == pytest.approx(1 / 4)
    assert m["ppv"] == pytest.approx(2 / 3) and m["npv"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)


def test_roc_curve_ends_at_corners() -> None:
    fpr, tpr = roc_curve(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_mean_sd_ignores_nan() -> None:
    folds = [dict.fromkeys(METRIC_NAMES, v) for v in (0.5, 0.7, math.nan)]
    summary = mean_sd(folds)
    assert summary["auc"]["mean"] == pytest.approx(0.6) and summary["auc"]["sd"] == pytest.approx(
        np.std([0.5, 0.7], ddof=1)
    )

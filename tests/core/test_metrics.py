from __future__ import annotations

import math

import numpy as np
import pytest

from core.metrics import (
    METRIC_NAMES,
    Z_95,
    binary_metrics,
    delong_auc,
    delong_covariance,
    delong_test,
    mean_sd,
    roc_auc,
    roc_curve,
)


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


# ---------------------------------------------------------------- NaN scores are an error


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_an_error_not_chance(bad: float) -> None:
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, bad, 0.3, 0.9])
    for metric in (roc_auc, binary_metrics, delong_auc):
        with pytest.raises(ValueError, match="NaN or infinity"):
            metric(labels, scores)


# ---------------------------------------------------------------- DeLong


def _delong_by_hand(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong 1988 straight from its definition, O(k m n): the reference for the fast algorithm."""
    labels = labels.astype(bool)
    pos, neg = scores[:, labels], scores[:, ~labels]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # (k, m, n)
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    m, n = pos.shape[1], neg.shape[1]
    return psi.mean(axis=(1, 2)), np.cov(v10) / m + np.cov(v01) / n


def test_delong_hand_computed_case() -> None:
    # positives 0.8, 0.4; negatives 0.6, 0.2. Pairs won: (0.8,0.6) (0.8,0.2) (0.4,0.2) → AUC 3/4.
    # V10 (per positive) = [1, 1/2], V01 (per negative 0.6, 0.2) = [1/2, 1]; each sample variance = 1/8.
    # Var = (1/8)/2 + (1/8)/2 = 1/8 → SE = 0.35355; CI 0.75 ∓ 1.96·SE = [0.057, 1.443] → clipped to 1.
    est = delong_auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.6, 0.4, 0.2]))
    assert est.auc == pytest.approx(0.75) and est.se == pytest.approx(math.sqrt(1 / 8))
    assert est.ci_low == pytest.approx(0.75 - Z_95 * math.sqrt(1 / 8)) and est.ci_high == 1.0
    assert (est.n, est.n_positive) == (4, 2)


def test_delong_hand_computed_case_with_a_tie() -> None:
    # positives 0.5, 0.9; negatives 0.5, 0.1: the tied pair counts 1/2 → AUC 3.5/4 = 0.875.
    # V10 = [3/4, 1], V01 = [3/4, 1]; each sample variance 1/32 → Var = 1/64 + 1/64 = 1/32.
    est = delong_auc(np.array([1, 1, 0, 0]), np.array([0.5, 0.9, 0.5, 0.1]))
    assert est.auc == pytest.approx(0.875) and est.se == pytest.approx(math.sqrt(1 / 32))


def test_fast_delong_equals_the_definition_with_ties() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 57)
    # rounded scores: many ties, within and across classes
    a = np.round(labels * 0.8 + rng.normal(0, 1, 57), 1)
    b = np.round(0.6 * a + rng.normal(0, 1, 57), 1)
    scores = np.vstack([a, b])
    aucs, cov = delong_covariance(labels, scores)
    ref_aucs, ref_cov = _delong_by_hand(labels, scores)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    assert roc_auc(labels, a) == pytest.approx(ref_aucs[0], abs=1e-12)


def test_auc_equals_scipy_mann_whitney() -> None:
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 80).astype(bool)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)
    u = mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert roc_auc(labels, scores) == pytest.approx(u / (labels.sum() * (~labels).sum()), abs=1e-12)


def test_delong_agrees_with_a_stratified_bootstrap() -> None:
    """DeLong's SE and covariance against 4,000 stratified bootstrap resamples of 300 patients.

    Tolerance 10 % relative on the SE and 0.08 on the correlation of the two AUCs: the bootstrap
    SE's own Monte-Carlo error is about SE / sqrt(2 B) ≈ 1 % here, and DeLong and the bootstrap
    differ by O(1/n) terms (a few % at n = 300); a wrong formula (e.g. a swapped m/n, a missing
    covariance term) is off by far more (the two AUCs here correlate at about 0.45).
    """
    rng = np.random.default_rng(11)
    n = 300
    labels = np.r_[np.ones(120, bool), np.zeros(180, bool)]
    latent = rng.normal(0, 1, n) + 0.9 * labels
    a = latent + rng.normal(0, 0.8, n)
    b = latent + rng.normal(0, 1.2, n)
    _aucs, cov = delong_covariance(labels, np.vstack([a, b]))
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    boot = np.empty((4000, 2))
    for i in range(len(boot)):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        boot[i] = [roc_auc(labels[idx], a[idx]), roc_auc(labels[idx], b[idx])]
    boot_cov = np.cov(boot.T)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), np.sqrt(np.diag(boot_cov)), rtol=0.10)
    corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    boot_corr = boot_cov[0, 1] / np.sqrt(boot_cov[0, 0] * boot_cov[1, 1])
    assert corr == pytest.approx(boot_corr, abs=0.08)
    assert delong_auc(labels, a).se == pytest.approx(math.sqrt(cov[0, 0]))


def test_delong_test_of_a_difference() -> None:
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    a = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4])  # perfect
    same = delong_test(labels, a, a)
    assert same.difference == 0.0 and math.isnan(same.p_value)  # identical scores: no test
    rng = np.random.default_rng(2)
    b = rng.permutation(a)
    diff = delong_test(labels, a, b)
    aucs, cov = delong_covariance(labels, np.vstack([a, b]))
    assert diff.difference == pytest.approx(aucs[0] - aucs[1])
    assert diff.se == pytest.approx(math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
    assert 0.0 <= diff.p_value <= 1.0
    assert diff.p_value == pytest.approx(math.erfc(abs(diff.z) / math.sqrt(2)))


def test_delong_degenerate_classes() -> None:
    one_class = delong_auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]))
    assert math.isnan(one_class.auc) and math.isnan(one_class.ci_low)
    one_positive = delong_auc(np.array([1, 0, 0]), np.array([0.9, 0.2, 0.3]))
    assert one_positive.auc == 1.0 and math.isnan(one_positive.se)

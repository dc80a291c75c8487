"""core.validation: DeLong against a bootstrap, calibration, decision curves, one model per cohort."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from core.metrics import delong_auc
from core.outcomes import FollowUp
from core.validation import (
    DCA_THRESHOLDS,
    calibration,
    local_cohorts,
    net_benefit,
    too_few_sentence,
    treat_all_net_benefit,
    validate,
)


def _cohort(n: int, seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.45
    score = 1 / (1 + np.exp(-(signal * y - signal / 2 + rng.normal(0, 1, n))))
    return y, score


def test_delong_ci_agrees_with_a_percentile_bootstrap_within_0_03() -> None:
    """Stated tolerance: each CI end within 0.03 of a 4,000-resample percentile bootstrap (n = 150)."""
    y, score = _cohort(150, seed=7)
    estimate = delong_auc(y, score)
    rng = np.random.default_rng(0)
    boots = []
    while len(boots) < 4000:
        index = rng.integers(0, len(y), len(y))
        if 0 < y[index].sum() < len(y):
            boots.append(delong_auc(y[index], score[index]).auc)
    low, high = np.percentile(boots, [2.5, 97.5])
    assert abs(estimate.ci_low - low) < 0.03 and abs(estimate.ci_high - high) < 0.03, (estimate, low, high)


def test_calibration_slope_is_one_for_calibrated_risks_and_below_one_for_overconfident_ones() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 4000)
    y = rng.random(4000) < p
    good = calibration(y, p)
    assert good.slope == pytest.approx(1.0, abs=0.1) and good.intercept == pytest.approx(0.0, abs=0.1)
    logit = np.log(p / (1 - p))
    overconfident = calibration(y, 1 / (1 + np.exp(-2 * logit)))  # twice as extreme
    assert overconfident.slope == pytest.approx(0.5, abs=0.06)
    assert good.brier < overconfident.brier
    assert sum(n for _, _, n in good.bins) == 4000 and len(good.bins) == 5
    assert np.nanmax(np.abs(good.smooth_y[10:41] - good.smooth_x[10:41])) < 0.08  # smoothed curve near the diagonal


def test_net_benefit_by_hand() -> None:
    y = np.array([1, 1, 0, 0, 0], bool)
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    # at pt = 0.5: treat the first and third: TP 1, FP 1 → 1/5 − 1/5 · 1 = 0
    [nb] = net_benefit(y, p, np.array([0.5]))
    assert nb == pytest.approx(0.0)
    # at pt = 0.25: treat 0.9, 0.4, 0.6: TP 2, FP 1 → 2/5 − 1/5 · 1/3
    [nb] = net_benefit(y, p, np.array([0.25]))
    assert nb == pytest.approx(2 / 5 - 1 / 15)
    assert treat_all_net_benefit(y, np.array([0.25]))[0] == pytest.approx(0.4 - 0.6 / 3)


def test_both_models_are_compared_on_the_same_patients() -> None:
    y, dl = _cohort(60, seed=1)
    clinical: list[float | None] = [0.85 if i % 3 else 0.32 for i in range(60)]
    clinical[0] = clinical[1] = None  # N unknown for two patients: left out of both models
    result = validate(y, dl, clinical)
    assert result.n == 58 and result.clinical is not None and result.difference is not None
    assert result.dl.auc.auc == pytest.approx(delong_auc(y[2:], dl[2:]).auc)
    assert len(result.dl.net_benefit) == len(DCA_THRESHOLDS) == len(result.treat_all)
    with pytest.raises(ValueError):
        validate([True, False, False], [0.9, 0.1, 0.2], [None, None, None])


def test_few_events_are_said_and_enough_are_not() -> None:
    assert "Only 6 patients with and 30 without early recurrence" in too_few_sentence(36, 6)
    assert too_few_sentence(40, 20) is None


def _summary(
    sha: str, dl: float, clinical: float | None, outcome: FollowUp | None, clinical_model: str = "paper"
) -> SimpleNamespace:
    risk = SimpleNamespace(probability=clinical) if clinical is not None else None
    latest = SimpleNamespace(
        model_sha256=sha,
        model_name=f"model {sha}",
        dl_risk=SimpleNamespace(probability=dl),
        clinical_risk=risk,
        weights_warning=None,
        clinical_model=clinical_model,
    )
    _summary.count = getattr(_summary, "count", 0) + 1  # type: ignore[attr-defined]
    case_id = _summary.count  # type: ignore[attr-defined]
    return SimpleNamespace(latest=latest, outcome=outcome, case_id=case_id, case_key=f"P-{case_id}")


def test_cohorts_never_mix_models_and_leave_out_unknown_outcomes() -> None:
    early, late, short = FollowUp(100, None), FollowUp(None, 400), FollowUp(None, 100)
    cohorts = local_cohorts(
        [
            _summary("a", 0.8, 0.85, early),
            _summary("a", 0.2, 0.32, late),
            _summary("a", 0.5, None, short),  # followed 100 days: unknown, left out
            _summary("a", 0.5, None, None),  # not recorded: left out
            _summary("b", 0.7, 0.85, early),
            _summary("a", 0.9, 0.7, early, clinical_model="local version 1"),  # another clinical model: its own group
        ]
    )
    assert [(c.model_sha256, c.clinical_model) for c in cohorts] == [
        ("a", "paper"),
        ("a", "local version 1"),
        ("b", "paper"),
    ]
    a = cohorts[0]
    assert (a.n, a.events, a.unknown_outcome) == (2, 1, 2)
    assert a.labels == (True, False) and a.dl == (0.8, 0.2) and a.clinical == (0.85, 0.32)


def test_calibration_intercept_is_positive_when_the_model_under_predicts() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0.2, 0.8, 3000)
    y = rng.random(3000) < p
    assert calibration(y, p / 2).intercept > 0.5 and calibration(y, np.minimum(p * 1.2, 0.99)).intercept < 0


def test_separated_or_constant_scores_give_no_slope_rather_than_a_wild_one() -> None:
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    assert np.isnan(calibration(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])).slope)  # perfect separation
    assert np.isnan(calibration(y, np.full(6, 0.4)).slope)


def test_tied_predictions_share_a_bin_whatever_the_case_order() -> None:
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0], bool)
    p = np.array([0.32, 0.32, 0.85, 0.85, 0.32, 0.85, 0.32, 0.85])
    bins = calibration(y, p).bins
    assert bins == calibration(y[::-1], p[::-1]).bins
    assert [(round(x, 2), n) for x, _, n in bins] == [(0.32, 4), (0.85, 4)]


def test_the_clinical_model_is_left_out_rather_than_shrinking_the_dl_patients() -> None:
    y = np.array([1, 1, 1, 0, 0, 0], bool)
    dl = np.array([0.9, 0.8, 0.4, 0.3, 0.2, 0.6])
    all_n0 = validate(y, dl, [0.32] * 6)  # one clinical value: nothing to compare
    assert all_n0.clinical is None and all_n0.n == 6
    few_n = validate(y, dl, [0.85, None, None, 0.32, 0.32, 0.32])  # 1 event with N: not comparable
    assert few_n.clinical is None and few_n.n == 6


def test_a_patient_saved_twice_counts_once_with_their_case_that_has_an_outcome() -> None:
    early = FollowUp(100, None)
    first = _summary("a", 0.8, 0.85, early)
    again = _summary("a", 0.6, 0.85, None)  # the same patient saved again later, no outcome yet
    again.case_key = first.case_key
    other = _summary("a", 0.2, 0.32, FollowUp(None, 400))
    [cohort] = local_cohorts([first, again, other])
    assert cohort.n == 2 and cohort.dl == (0.8, 0.2) and cohort.unknown_outcome == 0

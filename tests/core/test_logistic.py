"""The one logistic fitter: maximum likelihood against closed forms, Firth against Haldane's correction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.logistic import fit_logistic


def _table_rows(a: int, b: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a 2×2 table: x=1 with y=1 (a), x=1 with y=0 (b), x=0 with y=1 (c), x=0 with y=0 (d)."""
    x = np.array([1] * (a + b) + [0] * (c + d), dtype=float)
    y = np.array([1] * a + [0] * b + [1] * c + [0] * d, dtype=float)
    return np.column_stack([np.ones(len(x)), x]), y


def test_maximum_likelihood_on_a_2x2_table_is_the_log_odds_ratio_with_woolfs_se() -> None:
    x, y = _table_rows(11, 2, 9, 19)
    fit = fit_logistic(x, y)
    assert fit.converged and not fit.firth
    assert fit.coef[1] == pytest.approx(math.log(11 * 19 / (2 * 9)), abs=1e-8)
    assert fit.standard_errors()[1] == pytest.approx(math.sqrt(1 / 11 + 1 / 2 + 1 / 9 + 1 / 19), rel=1e-6)


def test_separated_data_do_not_converge_and_firth_equals_haldanes_half_cell_correction() -> None:
    """For one binary covariate Firth's estimate is the log odds ratio with 0.5 added to every cell."""
    x, y = _table_rows(13, 0, 9, 19)  # every x=1 patient had the event: no finite maximum likelihood
    assert not fit_logistic(x, y).converged
    firth = fit_logistic(x, y, firth=True)
    assert firth.converged and firth.firth
    assert firth.coef[1] == pytest.approx(math.log(13.5 * 19.5 / (0.5 * 9.5)), abs=1e-6)
    assert firth.coef[0] == pytest.approx(math.log(9.5 / 19.5), abs=1e-6)
    assert np.isfinite(firth.covariance).all()


def test_weights_are_repeated_rows_and_an_offset_is_a_fixed_term() -> None:
    x, y = _table_rows(11, 2, 9, 19)
    cells_x = np.array([[1, 1], [1, 1], [1, 0], [1, 0]], dtype=float)
    cells_y = np.array([1, 0, 1, 0], dtype=float)
    weighted = fit_logistic(cells_x, cells_y, weights=np.array([11, 2, 9, 19], dtype=float))
    assert weighted.coef == pytest.approx(fit_logistic(x, y).coef, abs=1e-8)
    offset = np.full(len(y), 0.7)
    shifted = fit_logistic(x[:, :1], y, offset=offset)
    assert shifted.coef[0] + 0.7 == pytest.approx(fit_logistic(x[:, :1], y).coef[0], abs=1e-8)


def test_a_constant_column_is_singular_not_a_number() -> None:
    x = np.column_stack([np.ones(10), np.ones(10)])
    fit = fit_logistic(x, np.array([0, 1] * 5, dtype=float))
    assert not fit.converged and np.isnan(fit.covariance).all()

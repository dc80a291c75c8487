"""Binary logistic regression by Newton–Raphson: the one fitter behind the clinical model, its local
refits and the calibration slope.

Plain maximum likelihood, or Firth's penalised likelihood (Firth 1993; Heinze & Schemper 2002),
which stays finite when the data separate, e.g. when every N1 patient of a small local cohort
recurred: the penalty ½·log det I(β) pulls each estimate towards zero by about its small-sample
bias. Steps are halved until the (penalised) log-likelihood rises, so a fit never diverges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_CONDITION = 1e12  # beyond it the information matrix is singular for our purposes (a constant column, separation)


@dataclass(frozen=True)
class LogisticFit:
    """A fitted logistic regression.

    Attributes:
        coef: (k,) float64 coefficients on the logit scale, in the design's column order.
        covariance: (k, k) inverse Fisher information at ``coef`` (Wald standard errors).
        log_likelihood: the unpenalised log-likelihood at ``coef``.
        objective: the maximised (penalised) log-likelihood: ``log_likelihood`` plus the penalties.
        converged: whether the steps became smaller than the tolerance with a regular information matrix.
        firth: whether Firth's penalty was used.
    """

    coef: np.ndarray
    covariance: np.ndarray
    log_likelihood: float
    objective: float
    converged: bool
    firth: bool

    def standard_errors(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance))


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """1 / (1 + e^−z), without overflow warnings for large |z|."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, dtype=np.float64), -500.0, 500.0)))


def _log_likelihood(eta: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    # log p = −log(1 + e^−η), log(1 − p) = −log(1 + e^η), computed stably
    return float(np.sum(w * (y * -np.logaddexp(0.0, -eta) + (1 - y) * -np.logaddexp(0.0, eta))))


def _information(x: np.ndarray, p: np.ndarray, w: np.ndarray, ridge: float) -> np.ndarray:
    return (x * (w * p * (1 - p))[:, None]).T @ x + ridge * np.eye(x.shape[1])


def _objective(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, offset: np.ndarray, beta: np.ndarray, firth: bool, ridge: float
) -> float:
    eta = x @ beta + offset
    value = _log_likelihood(eta, y, w) - 0.5 * ridge * float(beta @ beta)
    if firth:
        sign, logdet = np.linalg.slogdet(_information(x, sigmoid(eta), w, ridge))
        value += 0.5 * logdet if sign > 0 else -math.inf
    return value


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    *,
    offset: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    firth: bool = False,
    ridge: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-10,
    fixed: tuple[int, float] | None = None,
) -> LogisticFit:
    """Fit P(y = 1) = sigmoid(x·β + offset).

    Args:
        x: (n, k) design, its own intercept column included.
        y: (n,) 0/1 outcomes.
        offset: (n,) fixed part of the linear predictor (the calibration intercept uses logit p).
        weights: (n,) case weights (a row per cell of a count table), default 1.
        firth: Firth's penalised likelihood instead of plain maximum likelihood.
        ridge: an L2 penalty ½·ridge·|β|² (a tiny one keeps a separated fold finite).
        fixed: (j, b): hold coefficient j at b and maximise over the others (a profile likelihood).
    """
    x = np.asarray(x, dtype=np.float64)
    yv = np.asarray(y, dtype=np.float64)
    w = np.ones(len(yv)) if weights is None else np.asarray(weights, dtype=np.float64)
    off = np.zeros(len(yv)) if offset is None else np.asarray(offset, dtype=np.float64)
    beta = np.zeros(x.shape[1])
    free = np.ones(x.shape[1], dtype=bool)
    if fixed is not None:
        beta[fixed[0]], free[fixed[0]] = fixed[1], False
    current = _objective(x, yv, w, off, beta, firth, ridge)
    converged = False
    for _ in range(max_iter):
        p = sigmoid(x @ beta + off)
        info = _information(x, p, w, ridge)
        if not np.isfinite(info).all() or np.linalg.cond(info) > MAX_CONDITION:
            break
        residual = w * (yv - p)
        if firth:  # Firth's modified score: leverage h_i times (½ − p_i)
            weighted = x * np.sqrt(w * p * (1 - p))[:, None]
            leverage = np.einsum("ij,jk,ik->i", weighted, np.linalg.inv(info), weighted)
            residual = residual + leverage * (0.5 - p)
        step = np.zeros_like(beta)
        step[free] = np.linalg.solve(info[np.ix_(free, free)], (x.T @ residual - ridge * beta)[free])
        for _ in range(30):  # halve until the objective does not fall
            candidate = _objective(x, yv, w, off, beta + step, firth, ridge)
            if candidate >= current - 1e-12:
                break
            step = step / 2
        beta, current = beta + step, candidate
        if np.max(np.abs(step)) < tol:
            converged = True
            break
    p = sigmoid(x @ beta + off)
    info = _information(x, p, w, ridge)
    regular = np.isfinite(info).all() and np.linalg.cond(info) <= MAX_CONDITION
    covariance = np.linalg.inv(info) if regular else np.full(info.shape, math.nan)
    log_likelihood = _log_likelihood(x @ beta + off, yv, w)
    return LogisticFit(beta, covariance, log_likelihood, current, converged and regular, firth)


CHI2_1_95 = 3.841458820694124  # the 95% point of χ² with 1 df


def profile_interval(
    x: np.ndarray, y: np.ndarray, fit: LogisticFit, j: int, limit: float = 30.0
) -> tuple[float, float, float]:
    """95% profile-likelihood interval of coefficient ``j`` and the likelihood-ratio p that it is 0.

    The bounds are where twice the drop of the (penalised, for a Firth fit) log-likelihood,
    maximised over the other coefficients, reaches χ²₁(0.95): the interval Heinze & Schemper
    recommend with Firth's method, where Wald intervals are unreliable. A bound beyond
    ``limit`` on the logit scale is ±inf.
    """
    from scipy import optimize, stats

    best = fit.objective

    def excess(b: float) -> float:
        profile = fit_logistic(x, y, firth=fit.firth, fixed=(j, b)).objective
        return 2.0 * (best - profile) - CHI2_1_95

    def bound(direction: float) -> float:
        step, inner = 0.5, float(fit.coef[j])
        while abs(inner + direction * step - fit.coef[j]) <= limit:
            outer = inner + direction * step
            if excess(outer) > 0:
                return float(optimize.brentq(excess, inner, outer, xtol=1e-8))
            inner, step = outer, step * 2
        return direction * math.inf

    drop = 2.0 * (best - fit_logistic(x, y, firth=fit.firth, fixed=(j, 0.0)).objective)
    return bound(-1.0), bound(1.0), float(stats.chi2.sf(max(drop, 0.0), df=1))

"""Logistic regression of early recurrence on UICC N category, as in the paper.

Fitted by default to the counts of the paper's Table 1 (N0: 19 without / 9 with
early recurrence; N1: 2 without / 11 with), the model gives each N category a risk
with a Wald 95% confidence interval on the logit scale. It follows scikit-learn's
conventions (``fit`` returns self, learned attributes end in ``_``) so it can be
refitted on a hospital's own patients later.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from core.logistic import fit_logistic, sigmoid

# The one list of N categories: pages, manifests, training and reports import these.
N_CATEGORIES = ("N0", "N1")
UNKNOWN_N = "unknown"
N_CHOICES = (*N_CATEGORIES, UNKNOWN_N)
T_CATEGORIES = ("T1a", "T1b", "T2", "T3", "T4")  # UICC 8th edition, intrahepatic bile ducts
Z_95 = 1.959963984540054
PAPER_MODEL_NAME = "Logistic regression on UICC N category (paper Table 1, n = 41)"

# (N category, early recurrence 0/1) → number of patients, from Table 1 of the paper.
PAPER_TABLE1_COUNTS: dict[tuple[str, int], int] = {("N0", 0): 19, ("N0", 1): 9, ("N1", 0): 2, ("N1", 1): 11}


@dataclass(frozen=True)
class ClinicalRisk:
    """Risk of early recurrence from the clinical model, 0–1, with its 95% CI."""

    probability: float
    ci_low: float
    ci_high: float
    n_category: str


class NCategoryLogisticRegression:
    """P(early recurrence) = sigmoid(b0 + b1 · [N = N1]), maximum likelihood (:func:`core.logistic.fit_logistic`).

    A tiny ridge term keeps the fit finite when a small training fold is perfectly
    separated (e.g. every N1 patient recurred); on the paper's counts it moves the
    probabilities by less than 1e-6.
    """

    ridge: float = 1e-8

    def fit(
        self, n1: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> NCategoryLogisticRegression:
        """Fit on (n,) 0/1 N1 indicators and (n,) 0/1 outcomes (optional case weights)."""
        x = np.column_stack([np.ones(len(n1)), np.asarray(n1, dtype=np.float64)])
        fit = fit_logistic(x, y, weights=sample_weight, ridge=self.ridge)
        self.coef_ = fit.coef
        self.covariance_ = fit.covariance
        self.n_samples_ = float(len(x) if sample_weight is None else np.sum(sample_weight))
        return self

    @property
    def odds_ratio_(self) -> float:
        return float(np.exp(self.coef_[1]))

    def odds_ratio_ci(self) -> tuple[float, float]:
        """Wald 95% CI of the N1-vs-N0 odds ratio."""
        se = float(np.sqrt(self.covariance_[1, 1]))
        return float(np.exp(self.coef_[1] - Z_95 * se)), float(np.exp(self.coef_[1] + Z_95 * se))

    def wald_p(self) -> float:
        """Two-sided p of the Wald test that the N1 coefficient is 0 (``(b1 / se)²`` against χ² with 1 df)."""
        from scipy import stats

        z = float(self.coef_[1] / np.sqrt(self.covariance_[1, 1]))
        return float(stats.chi2.sf(z * z, df=1))

    def predict_proba_n1(self, n1: np.ndarray) -> np.ndarray:
        """(n,) probabilities for (n,) 0/1 N1 indicators."""
        x = np.column_stack([np.ones(len(n1)), np.asarray(n1, dtype=np.float64)])
        return sigmoid(x @ self.coef_)

    def risk(self, n_category: str) -> ClinicalRisk:
        """Risk for "N0" or "N1" with a Wald 95% CI of the linear predictor.

        Raises:
            ValueError: for an unknown category; callers show "not available".
        """
        if n_category not in N_CATEGORIES:
            raise ValueError(f"N category must be one of {N_CATEGORIES}, got {n_category!r}")
        x = np.array([1.0, 1.0 if n_category == "N1" else 0.0])
        eta = float(x @ self.coef_)
        se = float(np.sqrt(x @ self.covariance_ @ x))
        return ClinicalRisk(
            probability=float(sigmoid(eta)),
            ci_low=float(sigmoid(eta - Z_95 * se)),
            ci_high=float(sigmoid(eta + Z_95 * se)),
            n_category=n_category,
        )


def fit_from_counts(counts: dict[tuple[str, int], int]) -> NCategoryLogisticRegression:
    """Fit on aggregated (category, label) → count, weighting one row per cell."""
    cells = list(counts)
    n1 = np.array([1.0 if cat == "N1" else 0.0 for cat, _ in cells])
    y = np.array([float(label) for _, label in cells])
    w = np.array([float(counts[c]) for c in cells])
    return NCategoryLogisticRegression().fit(n1, y, sample_weight=w)


@functools.cache
def paper_model() -> NCategoryLogisticRegression:
    """The clinical model fitted to the paper's Table 1 (41 patients); fitted once per process."""
    return fit_from_counts(PAPER_TABLE1_COUNTS)


def parse_n_category(text: str | None) -> str:
    """The N category: "N0" or "N1" (any case, surrounding blanks ignored), else "unknown" (empty, "NX", anything else)."""
    cleaned = (text or "").strip().upper()
    return cleaned if cleaned in N_CATEGORIES else UNKNOWN_N


def n1_indicator(n_categories: list[str]) -> np.ndarray:
    """(n,) float 0/1 N1 indicators for known categories ("N0"/"N1")."""
    if any(c not in N_CATEGORIES for c in n_categories):
        raise ValueError("only known N categories have an indicator")
    return np.array([c == "N1" for c in n_categories], dtype=np.float64)


UNKNOWN_N_REASON = (
    "The N category is unknown, and the clinical model uses nothing else "
    "(lymph-node status is only certain after surgery; enter the radiological N category if there is one)."
)


def model_summary(model: NCategoryLogisticRegression) -> dict[str, object]:
    """What ``python -m core clinical --json`` prints: OR with its Wald 95% CI, risk and CI per category, Wald p."""
    risks = {category: model.risk(category) for category in N_CATEGORIES}
    return {
        "model": "logistic regression on UICC N category (N1 vs N0)",
        "fitted_to": "the paper's Table 1 counts (41 patients)",
        "odds_ratio": model.odds_ratio_,
        "odds_ratio_ci": list(model.odds_ratio_ci()),
        "risk": {category: r.probability for category, r in risks.items()},
        "risk_ci": {category: [r.ci_low, r.ci_high] for category, r in risks.items()},
        "wald_p": model.wald_p(),
    }

"""Refit the clinical model on a hospital's own patients: N alone, or N + T + surgical margin.

The paper fitted early recurrence on UICC N category, then entered T category and surgical
margin as well (its multivariable model: OR for N1 11.840, Hosmer–Lemeshow p 0.879, AUC 0.770).
A hospital refits both on its own patients with a known outcome (saved cases, or a cohort CSV)
to see whether the N-category risk holds there.

Choices, and why:

- **T category as one ordinal variable** (T1a/T1b = 1, T2 = 2, T3 = 3, T4 = 4), not four
  dummies: a local cohort of a few dozen patients cannot carry five T parameters (the paper's
  SPSS model spent 6 degrees of freedom on 41 patients, and its overall test was p = 0.063).
- **Margin** R1 (positive) against R0.
- **Too few events are refused**, not fitted: at least :data:`EVENTS_PER_VARIABLE` patients in
  the smaller outcome group per variable (Peduzzi et al. 1996), so N alone needs 10 and
  N + T + margin 30. Below that the coefficients, and their CIs, are not worth printing.
- **Separation** (e.g. every N1 patient recurred, so maximum likelihood runs off to an infinite
  odds ratio) is handled by Firth's penalised likelihood, and the result says so; its CIs and
  p-values are then profile penalised-likelihood ones (Heinze & Schemper 2002), not Wald's.
  Firth's estimates are shrunk towards zero: a Firth version put in use says "Firth" in its name.
- The **margin is known only after resection**: an N + T + margin model describes the cohort,
  but cannot give a preoperative risk, so only an N-only model can be put in use on the
  dashboard (:data:`PREOPERATIVE_FORMULAS`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from core.clinical import N_CATEGORIES, PAPER_MODEL_NAME, Z_95, ClinicalRisk, paper_model, parse_n_category
from core.errors import UserFacingError
from core.logistic import LogisticFit, fit_logistic, profile_interval, sigmoid
from core.metrics import AucEstimate, delong_auc, risk_groups

EVENTS_PER_VARIABLE = 10
HOSMER_LEMESHOW_GROUPS = 10
CLASSIFICATION_THRESHOLD = 0.5
FORMULAS: dict[str, tuple[str, ...]] = {"N": ("N1",), "N+T+margin": ("N1", "T", "R1")}
PREOPERATIVE_FORMULAS = ("N",)
VARIABLE_LABELS = {"N1": "UICC N1 (vs N0)", "T": "UICC T category (per step, T1 to T4)", "R1": "positive margin (R1)"}
_T_ORDINAL = {"T1A": 1, "T1B": 1, "T1": 1, "T2": 2, "T3": 3, "T4": 4}
_MARGIN = {"R0": 0, "NEGATIVE": 0, "0": 0, "NO": 0, "R1": 1, "POSITIVE": 1, "1": 1, "YES": 1}
_OUTCOME = {"1": True, "YES": True, "TRUE": True, "0": False, "NO": False, "FALSE": False}


class RefitError(UserFacingError):
    """The data cannot carry the model asked for (too few events, unreadable file); one sentence."""


@dataclass(frozen=True)
class ClinicalObservation:
    """One patient with a known outcome. ``t_category`` and ``margin`` are ``None`` when not recorded."""

    early_recurrence: bool
    n_category: str
    t_category: str | None = None
    margin: str | None = None

    def values(self, variables: Sequence[str]) -> list[float] | None:
        """The row of the design for ``variables`` (without the intercept), or ``None`` if one is missing."""
        row = []
        for variable in variables:
            if variable == "N1":
                value = {"N0": 0.0, "N1": 1.0}.get(self.n_category)
            elif variable == "T":
                value = _T_ORDINAL.get((self.t_category or "").strip().upper())
            else:
                value = _MARGIN.get((self.margin or "").strip().upper())
            if value is None:
                return None
            row.append(float(value))
        return row


@dataclass(frozen=True)
class Coefficient:
    """One variable's estimate on the logit scale, its Wald SE, odds ratio with 95% CI and Wald p."""

    variable: str
    estimate: float
    se: float
    odds_ratio: float
    ci_low: float
    ci_high: float
    p_value: float


@dataclass(frozen=True)
class HosmerLemeshow:
    """Hosmer–Lemeshow goodness of fit: χ² over ``groups`` groups of predicted risk, ``groups − 2`` df."""

    chi2: float
    df: int
    p_value: float
    groups: int


@dataclass(frozen=True)
class ClinicalRefit:
    """A logistic model refitted on local patients, with what a reader needs to judge it.

    Attributes:
        formula: a key of :data:`FORMULAS`; variables: its variables in design order.
        n, events: patients used and those with early recurrence; left_out: patients lacking a variable.
        intercept, covariance: the fitted intercept and the (k+1, k+1) covariance of (intercept, coefficients).
        firth: whether Firth's penalised likelihood was used (the data separate).
        lr_chi2, lr_df, lr_p: likelihood-ratio test of the model against the intercept alone.
        hosmer_lemeshow: ``None`` with ``hosmer_lemeshow_note`` saying why (too few distinct risks).
        classification: patients by (predicted at ≥ 0.5, observed): tp, fp, fn, tn.
        auc: apparent AUC with DeLong's 95% CI (on the patients it was fitted to: optimistic).
    """

    formula: str
    variables: tuple[str, ...]
    n: int
    events: int
    left_out: int
    intercept: float
    coefficients: tuple[Coefficient, ...]
    covariance: np.ndarray
    firth: bool
    lr_chi2: float
    lr_df: int
    lr_p: float
    hosmer_lemeshow: HosmerLemeshow | None
    hosmer_lemeshow_note: str | None
    classification: dict[str, int]
    auc: AucEstimate

    @property
    def preoperative(self) -> bool:
        """Whether the model uses only what is known before surgery (and can give the dashboard's risk)."""
        return self.formula in PREOPERATIVE_FORMULAS

    def risk(self, n_category: str) -> ClinicalRisk:
        """Risk for "N0"/"N1" with a Wald 95% CI of the linear predictor; N-only models only.

        Raises:
            ValueError: for another model, or an unknown category.
        """
        if self.formula != "N" or n_category not in N_CATEGORIES:
            raise ValueError(f"an N-only model gives a risk for {N_CATEGORIES}, not {n_category!r} ({self.formula})")
        x = np.array([1.0, 1.0 if n_category == "N1" else 0.0])
        coef = np.array([self.intercept, self.coefficients[0].estimate])
        eta, se = float(x @ coef), float(np.sqrt(x @ self.covariance @ x))
        return ClinicalRisk(
            float(sigmoid(eta)), float(sigmoid(eta - Z_95 * se)), float(sigmoid(eta + Z_95 * se)), n_category
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``core clinical --refit --json`` prints and the database stores."""
        hl = self.hosmer_lemeshow
        return {
            "formula": self.formula,
            "variables": list(self.variables),
            "n": self.n,
            "events": self.events,
            "left_out": self.left_out,
            "intercept": self.intercept,
            "coefficients": {
                c.variable: {
                    "estimate": c.estimate,
                    "se": c.se,
                    "odds_ratio": c.odds_ratio,
                    "odds_ratio_ci": [c.ci_low, c.ci_high],
                    "wald_p": c.p_value,
                }
                for c in self.coefficients
            },
            "covariance": self.covariance.tolist(),
            "firth": self.firth,
            "likelihood_ratio": {"chi2": self.lr_chi2, "df": self.lr_df, "p_value": self.lr_p},
            "hosmer_lemeshow": None
            if hl is None
            else {"chi2": hl.chi2, "df": hl.df, "p_value": hl.p_value, "groups": hl.groups},
            "hosmer_lemeshow_note": self.hosmer_lemeshow_note,
            "classification": self.classification,
            "auc": self.auc.auc,
            "auc_ci": [self.auc.ci_low, self.auc.ci_high],
            "auc_se": self.auc.se,
            "preoperative": self.preoperative,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClinicalRefit:
        hl = data.get("hosmer_lemeshow")
        lr = data["likelihood_ratio"]
        coefficients = tuple(
            Coefficient(name, c["estimate"], c["se"], c["odds_ratio"], *c["odds_ratio_ci"], c["wald_p"])
            for name, c in data["coefficients"].items()
        )
        low, high = data["auc_ci"]
        return cls(
            formula=data["formula"],
            variables=tuple(data["variables"]),
            n=data["n"],
            events=data["events"],
            left_out=data["left_out"],
            intercept=data["intercept"],
            coefficients=coefficients,
            covariance=np.asarray(data["covariance"], dtype=np.float64),
            firth=data["firth"],
            lr_chi2=lr["chi2"],
            lr_df=lr["df"],
            lr_p=lr["p_value"],
            hosmer_lemeshow=None if hl is None else HosmerLemeshow(hl["chi2"], hl["df"], hl["p_value"], hl["groups"]),
            hosmer_lemeshow_note=data.get("hosmer_lemeshow_note"),
            classification=dict(data["classification"]),
            auc=AucEstimate(data["auc"], data.get("auc_se", math.nan), low, high, data["n"], data["events"]),
        )


def events_needed(formula: str) -> int:
    """Patients needed in the smaller outcome group: :data:`EVENTS_PER_VARIABLE` per variable."""
    return EVENTS_PER_VARIABLE * len(FORMULAS[formula])


def hosmer_lemeshow(y: np.ndarray, p: np.ndarray, groups: int = HOSMER_LEMESHOW_GROUPS) -> HosmerLemeshow | None:
    """The Hosmer–Lemeshow test over up to ``groups`` groups of about equal size by predicted risk.

    Groups as :func:`core.metrics.risk_groups` makes them (ties together). ``None`` when fewer
    than 3 groups result: with g groups the test has g − 2 degrees of freedom (an N-only model
    has 2 risks, so none).
    """
    group = risk_groups(p, groups)
    labels = np.unique(group)
    if len(labels) < 3:
        return None
    chi2 = 0.0
    for label in labels:
        member = group == label
        n, observed, expected = int(member.sum()), float(y[member].sum()), float(p[member].sum())
        chi2 += (observed - expected) ** 2 / (expected * (1 - expected / n))
    df = len(labels) - 2
    return HosmerLemeshow(float(chi2), df, float(stats.chi2.sf(chi2, df)), len(labels))


def _coefficient(x: np.ndarray, y: np.ndarray, fit: LogisticFit, i: int, name: str) -> Coefficient:
    """Coefficient ``i``: Wald CI and p for maximum likelihood (as the paper's SPSS), profile ones for Firth."""
    estimate, se = float(fit.coef[i]), float(fit.standard_errors()[i])
    if fit.firth:
        low, high, p_value = profile_interval(x, y, fit, i)
    else:
        low, high = estimate - Z_95 * se, estimate + Z_95 * se
        p_value = float(stats.chi2.sf((estimate / se) ** 2, df=1))
    return Coefficient(name, estimate, se, math.exp(estimate), math.exp(low), math.exp(high), p_value)


def refit(observations: Iterable[ClinicalObservation], formula: str = "N") -> ClinicalRefit:
    """Fit ``formula`` on the observations that have its variables.

    Raises:
        RefitError: an unknown formula, or too few patients in the smaller outcome group.
    """
    if formula not in FORMULAS:
        raise RefitError(f"Unknown clinical model {formula!r}; choose one of {', '.join(FORMULAS)}.")
    variables = FORMULAS[formula]
    rows, outcomes, left_out = [], [], 0
    for obs in observations:
        values = obs.values(variables)
        if values is None:
            left_out += 1
            continue
        rows.append(values)
        outcomes.append(obs.early_recurrence)
    y = np.asarray(outcomes, dtype=np.float64)
    n, events = len(y), int(y.sum())
    needed = events_needed(formula)
    if min(events, n - events) < needed:
        raise RefitError(
            f"{formula} has {len(variables)} variable(s) and needs at least {needed} patients in the smaller outcome "
            f"group ({EVENTS_PER_VARIABLE} per variable); these data have {events} with and {n - events} without "
            f"early recurrence" + (f" ({left_out} more lack a variable of the model)." if left_out else ".")
        )
    x = np.column_stack([np.ones(n), np.asarray(rows)])
    constant = [VARIABLE_LABELS[v] for i, v in enumerate(variables, start=1) if np.ptp(x[:, i]) == 0]
    if constant:
        raise RefitError(f"{formula} cannot be fitted to these patients: {constant[0]} is the same for all of them.")
    fit = fit_logistic(x, y)
    if not fit.converged:  # separation: the maximum likelihood does not exist
        fit = fit_logistic(x, y, firth=True)
    if not fit.converged or not np.isfinite(fit.covariance).all():
        raise RefitError(
            f"{formula} could not be fitted to these patients, even by Firth's penalised likelihood; "
            "check the data for a variable that (almost) duplicates another."
        )
    null = fit_logistic(x[:, :1], y, firth=fit.firth)
    # with Firth's penalty the test compares penalised likelihoods, as logistf does
    lr_chi2 = max(0.0, 2 * (fit.objective - null.objective))
    coefficients = tuple(_coefficient(x, y, fit, i, name) for i, name in enumerate(variables, start=1))
    p = sigmoid(x @ fit.coef)
    predicted, observed = p >= CLASSIFICATION_THRESHOLD, y == 1
    hl = hosmer_lemeshow(y, p)
    return ClinicalRefit(
        formula=formula,
        variables=variables,
        n=n,
        events=events,
        left_out=left_out,
        intercept=float(fit.coef[0]),
        coefficients=coefficients,
        covariance=fit.covariance,
        firth=fit.firth,
        lr_chi2=float(lr_chi2),
        lr_df=len(variables),
        lr_p=float(stats.chi2.sf(lr_chi2, df=len(variables))),
        hosmer_lemeshow=hl,
        hosmer_lemeshow_note=None
        if hl is not None
        else f"not computed: the model gives only {len(np.unique(p))} distinct risks (the test needs 3 groups)",
        classification={
            "tp": int((predicted & observed).sum()),
            "fp": int((predicted & ~observed).sum()),
            "fn": int((~predicted & observed).sum()),
            "tn": int((~predicted & ~observed).sum()),
        },
        auc=delong_auc(y.astype(bool), p),
    )


def _outcome(text: str | None) -> bool | None:
    return _OUTCOME.get((text or "").strip().upper())


def observations_from_csv(path: Path) -> list[ClinicalObservation]:
    """Patients with a known outcome from a cohort CSV (a training manifest or a Table 1 CSV).

    Columns: ``early_recurrence`` (1/0, yes/no, true/false; anything else is an unknown
    outcome and left out), ``n_category``, and optionally ``t_category`` (T1a … T4) and
    ``margin`` (R0/R1).

    Raises:
        RefitError: no such file, not a CSV, or no ``early_recurrence``/``n_category`` column.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("early_recurrence", "n_category") if c not in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error):
        raise RefitError(f"Could not read {path} as a UTF-8 CSV file; check the path and save it as CSV.") from None
    if missing:
        raise RefitError(f"{path.name} has no {' or '.join(missing)} column; the refit needs both.")
    out = []
    for row in rows:
        outcome = _outcome(row.get("early_recurrence"))
        if outcome is not None:
            out.append(
                ClinicalObservation(
                    outcome, parse_n_category(row.get("n_category")), row.get("t_category"), row.get("margin")
                )
            )
    return out


def observations_from_cases(summaries: Iterable[Any]) -> list[ClinicalObservation]:
    """Saved cases (:class:`core.cases.CaseSummary`) with a known outcome, one per patient; cases record no margin."""
    from core.cases import one_case_per_patient

    out = []
    for case in one_case_per_patient(list(summaries)):
        known = case.outcome.early_recurrence if case.outcome else None
        if known is not None:
            out.append(ClinicalObservation(bool(known), case.n_category, case.t_category, None))
    return out


def describe(refit_result: ClinicalRefit) -> str:
    """Several lines of plain text: the model, its coefficients, its fit, and whether it can be used preoperatively."""
    r = refit_result
    lines = [
        f"Logistic regression of early recurrence on {r.formula} ({r.n} patients, {r.events} with early recurrence"
        + (f"; {r.left_out} left out, lacking a variable" if r.left_out else "")
        + ")"
        + (
            " by Firth's penalised likelihood: the data separate, plain maximum likelihood has no finite estimate"
            if r.firth
            else ""
        ),
    ]
    for c in r.coefficients:
        lines.append(
            f"  {VARIABLE_LABELS[c.variable]}: OR {c.odds_ratio:.3f} (95% CI {c.ci_low:.3f}–{c.ci_high:.3f}), "
            f"Wald p {c.p_value:.3f}"
        )
    lines.append(f"  likelihood-ratio χ² {r.lr_chi2:.3f} on {r.lr_df} df, p {r.lr_p:.3f}")
    hl = r.hosmer_lemeshow
    lines.append(
        f"  Hosmer–Lemeshow χ² {hl.chi2:.3f} on {hl.df} df ({hl.groups} groups), p {hl.p_value:.3f}"
        if hl
        else f"  Hosmer–Lemeshow: {r.hosmer_lemeshow_note}"
    )
    c = r.classification
    without, with_ = c["tn"] + c["fp"], c["tp"] + c["fn"]
    lines.append(
        f"  at {CLASSIFICATION_THRESHOLD:g}: {c['tn']}/{without} without and {c['tp']}/{with_} with early recurrence "
        f"correctly predicted ({(c['tn'] + c['tp']) / r.n:.1%} overall)"
    )
    lines.append(
        f"  apparent AUC {r.auc.auc:.3f} (95% CI {r.auc.ci_low:.3f}–{r.auc.ci_high:.3f}, DeLong; on its own patients)"
    )
    if not r.preoperative:
        lines.append("  Uses the surgical margin, known only after resection: not usable for the preoperative risk.")
    return "\n".join(lines)


@dataclass(frozen=True)
class ClinicalModelInUse:
    """The clinical model the dashboard scores with: the paper's, or a stored local version (N only).

    Attributes:
        name: what the pages show and each analysis records (``analyses.clinical_model``).
        version: the stored version's id, ``None`` for the paper's model.
        refit: the local fit, ``None`` for the paper's model.
    """

    name: str
    version: int | None = None
    refit: ClinicalRefit | None = None

    def risk(self, n_category: str) -> ClinicalRisk | None:
        """Risk for "N0"/"N1" with its 95% CI; ``None`` for an unknown N category."""
        if n_category not in N_CATEGORIES:
            return None
        return self.refit.risk(n_category) if self.refit is not None else paper_model().risk(n_category)


PAPER_CLINICAL_MODEL = ClinicalModelInUse(PAPER_MODEL_NAME)


def local_model_name(version: int, n: int, events: int, created: str, firth: bool = False) -> str:
    """e.g. "Logistic regression on UICC N category (local version 3: 64 patients, 21 events, 2026-12-02)"."""
    method = ", Firth" if firth else ""
    return (
        f"Logistic regression on UICC N category (local version {version}: {n} patients, {events} events, "
        f"{created}{method})"
    )


def model_in_use(row: Any | None) -> ClinicalModelInUse:
    """The model of a stored version (:class:`core.db.ClinicalModelVersion`), or the paper's for ``None``."""
    if row is None:
        return PAPER_CLINICAL_MODEL
    fit = ClinicalRefit.from_dict(row.fit)
    return ClinicalModelInUse(
        local_model_name(row.id, fit.n, fit.events, row.created_at.strftime("%Y-%m-%d"), fit.firth), row.id, fit
    )


def version_rows(versions: Sequence[Any]) -> list[dict[str, Any]]:
    """One table row per stored version (:class:`core.db.ClinicalModelVersion`), newest first, for the pages."""
    rows = []
    for v in versions:
        fit = ClinicalRefit.from_dict(v.fit)
        odds = ", ".join(f"{VARIABLE_LABELS[c.variable]} OR {c.odds_ratio:.2f}" for c in fit.coefficients)
        rows.append(
            {
                "version": v.id,
                "in use": "yes" if v.in_use else "",
                "model": fit.formula + (" (Firth)" if fit.firth else ""),
                "fitted to": v.fitted_to,
                "created (UTC)": v.created_at.strftime("%Y-%m-%d %H:%M"),
                "patients": fit.n,
                "events": fit.events,
                "odds ratios": odds,
                "apparent AUC (95% CI)": f"{fit.auc.auc:.3f} ({fit.auc.ci_low:.3f}–{fit.auc.ci_high:.3f})",
                "preoperative": "yes" if fit.preoperative else "no (uses the margin)",
            }
        )
    return rows

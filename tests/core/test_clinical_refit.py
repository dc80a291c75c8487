"""Refitting the clinical model on local patients: the paper's counts, separation, too few events, storage, CLI."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import db
from core.analysis import ClinicalInputs, clinical_update
from core.cli import main
from core.clinical import PAPER_TABLE1_COUNTS, paper_model
from core.clinical_refit import (
    ClinicalObservation,
    ClinicalRefit,
    RefitError,
    hosmer_lemeshow,
    model_in_use,
    observations_from_csv,
    refit,
)


def paper_patients() -> list[ClinicalObservation]:
    """The paper's 41 patients rebuilt from Table 1's N-category counts."""
    rows = []
    for (n_category, label), count in PAPER_TABLE1_COUNTS.items():
        rows += [ClinicalObservation(bool(label), n_category)] * count
    return rows


def synthetic_patients(n: int, seed: int = 0) -> list[ClinicalObservation]:
    """Patients drawn from a known model: logit = −2 + 2·N1 + 0.5·T + 1·R1."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        n1, t, r1 = rng.random() < 0.35, int(rng.integers(1, 5)), rng.random() < 0.2
        p = 1 / (1 + math.exp(-(-2 + 2 * n1 + 0.5 * t + 1 * r1)))
        out.append(
            ClinicalObservation(
                bool(rng.random() < p), "N1" if n1 else "N0", ["T1a", "T2", "T3", "T4"][t - 1], "R1" if r1 else "R0"
            )
        )
    return out


def test_refit_of_n_on_the_papers_patients_is_the_papers_model() -> None:
    fit = refit(paper_patients(), "N")
    [n1] = fit.coefficients
    assert round(n1.odds_ratio, 3) == 11.611 and (round(n1.ci_low, 3), round(n1.ci_high, 3)) == (2.116, 63.726)
    assert not fit.firth and (fit.n, fit.events, fit.left_out) == (41, 20, 0)
    # the paper's classification: 19 of 21 without, 11 of 20 with early recurrence (73.2% overall)
    assert fit.classification == {"tp": 11, "fp": 2, "fn": 9, "tn": 19}
    assert fit.hosmer_lemeshow is None and "only 2 distinct risks" in (fit.hosmer_lemeshow_note or "")
    for category in ("N0", "N1"):
        assert fit.risk(category).probability == pytest.approx(paper_model().risk(category).probability, abs=1e-6)

    # the likelihood-ratio χ² by hand from the 2×2 table's log-likelihoods
    def ll(k: int, n: int) -> float:
        return k * math.log(k / n) + (n - k) * math.log(1 - k / n)

    expected = 2 * (ll(11, 13) + ll(9, 28) - ll(20, 41))
    assert fit.lr_chi2 == pytest.approx(expected, rel=1e-6) and fit.lr_df == 1
    again = ClinicalRefit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert again.risk("N1") == fit.risk("N1") and again.auc.auc == fit.auc.auc


def test_separated_local_data_are_fitted_by_firth_with_profile_intervals_and_say_so() -> None:
    from scipy import optimize

    rows = [ClinicalObservation(True, "N1")] * 12 + [ClinicalObservation(True, "N0")] * 10
    rows += [ClinicalObservation(False, "N0")] * 25
    fit = refit(rows, "N")
    assert fit.firth
    [n1] = fit.coefficients
    assert n1.odds_ratio == pytest.approx(12.5 * 25.5 / (0.5 * 10.5), rel=1e-5)  # Haldane: 0.5 added to each cell

    # the profile penalised-likelihood interval, by an independent brute force with scipy
    x = np.column_stack([np.ones(47), [1.0] * 12 + [0.0] * 35])
    y = np.array([1.0] * 22 + [0.0] * 25)

    def penalised(beta: np.ndarray) -> float:
        p = 1 / (1 + np.exp(-(x @ beta)))
        info = (x * (p * (1 - p))[:, None]).T @ x
        return float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) + 0.5 * np.linalg.slogdet(info)[1])

    def profile(b1: float) -> float:
        return -optimize.minimize_scalar(lambda b0: -penalised(np.array([b0, b1]))).fun

    top = penalised(np.array([fit.intercept, math.log(n1.odds_ratio)]))
    low, high = (
        optimize.brentq(lambda b: 2 * (top - profile(b)) - 3.841458820694124, a, b)
        for a, b in ((-5.0, math.log(n1.odds_ratio)), (math.log(n1.odds_ratio), 15.0))
    )
    assert math.log(n1.ci_low) == pytest.approx(low, abs=1e-3) and math.log(n1.ci_high) == pytest.approx(high, abs=1e-3)
    assert n1.p_value == pytest.approx(stats.chi2.sf(2 * (top - profile(0.0)), 1), rel=1e-3)
    again = ClinicalRefit.from_dict(fit.to_dict())
    assert "Firth" in model_in_use(SimpleNamespace(id=2, fit=fit.to_dict(), created_at=datetime(2026, 12, 2))).name
    assert again.firth


def test_too_few_events_per_variable_are_refused_with_the_number_needed() -> None:
    rows = synthetic_patients(60, seed=3)
    events = sum(r.early_recurrence for r in rows)
    smaller = min(events, 60 - events)
    assert 10 <= smaller < 30
    refit(rows, "N")  # N alone: 10 are enough
    with pytest.raises(RefitError, match=r"N\+T\+margin has 3 variable\(s\) and needs at least 30 patients") as error:
        refit(rows, "N+T+margin")
    assert f"these data have {events} with and {60 - events} without" in str(error.value)
    with pytest.raises(RefitError, match="Unknown clinical model"):
        refit(rows, "N+age")


def test_n_t_margin_recovers_a_known_model_and_is_not_preoperative() -> None:
    fit = refit(synthetic_patients(1500, seed=1), "N+T+margin")
    estimates = {c.variable: c.estimate for c in fit.coefficients}
    assert estimates["N1"] == pytest.approx(2.0, abs=0.35)
    assert estimates["T"] == pytest.approx(0.5, abs=0.2)
    assert estimates["R1"] == pytest.approx(1.0, abs=0.35)
    assert fit.intercept == pytest.approx(-2.0, abs=0.5)
    assert fit.lr_df == 3 and fit.lr_p < 1e-6 and not fit.preoperative
    hl = fit.hosmer_lemeshow
    assert hl is not None and 8 <= hl.groups <= 10 and hl.df == hl.groups - 2  # 16 distinct risks, ties kept together
    assert hl.p_value > 0.01  # the model is the true one
    with pytest.raises(ValueError):
        fit.risk("N1")


def test_patients_lacking_a_variable_are_left_out_and_counted() -> None:
    rows = synthetic_patients(400, seed=2)
    rows += [ClinicalObservation(True, "N1", None, "R0"), ClinicalObservation(False, "N0", "T2", None)]
    fit = refit(rows, "N+T+margin")
    assert fit.left_out == 2 and fit.n == 400


def test_hosmer_lemeshow_by_hand() -> None:
    p = np.array([0.1, 0.1, 0.2, 0.2, 0.5, 0.5, 0.8, 0.8])
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1], dtype=float)
    result = hosmer_lemeshow(y, p, groups=4)
    assert result is not None and (result.groups, result.df) == (4, 2)
    # groups of tied risks: (observed, expected, n) = (0, .2, 2), (1, .4, 2), (1, 1, 2), (2, 1.6, 2)
    chi2 = sum((o - e) ** 2 / (e * (1 - e / n)) for o, e, n in [(0, 0.2, 2), (1, 0.4, 2), (1, 1.0, 2), (2, 1.6, 2)])
    assert result.chi2 == pytest.approx(chi2) and result.p_value == pytest.approx(stats.chi2.sf(chi2, 2))


def _write_csv(path: Path, rows: list[ClinicalObservation], extra: list[dict[str, str]] | None = None) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["patient_key", "early_recurrence", "n_category", "t_category", "margin"])
        writer.writeheader()
        for i, r in enumerate(rows):
            writer.writerow(
                {
                    "patient_key": f"P{i}",
                    "early_recurrence": "1" if r.early_recurrence else "0",
                    "n_category": r.n_category,
                    "t_category": r.t_category or "",
                    "margin": r.margin or "",
                }
            )
        for row in extra or []:
            writer.writerow(row)
    return path


def test_csv_reading_leaves_out_unknown_outcomes_and_says_which_column_is_missing(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "c.csv", paper_patients(), [{"patient_key": "X", "early_recurrence": "unknown", "n_category": "N1"}]
    )
    rows = observations_from_csv(path)
    assert len(rows) == 41
    (tmp_path / "bad.csv").write_text("patient_key,label\nP1,1\n")
    with pytest.raises(RefitError, match="has no early_recurrence or n_category column"):
        observations_from_csv(tmp_path / "bad.csv")


def test_versions_are_stored_one_in_use_and_a_margin_model_is_refused(engine) -> None:
    n_fit = refit(paper_patients(), "N")
    full_fit = refit(synthetic_patients(400, seed=4), "N+T+margin")
    with Session(engine) as session:
        first = db.add_clinical_model(session, n_fit.to_dict(), "41 saved cases")
        second = db.add_clinical_model(session, full_fit.to_dict(), "cohort CSV c.csv")
        session.commit()
        assert model_in_use(db.clinical_model_in_use(session)).version is None  # the paper's until one is chosen
        db.use_clinical_model(session, first.id)
        session.commit()
        in_use = model_in_use(db.clinical_model_in_use(session))
        assert in_use.version == first.id and f"local version {first.id}: 41 patients, 20 events" in in_use.name
        assert in_use.risk("N1") == n_fit.risk("N1") and in_use.risk("unknown") is None
        with pytest.raises(ValueError, match="only after surgery"):
            db.use_clinical_model(session, second.id)
        with pytest.raises(LookupError):
            db.use_clinical_model(session, 999)
        db.use_clinical_model(session, None)
        session.commit()
        assert db.clinical_model_in_use(session) is None
        actions = [e.action for e in session.scalars(select(db.AuditEvent).order_by(db.AuditEvent.id))]
        assert actions == [
            "clinical_model_fitted",
            "clinical_model_fitted",
            "clinical_model_in_use",
            "clinical_model_in_use",
        ]
        update = clinical_update(ClinicalInputs("N1", None, None, None), in_use)
        assert update.clinical_model == in_use.name and update.clinical_probability == in_use.risk("N1").probability


def test_cli_refits_stores_uses_and_lists(tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_csv(tmp_path / "cohort.csv", paper_patients())
    database = ["--database", sqlite_url]
    assert main(["clinical", "--refit", "N", "--cohort", str(path), "--store", "--json", *database]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["version"] == 1 and round(out["coefficients"]["N1"]["odds_ratio"], 3) == 11.611
    assert out["fitted_to"].startswith("cohort CSV cohort.csv (sha256 ")
    assert main(["clinical", "--use", "1", *database]) == 0
    assert "local version 1: 41 patients, 20 events" in capsys.readouterr().out
    assert main(["clinical", "--versions", "--json", *database]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert listed["versions"][0]["in_use"] and listed["versions"][0]["n"] == 41
    assert main(["clinical", "--refit", "N+T+margin", "--cohort", str(path), *database]) == 2  # too few events
    assert "needs at least 30 patients" in capsys.readouterr().err
    assert main(["clinical", "--use", "7", *database]) == 2
    assert main(["clinical", "--refit", "N", *database]) == 2  # no patients named
    assert main(["clinical", "--refit", "N", "--saved-cases", *database]) == 2  # no saved cases: too few events
    assert main(["clinical", "--refit", "N+T+margin", "--saved-cases", *database]) == 2
    assert "Saved cases record no surgical margin" in capsys.readouterr().err
    assert main(["clinical", "--versions", "--database", "postgresql+psycopg://nobody@127.0.0.1:1/none"]) == 2
    assert "cannot be reached" in capsys.readouterr().err


def test_a_variable_the_same_for_everyone_is_named() -> None:
    rows = [ClinicalObservation(bool(i % 2), "N0", "T2", "R0") for i in range(80)]
    with pytest.raises(RefitError, match=r"UICC N1 \(vs N0\) is the same for all of them"):
        refit(rows, "N")


def test_only_one_version_is_ever_in_use(engine) -> None:
    from sqlalchemy.exc import IntegrityError

    fit = refit(paper_patients(), "N").to_dict()
    with Session(engine) as session:
        first, second = db.add_clinical_model(session, fit, "a"), db.add_clinical_model(session, fit, "b")
        db.use_clinical_model(session, second.id)
        db.use_clinical_model(session, first.id)  # the switch back clears the other before setting
        session.commit()
        assert [v.in_use for v in db.list_clinical_models(session)] == [False, True]
        second.in_use = True  # as a second switch committed at the same moment would
        with pytest.raises(IntegrityError):
            session.commit()

from __future__ import annotations

import numpy as np
import pytest

from core.clinical import fit_from_counts, paper_model


def test_paper_model_reproduces_table_1() -> None:
    model = paper_model()
    assert model.risk("N0").probability == pytest.approx(9 / 28, abs=1e-6)
    assert model.risk("N1").probability == pytest.approx(11 / 13, abs=1e-6)
    # univariate odds ratio of the paper: 11.611
    assert model.odds_ratio_ == pytest.approx((11 / 2) / (9 / 19), rel=1e-6)
    assert model.odds_ratio_ == pytest.approx(11.611, abs=0.001)


def test_confidence_interval_is_the_wald_interval_of_the_logit() -> None:
    risk = paper_model().risk("N1")
    se = np.sqrt(1 / 11 + 1 / 2)
    logit = np.log(11 / 2)
    assert risk.ci_low == pytest.approx(1 / (1 + np.exp(-(logit - 1.959964 * se))), abs=1e-5)
    assert risk.ci_low < risk.probability < risk.ci_high


def test_unknown_category_is_rejected() -> None:
    with pytest.raises(ValueError):
        paper_model().risk("unknown")


def test_refit_on_other_counts() -> None:
    model = fit_from_counts({("N0", 0): 30, ("N0", 1): 10, ("N1", 0): 10, ("N1", 1): 10})
    assert model.risk("N0").probability == pytest.approx(0.25) and model.risk("N1").probability == pytest.approx(0.5)


def test_clinical_json_reproduces_the_papers_odds_ratio_and_a_wald_p_from_woolfs_se(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """For one binary predictor the Wald SE of log OR is Woolf's sqrt(1/a + 1/b + 1/c + 1/d): an independent check."""
    import json
    import math

    from scipy import stats

    from core.cli import main

    assert main(["clinical", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert round(out["odds_ratio"], 3) == 11.611
    assert [round(v, 3) for v in out["odds_ratio_ci"]] == [2.116, 63.726]
    assert out["risk"]["N0"] == pytest.approx(9 / 28, abs=1e-6) and out["risk"]["N1"] == pytest.approx(
        11 / 13, abs=1e-6
    )
    assert set(out["risk_ci"]) == {"N0", "N1"} and out["risk_ci"]["N1"][0] < out["risk"]["N1"] < out["risk_ci"]["N1"][1]
    woolf_se = math.sqrt(1 / 19 + 1 / 9 + 1 / 2 + 1 / 11)
    assert out["wald_p"] == pytest.approx(2 * stats.norm.sf(math.log(11 * 19 / (2 * 9)) / woolf_se), rel=1e-4)
    assert main(["clinical"]) == 0
    assert "11.611 (95% CI 2.116–63.726)" in capsys.readouterr().out

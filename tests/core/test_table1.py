"""core.table1: the paper's categorical p-values from its own counts; Mann–Whitney against scipy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from core.cli import main
from core.table1 import (
    EXACT_MC,
    FISHER,
    MANN_WHITNEY,
    NOT_TESTABLE,
    PEARSON,
    Table1Error,
    categorical_test,
    monte_carlo_exact_p,
    table1_from_rows,
)

# Table 1 of the paper: per variable, level → (non-early recurrence n, early recurrence n), and its p.
PAPER_COUNTS: dict[str, tuple[dict[str, tuple[int, int]], float]] = {
    "gender": ({"male": (10, 10), "female": (11, 10)}, 0.879),
    "child_pugh": ({"A": (21, 18), "B": (0, 2)}, 0.232),
    "procedure": (
        {
            "right hepatectomy": (5, 7),
            "left hepatectomy": (9, 9),
            "right anterior": (2, 1),
            "right posterior": (0, 1),
            "partial": (5, 2),
        },
        0.570,
    ),
    "solitary": ({"yes": (17, 11), "no": (4, 9)}, 0.074),
    "t_category": ({"T1a": (2, 4), "T1b": (2, 1), "T2": (14, 10), "T3": (2, 3), "T4": (1, 2)}, 0.703),
    "n_category": ({"N0": (19, 9), "N1": (2, 11)}, 0.002),
    "m_category": ({"M0": (21, 20)}, 1.000),
    "stage": ({"IA": (2, 1), "IB": (2, 1), "II": (12, 5), "IIIA": (2, 1), "IIIB": (3, 12)}, 0.055),
    "intrahepatic_metastasis": ({"yes": (4, 8), "no": (17, 12)}, 0.141),
    "positive_margin": ({"yes": (2, 1), "no": (19, 19)}, 1.000),  # "> 0.999" in the paper
}


def _paper_rows() -> list[dict[str, str]]:
    """41 patients (21 without, 20 with early recurrence) whose categorical columns give the paper's counts."""
    rows = [{"early_recurrence": "0"} for _ in range(21)] + [{"early_recurrence": "1"} for _ in range(20)]
    for name, (levels, _) in PAPER_COUNTS.items():
        column = {"0": [], "1": []}
        for level, (without, with_) in levels.items():
            column["0"] += [level] * without
            column["1"] += [level] * with_
        for row in rows:
            row[name] = column[row["early_recurrence"]].pop()
    return rows


def test_the_papers_counts_reproduce_its_categorical_p_values() -> None:
    table = table1_from_rows(_paper_rows(), "early_recurrence")
    assert table.groups == {"0": 21, "1": 20}
    got = {row.name: row for row in table.variables}
    for name, (_, paper_p) in PAPER_COUNTS.items():
        row = got[name]
        # SPSS printed Pearson's p for the larger tables whatever their expected counts: that is reproduced too
        reported = row.pearson_p_value if row.test == EXACT_MC else row.p_value
        assert round(reported, 3) == pytest.approx(paper_p, abs=1e-9), (name, row.test, reported)
    assert got["gender"].test == got["n_category"].test == got["solitary"].test == PEARSON
    assert got["child_pugh"].test == got["positive_margin"].test == FISHER
    assert {got[n].test for n in ("procedure", "t_category", "stage")} == {EXACT_MC}
    assert got["m_category"].test == NOT_TESTABLE
    assert got["n_category"].cells["N1"] == {"all": "13 (31.7)", "0": "2 (9.5)", "1": "11 (55.0)"}


def test_the_exact_test_differs_from_pearson_where_counts_are_small_and_is_reproducible() -> None:
    t_table = np.array([[2, 4], [2, 1], [14, 10], [2, 3], [1, 2]])
    first, again = monte_carlo_exact_p(t_table), monte_carlo_exact_p(t_table)
    assert first == again and 0.5 < first <= 1.0  # the χ² statistic is small: no evidence either way
    # a strong association in a 3 × 2 table with small counts: the exact p is small too
    strong = np.array([[8, 0], [0, 8], [1, 1]])
    test, p, pearson_p, min_expected = categorical_test(strong)
    assert test == EXACT_MC and min_expected < 5 and p < 0.01 and pearson_p < 0.01


def test_continuous_columns_use_mann_whitney_and_median_range() -> None:
    rng = np.random.default_rng(0)
    without, with_ = rng.normal(50, 10, 21).round(1), rng.normal(60, 10, 20).round(1)
    rows = [{"group": "no", "size_mm": f"{v:g}"} for v in without] + [
        {"group": "yes", "size_mm": f"{v:g}"} for v in with_
    ]
    rows[3]["size_mm"] = ""  # missing: left out of this variable only
    [row] = table1_from_rows(rows, "group").variables
    expected = stats.mannwhitneyu(np.delete(without, 3), with_, alternative="two-sided").pvalue
    assert row.kind == "continuous" and row.test == MANN_WHITNEY and row.p_value == pytest.approx(expected)
    assert row.missing == {"no": 1, "yes": 0}
    assert row.cells["median (range)"]["yes"] == f"{np.median(with_):g} ({with_.min():g}–{with_.max():g})"


def test_a_grouping_column_without_two_values_is_one_sentence() -> None:
    with pytest.raises(Table1Error, match="must hold exactly two values"):
        table1_from_rows([{"g": "a", "x": "1"}, {"g": "b", "x": "2"}, {"g": "c", "x": "3"}], "g")
    with pytest.raises(Table1Error, match="no column 'outcome'"):
        table1_from_rows([{"g": "a"}], "outcome")


def test_cli_json_names_each_column_with_its_test_and_p(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _paper_rows()
    path = tmp_path / "cohort.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["table1", "--cohort", str(path), "--group", "early_recurrence", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["variables"]) == set(PAPER_COUNTS)
    assert out["variables"]["n_category"]["test"] == PEARSON
    assert round(out["variables"]["n_category"]["p_value"], 3) == 0.002
    assert main(["table1", "--cohort", str(path), "--group", "gender"]) == 0  # text: a table, no traceback
    assert "n_category" in capsys.readouterr().out
    assert main(["table1", "--cohort", str(tmp_path / "missing.csv"), "--group", "x"]) == 2
    assert "cannot be read as a CSV" in capsys.readouterr().err


def _exact_r_by_2_p(table: np.ndarray) -> float:
    """Exact p of an r × 2 table by enumerating every table with its margins (multivariate hypergeometric)."""
    import itertools
    from math import comb

    rows, first = table.sum(axis=1), int(table[:, 0].sum())
    n = int(table.sum())

    def chi2(column: np.ndarray) -> float:
        full = np.column_stack([column, rows - column])
        expected = np.outer(rows, full.sum(axis=0)) / n
        return float(((full - expected) ** 2 / expected).sum())

    observed, p = chi2(table[:, 0]), 0.0
    for column in itertools.product(*(range(int(r) + 1) for r in rows)):
        if sum(column) != first:
            continue
        weight = np.prod([comb(int(r), c) for r, c in zip(rows, column, strict=True)]) / comb(n, first)
        if chi2(np.array(column)) >= observed - 1e-9:
            p += weight
    return p


def test_monte_carlo_p_matches_exact_enumeration() -> None:
    table = np.array([[5, 1], [2, 4], [1, 3]])
    exact = _exact_r_by_2_p(table)
    assert monte_carlo_exact_p(table) == pytest.approx(exact, abs=0.012)  # 3 Monte Carlo SEs at B = 20,000


def test_a_named_column_is_compared_as_numbers_and_an_empty_one_still_has_a_row() -> None:
    from core.table1 import table1_display_rows

    rows = [
        {"group": g, "size": size, "margin": ""}
        for g, size in [("a", "30"), ("a", "40"), ("b", "60"), ("b", "60"), ("b", "30")]
    ]
    auto = table1_from_rows(rows, "group")
    assert auto.variables[0].kind == "categorical"  # three distinct sizes: categories unless told
    forced = table1_from_rows(rows, "group", continuous={"size"})
    assert forced.variables[0].kind == "continuous" and forced.variables[0].cells["median (range)"]["b"] == "60 (30–60)"
    shown = table1_display_rows(forced)
    empty = next(r for r in shown if r["variable"] == "margin")
    assert empty["level"] == "—" and empty["not entered"] == "5"

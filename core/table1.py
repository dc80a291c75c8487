"""Cohort statistics laid out as the paper's Table 1: two groups compared variable by variable.

Continuous variables: median (min–max) per group, Mann–Whitney U test (two-sided).
Categorical variables: n (%) per level and group, and

* Pearson's χ² **without** continuity correction when every expected count is ≥ 5;
* otherwise Fisher's exact test for a 2 × 2 table, or, for a larger table, an exact test by
  Monte Carlo: group labels permuted with the margins fixed, the χ² statistic recomputed,
  p = (1 + #{χ²* ≥ χ²}) / (1 + B) with B = 20,000 and a fixed seed (reproducible; its
  Monte Carlo standard error is below 0.004).

Why the asymptotic Pearson p is reported beside the exact one for larger tables: the paper
(SPSS) reported Pearson's p for its 5-level tables (T category 0.703, procedure 0.570, TNM stage
0.055) although their expected counts fall below 5. Those values are reproduced as
``pearson_p_value``; the exact test is what this tool uses, because the χ² approximation is
unreliable with such counts.

A column is continuous when every non-missing value is a number and it has at least
:data:`MIN_CONTINUOUS_LEVELS` distinct values; otherwise categorical (a 0/1 column is a
category). Empty cells and "NA" are missing and left out of that variable only.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from core.errors import UserFacingError

MIN_CONTINUOUS_LEVELS = 6
MIN_EXPECTED = 5.0
MONTE_CARLO_RESAMPLES = 20_000
MONTE_CARLO_SEED = 20_220_518  # fixed: the same cohort gives the same p every time
MISSING = {"", "na", "n/a", "nan", "none", "unknown", "-"}

PEARSON = "Pearson chi-squared (no continuity correction)"
FISHER = "Fisher's exact (2x2)"
EXACT_MC = f"exact chi-squared by Monte Carlo ({MONTE_CARLO_RESAMPLES:,} permutations)"
MANN_WHITNEY = "Mann-Whitney U (two-sided)"
NOT_TESTABLE = "not testable (a single category)"


class Table1Error(UserFacingError):
    """A cohort CSV or grouping column that cannot give a two-group table."""


@dataclass(frozen=True)
class VariableRow:
    """One variable of the table.

    Attributes:
        name: the CSV column.
        kind: "continuous" or "categorical".
        test: which test gave ``p_value`` (one of the module's test names).
        p_value: two-sided p.
        pearson_p_value: categorical only: Pearson's asymptotic p (what SPSS prints), also
            when another test was used; ``None`` for a continuous variable or one category.
        min_expected: categorical only: the smallest expected count under independence.
        cells: per level (categorical) or "median (range)" (continuous), one text per group
            and for all; levels in sorted order.
        missing: rows without a value, per group.
    """

    name: str
    kind: str
    test: str
    p_value: float
    pearson_p_value: float | None = None
    min_expected: float | None = None
    cells: dict[str, dict[str, str]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "test": self.test,
            "p_value": self.p_value,
            "pearson_p_value": self.pearson_p_value,
            "min_expected": self.min_expected,
            "cells": self.cells,
            "missing": self.missing,
        }


@dataclass(frozen=True)
class Table1:
    """The two groups (value → n) and one row per variable, in CSV column order."""

    group: str
    groups: dict[str, int]
    variables: tuple[VariableRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "groups": self.groups,
            "variables": {row.name: row.to_dict() for row in self.variables},
        }


def _is_missing(value: str | None) -> bool:
    return value is None or value.strip().lower() in MISSING


def _as_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def pearson_chi2(table: np.ndarray) -> tuple[float, float, float]:
    """(χ², p, smallest expected count) without continuity correction for an r × c count table."""
    statistic, p, _, expected = stats.chi2_contingency(table, correction=False)
    return float(statistic), float(p), float(expected.min())


def monte_carlo_exact_p(
    table: np.ndarray, resamples: int = MONTE_CARLO_RESAMPLES, seed: int = MONTE_CARLO_SEED
) -> float:
    """Exact-test p of an r × c table by permuting column labels with both margins fixed."""
    observed, _, _ = pearson_chi2(table)
    rows = np.repeat(np.arange(table.shape[0]), table.sum(axis=1))
    columns = np.repeat(np.arange(table.shape[1]), table.sum(axis=0))
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    rng = np.random.default_rng(seed)
    as_large = 0
    for _ in range(resamples):
        permuted = np.zeros_like(table)
        np.add.at(permuted, (rows, rng.permutation(columns)), 1)
        statistic = float(((permuted - expected) ** 2 / expected).sum())
        as_large += statistic >= observed - 1e-9  # ties count as "as extreme"
    return (1 + as_large) / (1 + resamples)


def categorical_test(table: np.ndarray) -> tuple[str, float, float | None, float | None]:
    """(test, p, Pearson p, smallest expected count) for a levels × 2 count table.

    Levels seen in neither group are dropped first; one level left is not testable (p = 1).
    """
    table = np.asarray(table, dtype=np.int64)
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2 or (table.sum(axis=0) == 0).any():
        return NOT_TESTABLE, 1.0, None, None
    _, pearson_p, min_expected = pearson_chi2(table)
    if min_expected >= MIN_EXPECTED:
        return PEARSON, pearson_p, pearson_p, min_expected
    if table.shape == (2, 2):
        return FISHER, float(stats.fisher_exact(table).pvalue), pearson_p, min_expected
    return EXACT_MC, monte_carlo_exact_p(table), pearson_p, min_expected


def _median_range(values: np.ndarray) -> str:
    if values.size == 0:
        return "—"
    return f"{np.median(values):g} ({values.min():g}–{values.max():g})"


def _percent(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.1f})" if total else "0"


def compare_variable(
    name: str, values: list[str], groups: list[str], labels: tuple[str, str], continuous: bool = False
) -> VariableRow:
    """The row of one column, ``values[i]`` belonging to group ``groups[i]``; ``continuous`` forces a numeric
    column with few distinct values (a small cohort's sizes) to be compared as numbers."""
    present = [(v.strip(), g) for v, g in zip(values, groups, strict=True) if not _is_missing(v)]
    missing = {
        label: sum(1 for v, g in zip(values, groups, strict=True) if g == label and _is_missing(v)) for label in labels
    }
    numbers = [_as_number(v) for v, _ in present]
    numeric = bool(present) and all(n is not None for n in numbers)
    if numeric and (continuous or len(set(numbers)) >= MIN_CONTINUOUS_LEVELS):
        by_group = [np.array([n for n, (_, g) in zip(numbers, present, strict=True) if g == label]) for label in labels]
        if min(len(b) for b in by_group) == 0:
            test, p = NOT_TESTABLE, 1.0
        else:
            test, p = MANN_WHITNEY, float(stats.mannwhitneyu(*by_group, alternative="two-sided").pvalue)
        cells = {"median (range)": {"all": _median_range(np.concatenate(by_group))}}
        cells["median (range)"].update({label: _median_range(b) for label, b in zip(labels, by_group, strict=True)})
        return VariableRow(name, "continuous", test, p, cells=cells, missing=missing)
    levels = sorted({v for v, _ in present})
    table = np.array(
        [[sum(1 for v, g in present if v == level and g == label) for label in labels] for level in levels]
    )
    test, p, pearson_p, min_expected = categorical_test(table) if levels else (NOT_TESTABLE, 1.0, None, None)
    totals = {label: sum(1 for _, g in present if g == label) for label in labels}
    cells = {
        level: {
            "all": _percent(int(table[i].sum()), len(present)),
            **{label: _percent(int(table[i, j]), totals[label]) for j, label in enumerate(labels)},
        }
        for i, level in enumerate(levels)
    }
    return VariableRow(name, "categorical", test, p, pearson_p, min_expected, cells, missing)


def table1_from_rows(rows: list[dict[str, str]], group: str, continuous: Collection[str] = ()) -> Table1:
    """Table 1 of ``rows`` (one dict per patient) split by the two values of column ``group``.

    ``continuous`` names numeric columns to compare as numbers whatever their number of values.

    Raises:
        Table1Error: no such column, or it does not hold exactly two values.
    """
    if not rows or group not in rows[0]:
        raise Table1Error(f"The cohort has no column {group!r} to split the patients by.")
    grouped = [(row, row[group].strip()) for row in rows if not _is_missing(row.get(group))]
    labels = tuple(sorted({g for _, g in grouped}))
    if len(labels) != 2:
        raise Table1Error(
            f"Column {group!r} must hold exactly two values to compare two groups; it holds {len(labels)}."
        )
    members = [g for _, g in grouped]
    variables = tuple(
        compare_variable(name, [row.get(name) or "" for row, _ in grouped], members, labels, name in continuous)
        for name in rows[0]
        if name != group
    )
    return Table1(group, {label: members.count(label) for label in labels}, variables)


def table1_from_csv(path: Path, group: str) -> Table1:
    """:func:`table1_from_rows` of a cohort CSV (UTF-8, header row).

    Raises:
        Table1Error: the file cannot be read as a CSV, or the grouping is unusable.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise Table1Error(f"The cohort file {path.name} cannot be read as a CSV ({type(error).__name__}).") from None
    return table1_from_rows(rows, group)


def format_table_p(p: float) -> str:
    """A Table 1 p-value as the paper prints it: three decimals, "> 0.999" above that."""
    return "> 0.999" if p > 0.999 else f"{p:.3f}"


def format_table1(table: Table1) -> str:
    """The table as text: one line per variable (and per level), p with the test used."""
    a, b = table.groups
    lines = [
        f"{'variable':34} {'all (n=' + str(sum(table.groups.values())) + ')':18} "
        f"{a + ' (n=' + str(table.groups[a]) + ')':18} {b + ' (n=' + str(table.groups[b]) + ')':18} p"
    ]
    for row in table.variables:
        p = format_table_p(row.p_value)
        lines.append(f"{row.name:34} {'':18} {'':18} {'':18} {p}  [{row.test}]")
        for level, cells in row.cells.items():
            lines.append(f"  {level:32} {cells['all']:18} {cells[a]:18} {cells[b]:18}")
    return "\n".join(lines)


def table1_display_rows(table: Table1) -> list[dict[str, str]]:
    """One row per variable level for a page's table: the cells, then p and its test on the variable's first row."""
    a, b = table.groups
    columns = {
        "all": f"all (n={sum(table.groups.values())})",
        a: f"{a} (n={table.groups[a]})",
        b: f"{b} (n={table.groups[b]})",
    }
    rows = []
    for variable in table.variables:
        p = format_table_p(variable.p_value)
        missing = sum(variable.missing.values())
        if not variable.cells:  # nothing entered for anyone
            rows.append({"variable": variable.name, "level": "—", **dict.fromkeys(columns.values(), "—")})
            rows[-1].update({"p": "—", "test": "", "not entered": str(missing)})
            continue
        for i, (level, cells) in enumerate(variable.cells.items()):
            first = i == 0
            rows.append(
                {
                    "variable": variable.name if first else "",
                    "level": level,
                    **{title: cells[key] for key, title in columns.items()},
                    "p": p if first else "",
                    "test": variable.test if first else "",
                    "not entered": str(missing) if first and missing else "",
                }
            )
    return rows

"""Cohort: the paper's Table 1 for the saved cases with a known outcome, early recurrence against none."""

from __future__ import annotations

import streamlit as st

from core.cases import cohort_rows
from core.table1 import table1_display_rows, table1_from_rows
from pages.common import RESEARCH_NOTICE, require_shell, saved_case_summaries

require_shell("pages/cohort.py")
st.title("Cohort (Table 1)")
st.caption(
    "The saved cases with a known outcome, one row per patient (their newest case with an outcome), compared as in "
    "the paper's Table 1: early recurrence against none. Record outcomes on the Cases page."
)
rows = cohort_rows(saved_case_summaries("Table 1"))

groups = {row["early_recurrence"] for row in rows}
if len(groups) < 2:
    st.info(
        f"{len(rows)} saved case(s) have a known outcome, all in one group: Table 1 needs patients with and without "
        "early recurrence."
    )
    st.stop()
table = table1_from_rows(rows, "early_recurrence", continuous={"tumour_size_mm"})
st.dataframe(table1_display_rows(table), hide_index=True, width="stretch")
st.caption(
    "Categorical: n (%), Pearson's χ² without continuity correction when every expected count is ≥ 5, else Fisher's "
    "exact test (2 × 2) or an exact test by Monte Carlo (larger tables). Tumour size: median (range) in mm, "
    "Mann–Whitney U. Values not entered are left out of that variable only. "
    "The same table for a cohort CSV: `python -m core table1 --cohort CSV --group early_recurrence`. "
    f"{RESEARCH_NOTICE}"
)

"""Local validation: both models on the hospital's own patients with a known outcome, patient level only."""

from __future__ import annotations

import streamlit as st

from core.validation import (
    MIN_EVENTS_PER_CLASS,
    can_validate,
    cohort_sentence,
    difference_sentence,
    local_cohorts,
    summary_rows,
    validate,
)
from core.validation_figures import calibration_figure, decision_curve_figure, roc_figure
from core.validation_report import validation_report_pdf
from pages.common import RESEARCH_NOTICE, audited_download, content_hash, require_shell, saved_case_summaries

require_shell("pages/validation.py")
st.title("Local validation")
st.caption(
    "Saved cases with a known outcome, one per patient (its latest analysis), scored by one model: the deep-learning "
    "risk and the N-category risk on the same patients. Record outcomes on the Cases page."
)
cohorts = local_cohorts(saved_case_summaries("validation"))

usable = [c for c in cohorts if can_validate(c.labels)]
if not usable:
    st.info(
        "No model has yet scored at least 2 patients with and 2 without early recurrence among saved cases with a "
        f"known outcome (about {MIN_EVENTS_PER_CLASS} of each are needed for more than a description)."
    )
    st.stop()
labels = {c.key: f"{c.model_name} · sha256 {c.model_sha256[:12]} · {c.n} patients" for c in usable}
if len({c.clinical_model for c in usable}) > 1:  # say which clinical model only where it tells groups apart
    labels = {c.key: f"{labels[c.key]} · clinical: {c.clinical_model}" for c in usable}
chosen = st.selectbox(
    "Model (cases scored by different models are never pooled)",
    list(labels),
    format_func=labels.__getitem__,
    key="validation_model",
)
cohort = next(c for c in usable if c.key == chosen)
result = validate(cohort.labels, cohort.dl, cohort.clinical)
st.markdown(f"**{cohort_sentence(cohort, result)}**")
if cohort.weights_warning:
    st.warning(f"{cohort.model_name}: {cohort.weights_warning}", icon=":material/warning:")
if result.warning:
    st.warning(result.warning, icon=":material/warning:")
st.dataframe(summary_rows(result), hide_index=True, width="stretch")
st.caption(f"Clinical model: {cohort.clinical_model}.")
st.markdown(difference_sentence(result))
roc_col, calibration_col = st.columns(2)
roc_col.plotly_chart(roc_figure(result), width="stretch")
calibration_col.plotly_chart(calibration_figure(result), width="stretch")
st.plotly_chart(decision_curve_figure(result), width="stretch")
st.caption(
    "The deep-learning number is an uncalibrated mean patch probability: its calibration shows how far it is from a "
    f"risk on these patients. {RESEARCH_NOTICE}"
)
audited_download(
    "Validation report (PDF)",
    lambda: validation_report_pdf(cohort, result),  # built on click, not on every rerun
    "validation report PDF",
    model_sha256=cohort.model_sha256,
    file_name=f"icca-validation-{cohort.model_sha256[:12]}-{content_hash(cohort.clinical_model.encode())[:6]}.pdf",
    mime="application/pdf",
    help="This page for the department's files: both models' figures, ROC curves, calibration bins, net benefit.",
)

"""Model card: where the installed weights came from and how they were validated."""

from __future__ import annotations

import streamlit as st

from core.report import card_metric_rows
from pages.common import RESEARCH_NOTICE, current_model, require_shell

require_shell()
st.title("Model card")
model, problem = current_model()
if model is None:
    st.error(problem)
    st.stop()

card = model.card
if model.is_synthetic:
    st.warning(f"{model.provenance}", icon=":material/warning:")
st.markdown(f"**{card.get('name', 'unnamed model')}** · file `{model.path.name}` · sha256 `{model.sha256}`")
st.markdown(f"**Preprocessing:** {model.preprocess.describe()}")
st.markdown(f"**Intended use:** {card.get('intended_use', RESEARCH_NOTICE)}")
metrics = card.get("cv_metrics")
if metrics:
    st.subheader("Cross-validation, validation folds (mean ± SD over folds)")
    st.dataframe(card_metric_rows(metrics), hide_index=True)
    oof = metrics.get("out_of_fold_patient_level", {})
    if oof:
        st.markdown(
            f"Out of fold, one prediction per patient: ResNet50 AUC **{oof['dl_auc']:.3f}** against "
            f"**{oof['clinical_n_category_auc']:.3f}** for the N-category logistic regression on the same patients."
        )
    st.caption(f"{metrics.get('patient_rule', '')}. {metrics.get('note', '')}. Rates in %.")
    cohort = card.get("cohort", {})
    if cohort:
        st.caption(
            f"Cohort: {cohort['patients']} patients, {cohort['early_recurrence']} with early recurrence, "
            f"{cohort['patches']:,} patches."
        )
st.subheader("Full card")
st.json(card, expanded=False)

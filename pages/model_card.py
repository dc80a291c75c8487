"""Model card: where the installed weights came from and how they were validated, patient level first."""

from __future__ import annotations

import streamlit as st

from core.modelcard import cohort_noun, patient_level_auc, same_patients_comparison
from core.report import card_metric_rows
from pages.common import RESEARCH_NOTICE, current_model, require_shell

require_shell("pages/model_card.py")
st.title("Model card")
model, problem = current_model()
if model is None:
    st.error(problem)
    st.stop()

card = model.card
if model.weights_warning:
    st.warning(model.weights_warning, icon=":material/warning:")
st.markdown(f"**{model.name}** · file `{model.path.name}` · sha256 `{model.sha256}`")
st.markdown(f"**Trained on:** {model.training_data}")
st.markdown(f"**Preprocessing:** {model.preprocess.describe()}")
if card.get("deployable"):
    st.markdown(f"**Deployed as:** {card['deployable']}")
engine_now = model.engine.describe() if model.engine else model.engine_name
st.markdown(
    f"**Inference engine on this machine:** {engine_now}",
    help="Chosen by measuring this machine's backends once (make demo-model or python -m core.engine) and "
    "checking each network against fp32 (max |Δp| ≤ 0.02 on a fixed case); until it is ready, plain fp32 runs.",
)
st.markdown(f"**Intended use:** {card.get('intended_use', RESEARCH_NOTICE)}")

metrics = card.get("cv_metrics")
pooled = patient_level_auc(card)
if pooled is None:
    st.info("This model's card holds no cross-validation results.")
else:
    st.subheader("Patient level, out of fold (one prediction per patient)")
    noun = cohort_noun(card)
    st.markdown(f"ResNet50: **{pooled.describe(noun)}**.")
    st.caption(
        "Each patient is scored once, by the fold model that did not see them, with the dashboard's own rule. "
        "With a few dozen patients the 95% CI is wide: read the interval, not the point."
    )
    comparison = same_patients_comparison(card)
    if comparison:
        dl, clinical = comparison
        st.markdown(
            f"On the same {dl.n} {noun} with a known N category: ResNet50 {dl.describe(noun)} against "
            f"N-category logistic regression {clinical.describe(noun)}."
        )
if metrics:
    st.subheader("Per fold: validation folds, mean ± SD over folds")
    st.dataframe(card_metric_rows(metrics), hide_index=True)
    st.caption(f"Rule: {metrics.get('patient_rule', '—')}. Note: {metrics.get('note', '—')}. Rates in %.")
    cohort = card.get("cohort", {})
    if cohort:
        st.caption(
            f"Cohort: {cohort['patients']} patients, {cohort['early_recurrence']} with early recurrence, "
            f"{cohort['patches']:,} patches."
        )
st.subheader("Full card")
st.json(card, expanded=False)

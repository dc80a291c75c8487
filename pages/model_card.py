"""Model card: where the installed weights came from and how they were validated, patient level first."""

from __future__ import annotations

import logging

import streamlit as st
from sqlalchemy.orm import Session

from core import db
from core.clinical_refit import version_rows
from core.modelcard import cohort_noun, patient_level_auc, same_patients_comparison
from core.report import card_metric_rows
from pages.common import RESEARCH_NOTICE, clinical_model_now, current_model, engine, require_shell

log = logging.getLogger(__name__)


def clinical_section() -> None:
    """The clinical model in use and the stored local versions."""
    st.subheader("Clinical model")
    in_use, problem = clinical_model_now()
    if problem:
        st.warning(problem)
    st.markdown(f"**In use:** {in_use.name}")
    try:
        with Session(engine()) as session:
            rows = version_rows(db.list_clinical_models(session))
    except Exception as error:
        log.error("listing clinical model versions failed: %s", type(error).__name__)
        rows = []
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    st.caption(
        "Refit on your own patients with `python -m core clinical --refit N --saved-cases --store` (or `--cohort CSV`), "
        "then `--use VERSION` (or `--use paper`). N + T + margin describes the cohort; the margin is known only after "
        "resection, so only an N-only model gives the preoperative risk. AUCs here are apparent: on the patients the "
        "model was fitted to."
    )


require_shell("pages/model_card.py")
st.title("Model card")
model, problem = current_model()
if model is None:
    st.error(problem)
    clinical_section()
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
    "checking each network against fp32 (max |Δp| ≤ 0.02 on a fixed case); until it is ready, plain fp32 runs, "
    "and plain fp32 takes over until the app restarts if the chosen engine fails.",
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
clinical_section()
st.subheader("Full card")
st.json(card, expanded=False)

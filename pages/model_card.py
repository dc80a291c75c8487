"""Model card: where the installed weights came from and how they were validated."""

from __future__ import annotations

import streamlit as st

from pages.common import RESEARCH_NOTICE, current_model

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
    st.subheader("Cross-validation (patient level first)")
    st.json(metrics, expanded=False)
st.subheader("Full card")
st.json(card, expanded=False)

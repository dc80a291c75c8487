"""Entry point: page config, navigation and the shared sidebar. Run with ``streamlit run app.py``."""

from __future__ import annotations

import streamlit as st

from models.checkpoint import configured_model_path
from pages.common import (
    DATABASE_DOWN,
    REQUESTED_PAGE,
    RESEARCH_NOTICE,
    SHELL_FLAG,
    current_model,
    demo_build_banner,
    demo_build_wanted,
    engine,
    sign_in_configured,
    sign_in_gate,
    visitor,
)

# Pages are in the top bar and the sidebar (model, database) starts folded: on a 1400 × 900 screen
# Analyze needs the width for the canvas, the overlay and both risks side by side. Every risk
# carries its own model warning on the page, so nothing a surgeon must read is in the sidebar.
st.set_page_config(
    page_title="iCCA early recurrence",
    page_icon=":material/biotech:",
    layout="wide",
    initial_sidebar_state="collapsed",
)
st.session_state[SHELL_FLAG] = True

navigation = st.navigation(
    [
        st.Page("pages/analyze.py", title="Analyze", icon=":material/biotech:", default=True),
        st.Page("pages/cases.py", title="Cases", icon=":material/folder_open:"),
        st.Page("pages/validation.py", title="Validation", icon=":material/monitoring:"),
        st.Page("pages/cohort.py", title="Cohort", icon=":material/groups:"),
        st.Page("pages/model_card.py", title="Model card", icon=":material/badge:"),
        st.Page("pages/audit.py", title="Audit", icon=":material/history:"),
    ],
    # Every page keeps its address (a deep link still resolves), but a visitor who may not enter
    # sees no page links: the sign-in below is all they get.
    position="top" if visitor() is not None else "hidden",
)
requested = st.session_state.pop(REQUESTED_PAGE, None)
if requested and requested != "pages/analyze.py":  # a deep link that arrived before the shell had run
    st.switch_page(requested)

actor = sign_in_gate()  # before the sidebar: a visitor who is not signed in sees the sign-in only
with st.sidebar:
    if sign_in_configured():
        st.caption(f"Signed in: {actor.subject} ({actor.role.label})")
        st.button("Sign out", on_click=st.logout, key="sign_out")
    model, problem = current_model()
    if model is None:
        st.error(problem or "No model is installed.")
    else:
        st.markdown(f"**Model:** {model.name}")
        st.caption(f"{model.provenance} · sha256 {model.sha256[:12]}")
        st.caption(f"Inference engine: {model.engine.describe() if model.engine else model.engine_name}")
        if model.weights_warning:
            st.warning(model.weights_warning, icon=":material/warning:")
    try:
        engine()
        st.caption("Case database: connected")
    except Exception:  # any driver error: the sentence, never the message (it can carry the URL)
        st.error(DATABASE_DOWN)
    st.caption(RESEARCH_NOTICE)

if model is None and demo_build_wanted(configured_model_path()):
    demo_build_banner()  # on every page, above it: the first run's model build and its time left
navigation.run()

"""Audit trail (administrators): who did what to which case, with which model and input."""

from __future__ import annotations

import logging

import streamlit as st
from sqlalchemy.orm import Session

from core.access import Act, NotPermittedError
from core.audit import audit_csv, list_events
from pages.common import DATABASE_DOWN, audited_download, engine, require_shell

log = logging.getLogger(__name__)
ACTIONS = (
    "case_analysed",
    "case_saved",
    "case_updated",
    "case_opened",
    "outcome_recorded",
    "exported",
    "case_deleted",
    "clinical_model_fitted",
    "clinical_model_in_use",
)

require_shell("pages/audit.py")
st.title("Audit trail")
st.caption(
    "Append-only: the database refuses to change or remove an event. Actors are sign-in subjects (local:… is the "
    "single user of a loopback-only installation, cli:… the command line); cases appear by their pseudonymised key. "
    "Times are UTC."
)
action = st.selectbox("Action", ["every action", *ACTIONS], key="audit_action")
limit = st.number_input("Newest events shown", min_value=10, max_value=10_000, value=500, step=100)
try:
    with Session(engine()) as session:
        rows = list_events(session, int(limit), None if action == "every action" else action)
except NotPermittedError as error:
    st.error(str(error))
    st.stop()
except Exception as error:
    log.error("listing the audit trail failed: %s", type(error).__name__)
    st.error(DATABASE_DOWN)
    st.stop()
if not rows:
    st.info("No event of this kind yet.")
    st.stop()
st.dataframe([row.as_dict() for row in rows], hide_index=True, width="stretch")
audited_download(
    "Audit trail (CSV)",
    lambda: audit_csv(rows),
    "audit trail CSV",
    file_name="icca-audit.csv",
    mime="text/csv",
    help=f"The {len(rows)} events shown, one row each.",
)
st.caption(f"{Act.READ_AUDIT.value.capitalize()}: administrators only.")

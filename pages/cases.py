"""Cases: list saved cases, reopen one without re-running the model, delete with confirmation."""

from __future__ import annotations

import logging
from datetime import date

import streamlit as st
from sqlalchemy.orm import Session

from core import db
from core.access import Act
from core.analysis import outline_coverage
from core.audit import record_opened
from core.cases import (
    AnalysisSummary,
    CaseSummary,
    SavedCase,
    case_table_csv,
    list_case_summaries,
    load_saved_case,
    tumour_number,
)
from core.errors import StoredArrayDamagedError
from core.imaging import CtSlice, display_image
from core.outcomes import OutcomeError, follow_up_from_dates
from core.pdf_report import case_report_pdf
from pages.common import (
    DATABASE_DOWN,
    audited_download,
    engine,
    may,
    model_banner,
    require_shell,
    show_overlay,
    show_risks,
    show_sensitivity,
)

log = logging.getLogger(__name__)


def _number(solitary: bool | None) -> str:
    return tumour_number(solitary) or "—"


def case_row(case: CaseSummary) -> dict[str, object]:
    latest = case.latest
    return {
        "id": case.case_id,
        "case key": case.case_key,
        "saved (UTC)": case.created_at.strftime("%Y-%m-%d %H:%M"),
        "N": case.n_category,
        "T": case.t_category or "—",
        "size (mm)": f"{case.tumour_size_mm:g}" if case.tumour_size_mm else "—",
        "number": _number(case.solitary),
        "outline": f"{case.roi_area_mm2:,.0f} mm²" if case.roi_area_mm2 else f"{case.roi_area_px:,} px²",
        "DL mean patch prob.": f"{latest.dl_risk.probability:.0%}" if latest else "—",
        "clinical risk": f"{latest.clinical_risk.probability:.0%}" if latest and latest.clinical_risk else "n/a",
        "model": latest.model_name if latest else "—",
        "weights": ("patients" if latest.weights_warning is None else "NOT patients") if latest else "—",
        "outcome": case.outcome.status if case.outcome else "not recorded",
    }


def analysis_details(analyses: tuple[AnalysisSummary, ...]) -> None:
    """Every analysis of the case with the full identity of its model."""
    with st.expander(f"Analyses of this case ({len(analyses)}) and their models"):
        for a in analyses:
            st.markdown(
                f"**{a.created_at.strftime('%Y-%m-%d %H:%M')} UTC** · mean patch probability "
                f"{a.dl_risk.probability:.0%} over {a.dl_risk.n_patches:,} patches · model **{a.model_name}** "
                f"({a.training_data})  \nsha256 `{a.model_sha256}`"
            )


def show_case(saved: SavedCase) -> None:
    summary = saved.summary
    latest = summary.latest
    assert latest is not None  # load_saved_case returns only analysed cases
    ct = CtSlice(pixels=saved.pixels, is_hu=saved.is_hu, spacing_mm=saved.spacing_mm, source_kind=saved.source_kind)
    display = display_image(ct, saved.display_level, saved.display_width)
    model_banner(latest.model_name, latest.model_provenance, latest.weights_warning)
    st.markdown(
        f"**Clinical inputs:** N {summary.n_category} · T {summary.t_category or 'not entered'} · size "
        f"{f'{summary.tumour_size_mm:g} mm' if summary.tumour_size_mm else 'not entered'} · "
        f"{_number(summary.solitary) if summary.solitary is not None else 'number not entered'}"
        + (" · pixel spacing entered by the user" if saved.spacing_source == "user" else "")
        + (
            f" · PNG/JPEG export window L{saved.export_window[0]:g}/W{saved.export_window[1]:g} HU"
            if saved.export_window
            else ""
        )
    )
    coverage = outline_coverage(saved.pmap, saved.mask, ct.pixel_area_mm2)
    overlay_col, risks_col = st.columns([1, 1], gap="large")
    with overlay_col:
        show_overlay(display, saved.pmap, saved.mask, coverage, key=f"case_{summary.case_id}")
    with risks_col:
        show_risks(
            latest.dl_risk,
            "Shown from the database; the model was not re-run.",
            latest.weights_warning,
            latest.clinical_risk,
            summary.n_category,
            latest.clinical_model,
            spread=(latest.uncertainty or {}).get("analysis", {}).get("spread"),
        )
        sensitivity = (latest.uncertainty or {}).get("sensitivity")
        if sensitivity:
            show_sensitivity(sensitivity)
    analysis_details(summary.analyses)
    audited_download(
        "Case report (PDF)",
        lambda: case_report_pdf(saved),
        "case report PDF",
        case_key=summary.case_key,
        model_sha256=latest.model_sha256,
        file_name=f"icca-case-{summary.case_key}.pdf",
        mime="application/pdf",
        key=f"pdf_{summary.case_id}",
        help="One page for the chart and the tumour board: slice, overlay, measurements, both risks, model, notice.",
    )


def outcome_section(summary: CaseSummary) -> None:
    """Record the follow-up from dates; only the intervals are kept (see core.outcomes)."""
    key = f"{summary.case_id}"
    with st.expander("Follow-up outcome", expanded=True):
        if summary.outcome:
            st.markdown(f"**Recorded:** {summary.outcome.describe()}")
        else:
            st.caption("No follow-up recorded yet: this case does not enter a local validation.")
        today = date.today()
        surgery_col, event_col, when_col = st.columns(3)
        surgery = surgery_col.date_input(
            "Date of surgery", value=None, max_value=today, min_value=date(1990, 1, 1), key=f"surgery_{key}"
        )
        event = event_col.radio(
            "Follow-up", ["recurrence", "no recurrence so far"], key=f"event_{key}", horizontal=True
        )
        when = when_col.date_input(
            "Date of recurrence" if event == "recurrence" else "Last follow-up without recurrence",
            value=None,
            max_value=today,
            min_value=date(1990, 1, 1),
            key=f"when_{key}_{'recurrence' if event == 'recurrence' else 'follow_up'}",  # switching never relabels
        )
        st.caption(
            "Early recurrence means recurrence within 365 days of surgery; followed fewer than 365 days without "
            "recurrence is unknown, never negative. Only the intervals in days are stored, not the dates."
        )
        if st.button("Save outcome", key=f"save_outcome_{key}"):
            save_outcome(
                summary,
                surgery,
                when if event == "recurrence" else None,
                when if event != "recurrence" else None,
                today,
            )


def save_outcome(
    summary: CaseSummary, surgery: date | None, recurrence: date | None, last_follow_up: date | None, today: date
) -> None:
    try:
        follow_up = follow_up_from_dates(surgery, recurrence, last_follow_up, today)
    except OutcomeError as error:
        st.error(str(error))
        return
    try:
        with Session(engine()) as session:
            changed = db.record_outcome(session, summary.case_id, follow_up)
            session.commit()
    except LookupError:
        st.warning("This case was deleted meanwhile; nothing was recorded.")
        return
    except Exception as error:
        log.error("recording an outcome failed: %s", type(error).__name__)
        st.error(DATABASE_DOWN)
        return
    st.session_state["outcome_note"] = (
        f"Outcome recorded: {follow_up.describe()}" if changed else "That outcome was already recorded."
    )
    st.rerun()


def record_opening(summary: CaseSummary) -> None:
    """Audit a case once each time it is chosen, not on every rerun of the page."""
    if st.session_state.get("audited_open") == summary.case_id:
        return
    try:
        with Session(engine()) as session:
            record_opened(session, summary.case_id)
            session.commit()
    except Exception as error:  # the case is on screen already; the log says the audit failed
        log.error("auditing a case opening failed: %s", type(error).__name__)
        return
    st.session_state["audited_open"] = summary.case_id


def delete_section(summary: CaseSummary) -> None:
    with st.expander("Delete this case"):
        confirm = st.checkbox(
            f"Yes, delete case {summary.case_key} and its analyses for good.", key=f"confirm_{summary.case_id}"
        )
        if st.button("Delete case", disabled=not confirm, key=f"delete_{summary.case_id}"):
            try:
                with Session(engine()) as session:
                    deleted = db.delete_case(session, summary.case_id)
                    session.commit()
            except Exception as error:
                log.error("deleting a case failed: %s", type(error).__name__)
                st.error(DATABASE_DOWN)
                return
            if deleted is None:
                st.info(f"Case {summary.case_key} had already been deleted.")
            else:
                st.session_state["deleted_note"] = (
                    f"Deleted case {deleted.case_key}: its slice, outline, {deleted.analyses} analysis(es) and "
                    f"{deleted.outcomes} follow-up record(s). The audit trail keeps a record of the deletion."
                )
                st.rerun()


require_shell("pages/cases.py")
st.title("Saved cases")
if "deleted_note" in st.session_state:
    st.success(st.session_state.pop("deleted_note"))

try:
    with Session(engine()) as session:
        cases = list_case_summaries(session)
except Exception as error:
    log.error("listing cases failed: %s", type(error).__name__)
    st.error(DATABASE_DOWN)
    st.stop()

if not cases:
    st.info("No saved cases yet. Analyze a case and press Save case.")
    st.stop()

st.dataframe([case_row(c) for c in cases], hide_index=True, width="stretch")
audited_download(
    "Case table (CSV)",
    lambda: case_table_csv(cases),  # built on click, not on every rerun
    "case table CSV",
    file_name="icca-cases.csv",
    mime="text/csv",
    help="One row per case with its latest analysis and outcome; pseudonymised (case keys, no patient IDs, no dates of care).",
)
labels = {c.case_id: f"#{c.case_id} · {c.case_key} · {c.created_at.strftime('%Y-%m-%d %H:%M')}" for c in cases}
chosen = st.selectbox("Open case", list(labels), format_func=labels.__getitem__, key="open_case")

try:
    with Session(engine()) as session:
        saved = load_saved_case(session, int(chosen))
except StoredArrayDamagedError as error:
    # this case only: the table above and every other case still work, and it can still be deleted
    log.error("case %s has a damaged stored array (%s)", error.case_id, error.kind)
    st.error(str(error))
    if may(Act.DELETE):
        delete_section(next(c for c in cases if c.case_id == int(chosen)))
    st.stop()
except Exception as error:
    log.error("opening a case failed: %s", type(error).__name__)
    st.error("This case cannot be opened (database unavailable, or its stored arrays are damaged); others may open.")
    st.stop()
if saved is None:
    st.warning("This case was deleted meanwhile.")
    st.stop()
record_opening(saved.summary)
show_case(saved)
if "outcome_note" in st.session_state:
    st.success(st.session_state.pop("outcome_note"))
if may(Act.RECORD_OUTCOME):
    outcome_section(saved.summary)
if may(Act.DELETE):
    delete_section(saved.summary)

"""Cases: list saved cases, reopen one without re-running the model, delete with confirmation."""

from __future__ import annotations

import streamlit as st
from sqlalchemy.orm import Session

from core import db
from core.cases import load_saved_case
from core.imaging import CtSlice, display_image
from pages.common import engine, model_provenance_banner, require_shell, show_overlay, show_risks

require_shell()
st.title("Saved cases")

with Session(engine()) as session:
    rows = [
        {
            "id": case.id,
            "case key": case.case_key,
            "saved (UTC)": case.created_at.strftime("%Y-%m-%d %H:%M"),
            "N category": case.n_category,
            "DL risk": f"{case.analyses[-1].dl_probability:.0%}" if case.analyses else "—",
            "clinical risk": (
                f"{case.analyses[-1].clinical_probability:.0%}"
                if case.analyses and case.analyses[-1].clinical_probability is not None
                else "n/a"
            ),
            "ROI area": f"{case.roi_area_mm2:,.0f} mm²" if case.roi_area_mm2 else f"{case.roi_area_px:,} px²",
        }
        for case in db.list_cases(session)
    ]

if not rows:
    st.info("No saved cases yet. Analyze a case and press Save case.")
    st.stop()

st.dataframe(rows, hide_index=True, width="stretch")
labels = {row["id"]: f"#{row['id']} · {row['case key']} · {row['saved (UTC)']}" for row in rows}
chosen = st.selectbox("Open case", list(labels), format_func=labels.__getitem__, key="open_case")

with Session(engine()) as session:
    saved = load_saved_case(session, int(chosen))
if saved is None:
    st.warning("This case was deleted meanwhile.")
    st.stop()

ct = CtSlice(pixels=saved.pixels, is_hu=saved.is_hu, spacing_mm=saved.spacing_mm, source_kind=saved.source_kind)
display = display_image(ct, saved.display_level, saved.display_width)
model_provenance_banner(saved.model_name, saved.model_provenance, saved.synthetic)
show_overlay(display, saved.pmap, saved.mask, key=f"case_{chosen}")
show_risks(saved.dl_risk, saved.clinical_risk, saved.n_category, saved.synthetic)
st.caption(f"Model sha256 {saved.model_sha256[:12]} · shown from the database, the model was not re-run.")

with st.expander("Delete this case"):
    confirm = st.checkbox(f"Yes, delete case {saved.case_key} and its analyses for good.", key=f"confirm_{chosen}")
    if st.button("Delete case", disabled=not confirm, key=f"delete_{chosen}"):
        with Session(engine()) as session:
            db.delete_case(session, int(chosen))
            session.commit()
        st.success(f"Case {saved.case_key} deleted.")
        st.rerun()

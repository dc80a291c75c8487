"""Analyze: upload a CT slice, outline the tumour, run the model, compare risks, save."""

from __future__ import annotations

import logging

import numpy as np
import streamlit as st
from PIL import Image
from sqlalchemy.orm import Session
from streamlit_drawable_canvas import st_canvas

from core import db
from core.analysis import CaseAnalysis, ClinicalInputs, analysis_record, analyze_case, case_record
from core.errors import UserFacingError
from core.imaging import WINDOW_PRESETS, CtSlice, display_image, load_slice
from core.patches import plan_grid
from core.preprocess import PreprocessConfig
from core.pseudonym import case_key
from core.roi import canvas_view_for, mask_from_fabric
from pages.common import (
    DISPLAY_WIDTH_PX,
    content_hash,
    current_model,
    engine,
    model_provenance_banner,
    pseudonym_secret,
    require_shell,
    sample_session_state,
    show_overlay,
    show_risks,
)

DRAWING_MODES = {
    "Polygon (click vertices, click the first again to close)": "polygon",
    "Freehand": "freedraw",
    "Rectangle": "rect",
    "Circle": "circle",
}
MANUAL = "Manual"

require_shell()
st.title("Analyze a case")
model, model_problem = current_model()
if model is None:
    st.warning(f"{model_problem} You can still upload and outline a slice.")
cfg = model.preprocess if model else PreprocessConfig()

# ---- 1. the slice
upload_col, sample_col = st.columns([3, 1])
uploaded = upload_col.file_uploader(
    "CT slice (DICOM, PNG or JPEG)", key="upload", help="One axial slice, the one with the largest tumour area."
)
if uploaded is not None:
    data = uploaded.getvalue()
    if st.session_state.get("case_source", {}).get("hash") != content_hash(data):
        st.session_state["case_source"] = {"name": uploaded.name, "data": data, "hash": content_hash(data)}
        st.session_state.pop("roi_json", None)
if sample_col.button("Load sample case", help="A synthetic phantom CT with its outline, to try the flow."):
    st.session_state.update(sample_session_state())

source = st.session_state.get("case_source")
if not source:
    st.info("Upload a CT slice or load the sample case to begin.")
    st.stop()
try:
    ct: CtSlice = load_slice(source["data"], source["name"])
except UserFacingError as error:
    st.error(str(error))
    st.stop()

if ct.spacing_mm is None:
    st.info(
        "This image has no pixel spacing and no Hounsfield units (a PNG/JPEG export): it is used as already "
        "windowed, and areas are given in pixels."
    )

# ---- 2. display window
if ct.is_hu:
    preset = st.selectbox("Display window", [*WINDOW_PRESETS, MANUAL], key="window_preset")
    default_level, default_width = WINDOW_PRESETS.get(preset, (60.0, 160.0))
    if preset == MANUAL:
        wl, ww = st.columns(2)
        level = wl.number_input("Level (HU)", -1000.0, 3000.0, default_level, 10.0)
        width = ww.number_input("Width (HU)", 1.0, 4000.0, default_width, 10.0)
    else:
        level, width = default_level, default_width
    st.caption(
        "The display window changes only what you see; the model uses its own window "
        f"(L{cfg.window_level_hu:g} / W{cfg.window_width_hu:g} HU)."
    )
else:
    level, width = 127.5, 255.0
display = display_image(ct, level, width)

# ---- 3. outline
view = canvas_view_for(ct.shape, DISPLAY_WIDTH_PX)
mode_label = st.radio("Outline tool", list(DRAWING_MODES), horizontal=True, key="drawing_mode")
background = Image.fromarray(display).resize(view.canvas_size, Image.Resampling.BILINEAR)
canvas = st_canvas(
    fill_color="rgba(0, 255, 0, 0.15)",
    stroke_width=2,
    stroke_color="#00ff00",
    background_image=background,
    width=view.canvas_size[0],
    height=view.canvas_size[1],
    drawing_mode=DRAWING_MODES[mode_label],
    initial_drawing=st.session_state.get("roi_json") if st.session_state.get("sample_loaded") else None,
    key=f"canvas_{source['hash'][:12]}",
)
drawn = canvas.json_data if canvas is not None and canvas.json_data and canvas.json_data.get("objects") else None
roi_json = drawn or st.session_state.get("roi_json")
try:
    mask = mask_from_fabric(roi_json, view)
except UserFacingError as error:
    st.info(str(error))
    st.stop()

area_px = int(mask.sum())
area_text = f"{area_px * ct.pixel_area_mm2:,.0f} mm²" if ct.pixel_area_mm2 else f"{area_px:,} px² (no spacing)"
try:
    n_patches = len(plan_grid(mask, ct.spacing_mm, cfg))
    patch_text = f"{n_patches:,} patches ({cfg.describe()})"
except UserFacingError as error:
    n_patches, patch_text = 0, str(error)
st.markdown(f"**Outline:** {area_text} · {patch_text}")

# ---- 4. clinical inputs
with st.form("clinical"):
    c1, c2, c3, c4 = st.columns(4)
    patient_id = c1.text_input(
        "Hospital patient ID (optional)",
        type="password",
        help="Stored only as a keyed hash; leave empty for a random case key.",
    )
    n_category = c2.radio("UICC N category", ["N0", "N1", "unknown"], index=2, horizontal=True)
    t_category = c3.selectbox("UICC T category", ["unknown", "T1a", "T1b", "T2", "T3", "T4"])
    size_mm = c4.number_input("Tumour size (mm)", 0.0, 300.0, 0.0, 1.0, help="Largest diameter; 0 = not entered.")
    solitary = c4.selectbox("Tumour number", ["unknown", "solitary", "multiple"])
    run = st.form_submit_button("Analyze", type="primary", disabled=model is None or n_patches == 0)

signature = (source["hash"], content_hash(np.packbits(mask).tobytes()), model.sha256 if model else "", n_category)
if run and model is not None:
    bar = st.progress(0.0, text="Running the ResNet50 over the patch grid…")

    def report(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Patches analysed: {done:,} of {total:,}")

    try:
        result = analyze_case(ct, mask, model, n_category, progress=report)
    except UserFacingError as error:
        st.error(str(error))
        st.stop()
    bar.empty()
    st.session_state["result"] = {"signature": signature, "analysis": result}

stored = st.session_state.get("result")
if not stored or stored["signature"] != signature or model is None:
    st.stop()

analysis: CaseAnalysis = stored["analysis"]
st.divider()
model_provenance_banner(model.name, model.provenance, model.is_synthetic)
show_overlay(display, analysis.pmap, mask, key="analyze")
show_risks(analysis.dl_risk, analysis.clinical_risk, n_category, model.is_synthetic)
st.caption(f"Analysis time: {analysis.seconds:.1f} s for {analysis.dl_risk.n_patches} patches.")

if st.button("Save case", type="primary"):
    inputs = ClinicalInputs(
        n_category=n_category,
        t_category=None if t_category == "unknown" else t_category,
        tumour_size_mm=size_mm or None,
        solitary=None if solitary == "unknown" else solitary == "solitary",
    )
    key = case_key(patient_id or ct.patient_id, pseudonym_secret())
    new_case = case_record(ct, mask, key, inputs, (level, width))
    new_analysis = analysis_record(analysis, model)
    try:
        with Session(engine()) as session:
            saved = db.add_case(session, new_case, new_analysis)
            session.commit()
            st.success(f"Saved as case {saved.case_key} (#{saved.id}). Open it on the Cases page.")
    except Exception as error:  # a database failure must not lose the on-screen result
        # the type only: messages can carry SQL parameters, i.e. case data
        logging.getLogger(__name__).error("saving a case failed: %s", type(error).__name__)
        st.error("The case could not be saved (database unavailable or full); the result stays on screen, try again.")

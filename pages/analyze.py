"""Analyze: upload a CT slice, outline the tumour, run the model, compare risks, save.

Left: the slice, what the header could not tell (spacing, export window) and the outline.
Right: measurements, clinical inputs (live: changing N updates the clinical risk without
re-running the network), Analyze, the overlay and both risks, Save.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import streamlit as st
from PIL import Image
from sqlalchemy.orm import Session
from streamlit_drawable_canvas import st_canvas

from core.analysis import (
    CaseAnalysis,
    ClinicalInputs,
    analysis_record,
    analyze_case,
    case_record,
    clinical_risk_for,
    clinical_update,
)
from core.cases import save_case
from core.clinical import N_CHOICES, T_CATEGORIES, UNKNOWN_N
from core.errors import UserFacingError
from core.imaging import (
    WINDOW_PRESETS,
    CtSlice,
    analysis_blocker,
    calibrate,
    display_image,
    export_window_note,
    load_slice,
)
from core.modelcard import performance_sentence
from core.patches import plan_grid
from core.preprocess import PreprocessConfig
from core.pseudonym import case_key
from core.roi import canvas_view_for, mask_from_fabric
from models.checkpoint import LoadedModel
from pages.common import (
    CANVAS_WIDTH_PX,
    content_hash,
    current_model,
    engine,
    input_key,
    model_banner,
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
FIELD_NAMES = {
    "case_key": "patient ID (case key)",
    "n_category": "N category",
    "t_category": "T category",
    "tumour_size_mm": "size",
    "solitary": "number",
}
UNKNOWN = "unknown"
log = logging.getLogger(__name__)


def load_sample() -> None:
    """Button callback: the sample replaces any upload, and the uploader is emptied."""
    st.session_state.update(sample_session_state())
    st.session_state["uploader_nonce"] = st.session_state.get("uploader_nonce", 0) + 1


def clear_outline() -> None:
    """Button callback: forget the loaded outline and start a fresh, empty canvas."""
    st.session_state.pop("roi_json", None)
    st.session_state["sample_loaded"] = False
    st.session_state["canvas_nonce"] = st.session_state.get("canvas_nonce", 0) + 1


def calibration_inputs(ct: CtSlice, source_hash: str) -> CtSlice:
    """Ask for what the image cannot tell (pixel spacing; an export's window) and apply it."""
    if ct.spacing_mm is not None and ct.is_hu:
        return ct
    tag = source_hash[:12]
    if ct.is_raster:
        st.info(
            f"A {ct.source_kind.upper()} export has no pixel spacing and no Hounsfield units. Outlining works in "
            "pixels; to run the model, enter the export's pixel spacing and the window it was exported with "
            "(both are shown by the viewer that made it)."
        )
    else:
        st.warning(f"This DICOM slice has no usable pixel spacing: {ct.spacing_problem}. Areas are given in pixels.")
    cols = st.columns(3 if ct.is_raster else 1)
    spacing = cols[0].number_input(
        "Pixel spacing (mm/px)", min_value=0.01, max_value=10.0, value=None, step=0.01, format="%.4f", key=f"sp_{tag}"
    )
    window = None
    if ct.is_raster:
        level = cols[1].number_input(
            "Export window level (HU)", -2000.0, 4000.0, value=None, step=10.0, key=f"el_{tag}"
        )
        width = cols[2].number_input("Export window width (HU)", 1.0, 5000.0, value=None, step=10.0, key=f"ew_{tag}")
        window = (level, width) if level is not None and width is not None else None
    return calibrate(ct, spacing, window)


def display_window(ct: CtSlice, cfg: PreprocessConfig) -> tuple[float, float]:
    """The display window (level, width) in HU the surgeon picks; raster exports are shown as exported."""
    if ct.is_raster:
        return 127.5, 255.0
    preset = st.selectbox("Display window", [*WINDOW_PRESETS, MANUAL], key="window_preset")
    level, width = WINDOW_PRESETS.get(preset, (60.0, 160.0))
    if preset == MANUAL:
        wl, ww = st.columns(2)
        level = wl.number_input("Level (HU)", -1000.0, 3000.0, level, 10.0)
        width = ww.number_input("Width (HU)", 1.0, 4000.0, width, 10.0)
    st.caption(
        "The display window changes only what you see; the model uses its own window "
        f"(L{cfg.window_level_hu:g} / W{cfg.window_width_hu:g} HU)."
    )
    return level, width


def outline_mask(display: np.ndarray, ct: CtSlice, source_hash: str) -> np.ndarray | None:
    """The canvas over the slice; the drawn outline as a (rows, cols) bool mask, or ``None`` with a hint."""
    view = canvas_view_for(ct.shape, CANVAS_WIDTH_PX)
    mode_label = st.radio("Outline tool", list(DRAWING_MODES), horizontal=True, key="drawing_mode")
    # The canvas's toolbar floats above its top edge: keep it off the radio row.
    st.container(height=24, border=False)
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
        key=f"canvas_{source_hash[:12]}_{st.session_state.get('canvas_nonce', 0)}",
    )
    st.button(
        "Clear outline",
        on_click=clear_outline,
        help="Remove every outline, the sample's included (the canvas's own reset returns to the loaded outline).",
    )
    # json_data is the initial drawing until the canvas reports, then exactly what it holds:
    # a cleared canvas means no outline, never a stale one.
    try:
        return mask_from_fabric(canvas.json_data if canvas is not None else None, view)
    except UserFacingError as error:
        st.info(str(error))
        return None


def clinical_inputs_form(source_hash: str) -> tuple[str, ClinicalInputs]:
    """Live clinical inputs (no form: what is on screen is what Save stores). Returns (patient ID, inputs)."""
    patient_id = st.text_input(
        "Hospital patient ID (optional)",
        type="password",
        key=input_key("patient_id", source_hash),
        help="Stored only as a keyed hash; leave empty for a random case key.",
    )
    c1, c2 = st.columns(2)
    n_category = c1.radio(
        "UICC N category",
        list(N_CHOICES),
        index=N_CHOICES.index(UNKNOWN_N),
        horizontal=True,
        key=input_key("n", source_hash),
    )
    t_category = c2.selectbox("UICC T category", [UNKNOWN, *T_CATEGORIES], key=input_key("t", source_hash))
    c3, c4 = st.columns(2)
    size_mm = c3.number_input(
        "Tumour size (mm)",
        1.0,
        300.0,
        value=None,
        step=1.0,
        key=input_key("size", source_hash),
        help="Largest diameter; empty = not entered.",
    )
    number = c4.selectbox("Tumour number", [UNKNOWN, "solitary", "multiple"], key=input_key("number", source_hash))
    return patient_id, ClinicalInputs(
        n_category=n_category,
        t_category=None if t_category == UNKNOWN else t_category,
        tumour_size_mm=size_mm or None,
        solitary=None if number == UNKNOWN else number == "solitary",
    )


def run_analysis(ct: CtSlice, mask: np.ndarray, model: LoadedModel) -> CaseAnalysis | None:
    """Run the model with a progress bar; ``None`` (and a sentence on the page) when it cannot."""
    bar = st.progress(0.0, text="Running the ResNet50 over the patch grid…")

    def report(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Patches analysed: {done:,} of {total:,}")

    try:
        return analyze_case(ct, mask, model, progress=report)
    except UserFacingError as error:
        st.error(str(error))
        return None
    finally:
        bar.empty()


def save(
    ct: CtSlice,
    mask: np.ndarray,
    model: LoadedModel,
    analysis: CaseAnalysis,
    signature: tuple,
    patient_id: str,
    inputs: ClinicalInputs,
    window: tuple[float, float],
) -> None:
    """Save what is on screen once; a second press updates the same case or says it is saved."""
    patient_digest = hashlib.sha256(patient_id.encode()).hexdigest()
    previous = st.session_state.get("saved")
    same_analysis = bool(previous) and previous["signature"] == signature
    try:
        # the same patient ID keeps the key it was saved under (a random R- key included)
        same_patient = same_analysis and previous["patient"] == patient_digest
        key = previous["case_key"] if same_patient else case_key(patient_id or ct.patient_id, pseudonym_secret())
        with Session(engine()) as session:
            outcome = save_case(
                session,
                case_record(ct, mask, key, inputs, window),
                analysis_record(analysis, model, clinical_risk_for(inputs.n_category)),
                clinical_update(inputs),
                previous["case_id"] if same_analysis else None,
            )
            session.commit()
    except UserFacingError as error:
        st.error(f"{error} The result stays on screen.")
        return
    except Exception as error:  # a database failure must not lose the on-screen result
        log.error("saving a case failed: %s", type(error).__name__)  # the type only: messages can carry data
        st.error("The case could not be saved (database unavailable or full); the result stays on screen, try again.")
        return
    st.session_state["saved"] = {
        "signature": signature,
        "patient": patient_digest,
        "case_id": outcome.case_id,
        "case_key": outcome.case_key,
        "inputs": inputs,
    }
    if outcome.action == "saved":
        st.success(f"Saved as case {outcome.case_key} (#{outcome.case_id}). Open it on the Cases page.")
    elif outcome.action == "updated":
        changed = ", ".join(FIELD_NAMES.get(name, name) for name in outcome.changed)
        st.success(f"Updated case {outcome.case_key} (#{outcome.case_id}): {changed} changed.")
    else:
        st.info(f"Already saved as case {outcome.case_key} (#{outcome.case_id}); nothing has changed since.")


# ---------------------------------------------------------------- the page

require_shell("pages/analyze.py")
st.title("Analyze a case")
model, model_problem = current_model()
if model is None:
    st.warning(f"{model_problem} You can still upload and outline a slice.")
cfg = model.preprocess if model else PreprocessConfig()
left, right = st.columns([11, 9], gap="large")

with left:
    upload_col, sample_col = st.columns([3, 1])
    uploaded = upload_col.file_uploader(
        "CT slice (DICOM, PNG or JPEG)",
        key=f"upload_{st.session_state.get('uploader_nonce', 0)}",
        help="One axial slice, the one with the largest tumour area.",
    )
    sample_col.button(
        "Load sample case", on_click=load_sample, help="A synthetic phantom CT with its outline, to try the flow."
    )
    if uploaded is not None:
        data = uploaded.getvalue()
        if st.session_state.get("case_source", {}).get("hash") != content_hash(data):
            st.session_state["case_source"] = {"name": uploaded.name, "data": data, "hash": content_hash(data)}
            st.session_state.pop("roi_json", None)
            st.session_state["sample_loaded"] = False
    source = st.session_state.get("case_source")
    if not source:
        st.info("Upload a CT slice or load the sample case to begin.")
        st.stop()
    try:
        raw = load_slice(source["data"], source["name"])
        ct = calibration_inputs(raw, source["hash"])
    except UserFacingError as error:
        st.error(str(error))
        st.stop()
    window = display_window(raw, cfg)
    display = display_image(raw, *window)
    mask = outline_mask(display, raw, source["hash"])

blocker = analysis_blocker(ct, cfg) if model else model_problem
with right:
    n_patches = 0
    if mask is not None:
        area_px = int(mask.sum())
        area = f"{area_px * ct.pixel_area_mm2:,.0f} mm²" if ct.pixel_area_mm2 else f"{area_px:,} px² (no spacing)"
        try:
            n_patches = len(plan_grid(mask, ct.spacing_mm, cfg)) if blocker is None else 0
            patches = f"{n_patches:,} patches ({cfg.describe()})" if blocker is None else "patches: not yet (see below)"
        except UserFacingError as error:
            patches = str(error)
        st.markdown(f"**Outline:** {area} · {patches}")
    if blocker and model is not None:
        st.warning(blocker)
    note = export_window_note(ct, cfg)
    if note:
        st.caption(note)
    patient_id, inputs = clinical_inputs_form(source["hash"])
    ready = model is not None and mask is not None and blocker is None and n_patches > 0
    run = st.button("Analyze", type="primary", disabled=not ready, key="analyze")
    if mask is None:
        st.stop()
    signature = (
        source["hash"],
        ct.spacing_mm,
        ct.export_window,
        content_hash(np.packbits(mask).tobytes()),
        model.sha256 if model else "",
    )
    if run and ready:
        result = run_analysis(ct, mask, model)
        if result is not None:
            st.session_state["result"] = {"signature": signature, "analysis": result}
    stored = st.session_state.get("result")
    if not stored or stored["signature"] != signature or model is None:
        st.stop()
    analysis: CaseAnalysis = stored["analysis"]
    model_banner(model.name, model.provenance, model.weights_warning)
    show_overlay(display, analysis.pmap, mask, analysis.coverage, key="analyze")
    show_risks(
        analysis.dl_risk,
        performance_sentence(model.card),
        model.weights_warning,
        clinical_risk_for(inputs.n_category),
        inputs.n_category,
    )
    st.caption(f"Analysis time: {analysis.seconds:.1f} s for {analysis.dl_risk.n_patches:,} patches.")
    if st.button("Save case", type="primary", key="save"):
        save(ct, mask, model, analysis, signature, patient_id, inputs, window)
    saved = st.session_state.get("saved")
    changed_id = saved and saved["patient"] != hashlib.sha256(patient_id.encode()).hexdigest()
    if saved and saved["signature"] == signature and (saved["inputs"] != inputs or changed_id):
        st.caption(f"Changed since it was saved as case {saved['case_key']}: press Save case to update it.")

"""Analyze: upload a CT (files, ZIP, folder, or a PNG/JPEG export), pick the series and slice,
outline or import the tumour, run the model, compare risks, save.

Left: upload, series and slice, what the header could not tell (spacing, export window),
the outline (drawn or imported from SEG / NIfTI / PNG).
Right: measurements, clinical inputs (live: changing N updates the clinical risk without
re-running the network), Analyze, the overlay and both risks, Save.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import streamlit as st
from PIL import Image
from sqlalchemy.orm import Session
from streamlit.delta_generator import DeltaGenerator
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.scriptrunner import get_script_run_ctx
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
from core.audit import record_analysed
from core.cases import save_case
from core.clinical import N_CHOICES, T_CATEGORIES, UNKNOWN_N
from core.clinical_refit import ClinicalModelInUse
from core.engine import Engine, EngineFault, engine_of
from core.errors import OUT_OF_MEMORY_SENTENCE, UserFacingError, out_of_memory
from core.imaging import (
    CtSlice,
    analysis_blocker,
    calibrate,
    display_image,
    export_window_note,
    lossy_note,
    window_presets,
)
from core.inference import ProgressFn
from core.modelcard import performance_sentence
from core.outline import count_regions, keep_largest_region, mask_to_fabric, measure_outline
from core.preprocess import PreprocessConfig
from core.pseudonym import case_key
from core.roi import FABRIC_VERSION, CanvasView, canvas_view_for, mask_from_fabric
from core.segmentation import export_png, export_seg, read_outline
from core.series import (
    SeriesSlice,
    SeriesSummary,
    UploadContents,
    UploadScan,
    load_series_slice,
    no_ct_sentence,
    read_upload,
    series_label,
)
from core.series import upload_digest as upload_hash
from core.uncertainty import OutlineSensitivity, outline_sensitivity
from models.checkpoint import LoadedModel
from pages.common import (
    CANVAS_WIDTH_PX,
    audited_download,
    clinical_model_now,
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
    show_sensitivity,
)
from pages.common import engine as case_database  # run_analysis names its inference engine `engine`

DRAWING_MODES = {"Polygon": "polygon", "Freehand": "freedraw", "Rectangle": "rect", "Circle": "circle"}
MANUAL = "Manual"
UPLOAD_MODES = ("Files or a ZIP", "A folder")
FIELD_NAMES = {
    "case_key": "patient ID (case key)",
    "n_category": "N category",
    "t_category": "T category",
    "tumour_size_mm": "size",
    "solitary": "number",
    "uncertainty": "outline sensitivity",
    "clinical_model": "clinical model (another is in use)",
}
UNKNOWN = "unknown"
log = logging.getLogger(__name__)
T = TypeVar("T")


def load_sample() -> None:
    """Button callback: the sample replaces any upload, and the uploader is emptied."""
    st.session_state.update(sample_session_state())
    st.session_state["uploader_nonce"] = st.session_state.get("uploader_nonce", 0) + 1


def clear_outline(slot: str) -> None:
    """Button callback: forget the slice's loaded outline and start a fresh, empty canvas."""
    st.session_state.setdefault("initial_outlines", {}).pop(slot, None)
    st.session_state["canvas_nonce"] = st.session_state.get("canvas_nonce", 0) + 1


def set_outline(slot: str, mask: np.ndarray, view: CanvasView) -> None:
    """Put a mask on the slice's canvas as editable polygons (imported, or its largest region kept)."""
    st.session_state.setdefault("initial_outlines", {})[slot] = {
        "version": FABRIC_VERSION,
        "objects": mask_to_fabric(mask, view),
    }
    st.session_state["canvas_nonce"] = st.session_state.get("canvas_nonce", 0) + 1


def upload_widget() -> None:
    """The uploader (files, one ZIP, or a folder) and the sample button; a new upload replaces the case.

    Once a case is loaded the uploader folds away, so the slice and the canvas fit on one screen.
    """
    source = st.session_state.get("case_source")
    upload_col, sample_col = st.columns([3, 1], vertical_alignment="top")
    sample_col.button(
        "Load sample", on_click=load_sample, help="A synthetic phantom CT with its outline, to try the flow."
    )
    box = upload_col.expander(f"Loaded: {source['name']} · upload another CT", expanded=False) if source else upload_col
    with box:
        key, uploaded = upload_files()
    if not uploaded:
        return
    files = [(item.name, item.getvalue()) for item in uploaded]
    # Streamlit would keep an upload (up to the 1 GB cap) until the session ends: in its upload store,
    # and in the widget's state, which a run ending in st.stop() (this page's usual end) never
    # clears. Let go of both now that the bytes are read, and show an empty uploader from now on.
    release_uploads([item.file_id for item in uploaded])
    del st.session_state[key]
    st.session_state["uploader_nonce"] = st.session_state.get("uploader_nonce", 0) + 1
    digest = upload_hash(files)
    if st.session_state.get("case_source", {}).get("hash") != digest:  # the same CT again keeps its outline
        name = files[0][0] if len(files) == 1 else f"{len(files)} files"
        st.session_state["case_source"] = {"name": name, "files": files, "hash": digest}
        st.session_state.pop("initial_outlines", None)
        st.session_state.pop("imported", None)
    st.rerun()  # the uploader folds away around the new case


def release_uploads(file_ids: list[str]) -> None:
    """Drop uploaded files from Streamlit's in-memory upload store once the page has read them.

    Streamlit 1.67 frees an upload only when the user removes it from the widget or the session
    ends (a widget that disappears keeps its files); ``st.chat_input`` frees its own files this
    way after reading them. Other stores (a custom ``UploadedFileManager``) are left alone.
    """
    ctx = get_script_run_ctx()
    if ctx is None or not isinstance(ctx.uploaded_file_mgr, MemoryUploadedFileManager):
        return
    for file_id in file_ids:
        ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=file_id)


def loaded_slice(scan: UploadScan, upload: str, series_key: str, index: int) -> SeriesSlice:
    """The decoded slice on screen, kept across reruns (a widget change must not decode it again)."""
    where = (upload, series_key, index)
    cached = st.session_state.get("slice_cache")
    if cached is None or cached[0] != where:
        cached = (where, load_series_slice(scan, series_key, index))
        st.session_state["slice_cache"] = cached  # only the slice on screen: memory stays bounded
    return cached[1]


def upload_files() -> tuple[str, list]:
    """The upload mode (files and ZIPs, or a folder) and its uploader; (the uploader's key, the uploaded files)."""
    mode = st.radio("Upload", UPLOAD_MODES, horizontal=True, key="upload_mode", label_visibility="collapsed")
    key = f"upload_{mode}_{st.session_state.get('uploader_nonce', 0)}"
    uploaded = st.file_uploader(
        "CT: DICOM files, a ZIP or a folder from the PACS; or one PNG/JPEG export",
        accept_multiple_files="directory" if mode == UPLOAD_MODES[1] else True,
        key=key,
        help="Several series may be in one upload; you pick the plain CT series and the slice next.",
    )
    return key, uploaded or []


def case_contents(source: dict) -> UploadContents:
    """The upload read once (its series' scan, or a decoded export); its raw bytes then leave the session.

    The contents replace ``source["files"]``: only what a slider move or an outline import can
    still need stays in memory. A refusal is kept as its sentence, so every rerun shows it.

    Raises:
        UserFacingError: the upload cannot be read.
    """
    if "contents" in source:
        return source["contents"]
    if "error" in source:
        raise UserFacingError(source["error"])
    cached = st.session_state.pop("scan", None)  # the sample button's scan: not scanned twice
    try:
        if cached is not None and cached["hash"] == source["hash"]:
            contents = UploadContents(scan=cached["scan"].without_unused_bytes())
        else:
            contents = read_upload(source["files"])
    except UserFacingError as error:
        source["error"] = str(error)
        raise
    finally:
        source.pop("files", None)
    source["contents"] = contents
    return contents


def choose_slice(source: dict) -> tuple[CtSlice, SeriesSummary | None, str]:
    """The slice to outline: a PNG/JPEG export as it is, or a series and slice picked from the upload.

    Returns:
        (slice, its series or ``None`` for an export, the outline slot: "hash:series:index").
    """
    contents = case_contents(source)
    if contents.export is not None:
        return contents.export, None, f"{source['hash'][:12]}:export:0"
    scan = contents.scan
    choices = scan.ct_series
    if not choices:
        raise UserFacingError(no_ct_sentence(scan))
    labels = {s.key: series_label(s) for s in choices}
    key = st.selectbox("Series", list(labels), format_func=labels.__getitem__, key=f"series_{source['hash'][:12]}")
    series = scan.get(key)
    if series.contrast_warning():
        st.warning(series.contrast_warning())
    for note in series.notes:
        st.caption(note)
    index = 0
    if series.slice_count > 1:
        slider_key = f"slice_{source['hash'][:12]}_{key}"
        st.session_state.setdefault(slider_key, series.slice_count // 2 + 1)
        number = st.slider("Slice", 1, series.slice_count, key=slider_key, label_visibility="collapsed")
        index = number - 1
    loaded = loaded_slice(scan, source["hash"], key, index)
    position = f", at {loaded.position_mm:+.1f} mm along the stack" if loaded.position_mm is not None else ""
    st.caption(f"Slice {index + 1} of {series.slice_count}{position}.")
    return loaded.ct, series, f"{source['hash'][:12]}:{key}:{index}"


def import_outline(source: dict, series: SeriesSummary | None, ct: CtSlice, slot: str) -> None:
    """Import a DICOM SEG, NIfTI or PNG mask as the outline, on the slice with the largest tumour area."""
    scan = case_contents(source).scan if series is not None else None
    in_upload = {f"{o.name} ({o.what})": o.file_index for o in scan.segmentations} if scan else {}
    tag = source["hash"][:12]
    with st.expander("Import an outline (DICOM SEG, NIfTI or PNG mask)", expanded=bool(in_upload)):
        if in_upload:
            st.selectbox("An outline in this upload", ["—", *in_upload], key=f"outline_pick_{tag}")
        st.file_uploader("or an outline file", key=f"outline_file_{tag}")
        segments = st.session_state.get("import_segments")
        if segments and segments["tag"] == tag and len(segments["options"]) > 1:
            # a Slicer SEG often holds the liver too; a label map several labels: the surgeon says which
            st.selectbox(
                "Segment used as the tumour (press Import outline again to change it)",
                list(segments["options"]),
                format_func=segments["options"].__getitem__,
                key=f"outline_segment_{tag}",
            )
        st.button("Import outline", key="import_outline", on_click=apply_import, args=(source, series, ct, slot))
        if st.session_state.get("import_error"):
            st.error(st.session_state.pop("import_error"))


def apply_import(source: dict, series: SeriesSummary | None, ct: CtSlice, slot: str) -> None:
    """Button callback (runs before the widgets, so it may move the slice slider): place the outline."""
    tag = source["hash"][:12]
    file = st.session_state.get(f"outline_file_{tag}")
    picked = st.session_state.get(f"outline_pick_{tag}", "—")
    try:
        if file is not None:
            name, data = file.name, file.getvalue()
        elif picked != "—":
            scan = case_contents(source).scan
            index = {f"{o.name} ({o.what})": o.file_index for o in scan.segmentations}[picked]
            name, data = picked, scan.file_bytes(index)
        else:
            raise UserFacingError("Choose an outline file, or one from this upload, then press Import outline.")
        digest = content_hash(data)
        previous = st.session_state.get("import_segments") or {}
        # the segment picked applies to the same file only (by content: Slicer names every export alike)
        same_file = previous.get("tag") == tag and previous.get("digest") == digest
        segment = st.session_state.get(f"outline_segment_{tag}") if same_file else None
        imported = read_outline(name, data, series or ct, ct.shape, segment=segment)
    except UserFacingError as error:
        st.session_state["import_error"] = str(error)
        return
    view = canvas_view_for(ct.shape, CANVAS_WIDTH_PX)
    st.session_state["imported"] = imported.how
    if imported.segments == () and imported.how == "PNG mask":  # a 2-D mask: it belongs to the slice on screen
        slots = {slot: imported.mask(0)}
    else:
        if series is not None and series.slice_count > 1:
            st.session_state[f"slice_{tag}_{series.key}"] = imported.default_index + 1
        base = slot.rsplit(":", 1)[0]
        slots = {f"{base}:{index}": mask for index, mask in imported.masks.items()}
    if previous.get("tag") == tag:  # slices the previous import outlined and this one does not: no stale outline
        for stale in set(previous.get("slots", ())) - set(slots):
            clear_outline(stale)
    for target, mask in slots.items():
        set_outline(target, mask, view)
    st.session_state["import_segments"] = {
        "tag": tag,
        "digest": digest,
        "options": {s.number: s.title for s in imported.segments},
        "slots": list(slots),
    }
    if imported.segment is not None:
        st.session_state[f"outline_segment_{tag}"] = imported.segment


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
    presets = window_presets(ct)
    preset = st.selectbox(
        "Display window",
        [*presets, MANUAL],
        key="window_preset",
        help="Changes only what you see; the model uses its own window "
        f"(L{cfg.window_level_hu:g} / W{cfg.window_width_hu:g} HU).",
    )
    level, width = presets.get(preset, (60.0, 160.0))
    if preset == MANUAL:
        wl, ww = st.columns(2)
        level = wl.number_input("Level (HU)", -1000.0, 3000.0, level, 10.0)
        width = ww.number_input("Width (HU)", 1.0, 4000.0, width, 10.0)
    return level, width


def outline_mask(display: np.ndarray, ct: CtSlice, slot: str, tool_place: DeltaGenerator) -> np.ndarray | None:
    """The canvas over the slice; the outline as a (rows, cols) bool mask, or ``None`` with a hint.

    Several closed shapes make one outline (their union). The tool picker goes in ``tool_place``.
    """
    view = canvas_view_for(ct.shape, CANVAS_WIDTH_PX)
    mode_label = tool_place.selectbox(
        "Outline tool",
        list(DRAWING_MODES),
        key="drawing_mode",
        help="Polygon: click the vertices, then click the first one again to close it. Several shapes make "
        "one outline.",
    )
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
        initial_drawing=st.session_state.get("initial_outlines", {}).get(slot),
        key=f"canvas_{slot}_{st.session_state.get('canvas_nonce', 0)}",
    )
    # json_data is the initial drawing until the canvas reports, then exactly what it holds:
    # a cleared canvas means no outline, never a stale one.
    try:
        mask = mask_from_fabric(canvas.json_data if canvas is not None else None, view)
    except UserFacingError as error:
        st.info(str(error))
        mask = None
    clear_col, largest_col = st.columns(2)
    clear_col.button(
        "Clear outline",
        on_click=clear_outline,
        args=(slot,),
        help="Remove every outline on this slice, an imported one included (the canvas's own reset returns to it).",
    )
    if mask is not None and count_regions(mask) > 1:
        largest_col.button(
            "Keep the largest region",
            on_click=set_outline,
            args=(slot, keep_largest_region(mask), view),
            help="Drop every separate region but the largest.",
        )
    return mask


def show_measurements(mask: np.ndarray, ct: CtSlice, cfg: PreprocessConfig, blocker: str | None) -> int:
    """Area (mm²), largest diameter (mm), regions and the model's patch count; returns the count."""
    facts = measure_outline(mask, ct.spacing_mm, cfg if blocker is None else None)
    area = f"{facts.area_mm2:,.0f} mm²" if facts.area_mm2 is not None else f"{facts.area_px:,} px² (no spacing)"
    diameter = (
        f"{facts.max_diameter_mm:.1f} mm" if facts.max_diameter_mm is not None else f"{facts.max_diameter_px:.0f} px"
    )
    regions = "" if facts.regions == 1 else f" · {facts.regions} regions"
    patches = f"{facts.patches:,} patches" if facts.patches is not None else "patches: not yet (see below)"
    st.markdown(f"**Outline:** {area} · largest diameter {diameter}{regions} · {patches}", help=cfg.describe())
    if facts.warning:
        st.warning(facts.warning)
    return facts.patches or 0


def export_buttons(mask: np.ndarray, ct: CtSlice) -> None:
    """Download the outline as DICOM SEG (referencing its source slice, for 3D Slicer) and as PNG."""
    seg_col, png_col = st.columns(2)
    ref = ct.source_ref
    # a SEG needs the slice's frame of reference (export_seg refuses without one): no button that cannot work
    if ref is not None and ref.geometry is not None and not ref.frame_of_reference_uid:
        seg_col.caption(
            "No DICOM SEG export: this slice has no frame of reference (FrameOfReferenceUID), which a SEG needs "
            "to be placed on the series; the PNG export works."
        )
    elif ref is not None and ref.geometry is not None:
        audited_download(
            "Outline as DICOM SEG",
            lambda: export_seg(mask, ct.source_ref),
            "outline as DICOM SEG",
            where=seg_col,
            file_name="outline-seg.dcm",
            mime="application/dicom",
            help="A binary DICOM SEG referencing this slice; 3D Slicer loads it onto the series.",
        )
    audited_download(
        "Outline as PNG",
        lambda: export_png(mask),
        "outline as PNG",
        where=png_col,
        file_name="outline.png",
        mime="image/png",
    )


def clinical_inputs_form(source_hash: str) -> tuple[str, ClinicalInputs]:
    """Live clinical inputs (no form: what is on screen is what Save stores). Returns (patient ID, inputs)."""
    c0, c1 = st.columns(2)
    patient_id = c0.text_input(
        "Hospital patient ID (optional)",
        type="password",
        key=input_key("patient_id", source_hash),
        help="Stored only as a keyed hash; leave empty for a random case key.",
    )
    n_category = c1.radio(
        "UICC N category",
        list(N_CHOICES),
        index=N_CHOICES.index(UNKNOWN_N),
        horizontal=True,
        key=input_key("n", source_hash),
    )
    c2, c3, c4 = st.columns(3)
    t_category = c2.selectbox("UICC T category", [UNKNOWN, *T_CATEGORIES], key=input_key("t", source_hash))
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


def evaluations_text(model: LoadedModel, done: int, total: int) -> str:
    """Progress in (patch, network) evaluations: with K fold networks each patch is evaluated K times."""
    k = len(model.ensemble)
    unit = f"patch evaluations ({k} networks per patch)" if k > 1 else "patches"
    return f"{unit.capitalize()}: {done:,} of {total:,}"


def with_progress(start_text: str, prefix: str, model: LoadedModel, run: Callable[[ProgressFn], T]) -> T | None:
    """``run(report)`` under a progress bar of patch evaluations; ``None`` (and its sentence) on a user-facing error."""
    bar = st.progress(0.0, text=start_text)

    def report(done: int, total: int) -> None:
        bar.progress(done / total, text=prefix + evaluations_text(model, done, total))

    try:
        return run(report)
    except UserFacingError as error:
        st.error(str(error))
        return None
    except EngineFault:  # an engine this request held but the model no longer runs: none to give way to
        log.warning("an engine failed on a request and had none to give way to", exc_info=True)
        st.error("The inference engine failed on this request (the reason is in the log); press Analyze again.")
        return None
    except Exception as error:
        if not out_of_memory(error):
            raise
        st.error(OUT_OF_MEMORY_SENTENCE)  # the engine is left as it was: the next try may fit
        return None
    finally:
        bar.empty()


def run_analysis(ct: CtSlice, mask: np.ndarray, model: LoadedModel, engine: Engine) -> CaseAnalysis | None:
    """Run the model with a progress bar; ``None`` (and a sentence on the page) when it cannot. Audited."""
    result = with_progress(
        "Running the ResNet50 over the patch grid…",
        "",
        model,
        lambda report: analyze_case(ct, mask, model, engine=engine, progress=report),
    )
    if result is not None:
        try:
            with Session(case_database()) as session:
                record_analysed(session, model.sha256, ct.pixels, result.dl_risk.n_patches)
                session.commit()
        except Exception as error:  # the result stays on screen; the log says the audit failed
            log.error("auditing an analysis failed: %s", type(error).__name__)
    return result


def run_sensitivity(
    ct: CtSlice, mask: np.ndarray, model: LoadedModel, engine: Engine | None
) -> OutlineSensitivity | None:
    """The risk with the outline 1 and 2 mm tighter and wider, with a progress bar; ``None`` when it cannot run.

    ``engine`` is the one that ran the analysis: its "as drawn" row is then the number shown
    above (and its patches come from the cache), even if a faster engine was installed since.
    """
    return with_progress(
        "Scoring the patches the tighter and wider outlines add…",
        "New: ",
        model,
        lambda report: outline_sensitivity(ct, mask, model, engine=engine, progress=report),
    )


ENGINE_CHANGED = "The engine of this analysis has stopped working since; press Analyze again to see the sensitivity."


def answers_changed(stored: dict, model: LoadedModel) -> bool:
    """Whether a sensitivity table now would run on another engine than the analysis on screen did.

    A set-aside engine's work goes to the model's engine (``score_cells``): the same numbers when
    that engine took over during the analysis, other numbers when the analysis ended before.
    """
    engine = stored.get("engine")
    return engine is not None and engine.set_aside and stored["analysis"].engine != engine_of(model).name


def sensitivity_section(ct: CtSlice, mask: np.ndarray, model: LoadedModel, stored: dict) -> None:
    """Outline sensitivity on request (it runs the patches the wider outlines add), then its table."""
    engine = stored.get("engine")
    if stored.get("sensitivity") is None and answers_changed(stored, model):
        st.info(ENGINE_CHANGED)
        return
    if stored.get("sensitivity") is None and st.button(
        "Outline sensitivity (±1 and ±2 mm)",
        key="sensitivity",
        help="Recompute the deep-learning number with the outline eroded and dilated by 1 and 2 mm "
        "(patches already scored are reused).",
    ):
        stored["sensitivity"] = run_sensitivity(ct, mask, model, engine)
        if answers_changed(stored, model):  # its engine gave way while the table ran: not the risk's engine
            stored["sensitivity"] = None
            st.info(ENGINE_CHANGED)
            return
    if stored.get("sensitivity") is not None:
        show_sensitivity(stored["sensitivity"].to_dict())


def save(
    ct: CtSlice,
    mask: np.ndarray,
    model: LoadedModel,
    analysis: CaseAnalysis,
    sensitivity: OutlineSensitivity | None,
    signature: tuple,
    patient_id: str,
    inputs: ClinicalInputs,
    window: tuple[float, float],
    clinical: ClinicalModelInUse,
) -> None:
    """Save what is on screen once (with the clinical model on screen); a second press updates the same case."""
    patient_digest = hashlib.sha256(patient_id.encode()).hexdigest()
    previous = st.session_state.get("saved")
    same_analysis = bool(previous) and previous["signature"] == signature
    try:
        # the same patient ID keeps the key it was saved under (a random R- key included)
        same_patient = same_analysis and previous["patient"] == patient_digest
        secret = pseudonym_secret()
        key = previous["case_key"] if same_patient else case_key(patient_id or ct.patient_id, secret)
        with Session(engine()) as session:
            outcome = save_case(
                session,
                case_record(ct, mask, key, inputs, window, secret),
                analysis_record(analysis, model, clinical_risk_for(inputs.n_category, clinical), sensitivity, clinical),
                clinical_update(inputs, clinical),
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
st.markdown("## Analyze a case")
model, model_problem = current_model()
if model is None:
    st.warning(f"{model_problem} You can still upload and outline a slice.")
cfg = model.preprocess if model else PreprocessConfig()
left, right = st.columns([5, 7], gap="large")

with left:
    upload_widget()
    source = st.session_state.get("case_source")
    if not source:
        st.info("Upload a CT (files, a ZIP or a folder) or load the sample case to begin.")
        st.stop()
    try:
        raw, series, slot = choose_slice(source)
        ct = calibration_inputs(raw, source["hash"])
    except UserFacingError as error:
        st.error(str(error))
        st.stop()
    if lossy_note(raw):
        st.caption(lossy_note(raw))
    window_col, tool_col = st.columns(2)
    with window_col:
        window = display_window(raw, cfg)
    display = display_image(raw, *window)
    mask = outline_mask(display, raw, slot, tool_col)
    import_outline(source, series, raw, slot)
    if st.session_state.get("imported"):
        st.caption(f"Imported outline: {st.session_state['imported']}. Edit it on the canvas like a drawn one.")

blocker = analysis_blocker(ct, cfg) if model else model_problem
with right:
    n_patches = show_measurements(mask, ct, cfg, blocker) if mask is not None else 0
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
        slot,
        ct.spacing_mm,
        ct.export_window,
        content_hash(np.packbits(mask).tobytes()),
        model.sha256 if model else "",
    )
    if run and ready:
        engine_now = engine_of(model)  # the background may install a faster one later: keep this one
        result = run_analysis(ct, mask, model, engine_now)
        if result is not None:
            st.session_state["result"] = {"signature": signature, "analysis": result, "engine": engine_now}
    stored = st.session_state.get("result")
    if not stored or stored["signature"] != signature or model is None:
        export_buttons(mask, raw)
        st.stop()
    analysis: CaseAnalysis = stored["analysis"]
    if model.weights_warning is None:  # otherwise the warning sits with the risk itself
        model_banner(model.name, model.provenance, None)
    clinical_model, clinical_problem = clinical_model_now()
    overlay_col, risks_col = st.columns([1, 1])
    with overlay_col:
        show_overlay(display, analysis.pmap, mask, analysis.coverage, key="analyze")
    with risks_col:
        # the cautions about the input stay with the number they qualify, not only beside the series picker
        if series is not None and series.contrast_given:
            st.warning("This risk comes from a contrast series; the model was trained on plain CT.")
        if raw.lossy is not None:
            st.warning(f"This risk comes from a slice stored with {raw.lossy}: its HU are approximate.")
        if clinical_problem:
            st.caption(clinical_problem)
        show_risks(
            analysis.dl_risk,
            performance_sentence(model.card),
            model.weights_warning,
            clinical_risk_for(inputs.n_category, clinical_model),
            inputs.n_category,
            clinical_model.name,
            stacked=True,
            spread=analysis.spread.to_dict() if analysis.spread else None,
        )
    st.caption(
        f"Analysis time: {analysis.seconds:.1f} s for {analysis.dl_risk.n_patches:,} patches "
        f"({analysis.patches_computed:,} patch evaluations run, {analysis.patches_reused:,} reused) · "
        f"engine: {analysis.engine}."
    )
    sensitivity_section(ct, mask, model, stored)
    if st.button("Save case", type="primary", key="save"):
        save(
            ct, mask, model, analysis, stored.get("sensitivity"), signature, patient_id, inputs, window, clinical_model
        )
    saved = st.session_state.get("saved")
    changed_id = saved and saved["patient"] != hashlib.sha256(patient_id.encode()).hexdigest()
    if saved and saved["signature"] == signature and (saved["inputs"] != inputs or changed_id):
        st.caption(f"Changed since it was saved as case {saved['case_key']}: press Save case to update it.")
    export_buttons(mask, raw)

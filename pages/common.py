"""Shared pieces of the pages: cached resources, model notices and the result view.

Pages stay thin: they read widgets, call ``core`` and render with these helpers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st
from sqlalchemy.engine import Engine

from core import db, pseudonym
from core.clinical import UNKNOWN_N_REASON, ClinicalRisk
from core.errors import UserFacingError
from core.heatmap import colour_bar, jet_overlay, roi_crop_box
from core.inference import CaseRisk
from models.checkpoint import LoadedModel, configured_model_path, load_checkpoint

SHELL_FLAG = "shell_ran"
RESEARCH_NOTICE = "Research use only — not a medical device; do not base treatment decisions on these numbers."
DISPLAY_WIDTH_PX = 640


def require_shell() -> None:
    """Send a page that runs without ``app.py`` through it.

    When the first request a fresh server sees is a deep link (``/cases``), Streamlit's
    legacy ``pages/``-folder mode runs that file alone: no sidebar, no model notice.
    ``app.py`` marks the session; a page that finds no mark switches to ``app.py``, whose
    ``st.navigation`` then takes over for the rest of the process.
    """
    if not st.session_state.get(SHELL_FLAG):
        st.switch_page("app.py")


@st.cache_resource(show_spinner="Opening the case database…")
def get_engine(url: str) -> Engine:
    """One engine per process, migrated to the newest schema."""
    engine = db.make_engine(url)
    db.migrate(engine)
    return engine


def engine() -> Engine:
    return get_engine(db.configured_url())


@st.cache_resource(show_spinner="Loading the model…")
def _cached_model(path: str, mtime_ns: int) -> LoadedModel:
    return load_checkpoint(Path(path))


def current_model() -> tuple[LoadedModel | None, str | None]:
    """The installed model, or ``None`` and a sentence on why there is none."""
    path = configured_model_path()
    try:
        mtime = path.stat().st_mtime_ns if path.exists() else 0
        return _cached_model(str(path), mtime), None
    except UserFacingError as error:
        return None, str(error)


def pseudonym_secret() -> bytes:
    return pseudonym.load_secret(db.REPO_ROOT / "data" / "pseudonym.key")


def model_provenance_banner(model_name: str, provenance: str, synthetic: bool) -> None:
    """The model's origin beside every risk; a warning when the weights are not from patients."""
    text = f"Model: **{model_name}** — {provenance}"
    if synthetic:
        st.warning(text, icon=":material/warning:")
    else:
        st.info(text)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sample_session_state() -> dict[str, object]:
    """Session-state entries that load the built-in phantom sample case and its outline."""
    from core.phantom import sample_case
    from core.roi import canvas_view_for

    sample = sample_case()
    return {
        "case_source": {"name": "sample.dcm", "data": sample.dicom_bytes, "hash": content_hash(sample.dicom_bytes)},
        "roi_json": sample.fabric_json(canvas_view_for(sample.shape, DISPLAY_WIDTH_PX)),
        "sample_loaded": True,
    }


def show_overlay(display: np.ndarray, pmap: np.ndarray, mask: np.ndarray, key: str) -> None:
    """The JET overlay with an opacity slider and a colour bar."""
    opacity_col, zoom_col = st.columns([3, 1])
    opacity = opacity_col.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key=f"{key}_opacity")
    zoom = zoom_col.toggle("Zoom to the outline", value=True, key=f"{key}_zoom")
    overlay = jet_overlay(display, pmap, mask, opacity)
    if zoom:
        r0, c0, r1, c1 = roi_crop_box(mask)
        overlay = overlay[r0:r1, c0:c1]
    image_col, bar_col = st.columns([12, 2])
    image_col.image(
        overlay,
        width=DISPLAY_WIDTH_PX,
        caption="Per-patch probability of early recurrence (OpenCV COLORMAP_JET; mean of overlapping patches)",
    )
    bar_col.image(colour_bar(256, 24), width=24)
    bar_col.caption("1.0 (red) at top, 0.0 (blue) at bottom")


def show_risks(dl: CaseRisk, clinical: ClinicalRisk | None, n_category: str, synthetic: bool) -> None:
    """Deep-learning risk beside the N-category risk, with rules and units."""
    left, right = st.columns(2)
    with left:
        st.subheader("Deep learning (ResNet50)")
        st.metric("Risk of early recurrence", f"{dl.probability:.0%}")
        st.caption(
            f"Rule: {dl.rule} over {dl.n_patches} patches; {dl.share_above:.0%} of patches ≥ {dl.threshold:g}."
            + (" Weights trained on synthetic phantoms." if synthetic else "")
        )
    with right:
        st.subheader(f"Clinical model (UICC {n_category})")
        if clinical is None:
            st.metric("Risk of early recurrence", "not available")
            st.caption(UNKNOWN_N_REASON)
        else:
            st.metric("Risk of early recurrence", f"{clinical.probability:.0%}")
            st.caption(
                f"95% CI {clinical.ci_low:.0%}–{clinical.ci_high:.0%}; logistic regression on N category "
                "fitted to the paper's Table 1 (41 patients)."
            )
    st.caption(RESEARCH_NOTICE)


if __name__ == "__main__":  # run as a page by the legacy pages/ mode: it is not one
    require_shell()

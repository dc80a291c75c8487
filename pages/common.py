"""Shared pieces of the pages: cached resources, model notices and the result view.

Pages stay thin: they read widgets, call ``core`` and render with these helpers.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import streamlit as st
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from core import db, pseudonym
from core.access import (
    NETWORK_WITHOUT_SIGN_IN,
    NO_ROLE,
    Act,
    Actor,
    acting_as,
    current_actor,
    local_actor,
    oidc_actor,
    set_actor,
)
from core.analysis import Coverage
from core.audit import record_export
from core.cases import CaseSummary, list_case_summaries
from core.clinical import UNKNOWN_N_REASON, ClinicalRisk
from core.clinical_refit import PAPER_CLINICAL_MODEL, ClinicalModelInUse, model_in_use
from core.demo_build import build_progress, start_background_build
from core.engine import prepare_engine_in_background
from core.errors import OUT_OF_MEMORY_SENTENCE, ModelNotInstalledError, UserFacingError, out_of_memory
from core.heatmap import colour_bar, draw_outline, jet_overlay, roi_crop_box
from core.inference import CaseRisk
from core.provenance import RESEARCH_NOTICE
from core.uncertainty import sensitivity_table, spread_headline, spread_of_folds, spread_sentence
from models.checkpoint import (
    DEFAULT_MODEL_PATH,
    LoadedModel,
    check_allowed,
    configured_model_path,
    load_checkpoint,
)

log = logging.getLogger(__name__)
DEMO_AUTOBUILD_ENV = "ICCA_DEMO_AUTOBUILD"  # "0": never build the demo model from the app (tests, servers)
SHELL_FLAG = "shell_ran"
REQUESTED_PAGE = "requested_page"
CANVAS_WIDTH_PX = 480  # fits the left column of a 1400-px-wide screen beside the sidebar
DATABASE_DOWN = "The case database cannot be reached (check ICCA_DATABASE_URL, the server and disk space); try again."


def require_shell(page_file: str) -> None:
    """Send a page that runs without ``app.py`` through it, to the same page.

    When the first request a fresh server sees is a deep link (``/cases``), Streamlit's
    legacy ``pages/``-folder mode runs that file alone: no sidebar, no model notice.
    ``app.py`` marks the session; a page that finds no mark records itself and switches to
    ``app.py``, whose ``st.navigation`` then opens the recorded page.

    Args:
        page_file: the page's path relative to the app root, e.g. ``"pages/cases.py"``.
    """
    if not st.session_state.get(SHELL_FLAG):
        st.session_state[REQUESTED_PAGE] = page_file
        st.switch_page("app.py")
    sign_in_gate()


def sign_in_gate() -> Actor:
    """Who uses this run: the signed-in user, or the single local user on a loopback-only server.

    Anyone else sees the sign-in (or one sentence) and nothing more: the run stops here.
    The actor is set for the rest of the run; core's role checks and the audit trail read it.
    """
    actor = visitor()
    set_actor(actor)
    if actor is None:
        refuse_visitor()
    return actor


def visitor() -> Actor | None:
    """This run's actor, drawing nothing: the signed-in user with a role, or the local user; else ``None``.

    Roles come from ``[roles]`` in ``secrets.toml``: ``admin``, ``analyst`` and ``viewer``, each a
    list of the identity provider's ``sub`` claims. The shell also asks it, to hide its page
    links from a visitor who may not enter.
    """
    if sign_in_configured():
        return oidc_actor(st.user.get("sub"), st.secrets.get("roles", {})) if st.user.is_logged_in else None
    return local_actor(str(st.get_option("server.address") or ""))


def refuse_visitor() -> NoReturn:
    """Show a visitor who may not enter the sign-in, or the one sentence that says why not, and stop the run."""
    if not sign_in_configured():
        st.error(NETWORK_WITHOUT_SIGN_IN)
    elif not st.user.is_logged_in:
        st.markdown("## iCCA early recurrence")
        st.markdown("This dashboard is shared: sign in with your hospital account to continue.")
        st.button("Sign in", type="primary", on_click=st.login, key="sign_in")
        st.caption(RESEARCH_NOTICE)
    else:  # signed in at the provider, but on no list
        st.error(NO_ROLE)
        st.button("Sign out", on_click=st.logout, key="sign_out_no_role")
    st.stop()


def sign_in_configured() -> bool:
    """Whether ``secrets.toml`` configures an OIDC identity provider (its ``[auth]`` section)."""
    return st.secrets.load_if_toml_exists() and "auth" in st.secrets


@st.cache_resource(show_spinner="Opening the case database…")
def get_engine(url: str) -> Engine:
    """One engine per process, migrated to the newest schema."""
    engine = db.make_engine(url)
    db.migrate(engine)
    return engine


def engine() -> Engine:
    return get_engine(db.configured_url())


def may(act: Act) -> bool:
    """Whether the user of this run may ``act`` (pages hide what core would refuse anyway)."""
    actor = current_actor()
    return actor is not None and actor.may(act)


def audited_download(
    label: str,
    build: Callable[[], bytes | str],
    what: str,
    *,
    case_key: str | None = None,
    model_sha256: str | None = None,
    where: Any = None,
    **button: Any,
) -> None:
    """A download button for analysts and admins; the file is built on click and the export audited first.

    An audit that cannot be written stops the export: data never leaves without its record.
    ``where`` is the container to draw the button in (a column); default the page.
    """
    if not may(Act.EXPORT):
        return
    actor = current_actor()  # Streamlit builds the file later, in a worker thread without this run's context

    def audited() -> bytes | str:
        with acting_as(actor), Session(engine()) as session:
            record_export(session, what, case_key, model_sha256)
            session.commit()
        return build()

    # "ignore": the press starts no rerun of its own. Every rerun gives the button a new file id and
    # retires the old one when it ends, so a press whose request is handled after such a rerun gets no file.
    (where or st).download_button(label, data=audited, on_click="ignore", **button)


@st.cache_resource(show_spinner="Loading the model…")
def _cached_model(path: str, mtime_ns: int) -> LoadedModel:
    """Load the checkpoint once per file version; its engine is prepared in the background.

    The measured ranking of backends comes from ``make demo-model`` / ``python -m core.engine``;
    the dashboard never measures (a minute of both cores), it only builds and checks the chosen
    backend, while the default fp32 engine answers. Once a converted engine runs, the torch
    copies of the weights are dropped (about 100 MB per network); a result still on screen
    keeps the engine it was computed with, and with it the networks that engine needs.
    """
    model = load_checkpoint(Path(path))
    prepare_engine_in_background(model, measure=False, release=True)
    return model


def current_model() -> tuple[LoadedModel | None, str | None]:
    """The installed model, or ``None`` and a sentence on why there is none."""
    path = configured_model_path()
    try:
        mtime = path.stat().st_mtime_ns if path.exists() else 0
        model = _cached_model(str(path), mtime)
        check_allowed(path, model.sha256)  # a model taken off the allow-list stops at once, not at restart
        return model, None
    except ModelNotInstalledError as error:
        if not demo_build_wanted(path):
            return None, str(error)
        start_background_build(path)  # at most one per machine: a running build is left alone
        return None, "The demo model is being built in the background; Analyze becomes available when it is ready."
    except UserFacingError as error:
        return None, str(error)
    except Exception as error:
        if not out_of_memory(error):
            raise
        return None, OUT_OF_MEMORY_SENTENCE


def demo_build_wanted(path: Path) -> bool:
    """Build the demo model when the default model path is empty (a configured path is never filled by us)."""
    return path.resolve() == DEFAULT_MODEL_PATH.resolve() and os.environ.get(DEMO_AUTOBUILD_ENV, "1") != "0"


@st.fragment(run_every=5)
def demo_build_banner() -> None:
    """The background build's progress, refreshed every 5 s; the app reruns once the model is there."""
    if configured_model_path().exists():
        st.rerun(scope="app")
    progress = build_progress()
    if progress.running:
        st.progress(progress.fraction, text=progress.sentence())
    else:
        st.warning(progress.sentence())


def clinical_model_now() -> tuple[ClinicalModelInUse, str | None]:
    """(the clinical model in use, ``None``), or (the paper's model, why) when the database cannot be read.

    Read on every run (one small query), so that a version put in use with
    ``python -m core clinical --use`` applies at once.
    """
    try:
        with Session(engine()) as session:
            return model_in_use(db.clinical_model_in_use(session)), None
    except Exception as error:
        log.error("reading the clinical model in use failed: %s", type(error).__name__)
        return PAPER_CLINICAL_MODEL, (
            "The case database cannot be read, so a local clinical model in use there cannot be found; the risk "
            "shown is the paper's model."
        )


def saved_case_summaries(purpose: str) -> list[CaseSummary]:
    """Every saved case's summary; when the database cannot be read, its sentence and the page stops there."""
    try:
        with Session(engine()) as session:
            return list_case_summaries(session)
    except Exception as error:  # the type only: a driver's message can carry the URL
        log.error("loading cases for %s failed: %s", purpose, type(error).__name__)
        st.error(DATABASE_DOWN)
        st.stop()


def pseudonym_secret() -> bytes:
    """The installation's pseudonym key.

    Raises:
        UserFacingError: the key file cannot be read or created.
    """
    try:
        return pseudonym.load_secret(db.REPO_ROOT / "data" / "pseudonym.key")
    except OSError as error:
        raise UserFacingError(
            "The pseudonym key (data/pseudonym.key or ICCA_PSEUDONYM_SECRET) cannot be read or created; "
            "check the data folder's permissions and disk space."
        ) from error


def model_banner(model_name: str, provenance_line: str, weights_warning: str | None) -> None:
    """The model's origin beside every risk; a warning when the weights are not from patients."""
    if weights_warning:  # the warning says where the weights came from; the provenance line would repeat it
        st.warning(f"Model: **{model_name}**. {weights_warning}", icon=":material/warning:")
    else:
        st.info(f"Model: **{model_name}** — {provenance_line}")


def input_key(name: str, source_hash: str) -> str:
    """Widget key of a clinical input, per image: a new image starts with empty inputs, never the last patient's."""
    return f"{name}_{source_hash[:12]}"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def show_overlay(display: np.ndarray, pmap: np.ndarray, mask: np.ndarray, coverage: Coverage, key: str) -> None:
    """The JET overlay with an opacity slider, a colour bar and what the uncoloured pixels mean."""
    opacity_col, zoom_col = st.columns([3, 2], vertical_alignment="bottom")
    opacity = opacity_col.slider(
        "Heatmap opacity",
        0.0,
        1.0,
        0.45,
        0.05,
        key=f"{key}_opacity",
        help="Display only (the model does not run again). Colours: OpenCV COLORMAP_JET of the per-patch "
        "probability, overlapping patches averaged.",
    )
    zoom = zoom_col.toggle("Zoom", value=True, key=f"{key}_zoom", help="Zoom to the outline.")
    overlay = draw_outline(jet_overlay(display, pmap, mask, opacity), mask)
    if zoom:
        r0, c0, r1, c1 = roi_crop_box(mask)
        overlay = overlay[r0:r1, c0:c1]
    image_col, bar_col = st.columns([12, 1])
    image_col.image(
        overlay,
        width="stretch",
        caption="Per-patch probability of early recurrence",  # one line: the colours are in the slider's help
    )
    bar_col.caption("1.0")
    bar_col.image(colour_bar(200, 18), width=18)
    bar_col.caption("0.0")
    if coverage.uncovered_px:
        area = (
            f"{coverage.uncovered_mm2:,.0f} mm²"
            if coverage.uncovered_mm2 is not None
            else f"{coverage.uncovered_px:,} px²"
        )
        st.caption(
            f"{coverage.uncovered_share:.0%} of the outline ({area}) has no colour: no patch covers it, because a "
            "patch is kept only when enough of it lies inside the outline (rims and narrow parts). Those pixels do "
            "not enter the risk."
        )


def _metric(heading: str, label: str, value: str) -> None:
    """A metric under one bold heading that names the model and what the number is (it wraps, never cut off)."""
    st.markdown(f"**{heading}: {label.lower()}**")
    st.metric(label, value, label_visibility="collapsed")


def show_dl_risk(
    dl: CaseRisk,
    performance: str,
    weights_warning: str | None,
    spread: dict[str, Any] | None = None,
    details: bool = True,
) -> None:
    """The deep-learning number, labelled for what it is: an uncalibrated mean patch probability.

    ``spread`` (:meth:`core.uncertainty.EnsembleSpread.to_dict`) adds the fold models' range in
    one line (its explanation in the tooltip); the weights warning stays right under the number.
    ``details=False`` leaves the rule and the cross-validated AUC to the caller
    (:func:`dl_details`), so that a narrow column shows both numbers before any long text.
    """
    _metric("Deep learning (ResNet50 patches)", "Mean patch probability (uncalibrated)", f"{dl.probability:.0%}")
    headline = spread_headline(spread)
    if headline:
        label = "Fold spread" if spread_of_folds(spread) else "Spread"
        st.markdown(f"**{label}:** {headline}", help=spread_sentence(spread))
    if weights_warning:
        st.caption(f":material/warning: {weights_warning}")
    if details:
        st.caption(dl_details(dl, performance))


def dl_details(dl: CaseRisk, performance: str) -> str:
    """What the deep-learning number is and how well the model separated patients, in sentences."""
    return (
        f"The {dl.rule} over {dl.n_patches:,} patches ({dl.share_above:.0%} ≥ {dl.threshold:g}): it ranks "
        f"cases, it is not a calibrated risk. {performance}"
    )


def show_clinical_risk(clinical: ClinicalRisk | None, n_category: str, model_name: str) -> None:
    """The clinical model's fitted probability with its 95% CI and the model's name, or why there is none."""
    if clinical is None:
        _metric("Clinical model (N category unknown)", "Fitted probability of early recurrence", "not available")
        st.caption(UNKNOWN_N_REASON)
        return
    _metric(
        f"Clinical model (UICC {n_category})", "Fitted probability of early recurrence", f"{clinical.probability:.0%}"
    )
    st.caption(f"95% CI {clinical.ci_low:.0%}–{clinical.ci_high:.0%} · {model_name}.")


def show_risks(
    dl: CaseRisk,
    performance: str,
    weights_warning: str | None,
    clinical: ClinicalRisk | None,
    n_category: str,
    clinical_model: str,
    stacked: bool = False,
    spread: dict[str, Any] | None = None,
) -> None:
    """Deep-learning number beside (or, ``stacked``, above) the clinical risk, then the research-use notice once."""
    if stacked:  # both numbers first: on a 1400 × 900 screen they must show together, without scrolling
        show_dl_risk(dl, performance, weights_warning, spread, details=False)
        show_clinical_risk(clinical, n_category, clinical_model)
        st.caption(f"**Deep-learning number:** {dl_details(dl, performance)}")
    else:
        left, right = st.columns(2)
        with left:
            show_dl_risk(dl, performance, weights_warning, spread)
        with right:
            show_clinical_risk(clinical, n_category, clinical_model)
    st.caption(RESEARCH_NOTICE)


def show_sensitivity(sensitivity: dict[str, Any]) -> None:
    """The outline-sensitivity table (:meth:`core.uncertainty.OutlineSensitivity.to_dict`) and its warning."""
    st.markdown("**Outline sensitivity:** the deep-learning number with the outline drawn tighter or wider")
    st.dataframe(sensitivity_table(sensitivity), hide_index=True, width="stretch")
    if sensitivity.get("warning"):
        st.warning(sensitivity["warning"], icon=":material/warning:")
    else:
        st.caption(
            f"The prediction (threshold {sensitivity['threshold']:g}) stays the same for outlines within ±1 mm "
            "of the one drawn."
        )


def sample_session_state() -> dict[str, object]:
    """Session-state entries that load the built-in phantom sample case and its outline."""
    from core.phantom import sample_case
    from core.roi import FABRIC_VERSION, canvas_view_for
    from core.series import scan_upload, upload_digest

    sample = sample_case()
    files = [("sample.dcm", sample.dicom_bytes)]
    digest = upload_digest(files)
    scan = scan_upload(files)
    drawing = sample.fabric_json(canvas_view_for(sample.shape, CANVAS_WIDTH_PX))
    return {
        "case_source": {"name": "sample.dcm", "files": files, "hash": digest},
        "scan": {"hash": digest, "scan": scan},  # as pages/analyze.scanned keeps it: not scanned twice
        "initial_outlines": {f"{digest[:12]}:{scan.ct_series[0].key}:0": {**drawing, "version": FABRIC_VERSION}},
        "imported": None,
    }


if __name__ == "__main__":  # run as a page by the legacy pages/ mode: it is not one
    require_shell("pages/analyze.py")

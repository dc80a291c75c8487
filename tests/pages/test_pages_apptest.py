"""AppTest: every page renders; Analyze runs end to end with an injected slice and outline.

AppTest cannot draw on the canvas or upload files, so the slice and the outline are
injected into session state the way the upload widget and the sample button set them
(the canvas returns its initial drawing until the browser reports).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from core import db
from core.phantom import sample_case
from core.roi import canvas_view_for
from pages.common import CANVAS_WIDTH_PX, SHELL_FLAG, content_hash, input_key, sample_session_state

ROOT = Path(__file__).resolve().parents[2]
DL_LABEL = "Mean patch probability (uncalibrated)"
CLINICAL_LABEL = "Fitted probability of early recurrence"


@pytest.fixture()
def app_env(monkeypatch: pytest.MonkeyPatch, test_checkpoint: Path, sqlite_url: str) -> None:
    monkeypatch.setenv("ICCA_MODEL_PATH", str(test_checkpoint))
    monkeypatch.setenv("ICCA_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("ICCA_PSEUDONYM_SECRET", "test-secret")


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=120)
    at.session_state[SHELL_FLAG] = True  # as app.py sets it before running a page
    return at


def _with_sample(at: AppTest) -> AppTest:
    """What the "Load sample case" button does, since AppTest cannot upload files."""
    for key, value in sample_session_state().items():
        at.session_state[key] = value
    return at


def _with_upload(at: AppTest, name: str, data: bytes, outline_from_sample: bool = True) -> AppTest:
    """An upload as the uploader stores it, with the sample's outline drawn on the canvas."""
    from core.series import scan_upload, upload_digest

    files = [(name, data)]
    digest = upload_digest(files)
    at.session_state["case_source"] = {"name": name, "files": files, "hash": digest}
    if outline_from_sample:
        [drawing] = sample_session_state()["initial_outlines"].values()
        if data.startswith(b"\x89PNG"):
            slot = f"{digest[:12]}:export:0"
        else:
            slot = f"{digest[:12]}:{scan_upload(files).ct_series[0].key}:0"
        at.session_state["initial_outlines"] = {slot: drawing}
    return at


def _input(at: AppTest, name: str) -> str:
    """The widget key of a clinical input for the image on screen (inputs are per image)."""
    return input_key(name, at.session_state["case_source"]["hash"])


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _analyze(at: AppTest) -> AppTest:
    return at.button(key="analyze").click().run()


def _cases(url: str) -> list[db.Case]:
    engine = db.make_engine(url)
    with Session(engine) as session:
        cases = db.list_cases(session)
        for case in cases:  # load while the session is open
            _ = [a.training_data for a in case.analyses]
    engine.dispose()
    return cases


def test_analyze_page_asks_for_a_slice(app_env: None) -> None:
    at = _page("analyze.py").run()
    assert not at.exception
    assert any("Upload a CT (files, a ZIP or a folder)" in i.value for i in at.info)


def test_inputs_entered_after_analyze_are_what_is_saved(app_env: None, sqlite_url: str) -> None:
    at = _with_sample(_page("analyze.py")).run()
    assert not at.exception and any("patches" in m.value for m in at.markdown)
    _analyze(at)
    assert _metric(at, CLINICAL_LABEL) == "not available"
    result = at.session_state["result"]["analysis"]
    # entered after Analyze: the clinical risk follows at once, the network is not re-run
    at.radio(key=_input(at, "n")).set_value("N1").run()
    at.selectbox(key=_input(at, "t")).set_value("T2").run()
    at.number_input(key=_input(at, "size")).set_value(55.0).run()
    at.selectbox(key=_input(at, "number")).set_value("multiple").run()
    assert _metric(at, CLINICAL_LABEL) == "85%"  # N1: 11/13 in Table 1
    assert at.session_state["result"]["analysis"] is result
    at.button(key="save").click().run()
    assert any("Saved as case" in s.value for s in at.success)
    [case] = _cases(sqlite_url)
    assert (case.n_category, case.t_category, case.tumour_size_mm, case.solitary) == ("N1", "T2", 55.0, False)
    assert case.analyses[0].clinical_probability == pytest.approx(11 / 13)
    assert case.analyses[0].training_data == "untrained"


def test_saving_twice_makes_one_case_and_a_change_updates_it(app_env: None, sqlite_url: str) -> None:
    at = _analyze(_with_sample(_page("analyze.py")).run())
    at.button(key="save").click().run()
    at.button(key="save").click().run()
    assert any("Already saved as case" in i.value for i in at.info)
    assert len(_cases(sqlite_url)) == 1
    at.radio(key=_input(at, "n")).set_value("N0").run()
    assert any("press Save case to update it" in c.value for c in at.caption)
    at.button(key="save").click().run()
    assert any("N category changed" in s.value for s in at.success)
    [case] = _cases(sqlite_url)
    assert case.n_category == "N0" and case.analyses[0].clinical_probability == pytest.approx(9 / 28)


def test_unknown_n_category_says_so_in_the_heading(app_env: None) -> None:
    at = _analyze(_with_sample(_page("analyze.py")).run())
    assert _metric(at, CLINICAL_LABEL) == "not available"
    assert any(m.value.startswith("**Clinical model (N category unknown)") for m in at.markdown)
    assert _metric(at, DL_LABEL).endswith("%")
    assert any("not a calibrated risk" in c.value for c in at.caption)
    assert any("Untrained (random) weights" in c.value for c in at.caption)


def _png(grey: np.ndarray) -> bytes:
    _ok, encoded = cv2.imencode(".png", grey)
    return encoded.tobytes()


def _sample_export_grey() -> np.ndarray:
    """The sample case as a viewer would export it at L60/W160: (512, 512) uint8."""
    hu = pydicom.dcmread(io.BytesIO(sample_case().dicom_bytes)).pixel_array.astype(np.float32) - 1024
    return np.clip((hu - (60 - 80)) / 160 * 255, 0, 255).round().astype(np.uint8)


def test_png_export_needs_spacing_and_window_before_the_model_runs(app_env: None) -> None:
    grey = _sample_export_grey()
    at = _with_upload(_page("analyze.py"), "export.png", _png(grey)).run()
    assert not at.exception
    assert at.button(key="analyze").disabled
    assert any("enter its pixel spacing (mm/px) and the window" in w.value for w in at.warning)
    assert any("px² (no spacing)" in m.value for m in at.markdown)  # outlining works in pixels
    tag = content_hash(_png(grey))[:12]
    at.number_input(key=f"sp_{tag}").set_value(0.7).run()
    assert at.button(key="analyze").disabled  # spacing alone is not enough: no HU yet
    at.number_input(key=f"el_{tag}").set_value(60.0).run()
    at.number_input(key=f"ew_{tag}").set_value(160.0).run()
    assert not at.button(key="analyze").disabled
    assert any("mm²" in m.value and "largest diameter" in m.value and " patches" in m.value for m in at.markdown)
    assert any("narrower than the model's" in c.value for c in at.caption)
    _analyze(at)
    assert not at.exception and _metric(at, DL_LABEL).endswith("%")


def test_dicom_without_spacing_is_named_as_such(app_env: None) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelSpacing
    buffer = io.BytesIO()
    ds.save_as(buffer)
    at = _with_upload(_page("analyze.py"), "nospacing.dcm", buffer.getvalue(), outline_from_sample=False).run()
    assert not at.exception
    texts = [w.value for w in at.warning]
    assert any("This DICOM slice has no usable pixel spacing: it has no PixelSpacing" in t for t in texts)
    assert not any("raster" in t.lower() for t in texts + [i.value for i in at.info])


def test_wrong_file_shows_one_sentence(app_env: None) -> None:
    at = _page("analyze.py")
    at.session_state["case_source"] = {"name": "notes.txt", "files": [("notes.txt", b"hello" * 100)], "hash": "x"}
    at.run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert error.startswith("The upload holds no DICOM image") and error.endswith(".") and "\n" not in error


def test_pseudonym_key_failure_is_one_sentence_and_the_result_stays(
    app_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import pseudonym

    def unreadable(_path: Path) -> bytes:
        raise PermissionError("data/pseudonym.key")

    monkeypatch.setattr(pseudonym, "load_secret", unreadable)
    at = _analyze(_with_sample(_page("analyze.py")).run())
    at.button(key="save").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "The pseudonym key (data/pseudonym.key or ICCA_PSEUDONYM_SECRET) cannot be read or created; check the "
        "data folder's permissions and disk space. The result stays on screen."
    ]
    assert _metric(at, DL_LABEL).endswith("%")


def test_database_failure_on_save_is_one_sentence_and_the_result_stays(
    app_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _analyze(_with_sample(_page("analyze.py")).run())
    monkeypatch.setenv("ICCA_DATABASE_URL", "postgresql+psycopg://nobody:x@127.0.0.1:1/none")  # refused
    at.button(key="save").click().run()
    assert not at.exception
    assert any("could not be saved" in e.value for e in at.error)
    assert _metric(at, DL_LABEL).endswith("%")


def test_cases_page_empty(app_env: None) -> None:
    at = _page("cases.py").run()
    assert not at.exception and any("No saved cases" in i.value for i in at.info)


def test_cases_page_database_down_is_one_sentence(app_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICCA_DATABASE_URL", "postgresql+psycopg://nobody:x@127.0.0.1:1/none")
    at = _page("cases.py").run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "The case database cannot be reached (check ICCA_DATABASE_URL, the server and disk space); try again."
    ]


def test_model_card_leads_with_patient_level(app_env: None) -> None:
    at = _page("model_card.py").run()
    assert not at.exception
    assert any("Untrained (random) weights" in w.value for w in at.warning)
    assert any("untrained test model" in m.value for m in at.markdown)
    assert any("no cross-validation results" in i.value for i in at.info)
    assert any(m.value.startswith("**Inference engine on this machine:** torch") for m in at.markdown)


def test_no_model_installed_is_said_plainly(app_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICCA_MODEL_PATH", str(tmp_path / "missing.pt"))
    at = _page("model_card.py").run()
    assert not at.exception and any("No model is installed" in e.value for e in at.error)


def test_a_model_not_on_the_allow_list_is_refused_on_every_page_with_one_sentence(
    app_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Taken off the allow-list while the app runs: refused at the next run, not only after a restart."""
    allowlist = tmp_path / "allowed-models.txt"
    allowlist.write_text("# no model approved\n")
    at = _page("model_card.py").run()  # loads and caches the model while it is still approved
    assert not at.exception and not at.error
    monkeypatch.setenv("ICCA_MODEL_ALLOWLIST", str(allowlist))
    for page in ("model_card.py", "analyze.py"):
        at = _page(page).run()
        assert not at.exception
        shown = [e.value for e in at.error] + [w.value for w in at.warning]
        assert any("is not on this installation's list of approved models" in text for text in shown), page


def test_app_shell_renders_sidebar(app_env: None) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert any("Research use only" in c.value for c in at.sidebar.caption)
    assert any("Untrained (random) weights" in w.value for w in at.sidebar.warning)


def test_cases_page_reopens_without_the_model_shows_inputs_and_deletes(
    app_env: None, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.core.test_db import _new_case

    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    with Session(engine) as session:
        db.add_case(session, *_new_case("P-reopen"))
        session.commit()
    monkeypatch.setenv("ICCA_MODEL_PATH", str(tmp_path / "no-model.pt"))  # reopening must not need it
    at = _page("cases.py").run()
    assert not at.exception
    assert _metric(at, DL_LABEL) == "70%" and _metric(at, CLINICAL_LABEL) == "85%"
    assert any("T T2" in m.value and "50 mm" in m.value and "solitary" in m.value for m in at.markdown)
    assert any("f" * 64 in m.value for m in at.markdown)  # the model's full sha256 in the details
    assert any("Untrained (random) weights" in c.value for c in at.caption)
    case_id = at.session_state["open_case"]
    at.checkbox(key=f"confirm_{case_id}").check().run()
    at.button(key=f"delete_{case_id}").click().run()
    assert not at.exception
    assert any(s.value.startswith("Deleted case P-reopen: its slice, outline, 1 analysis(es)") for s in at.success)
    with Session(engine) as session:
        assert db.list_cases(session) == []
    engine.dispose()


def test_a_damaged_stored_array_is_reported_for_that_case_only_and_it_can_still_be_deleted(
    app_env: None, sqlite_url: str
) -> None:
    from sqlalchemy import select, update

    from tests.core.test_db import _new_case

    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    with Session(engine) as session:
        damaged = db.add_case(session, *_new_case("P-damaged"))
        session.flush()
        intact = db.add_case(session, *_new_case("P-intact"))
        session.commit()
        damaged_id, intact_id = damaged.id, intact.id
        # one flipped byte in the damaged case's slice, as a failing disk would leave it
        row = session.scalars(
            select(db.StoredArray).where(db.StoredArray.case_id == damaged_id, db.StoredArray.kind == "slice")
        ).one()
        flipped = bytes([row.data[0] ^ 0xFF]) + row.data[1:]
        session.execute(update(db.StoredArray).where(db.StoredArray.id == row.id).values(data=flipped))
        session.commit()
    at = _page("cases.py").run()
    at.selectbox(key="open_case").set_value(damaged_id).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"Case #{damaged_id} cannot be opened: its stored slice is damaged (checksum mismatch). Other cases are "
        "not affected; restore this one from a backup (python -m core db restore) or delete it."
    ]
    assert len(at.dataframe[0].value) == 2  # the table still lists both cases
    at.selectbox(key="open_case").set_value(intact_id).run()
    assert not at.exception and not at.error and _metric(at, DL_LABEL) == "70%"
    at.selectbox(key="open_case").set_value(damaged_id).run()
    at.checkbox(key=f"confirm_{damaged_id}").check().run()
    at.button(key=f"delete_{damaged_id}").click().run()
    assert any(s.value.startswith("Deleted case P-damaged") for s in at.success)
    engine.dispose()


def test_sample_canvas_scale_matches_the_display_width() -> None:
    state = sample_session_state()
    [drawing] = state["initial_outlines"].values()
    [polygon] = drawing["objects"]
    assert max(p["x"] for p in polygon["points"]) <= CANVAS_WIDTH_PX


def test_a_new_image_starts_with_empty_inputs_never_the_last_patients(app_env: None, sqlite_url: str) -> None:
    at = _analyze(_with_sample(_page("analyze.py")).run())
    at.text_input(key=_input(at, "patient_id")).set_value("PATIENT-A").run()
    at.radio(key=_input(at, "n")).set_value("N1").run()
    at.button(key="save").click().run()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    buffer = io.BytesIO()
    ds.save_as(buffer)
    _with_upload(at, "other.dcm", buffer.getvalue()).run()
    assert at.text_input(key=_input(at, "patient_id")).value == ""
    assert at.radio(key=_input(at, "n")).value == "unknown"


def test_correcting_the_patient_id_after_saving_updates_that_case(app_env: None, sqlite_url: str) -> None:
    at = _analyze(_with_sample(_page("analyze.py")).run())
    at.button(key="save").click().run()
    [first] = _cases(sqlite_url)
    assert first.case_key.startswith("P-")  # no ID typed: keyed from the DICOM's own PatientID
    at.text_input(key=_input(at, "patient_id")).set_value("MRN-777").run()
    assert any("press Save case to update it" in c.value for c in at.caption)
    at.button(key="save").click().run()
    assert any("patient ID (case key) changed" in s.value for s in at.success)
    [case] = _cases(sqlite_url)
    assert case.id == first.id and case.case_key != first.case_key and "777" not in case.case_key


def test_a_saved_export_reopens_as_it_was_exported(app_env: None, sqlite_url: str) -> None:
    """A PNG is stored in HU after calibration; the Cases page must show it in the export's own window."""
    from core.cases import load_saved_case
    from core.imaging import CtSlice, display_image

    grey = _sample_export_grey()
    at = _with_upload(_page("analyze.py"), "export.png", _png(grey)).run()
    tag = content_hash(_png(grey))[:12]
    at.number_input(key=f"sp_{tag}").set_value(0.7).run()
    at.number_input(key=f"el_{tag}").set_value(60.0).run()
    at.number_input(key=f"ew_{tag}").set_value(160.0).run()
    _analyze(at).button(key="save").click().run()
    [case] = _cases(sqlite_url)
    assert (case.display_level, case.display_width) == (60.0, 160.0)
    assert (case.export_window_level, case.export_window_width, case.spacing_source) == (60.0, 160.0, "user")
    engine = db.make_engine(sqlite_url)
    with Session(engine) as session:
        saved = load_saved_case(session, case.id)
    engine.dispose()
    reopened = CtSlice(pixels=saved.pixels, is_hu=saved.is_hu, spacing_mm=saved.spacing_mm, source_kind="png")
    shown = display_image(reopened, case.display_level, case.display_width)
    assert np.abs(shown.astype(int) - grey.astype(int)).max() <= 1  # rounding only


def test_a_png_mask_in_the_upload_is_imported_onto_the_slice_on_screen(app_env: None) -> None:
    from core.roi import mask_from_outlines
    from core.series import upload_digest

    sample = sample_case()
    expected = mask_from_outlines([sample.outline_xy], sample.shape)
    files = [("slice.dcm", sample.dicom_bytes), ("mask.png", _png(expected.astype(np.uint8) * 255))]
    at = _page("analyze.py")
    at.session_state["case_source"] = {"name": "2 files", "files": files, "hash": upload_digest(files)}
    at.run()
    assert any("No tumour outline yet" in i.value for i in at.info)
    tag = upload_digest(files)[:12]
    at.selectbox(key=f"outline_pick_{tag}").set_value("mask.png (a PNG image)").run()
    at.button(key="import_outline").click().run()
    assert not at.exception
    assert any("Imported outline: PNG mask" in c.value for c in at.caption)
    _analyze(at)
    assert _metric(at, DL_LABEL).endswith("%")
    assert at.session_state["result"]["analysis"].coverage.outline_px == int(expected.sum())


def test_importing_something_that_is_not_an_outline_is_one_sentence(app_env: None) -> None:
    from core.series import upload_digest

    sample = sample_case()
    files = [("slice.dcm", sample.dicom_bytes), ("photo.png", _png(np.zeros((20, 20), np.uint8)))]
    at = _page("analyze.py")
    at.session_state["case_source"] = {"name": "2 files", "files": files, "hash": upload_digest(files)}
    at.run()
    tag = upload_digest(files)[:12]
    at.selectbox(key=f"outline_pick_{tag}").set_value("photo.png (a PNG image)").run()
    at.button(key="import_outline").click().run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert "20×20 pixels but the slice is 512×512" in error and "\n" not in error


def test_a_fold_ensemble_shows_its_spread_and_the_outline_sensitivity_is_saved_and_reopened(
    monkeypatch: pytest.MonkeyPatch, test_ensemble_checkpoint: Path, sqlite_url: str
) -> None:
    monkeypatch.setenv("ICCA_MODEL_PATH", str(test_ensemble_checkpoint))
    monkeypatch.setenv("ICCA_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("ICCA_PSEUDONYM_SECRET", "test-secret")
    at = _analyze(_with_sample(_page("analyze.py")).run())
    assert not at.exception
    assert any(m.value.startswith("**Fold spread:** Across its 2 fold models") for m in at.markdown)
    assert at.session_state["result"].get("sensitivity") is None  # lazy: nothing runs before it is asked
    at.button(key="sensitivity").click().run()
    assert not at.exception
    [table] = at.dataframe
    assert list(table.value["outline"]) == ["2 mm tighter", "1 mm tighter", "as drawn", "1 mm wider", "2 mm wider"]
    shown_risk = _metric(at, DL_LABEL)
    assert table.value.set_index("outline").loc["as drawn", "DL mean patch prob."] == shown_risk
    at.button(key="save").click().run()
    [case] = _cases(sqlite_url)
    saved = case.analyses[0].uncertainty
    assert saved["analysis"]["spread"]["names"] == ["fold 1", "fold 2"]
    assert [row["offset_mm"] for row in saved["sensitivity"]["rows"]] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    cases = _page("cases.py").run()
    assert not cases.exception
    assert any(m.value.startswith("**Fold spread:** Across its 2 fold models") for m in cases.markdown)
    assert len(cases.dataframe) >= 1


def _on_a_named_engine(
    monkeypatch: pytest.MonkeyPatch, checkpoint: Path, sqlite_url: str, tmp_path: Path, fails: bool
) -> list:
    """The app on a copy of ``checkpoint`` whose engine is "OpenVINO bf16": failing, or exact fp32 under that name.

    Returns the list the loaded model is put in. Its own file: the model cached with this engine is the test's alone.
    """
    import shutil

    import torch

    import pages.common
    from core.engine import Engine, default_engine

    path = tmp_path / "model.pt"
    shutil.copyfile(checkpoint, path)
    monkeypatch.setenv("ICCA_MODEL_PATH", str(path))
    monkeypatch.setenv("ICCA_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("ICCA_PSEUDONYM_SECRET", "test-secret")
    loaded: list = []

    def fail(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the runtime lost its compiled graph")

    def named_engine(model: object, **_: object) -> None:
        members = list(model.ensemble)  # type: ignore[attr-defined]
        predictors = (fail,) * len(members) if fails else default_engine(members).predictors
        model.engine = Engine("openvino-bf16", "OpenVINO bf16", torch.device("cpu"), predictors, "measured")  # type: ignore[attr-defined]
        loaded.append(model)

    monkeypatch.setattr(pages.common, "prepare_engine_in_background", named_engine)
    return loaded


def _analyzed_on_a_working_named_engine(
    monkeypatch: pytest.MonkeyPatch, checkpoint: Path, sqlite_url: str, tmp_path: Path
) -> tuple[AppTest, object]:
    """The sample analysed on an exact engine named "OpenVINO bf16", and the model it ran on."""
    loaded = _on_a_named_engine(monkeypatch, checkpoint, sqlite_url, tmp_path, fails=False)
    at = _analyze(_with_sample(_page("analyze.py")).run())
    [model] = loaded
    return at, model


def test_an_engine_that_fails_during_analyze_gives_way_and_the_sensitivity_still_runs(
    monkeypatch: pytest.MonkeyPatch, test_ensemble_checkpoint: Path, sqlite_url: str, tmp_path: Path
) -> None:
    """A converted runtime failing on Analyze: the risk comes from fp32, and the table beside it from the same engine."""
    _on_a_named_engine(monkeypatch, test_ensemble_checkpoint, sqlite_url, tmp_path, fails=True)
    at = _analyze(_with_sample(_page("analyze.py")).run())
    assert not at.exception and not at.error
    assert any("engine: torch channels-last fp32." in c.value for c in at.caption)
    at.button(key="sensitivity").click().run()
    assert not at.exception and not at.info
    [table] = at.dataframe
    assert table.value.set_index("outline").loc["as drawn", "DL mean patch prob."] == _metric(at, DL_LABEL)
    card = _page("model_card.py").run()
    assert any("the faster OpenVINO bf16 stopped working during an analysis" in m.value for m in card.markdown)


def test_an_engine_set_aside_after_the_analysis_ended_asks_for_analyze_again_before_a_sensitivity(
    monkeypatch: pytest.MonkeyPatch, test_ensemble_checkpoint: Path, sqlite_url: str, tmp_path: Path
) -> None:
    """Its table would come from fp32 beside a risk from the set-aside engine: no mixed "as drawn" row."""
    from core.engine import fall_back_to_default

    at, model = _analyzed_on_a_working_named_engine(monkeypatch, test_ensemble_checkpoint, sqlite_url, tmp_path)
    assert any("engine: OpenVINO bf16." in c.value for c in at.caption)
    fall_back_to_default(model, model.engine)  # another session's analysis failed on it meanwhile
    at.run()
    assert not at.exception
    assert [i.value for i in at.info] == [
        "The engine of this analysis has stopped working since; press Analyze again to see the sensitivity."
    ]
    assert not [b for b in at.button if b.key == "sensitivity"]
    _analyze(at)
    assert not at.info and any("engine: torch channels-last fp32." in c.value for c in at.caption)
    at.button(key="sensitivity").click().run()
    assert not at.exception
    [table] = at.dataframe
    assert table.value.set_index("outline").loc["as drawn", "DL mean patch prob."] == _metric(at, DL_LABEL)


def _failing(x: object) -> object:
    raise RuntimeError("the runtime lost its compiled graph")


def test_an_engine_that_fails_during_the_sensitivity_leaves_no_table_from_another_engine(
    monkeypatch: pytest.MonkeyPatch, test_ensemble_checkpoint: Path, sqlite_url: str, tmp_path: Path
) -> None:
    """The risk came from "OpenVINO bf16"; its table, finished on fp32 after it failed, would not match it."""
    at, model = _analyzed_on_a_working_named_engine(monkeypatch, test_ensemble_checkpoint, sqlite_url, tmp_path)
    model.engine.predictors = (_failing,) * len(model.engine.predictors)
    at.button(key="sensitivity").click().run()
    assert not at.exception and not at.dataframe
    assert [i.value for i in at.info] == [
        "The engine of this analysis has stopped working since; press Analyze again to see the sensitivity."
    ]
    assert at.session_state["result"]["sensitivity"] is None


def test_an_engine_the_model_no_longer_runs_failing_on_a_request_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, test_ensemble_checkpoint: Path, sqlite_url: str, tmp_path: Path
) -> None:
    """No engine to give way to (the request held one the model had replaced): a sentence, never a traceback."""
    from core.engine import default_engine

    at, model = _analyzed_on_a_working_named_engine(monkeypatch, test_ensemble_checkpoint, sqlite_url, tmp_path)
    held = model.engine
    model.engine = default_engine(list(model.ensemble))  # replaced since the analysis took it
    held.predictors = (_failing,) * len(held.predictors)
    at.button(key="sensitivity").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "The inference engine failed on this request (the reason is in the log); press Analyze again."
    ]


def test_an_imported_seg_with_a_liver_segment_lets_the_surgeon_pick_the_tumour_segment(app_env: None) -> None:
    from core.series import upload_digest
    from tests.core.ct_series import as_files, series_datasets
    from tests.core.test_segmentation import _seg

    datasets = series_datasets(3)
    tumour = np.zeros((3, 128, 128), bool)
    tumour[1, 40:80, 40:90] = True
    files = [*as_files(datasets, seed=2), ("outline.dcm", _seg(datasets, tumour))]
    tag = upload_digest(files)[:12]
    at = _page("analyze.py")
    at.session_state["case_source"] = {"name": "4 files", "files": files, "hash": upload_digest(files)}
    at.run()
    [pick] = [s for s in at.selectbox if s.key == f"outline_pick_{tag}"]
    pick.set_value(next(o for o in pick.options if o.startswith("outline.dcm"))).run()
    at.button(key="import_outline").click().run()
    assert not at.exception
    assert any("segment 2: Tumor" in c.value for c in at.caption)  # the segment named as a tumour by default
    segment = at.selectbox(key=f"outline_segment_{tag}")
    assert segment.value == 2 and len(segment.options) == 2
    segment.set_value(1).run()
    at.button(key="import_outline").click().run()
    assert not at.exception
    assert any("segment 1: Liver" in c.value for c in at.caption)
    outlined = sorted(int(slot.rsplit(":", 1)[1]) for slot in at.session_state["initial_outlines"])
    assert outlined == [0, 1, 2]  # the liver is on every slice
    at.selectbox(key=f"outline_segment_{tag}").set_value(2).run()
    at.button(key="import_outline").click().run()
    outlined = sorted(int(slot.rsplit(":", 1)[1]) for slot in at.session_state["initial_outlines"])
    assert outlined == [1]  # back to the tumour: the liver's outlines on the other slices are gone


def test_a_risk_from_a_contrast_series_carries_the_warning_beside_it(app_env: None) -> None:
    from core.outline import mask_to_fabric
    from core.roi import FABRIC_VERSION
    from core.series import scan_upload, upload_digest
    from tests.core.ct_series import as_files, series_datasets

    files = as_files(series_datasets(3, description="Arterial phase", contrast=True), seed=5)
    digest = upload_digest(files)
    yy, xx = np.mgrid[0:128, 0:128] + 0.5
    tumour = (yy - 60) ** 2 + (xx - 70) ** 2 <= 26**2
    view = canvas_view_for((128, 128), CANVAS_WIDTH_PX)
    slot = f"{digest[:12]}:{scan_upload(files).ct_series[0].key}:1"  # the middle slice, where the slider starts
    at = _page("analyze.py")
    at.session_state["case_source"] = {"name": "3 files", "files": files, "hash": digest}
    at.session_state["initial_outlines"] = {slot: {"version": FABRIC_VERSION, "objects": mask_to_fabric(tumour, view)}}
    _analyze(at.run())
    assert not at.exception and _metric(at, DL_LABEL).endswith("%")
    assert any(
        w.value == "This risk comes from a contrast series; the model was trained on plain CT." for w in at.warning
    )


def test_a_follow_up_is_recorded_from_dates_as_intervals_and_unknown_is_not_negative(
    app_env: None, sqlite_url: str
) -> None:
    from datetime import date, timedelta

    from sqlalchemy import select

    from tests.core.test_db import _new_case

    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    with Session(engine) as session:
        db.add_case(session, *_new_case("P-follow"))
        session.commit()
    at = _page("cases.py").run()
    case_id = at.session_state["open_case"]
    surgery = date.today() - timedelta(days=400)
    at.date_input(key=f"surgery_{case_id}").set_value(surgery).run()
    at.radio(key=f"event_{case_id}").set_value("no recurrence so far").run()
    at.date_input(key=f"when_{case_id}_follow_up").set_value(surgery + timedelta(days=100)).run()
    at.button(key=f"save_outcome_{case_id}").click().run()
    assert not at.exception
    assert any(s.value.startswith("Outcome recorded: Unknown: followed 100 days") for s in at.success)
    assert at.dataframe[0].value["outcome"].tolist() == ["unknown"]
    # a recurrence 200 days after surgery: early; a date before surgery is refused in one sentence
    at.radio(key=f"event_{case_id}").set_value("recurrence").run()
    assert at.date_input(key=f"when_{case_id}_recurrence").value is None  # the follow-up date is not relabelled
    at.date_input(key=f"when_{case_id}_recurrence").set_value(surgery - timedelta(days=1)).run()
    at.button(key=f"save_outcome_{case_id}").click().run()
    assert [e.value for e in at.error] == ["The recurrence date must be after the date of surgery."]
    at.date_input(key=f"when_{case_id}_recurrence").set_value(surgery + timedelta(days=200)).run()
    at.button(key=f"save_outcome_{case_id}").click().run()
    assert any("Early recurrence: recurrence 200 days after surgery." in s.value for s in at.success)
    with Session(engine) as session:
        rows = session.scalars(select(db.Outcome).order_by(db.Outcome.id)).all()
        assert [(r.early_recurrence, r.days_followed, r.days_to_recurrence) for r in rows] == [
            (None, 100, None),
            (True, None, 200),
        ]
    engine.dispose()


def test_validation_page_compares_both_models_on_the_saved_cases_with_known_outcomes(
    app_env: None, sqlite_url: str
) -> None:
    from dataclasses import replace

    from core.outcomes import FollowUp
    from tests.core.test_db import _new_case

    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    at = _page("validation.py").run()
    assert any("No model has yet scored" in i.value for i in at.info)
    rng = np.random.default_rng(0)
    with Session(engine) as session:
        for i in range(16):
            early = i % 2 == 0
            new_case, analysis = _new_case(f"P-val-{i}")
            n1 = rng.random() < (0.6 if early else 0.2)
            analysis = replace(
                analysis,
                dl_probability=float(np.clip(rng.normal(0.6 if early else 0.4, 0.15), 0, 1)),
                clinical_probability=11 / 13 if n1 else 9 / 28,
            )
            case = db.add_case(session, replace(new_case, n_category="N1" if n1 else "N0"), analysis)
            session.flush()
            db.record_outcome(session, case.id, FollowUp(100, None) if early else FollowUp(None, 500))
        session.commit()
    at = _page("validation.py").run()
    assert not at.exception
    assert any(m.value.startswith("**16 patients, 8 with early recurrence**") for m in at.markdown)
    assert any("Only 8 patients with and 8 without early recurrence" in w.value for w in at.warning)
    assert any(
        w.value.startswith("test: Untrained (random) weights") for w in at.warning
    )  # which model, and its warning
    [table] = at.dataframe
    assert list(table.value["model"]) == ["ResNet50 (mean patch probability)", "N-category logistic regression"]
    assert any(m.value.startswith("DeLong test, AUC(deep learning) − AUC(clinical):") for m in at.markdown)
    engine.dispose()


def test_cohort_page_shows_table1_of_saved_cases_with_a_known_outcome(app_env: None, sqlite_url: str) -> None:
    from dataclasses import replace

    from core.outcomes import FollowUp
    from tests.core.test_db import _new_case

    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    at = _page("cohort.py").run()
    assert any("Table 1 needs patients with and without" in i.value for i in at.info)
    with Session(engine) as session:
        patients = [
            (True, "N1", 60.0),
            (True, "N1", 45.0),
            (True, "N0", 70.0),
            (False, "N0", 30.0),
            (False, "N0", 25.0),
        ]
        patients.append((False, "N1", 35.0))  # six sizes: a continuous variable (core.table1.MIN_CONTINUOUS_LEVELS)
        for i, (early, n_category, size) in enumerate(patients):
            new_case, analysis = _new_case(f"P-t1-{i}")
            case = db.add_case(session, replace(new_case, n_category=n_category, tumour_size_mm=size), analysis)
            session.flush()
            db.record_outcome(session, case.id, FollowUp(100, None) if early else FollowUp(None, 500))
        unknown, analysis = _new_case("P-t1-unknown")  # no outcome: not in Table 1
        db.add_case(session, unknown, analysis)
        session.commit()
    at = _page("cohort.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns[:5]) == [
        "variable",
        "level",
        "all (n=6)",
        "early recurrence (n=3)",
        "no early recurrence (n=3)",
    ]
    size = table[table["variable"] == "tumour_size_mm"].iloc[0]
    assert size["level"] == "median (range)" and size["early recurrence (n=3)"] == "60 (45–70)"
    assert size["test"] == "Mann-Whitney U (two-sided)"
    n_rows = table[table["level"].isin(["N0", "N1"])]
    assert list(n_rows["all (n=6)"]) == ["3 (50.0)", "3 (50.0)"]
    assert list(n_rows["early recurrence (n=3)"]) == ["1 (33.3)", "2 (66.7)"]
    engine.dispose()


def test_model_card_names_the_clinical_model_in_use_and_lists_local_versions(app_env: None, sqlite_url: str) -> None:
    from core.clinical_refit import refit
    from tests.core.test_clinical_refit import paper_patients

    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    at = _page("model_card.py").run()
    assert any(
        "**In use:** Logistic regression on UICC N category (paper Table 1, n = 41)" in m.value for m in at.markdown
    )
    with Session(engine) as session:
        row = db.add_clinical_model(session, refit(paper_patients(), "N").to_dict(), "41 saved cases")
        db.use_clinical_model(session, row.id)
        session.commit()
    at = _page("model_card.py").run()
    assert not at.exception
    assert any("local version 1: 41 patients, 20 events" in m.value for m in at.markdown)
    versions = at.dataframe[-1].value
    assert list(versions["in use"]) == ["yes"] and list(versions["patients"]) == [41]
    engine.dispose()


def _holds(root: object, data: bytes) -> bool:
    """Whether ``root`` reaches a bytes object equal to ``data`` through containers, dataclasses and BytesIO."""
    from dataclasses import fields, is_dataclass

    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, bytes | bytearray):
            if len(item) == len(data) and item == data:
                return True
        elif isinstance(item, io.BytesIO):
            stack.append(item.getvalue())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name, None) for f in fields(item))
    return False


def test_an_uploaded_zip_is_let_go_once_read(app_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit keeps an upload in memory until the session ends: once read, neither its upload store nor
    the session (widget state included) holds the ZIP's bytes, the uploader is empty, and the case stays."""
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec
    from streamlit.testing.v1 import local_script_runner

    from tests.core.ct_series import as_files, series_datasets, zip_of

    stores: list[MemoryUploadedFileManager] = []

    class Recorded(MemoryUploadedFileManager):
        """An upload store that AppTest gave a file, kept to look into after the run."""

        def add_file(self, session_id: str, file: UploadedFileRec) -> None:
            super().add_file(session_id, file)
            stores.append(self)

    monkeypatch.setattr(local_script_runner, "MemoryUploadedFileManager", Recorded)
    archive = zip_of(as_files(series_datasets(3)))
    at = _page("analyze.py").run()
    at.file_uploader[0].upload("pacs-export.zip", archive, "application/zip")
    at.run()
    assert not at.exception
    assert any(c.value.startswith("Slice 2 of 3") for c in at.caption)  # the case is on screen
    assert stores and all(not any(store.file_storage.values()) for store in stores)
    assert not at.file_uploader[0].value
    assert not _holds(at.session_state._state._state, archive)  # the whole SessionState, widget values included
    at.slider[0].set_value(3).run()  # the slices stay loadable without the ZIP
    assert not at.exception and any(c.value.startswith("Slice 3 of 3") for c in at.caption)


def _saved_case(sqlite_url: str, key: str) -> int:
    from tests.core.test_db import _new_case

    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    with Session(engine) as session:
        case = db.add_case(session, *_new_case(key))
        session.commit()
        case_id = case.id
    engine.dispose()
    return case_id


def test_a_viewer_reads_cases_but_sees_no_export_outcome_delete_or_audit(
    app_env: None, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pages.common
    from core.access import Actor, Role

    case_id = _saved_case(sqlite_url, "P-viewer")
    monkeypatch.setattr(pages.common, "local_actor", lambda _address: Actor("oidc:viewer", Role.VIEWER))
    at = _page("cases.py").run()
    assert not at.exception and not at.error
    assert _metric(at, DL_LABEL) == "70%"  # the case is read
    assert not [b for b in at.button if b.label in ("Save outcome", "Delete case")]
    assert f"confirm_{case_id}" not in [c.key for c in at.checkbox]
    assert not at.get("download_button")
    at = _page("audit.py").run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Your role (viewer) may not read the audit trail; an administrator can give you the admin role."
    ]


def test_the_audit_page_lists_who_opened_and_saved_a_case(app_env: None, sqlite_url: str) -> None:
    _saved_case(sqlite_url, "P-audited")
    at = _page("cases.py").run()
    at.run()  # a rerun of the same case is not a second opening
    assert not at.exception
    assert len(at.get("download_button")) == 2  # an administrator may export: the case table and the case PDF
    at = _page("audit.py").run()
    assert not at.exception and not at.error
    rows = at.dataframe[0].value
    assert list(rows["action"]) == ["case_opened", "case_saved"]
    assert list(rows["case_key"]) == ["P-audited", "P-audited"]
    assert rows["actor"][0].startswith("local:") and rows["actor"][1] == "test:admin"
    assert len(rows["input_sha256"][1]) == 64 and rows["model_sha256"][0] == "f" * 64


def test_served_to_the_network_without_sign_in_a_page_shows_one_sentence_and_nothing_else(
    app_env: None, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pages.common
    from core.access import NETWORK_WITHOUT_SIGN_IN

    _saved_case(sqlite_url, "P-hidden")
    monkeypatch.setattr(pages.common, "local_actor", lambda _address: None)
    at = _page("cases.py").run()
    assert not at.exception
    assert [e.value for e in at.error] == [NETWORK_WITHOUT_SIGN_IN]
    assert not at.dataframe and not at.metric and not at.selectbox


def test_an_analysis_on_screen_is_audited_with_its_model_and_input_before_any_save(
    app_env: None, sqlite_url: str
) -> None:
    from sqlalchemy import select

    at = _analyze(_with_sample(_page("analyze.py")).run())
    assert not at.exception
    engine = db.make_engine(sqlite_url)
    with Session(engine) as session:
        [event] = session.scalars(select(db.AuditEvent)).all()
    assert (event.action, event.case_key, event.actor[:6]) == ("case_analysed", None, "local:")
    assert event.model_sha256 and len(event.input_sha256) == 64 and event.detail["n_patches"] > 0
    engine.dispose()


def test_without_a_model_at_the_default_path_the_app_starts_the_demo_build_and_says_so(
    app_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pages.common

    missing = tmp_path / "weights" / "model.pt"
    started: list[Path] = []
    monkeypatch.setattr(pages.common, "DEFAULT_MODEL_PATH", missing)
    monkeypatch.setattr(pages.common, "start_background_build", lambda path: started.append(path) or True)
    monkeypatch.setenv("ICCA_MODEL_PATH", str(missing))
    monkeypatch.setenv("ICCA_DEMO_AUTOBUILD", "1")
    at = _page("analyze.py").run()
    assert not at.exception and started == [missing]
    assert any("The demo model is being built in the background" in w.value for w in at.warning)
    monkeypatch.setenv("ICCA_MODEL_PATH", str(tmp_path / "elsewhere.pt"))  # a configured path is never filled
    at = _page("analyze.py").run()
    assert started == [missing] and any("No model is installed" in w.value for w in at.warning)

"""AppTest smoke tests: every page renders; Analyze runs end to end with an injected outline.

AppTest cannot draw on the canvas or upload files, so the slice and the outline are
injected into session state the way the upload widget and the sample button set them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pages.common import SHELL_FLAG, sample_session_state

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def app_env(monkeypatch: pytest.MonkeyPatch, test_checkpoint: Path, sqlite_url: str, tmp_path: Path) -> None:
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


def test_analyze_page_asks_for_a_slice(app_env: None) -> None:
    at = _page("analyze.py").run()
    assert not at.exception
    assert any("Upload a CT slice" in i.value for i in at.info)


def test_analyze_page_runs_and_saves_the_sample_case(app_env: None) -> None:
    at = _with_sample(_page("analyze.py"))
    at.run()
    assert not at.exception
    assert any("patches" in m.value for m in at.markdown)
    at.radio[1].set_value("N1")
    at.button(key="FormSubmitter:clinical-Analyze").click().run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert labels.count("Risk of early recurrence") == 2
    assert any(m.value == "85%" for m in at.metric)  # N1: 11/13 from Table 1
    at.button[-1].click().run()  # Save case
    assert any("Saved as case" in s.value for s in at.success)


def test_unknown_n_category_shows_not_available(app_env: None) -> None:
    at = _with_sample(_page("analyze.py"))
    at.run()
    at.button(key="FormSubmitter:clinical-Analyze").click().run()
    assert any(m.value == "not available" for m in at.metric)


def test_wrong_file_shows_one_sentence(app_env: None) -> None:
    at = _page("analyze.py")
    at.session_state["case_source"] = {"name": "notes.txt", "data": b"hello" * 100, "hash": "x"}
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "This file (TXT) is not a DICOM, PNG or JPEG image; export the CT slice in one of those formats."
    ]


def test_cases_page_empty_then_lists(app_env: None) -> None:
    at = _page("cases.py").run()
    assert not at.exception and any("No saved cases" in i.value for i in at.info)


def test_model_card_page(app_env: None) -> None:
    at = _page("model_card.py").run()
    assert not at.exception
    assert any("untrained test model" in w.value for w in at.warning)


def test_no_model_installed_is_said_plainly(app_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ICCA_MODEL_PATH", str(tmp_path / "missing.pt"))
    at = _page("model_card.py").run()
    assert not at.exception and any("No model is installed" in e.value for e in at.error)


def test_app_shell_renders_sidebar(app_env: None) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert any("Research use only" in c.value for c in at.sidebar.caption)


def test_cases_page_reopens_without_the_model_and_deletes(
    app_env: None, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sqlalchemy.orm import Session

    from core import db
    from tests.core.test_db import _new_case

    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    with Session(engine) as session:
        db.add_case(session, *_new_case("P-reopen"))
        session.commit()
    monkeypatch.setenv("ICCA_MODEL_PATH", str(tmp_path / "no-model.pt"))  # reopening must not need it
    at = _page("cases.py").run()
    assert not at.exception
    assert any(m.value == "70%" for m in at.metric) and any(m.value == "85%" for m in at.metric)
    at.checkbox[0].check().run()
    at.button[0].click().run()
    assert not at.exception
    with Session(engine) as session:
        assert db.list_cases(session) == []
    engine.dispose()

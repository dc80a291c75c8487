"""End to end in a real headless Chromium: upload, outline by mouse clicks, analyze, save, check the row.

Starts ``streamlit run app.py`` on a free loopback port with its own SQLite file and a
real (untrained) ResNet50 checkpoint, then drives it with Playwright.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy.orm import Session

from core import db
from core.roi import polygon_area

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Polygon vertices in canvas pixels (the canvas shows the 128-px CT_small at 640 px: scale 5).
POLYGON = [(200, 200), (440, 180), (480, 400), (300, 470), (180, 380)]
CANVAS_SCALE = 640 / 128

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def app_url(tmp_path: Path, test_checkpoint: Path) -> Iterator[tuple[str, str]]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing; .ci/run must install Debian's chromium package.")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    port = _free_port()
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    env = {
        **os.environ,
        "ICCA_MODEL_PATH": str(test_checkpoint),
        "ICCA_DATABASE_URL": url,
        "ICCA_PSEUDONYM_SECRET": "e2e-secret",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/_stcore/health", proc)
        yield base, url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _wait_for(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("streamlit exited during start-up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@contextmanager
def browser_page(base: str, path: str = "") -> Iterator[Page]:
    """A page of a fresh headless Chromium on the app at ``path``, once the Analyze page has rendered."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(f"{base}/{path}")
            page.wait_for_selector("text=Analyze a case", timeout=60_000)
            yield page
        finally:
            browser.close()


def test_upload_outline_analyze_save(app_url: tuple[str, str]) -> None:
    from playwright.sync_api import expect

    base, db_url = app_url
    with browser_page(base) as page:
        page.set_input_files("input[type=file]", get_testdata_file("CT_small.dcm"))
        page.wait_for_selector("canvas", timeout=30_000)
        page.wait_for_timeout(1_000)
        box = page.locator("canvas").last.bounding_box()
        assert box is not None and round(box["width"]) == 640
        for x, y in [*POLYGON, POLYGON[0]]:  # clicking the first vertex again closes the polygon
            page.mouse.click(box["x"] + x, box["y"] + y)
            page.wait_for_timeout(250)
        page.wait_for_selector("text=patches (", timeout=30_000)
        page.get_by_text("N1", exact=True).click()
        page.get_by_role("button", name="Analyze").click()
        page.wait_for_selector("text=Deep learning (ResNet50)", timeout=180_000)
        expect(page.get_by_text("Clinical model (UICC N1)")).to_be_visible()
        expect(page.get_by_text("85%", exact=True).first).to_be_visible()  # N1 risk from Table 1: 11/13
        page.get_by_role("button", name="Save case").click()
        page.wait_for_selector("text=Saved as case", timeout=30_000)

    engine = db.make_engine(db_url)
    with Session(engine) as session:
        cases = db.list_cases(session)
        assert len(cases) == 1
        case = cases[0]
        mask = db.case_array(session, case, "mask")
        assert case.n_category == "N1" and case.case_key.startswith(("P-", "R-"))
        assert len(case.analyses) == 1 and case.analyses[0].clinical_probability == pytest.approx(11 / 13)
        assert case.analyses[0].n_patches > 0
    expected_px = polygon_area(np.array(POLYGON, dtype=float)) / CANVAS_SCALE**2
    assert mask.shape == (128, 128)
    assert abs(mask.sum() - expected_px) / expected_px < 0.02
    assert case.roi_area_mm2 == pytest.approx(mask.sum() * 0.661468**2, rel=1e-6)
    engine.dispose()


def test_sample_case_loads_with_its_outline_and_analyzes(app_url: tuple[str, str]) -> None:
    """The demo path: one click loads a phantom CT and its outline; the canvas shows it and Analyze works."""
    from playwright.sync_api import expect

    from core.phantom import sample_case
    from core.roi import mask_from_outlines

    base, db_url = app_url
    with browser_page(base) as page:
        page.get_by_role("button", name="Load sample case").click()
        page.wait_for_selector("text=patches (", timeout=60_000)
        page.get_by_role("button", name="Analyze").click()
        page.wait_for_selector("text=Deep learning (ResNet50)", timeout=180_000)
        expect(page.get_by_text("not available", exact=True)).to_be_visible()  # N category left unknown
        page.get_by_role("button", name="Save case").click()
        page.wait_for_selector("text=Saved as case", timeout=30_000)

    sample = sample_case()
    expected = mask_from_outlines([sample.outline_xy], sample.shape)
    engine = db.make_engine(db_url)
    with Session(engine) as session:
        case = db.list_cases(session)[0]
        saved = db.case_array(session, case, "mask")
        assert case.analyses[0].clinical_probability is None
    engine.dispose()
    assert abs(int(saved.sum()) - int(expected.sum())) / expected.sum() < 0.02


def test_deep_link_into_a_fresh_server_goes_through_the_shell(app_url: tuple[str, str]) -> None:
    """Streamlit's legacy pages/ mode would run /model_card alone, without sidebar or notices."""
    from playwright.sync_api import expect

    base, _ = app_url
    with browser_page(base, "model_card") as page:
        expect(page.get_by_text("Case database: connected")).to_be_visible()
        expect(page.locator("[data-testid=stSidebarNav]")).not_to_contain_text("common")

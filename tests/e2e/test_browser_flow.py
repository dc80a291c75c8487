"""End to end in a real headless Chromium: upload, outline by mouse clicks, analyze, save, check the row.

Starts ``streamlit run app.py`` on a free loopback port with its own SQLite file and a
real (untrained) ResNet50 checkpoint, then drives it with Playwright.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy.orm import Session

from core import db
from core.roi import polygon_area

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

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
# Polygon vertices in canvas pixels (the canvas shows the 128-px CT_small 480 px wide: scale 3.75).
POLYGON = [(150, 150), (330, 135), (360, 300), (225, 352), (135, 285)]
CANVAS_SCALE = 480 / 128

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served_app(
    tmp_path: Path,
    model_path: Path,
    extra_args: Sequence[str] = (),
    port: int | None = None,
    show_log: bool = True,
) -> Iterator[tuple[str, str]]:
    """``streamlit run app.py`` on a free loopback port with its own SQLite file; yields (base URL, database URL).

    ``extra_args`` are more ``streamlit run`` options (e.g. ``--secrets.files``); ``port`` a port chosen beforehand.
    With ``show_log``, the end of the app's log is printed when it stops: pytest shows a test's
    printed output only when the test fails, and then it is the server's side of the failure
    (e.g. the traceback of a download that could not be built; the e2e data is synthetic).
    """
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing; .ci/run must install Debian's chromium package.")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    port = port or _free_port()
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    env = {
        **os.environ,
        "ICCA_MODEL_PATH": str(model_path),
        "ICCA_DATABASE_URL": url,
        "ICCA_PSEUDONYM_SECRET": "e2e-secret",
        "ICCA_ENGINE_CACHE": str(tmp_path / "engine-choice.json"),  # this machine's ranking stays out of the test
    }
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true", *extra_args]
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / f"streamlit-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(f"{base}/_stcore/health", proc)
            yield base, url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if show_log:  # the server wrote through its own descriptor: the file is complete once it has stopped
                print(f"--- the last lines of the app's log ({log_path.name}) ---")
                print("\n".join(log_path.read_text(errors="replace").splitlines()[-60:]))


@pytest.fixture()
def app_url(tmp_path: Path, test_checkpoint: Path) -> Iterator[tuple[str, str]]:
    with served_app(tmp_path, test_checkpoint) as served:
        yield served


@pytest.fixture()
def ensemble_app_url(tmp_path: Path, test_ensemble_checkpoint: Path) -> Iterator[tuple[str, str]]:
    with served_app(tmp_path, test_ensemble_checkpoint) as served:
        yield served


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
def browser_page(base: str, path: str = "", height: int = 2200) -> Iterator[Page]:
    """A page of a fresh headless Chromium on the app at ``path``, once the Analyze page has rendered.

    1400 px wide; tall (2200 px) by default so that tests need not scroll, except where the
    layout on a real 1400 × 900 screen is what is tested.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.goto(f"{base}/{path}")
            page.wait_for_selector("text=Analyze a case", timeout=60_000)
            yield page
        finally:
            browser.close()


def _pixel_centre_mask(polygon_xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the polygon, by OpenCV's point test (independent of core.roi)."""
    contour = polygon_xy.astype(np.float32).reshape(-1, 1, 2)
    rows, cols = shape
    return np.array(
        [[cv2.pointPolygonTest(contour, (c + 0.5, r + 0.5), False) > 0 for c in range(cols)] for r in range(rows)]
    )


def _idle(page: Page, timeout_ms: int = 180_000) -> None:
    """Wait until the app's script has finished its run.

    Streamlit keeps the previous run's elements on screen (stale) while a rerun builds the new
    ones: a click then can land on an element about to be replaced and be lost, or a locator
    can match both copies. Every click in these tests waits for a finished run first.
    """
    page.wait_for_selector(
        "[data-testid=stApp][data-test-script-state=notRunning]", state="attached", timeout=timeout_ms
    )


def _press(page: Page, button: str, then: str, timeout_ms: int = 60_000) -> None:
    """Click the button named ``button`` once the run has finished, and wait for the text ``then``."""
    _idle(page)
    page.get_by_role("button", name=button).click()
    page.wait_for_selector(f"text={then}", timeout=timeout_ms)


def _load_sample(page: Page) -> None:
    _press(page, "Load sample", "largest diameter")


def _analyze(page: Page) -> None:
    """Press Analyze until a result shows (at most 3 presses).

    A rerun the canvas component requests just after the sample loads can swallow a click (the
    button's value is true for one run only); the analysis itself runs inside the script's run,
    so once the app is idle again the result is there or the click was lost.
    """
    _press_until_shown(page, "Analyze", "Deep learning (ResNet50 patches)")


def _press_until_shown(page: Page, button: str, text: str, before: Callable[[], None] | None = None) -> None:
    """Press ``button`` (after ``before``, e.g. filling a form) until ``text`` shows: at most 3 presses.

    The press's work runs inside the script's run, so once the app is idle again ``text`` is
    there, or a rerun that started just before swallowed the click (a button is true for one run).
    """
    for _ in range(3):
        if before is not None:
            before()
        _idle(page)
        page.get_by_role("button", name=button).click()
        page.wait_for_timeout(1_000)
        _idle(page)
        if page.get_by_text(text).count():
            return
    raise AssertionError(f"three presses of {button!r} did not show {text!r}")


def _selectbox(page: Page, label: str) -> Locator:
    """The one selectbox labelled ``label``, once the run's stale copy (if any) is gone.

    After a rerun that moves an element (another element appeared above it), Streamlit shows
    the old copy until the new page is complete; the browser can still hold both for a moment
    after the run has finished, so wait until exactly one is left.
    """
    from playwright.sync_api import expect

    _idle(page)
    box = page.locator("[data-testid=stSelectbox]").filter(has_text=label)
    expect(box).to_have_count(1, timeout=30_000)
    return box


def _choose(page: Page, label: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox labelled ``label``."""
    _selectbox(page, label).click()
    page.get_by_role("option", name=option, exact=True).click()


def test_outline_analyze_then_inputs_are_saved_as_shown(app_url: tuple[str, str]) -> None:
    """Draw by mouse, analyse, THEN enter the clinical inputs: the saved case holds them and the drawn outline."""
    from playwright.sync_api import expect

    base, db_url = app_url
    with browser_page(base) as page:
        page.locator("input[type=file]").first.set_input_files(get_testdata_file("CT_small.dcm"))
        page.wait_for_selector("canvas", timeout=30_000)
        page.wait_for_timeout(1_000)
        box = page.locator("canvas").last.bounding_box()
        assert box is not None and round(box["width"]) == 480
        for x, y in [*POLYGON, POLYGON[0]]:  # clicking the first vertex again closes the polygon
            page.mouse.click(box["x"] + x, box["y"] + y)
            page.wait_for_timeout(250)
        page.wait_for_selector("text=largest diameter", timeout=30_000)
        _analyze(page)
        expect(page.get_by_text("Clinical model (N category unknown)")).to_be_visible()
        page.get_by_text("N1", exact=True).click()
        expect(page.get_by_text("Clinical model (UICC N1)")).to_be_visible()
        expect(page.get_by_text("85%", exact=True).first).to_be_visible()  # N1 risk from Table 1: 11/13
        _choose(page, "UICC T category", "T2")
        page.get_by_label("Tumour size (mm)", exact=True).fill("42")
        page.get_by_label("Tumour size (mm)", exact=True).press("Enter")
        _choose(page, "Tumour number", "solitary")
        page.wait_for_timeout(1_000)
        _press(page, "Save case", "Saved as case", timeout_ms=30_000)
        _idle(page)
        page.get_by_role("button", name="Save case").click()
        page.wait_for_selector("text=Already saved as case", timeout=30_000)

    engine = db.make_engine(db_url)
    with Session(engine) as session:
        cases = db.list_cases(session)
        assert len(cases) == 1  # two presses, one case
        case = cases[0]
        mask = db.case_array(session, case, "mask")
        assert (case.n_category, case.t_category, case.tumour_size_mm, case.solitary) == ("N1", "T2", 42.0, True)
        assert case.case_key.startswith(("P-", "R-"))
        assert len(case.analyses) == 1 and case.analyses[0].clinical_probability == pytest.approx(11 / 13)
        assert case.analyses[0].n_patches > 0 and case.analyses[0].training_data == "untrained"
    engine.dispose()
    drawn = np.array(POLYGON, dtype=float) / CANVAS_SCALE
    expected = _pixel_centre_mask(drawn, (128, 128))
    assert mask.shape == (128, 128)
    assert abs(mask.sum() - polygon_area(drawn)) / polygon_area(drawn) < 0.02
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert iou >= 0.95, f"saved outline is not where it was drawn (IoU {iou:.3f})"
    assert case.roi_area_mm2 == pytest.approx(mask.sum() * 0.661468**2, rel=1e-6)


def test_sample_replaces_an_upload_and_clearing_the_canvas_clears_the_outline(app_url: tuple[str, str]) -> None:
    from playwright.sync_api import expect

    from core.figures import sample_case_facts

    base, _ = app_url
    with browser_page(base) as page:
        page.locator("input[type=file]").first.set_input_files(get_testdata_file("CT_small.dcm"))
        expect(page.get_by_text("CT_small.dcm")).to_be_visible(timeout=30_000)
        _load_sample(page)
        expect(page.get_by_text("CT_small.dcm")).to_have_count(0)  # the uploader let go of the upload
        page.get_by_label("Tumour size (mm)", exact=True).fill("30")  # any rerun: the sample must stay
        page.get_by_label("Tumour size (mm)", exact=True).press("Enter")
        page.wait_for_timeout(1_500)
        area_mm2 = sample_case_facts()[2]  # the sample's outline, as the README's figures give it
        expect(page.get_by_text(f"{area_mm2:,.0f} mm²", exact=False)).to_be_visible()
        _idle(page)
        page.get_by_role("button", name="Clear outline").click()
        expect(page.get_by_text("No tumour outline yet", exact=False)).to_be_visible(timeout=30_000)
        expect(page.get_by_role("button", name="Analyze")).to_be_disabled()


def test_resetting_a_drawn_outline_leaves_no_outline(app_url: tuple[str, str]) -> None:
    from playwright.sync_api import expect

    base, _ = app_url
    with browser_page(base) as page:
        page.locator("input[type=file]").first.set_input_files(get_testdata_file("CT_small.dcm"))
        page.wait_for_selector("canvas", timeout=30_000)
        page.wait_for_timeout(1_000)
        box = page.locator("canvas").last.bounding_box()
        assert box is not None
        for x, y in [*POLYGON, POLYGON[0]]:
            page.mouse.click(box["x"] + x, box["y"] + y)
            page.wait_for_timeout(250)
        page.wait_for_selector("text=largest diameter", timeout=30_000)
        _idle(page)
        page.get_by_role("button", name="Reset canvas & history").click()
        expect(page.get_by_text("No tumour outline yet", exact=False)).to_be_visible(timeout=30_000)
        expect(page.get_by_role("button", name="Analyze")).to_be_disabled()


def test_sample_case_with_a_fold_ensemble_shows_and_saves_its_spread_and_outline_sensitivity(
    ensemble_app_url: tuple[str, str],
) -> None:
    """The demo path with a two-fold ensemble: one click loads the sample and its outline; the risk comes
    with the folds' spread; the outline sensitivity table is computed on request, saved, and reopened."""
    from playwright.sync_api import expect

    from core.phantom import sample_case
    from core.roi import mask_from_outlines

    base, db_url = ensemble_app_url
    with browser_page(base) as page:
        _load_sample(page)
        _analyze(page)
        expect(page.get_by_text("not available", exact=True)).to_be_visible()  # N category left unknown
        expect(page.get_by_text("Across its 2 fold models", exact=False)).to_be_visible()
        _idle(page)
        page.get_by_role("button", name="Outline sensitivity (±1 and ±2 mm)").click()
        page.wait_for_selector("text=Outline sensitivity:", timeout=180_000)
        table = page.locator("[data-testid=stDataFrame]").filter(has_text="")
        expect(table.first).to_be_visible()
        _press(page, "Save case", "Saved as case", timeout_ms=30_000)
        page.get_by_role("link", name="Cases").first.click()
        page.wait_for_selector("text=Saved cases", timeout=60_000)
        expect(page.get_by_text("Across its 2 fold models", exact=False)).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Outline sensitivity:", exact=False)).to_be_visible()

    sample = sample_case()
    expected = mask_from_outlines([sample.outline_xy], sample.shape)
    engine = db.make_engine(db_url)
    with Session(engine) as session:
        case = db.list_cases(session)[0]
        saved = db.case_array(session, case, "mask")
        analysis = case.analyses[0]
        assert analysis.clinical_probability is None
        uncertainty = analysis.uncertainty
    engine.dispose()
    assert abs(int(saved.sum()) - int(expected.sum())) / expected.sum() < 0.02
    spread = uncertainty["analysis"]["spread"]
    assert spread["names"] == ["fold 1", "fold 2"] and len(spread["risks"]) == 2
    assert spread["low"] <= analysis.dl_probability <= spread["high"]
    rows = uncertainty["sensitivity"]["rows"]
    assert [r["offset_mm"] for r in rows] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert next(r for r in rows if r["offset_mm"] == 0)["risk"] == pytest.approx(analysis.dl_probability)


def test_on_a_1400_by_900_screen_the_overlay_and_both_risks_are_visible_without_scrolling(
    app_url: tuple[str, str],
) -> None:
    """Issue 7's layout: slice and outline on the left; the overlay and both risks together on the right."""
    base, _ = app_url
    with browser_page(base, height=900) as page:
        _load_sample(page)
        _analyze(page)
        page.wait_for_timeout(1_000)  # let the page settle after the rerun
        scroller = page.locator("[data-testid=stMain]")
        scroller.evaluate("element => element.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        for text in (
            "Heatmap opacity",  # above the overlay
            "Per-patch probability of early recurrence",  # the overlay's caption, below it
            "Mean patch probability (uncalibrated)",
            "Fitted probability of early recurrence",
        ):
            box = page.get_by_text(text, exact=False).first.bounding_box()
            assert box is not None, text
            assert box["y"] >= 0 and box["y"] + box["height"] <= 900, (text, box)
        canvas = page.locator("canvas").first.bounding_box()
        overlay = page.get_by_text("Per-patch probability of early recurrence", exact=False).first.bounding_box()
        assert canvas is not None and overlay is not None
        assert canvas["x"] + canvas["width"] <= overlay["x"]  # outline on the left, results on the right


@pytest.mark.parametrize(("path", "heading"), [("cases", "Saved cases"), ("model_card", "Model card")])
def test_deep_link_into_a_fresh_server_opens_that_page(app_url: tuple[str, str], path: str, heading: str) -> None:
    """Streamlit's legacy pages/ mode would run the page alone; the shell must then open that same page."""
    from playwright.sync_api import sync_playwright

    base, _ = app_url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/{path}")
            page.get_by_role("heading", name=heading).wait_for(timeout=60_000)
            # The sidebar starts folded (pages are in the top bar): the shell ran if its caption is there.
            page.get_by_text("Case database: connected").wait_for(state="attached", timeout=10_000)
            assert page.locator("a[href$='/common']").count() == 0  # the helper module is not a page
            assert page.locator("a[href$='/cases']").count() >= 1
            assert page.get_by_role("heading", name="Analyze a case").count() == 0
        finally:
            browser.close()


def test_zip_with_two_shuffled_series_pick_slice_import_seg_analyze_save(
    app_url: tuple[str, str], tmp_path: Path
) -> None:
    """A PACS export: a ZIP of two series (files shuffled) and a SEG; pick the plain series, move to a
    slice, import the SEG (it moves to its own slice), analyse and save; the case records the series."""
    from playwright.sync_api import expect

    from core.dicomref import source_reference_of, uid_hash
    from core.segmentation import export_seg
    from tests.core.ct_series import as_files, series_datasets, zip_of

    plain = series_datasets(5, description="Plain abdomen 5mm")
    contrast = series_datasets(4, description="Arterial phase 2mm", contrast=True, dz=2.0)
    yy, xx = np.mgrid[0:128, 0:128] + 0.5
    tumour = (yy - 60) ** 2 + (xx - 70) ** 2 <= 26**2
    seg = export_seg(tumour, source_reference_of(plain[3]))  # on the 4th slice along the stack
    archive = tmp_path / "pacs-export.zip"
    archive.write_bytes(zip_of([*as_files(plain, "A", 1), *as_files(contrast, "B", 2), ("SEG0001", seg)]))

    base, db_url = app_url
    with browser_page(base) as page:
        page.locator("input[type=file]").first.set_input_files(str(archive))
        page.wait_for_selector("text=Series", timeout=60_000)
        expect(page.get_by_text("taken with contrast")).to_be_visible()  # the first listed is the contrast one
        _selectbox(page, "Series").click()
        page.get_by_role("option", name=re.compile("Plain abdomen")).click()
        expect(page.get_by_text("Slice 3 of 5", exact=False)).to_be_visible(timeout=30_000)
        page.get_by_role("slider").first.focus()
        page.keyboard.press("ArrowLeft")  # move to another slice
        expect(page.get_by_text("Slice 2 of 5", exact=False)).to_be_visible(timeout=30_000)
        _selectbox(page, "An outline in this upload").click()
        page.get_by_role("option", name=re.compile("SEG0001")).click()
        _idle(page)
        page.get_by_role("button", name="Import outline").click()
        expect(page.get_by_text("Slice 4 of 5", exact=False)).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Imported outline: DICOM SEG", exact=False)).to_be_visible()
        _analyze(page)
        _press(page, "Save case", "Saved as case", timeout_ms=30_000)

    engine = db.make_engine(db_url)
    with Session(engine) as session:
        [case] = db.list_cases(session)
        mask = db.case_array(session, case, "mask")
        pixels = db.case_array(session, case, "slice")
        ref = case.source_ref
    engine.dispose()
    np.testing.assert_array_equal(mask, tumour)  # the SEG's outline, exactly
    assert ref["series_uid_hash"] == uid_hash(plain[0].SeriesInstanceUID, b"e2e-secret")
    assert ref["sop_uid_hash"] == uid_hash(plain[3].SOPInstanceUID, b"e2e-secret")
    assert ref["position_mm"] == pytest.approx(-85.0)  # z0 −100 mm + 3 × 5 mm
    hu = plain[3].pixel_array.astype(np.float32) + float(plain[3].RescaleIntercept)
    np.testing.assert_array_equal(pixels, hu)  # the 4th slice (each slice's HU differ by its index)
    assert "Plain" not in str(ref) and all(len(str(v)) < 40 for v in ref.values())  # hashes, no UIDs


def _type_date(page: Page, label: str, value: str) -> None:
    """Type ``value`` (YYYY/MM/DD) into the Streamlit date field labelled ``label``, segment by segment.

    Streamlit's date input is a segmented field (year, month and day spin buttons), not a text box.
    As with a selectbox, the browser can still hold a rerun's stale copy of the field for a moment
    after the run has finished (or one can start mid-typing): digits typed there are lost, so each
    segment is typed only once one copy of it is left.
    """
    from playwright.sync_api import expect

    _idle(page)
    year, month, day = value.split("/")
    field = page.get_by_label(label, exact=True)
    for unit, digits in (("year", year), ("month", month), ("day", day)):
        segment = field.get_by_role("spinbutton", name=re.compile(unit, re.IGNORECASE))
        expect(segment).to_have_count(1, timeout=30_000)
        segment.click()
        page.keyboard.type(digits, delay=80)  # one key at a time: the field moves focus between segments
    page.locator("h1").first.click()  # leave the field (Tab would open its calendar): the value is committed
    page.wait_for_timeout(500)


def _download(page: Page, button: str) -> bytes:
    """Press a download button and return the file the browser received (at most 3 presses).

    As with Analyze, a rerun that starts just after the app went idle can swallow the click.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):
        _idle(page)
        page.wait_for_timeout(500)
        _idle(page)
        try:
            with page.expect_download(timeout=20_000) as download:
                page.get_by_role("button", name=button).click()
            return Path(download.value.path()).read_bytes()
        except PlaywrightTimeout:
            continue  # a file that failed to build leaves its traceback in the app's log, printed on failure
    raise AssertionError(f"three presses of {button!r} downloaded nothing")


def test_outcome_recorded_in_the_browser_enters_the_validation_page_and_both_pdfs_read_back(
    ensemble_app_url: tuple[str, str],
) -> None:
    """Save a phantom case, record its outcome by dates, open the validation page, download both PDFs.

    On the 64-px ensemble: the sample's hundreds of patches at 224 px take minutes on a 2-core AVX2 CPU.
    """
    from dataclasses import replace

    from playwright.sync_api import expect

    from core.outcomes import FollowUp
    from tests.core.test_db import _new_case
    from tests.core.test_validation_report import pdftotext

    base, db_url = ensemble_app_url
    with browser_page(base) as page:
        _load_sample(page)
        _analyze(page)
        page.get_by_text("N1", exact=True).click()
        _press(page, "Save case", "Saved as case", timeout_ms=30_000)

    # Four more patients scored by the same model, saved through core (the page's own save path),
    # so that the validation page has 2 per class; the browser's case is the fifth.
    engine = db.make_engine(db_url)
    with Session(engine) as session:
        [first] = db.list_cases(session)
        scored = first.analyses[0]
        for i, (early, dl) in enumerate([(True, 0.7), (False, 0.2), (False, 0.4), (True, 0.9)]):
            new_case, analysis = _new_case(f"P-e2e-{i}")
            analysis = replace(
                analysis,
                model_sha256=scored.model_sha256,
                model_name=scored.model_name,
                training_data=scored.training_data,
                clinical_model=scored.clinical_model,  # one clinical model too: groups are never mixed
                dl_probability=dl,
                clinical_probability=11 / 13 if early else 9 / 28,
            )
            case = db.add_case(session, replace(new_case, n_category="N1" if early else "N0"), analysis)
            session.flush()
            db.record_outcome(session, case.id, FollowUp(120, None) if early else FollowUp(None, 700))
        session.commit()
        first_key, first_id = first.case_key, first.id

    with browser_page(base) as page:
        page.get_by_role("link", name="Cases").first.click()
        page.get_by_role("heading", name="Saved cases").wait_for(timeout=60_000)
        _choose(page, "Open case", next(o for o in _options(page, "Open case") if f"#{first_id} " in o))

        def type_dates() -> None:
            _type_date(page, "Date of surgery", "2025/01/10")
            _type_date(page, "Date of recurrence", "2025/06/10")  # 151 days: early recurrence

        _press_until_shown(page, "Save outcome", "recurrence 151 days after surgery", before=type_dates)
        expect(page.get_by_text("recurrence 151 days after surgery").first).to_be_visible()
        case_text = pdftotext(_download(page, "Case report (PDF)"))
        assert first_key in case_text and "Research use only" in case_text
        assert "151 days" in case_text and "Clinical model (UICC N1)" in case_text

        _idle(page)
        page.get_by_role("link", name="Validation").first.click()
        page.get_by_role("heading", name="Local validation").wait_for(timeout=60_000)
        expect(page.get_by_text("5 patients, 3 with early recurrence").first).to_be_visible()
        report = pdftotext(_download(page, "Validation report (PDF)"))
    assert "local validation report" in report and "5 patients, 3 with early recurrence" in report
    assert scored.model_sha256[:16] in report and "N-category logistic regression" in report
    assert first_key not in report  # counts only: no case key in the validation report
    with Session(engine) as session:
        outcome = db.latest_outcome(session, first_id)
        assert outcome is not None and outcome.days_to_recurrence == 151
    engine.dispose()


def _options(page: Page, label: str) -> list[str]:
    """The option texts of the selectbox labelled ``label`` (opens and closes it)."""
    _selectbox(page, label).click()
    texts = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return texts

"""Several surgeons on one server: each browser session sees only its own case, and a heavy analysis
in one session does not block the others from loading.

One ``streamlit run app.py`` (the real ResNet50 test checkpoint) serves every browser here. Three
sessions, each its own headless Chromium driven from its own thread, upload three different CTs
(a single DICOM file, a ZIP of a series, two files of another series), draw three different
outlines, analyse at the same time and save; each page and each saved case must hold that
session's slice, outline and result only. A fourth session then runs a large outline (hundreds
of patches) while fresh sessions open the Analyze page: the load times with and without it are
printed (and recorded as test properties), never asserted beyond a generous "it still loads".
"""

from __future__ import annotations

import contextlib
import re
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from sqlalchemy.orm import Session

from core import db
from core.outline import measure_outline
from core.preprocess import PreprocessConfig
from core.roi import mask_from_outlines
from tests.core.ct_series import as_files, original_hu, series_datasets, to_bytes, zip_of
from tests.e2e.test_browser_flow import (
    CANVAS_SCALE,
    CHROMIUM,
    CHROMIUM_ARGS,
    _analyze,
    _idle,
    _press,
    browser_page,
    served_app,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e

SPACING_MM = 0.661468  # CT_small's pixel spacing: every case here is built from it
# A page that takes longer than this to open is blocked, not slowed down (the only bound on speed here).
LOAD_CEILING_S = 120.0
LOADS_PER_CONDITION = 3
HEAVY_POLYGON = [(15, 15), (465, 15), (465, 465), (15, 465)]  # nearly the whole slice: ~400 patches


@dataclass(frozen=True)
class Case:
    """One session's case.

    Attributes:
        name: what the page calls the upload ("Loaded: <name>").
        files: the files the session uploads at once.
        polygon: the outline's vertices, canvas pixels.
        hu: the slice the page must show (the series' middle slice), HU.
    """

    name: str
    files: tuple[Path, ...]
    polygon: tuple[tuple[int, int], ...]
    hu: np.ndarray

    @property
    def expected(self) -> tuple[float, int]:
        """The outline's area (mm²) and patch count by ``core``, from the polygon as drawn."""
        mask = mask_from_outlines([np.array(self.polygon, float) / CANVAS_SCALE], self.hu.shape)
        facts = measure_outline(mask, (SPACING_MM, SPACING_MM), PreprocessConfig())
        return float(facts.area_mm2 or 0.0), int(facts.patches or 0)


@dataclass(frozen=True)
class Seen:
    """What one session's page showed once its case was analysed and saved."""

    text: str
    area_mm2: int
    patches: int
    result_patches: int
    risk: str
    case_id: int
    analysed: tuple[float, float]


def _cases(folder: Path) -> list[Case]:
    """Three different CTs (their slices differ by HU offset) with outlines of different sizes."""
    folder.mkdir()
    single = folder / "case-a.dcm"
    single.write_bytes(to_bytes(series_datasets(1, description="Case A")[0]))
    archive = folder / "case-b.zip"
    archive.write_bytes(zip_of(as_files(series_datasets(3, description="Case B"), "B", seed=1)))
    pair = series_datasets(2, description="Case C")
    for ds in pair:  # another 300 HU: this series' slices differ from case B's at the same index
        ds.PixelData = (ds.pixel_array.astype(np.int16) + 300).tobytes()
    names = []
    for index, ds in enumerate(pair):
        names.append(folder / f"case-c-{index}.dcm")
        names[-1].write_bytes(to_bytes(ds))
    return [
        Case("case-a.dcm", (single,), ((150, 150), (250, 150), (250, 250), (150, 250)), original_hu()),
        Case("case-b.zip", (archive,), ((120, 140), (260, 130), (270, 260), (130, 270)), original_hu() + 1),
        Case(
            "2 files",
            tuple(names),
            ((190, 145), (300, 185), (288, 280), (190, 292), (152, 215)),
            original_hu() + 301,
        ),
    ]


def _upload_and_draw(page: Page, case: Case) -> None:
    """Upload the case's files and draw its polygon (clicking the first vertex again closes it)."""
    page.locator("input[type=file]").first.set_input_files([str(path) for path in case.files])
    page.wait_for_selector(f"text=Loaded: {case.name}", timeout=90_000)
    page.wait_for_selector("canvas", timeout=60_000)
    _idle(page)
    page.wait_for_timeout(1_000)
    box = page.locator("canvas").last.bounding_box()
    assert box is not None
    for x, y in [*case.polygon, case.polygon[0]]:
        page.mouse.click(box["x"] + x, box["y"] + y)
        page.wait_for_timeout(250)
    page.wait_for_selector("text=largest diameter", timeout=60_000)
    _idle(page)


def _markdown(page: Page, text: str) -> str:
    """The text of the first markdown or caption on the page that contains ``text``."""
    markdown = page.locator("[data-testid=stMarkdownContainer], [data-testid=stCaptionContainer]")
    return markdown.filter(has_text=text).first.inner_text()


def _session(base: str, case: Case, all_drawn: threading.Barrier) -> Seen:
    """One surgeon: upload, draw, wait for the others, analyse, save; what the page showed."""
    with browser_page(base) as page:
        _upload_and_draw(page, case)
        outline = _markdown(page, "largest diameter")
        found = re.search(r"([\d,]+) mm² · largest diameter .* · ([\d,]+) patches", outline)
        assert found, outline
        all_drawn.wait(timeout=300)  # the three analyses start together
        started = time.monotonic()
        _analyze(page)
        analysed = (started, time.monotonic())
        caption = _markdown(page, "Analysis time:")
        risk = page.locator("[data-testid=stMetricValue]").first.inner_text()  # the deep-learning one comes first
        _press(page, "Save case", "Saved as case", timeout_ms=60_000)
        saved = re.search(r"\(#(\d+)\)", _markdown(page, "Saved as case"))
        assert saved
        return Seen(
            text=page.locator("[data-testid=stMain]").inner_text(),
            area_mm2=int(found.group(1).replace(",", "")),
            patches=int(found.group(2).replace(",", "")),
            result_patches=int(re.search(r"for ([\d,]+) patches", caption).group(1).replace(",", "")),
            risk=risk.strip(),
            case_id=int(saved.group(1)),
            analysed=analysed,
        )


def _load_times(base: str, count: int, still_running: Callable[[], bool] | None = None) -> list[float]:
    """Seconds from navigation until a fresh session's Analyze page has rendered and its run ended.

    One browser, a new context (a new Streamlit session) per load; with ``still_running``, only
    the loads that ended while it was still true are kept. A load past :data:`LOAD_CEILING_S`
    fails the test: the page is then blocked, not slowed down.
    """
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(count):
                context = browser.new_context(viewport={"width": 1400, "height": 1200})
                page = context.new_page()
                started = time.monotonic()
                page.goto(base)
                page.wait_for_selector("text=Analyze a case", timeout=LOAD_CEILING_S * 1000)
                _idle(page, timeout_ms=int(LOAD_CEILING_S * 1000))
                took = time.monotonic() - started
                context.close()
                if still_running is None or still_running():
                    times.append(took)
        finally:
            browser.close()
    return times


class HeavyAnalysis:
    """A fourth session that draws nearly the whole slice and presses Analyze, from its own thread.

    ``running`` is set once its progress bar shows; ``progress`` is the bar's latest text
    ("Patches: 48 of 394"); ``finished_at`` is when its result showed (``None`` while still
    running); ``stop`` lets the thread close its browser.
    """

    def __init__(self, base: str, case: Case) -> None:
        self.base, self.case = base, case
        self.running, self.stop = threading.Event(), threading.Event()
        self.finished_at: float | None = None
        self.patches = 0
        self.progress = ""

    def __call__(self) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        with browser_page(self.base) as page:
            _upload_and_draw(page, self.case)
            outline = _markdown(page, "largest diameter")
            self.patches = int(re.search(r"([\d,]+) patches", outline).group(1).replace(",", ""))
            for _ in range(3):  # a rerun just before the click can swallow it (see _analyze)
                _idle(page)
                page.get_by_role("button", name="Analyze").click()
                try:
                    page.wait_for_selector("[data-testid=stProgress]", timeout=20_000)
                    break
                except PlaywrightTimeout:
                    continue
            else:
                raise AssertionError("the heavy analysis did not start")
            self.running.set()
            bar = page.locator("[data-testid=stProgress]")
            while not self.stop.is_set():
                if self.finished_at is None and page.get_by_text("Deep learning (ResNet50 patches)").count():
                    self.finished_at = time.monotonic()
                elif bar.count():
                    with contextlib.suppress(PlaywrightTimeout):  # the bar can go as the result comes
                        self.progress = " ".join(bar.first.inner_text(timeout=2_000).split())
                page.wait_for_timeout(300)

    def still_running(self) -> bool:
        return self.finished_at is None


def test_three_sessions_see_only_their_own_case_and_a_heavy_analysis_does_not_block_loading(
    tmp_path: Path, test_checkpoint: Path, record_property: Callable[[str, object], None]
) -> None:
    cases = _cases(tmp_path / "cases")
    expected = [case.expected for case in cases]
    assert len({round(area) for area, _ in expected}) == 3 and len({n for _, n in expected}) == 3
    heavy_file = tmp_path / "cases" / "heavy.dcm"
    heavy_file.write_bytes(cases[0].files[0].read_bytes())
    heavy_case = Case("heavy.dcm", (heavy_file,), tuple(HEAVY_POLYGON), original_hu())

    with served_app(tmp_path, test_checkpoint) as (base, db_url):
        all_drawn = threading.Barrier(len(cases))
        with ThreadPoolExecutor(len(cases)) as pool:
            seen = list(pool.map(lambda case: _session(base, case, all_drawn), cases))

        alone = _load_times(base, LOADS_PER_CONDITION)
        heavy = HeavyAnalysis(base, heavy_case)
        with ThreadPoolExecutor(1) as pool:
            worker = pool.submit(heavy)
            while not heavy.running.wait(timeout=1):
                if worker.done():
                    worker.result()  # raises what stopped it
            try:
                progress = [heavy.progress]
                during = _load_times(base, LOADS_PER_CONDITION, heavy.still_running)
                progress.append(heavy.progress)
            finally:
                heavy.stop.set()
            worker.result()

        engine = db.make_engine(db_url)
        with Session(engine) as session:
            saved = {}
            rows = {row.id: row for row in db.list_cases(session)}
            for one in seen:
                case_row = rows[one.case_id]
                saved[one.case_id] = (
                    db.case_array(session, case_row, "slice"),
                    db.case_array(session, case_row, "mask"),
                    case_row.roi_area_mm2,
                    case_row.analyses[0].n_patches,
                    case_row.analyses[0].dl_probability,
                )
        engine.dispose()

    overlap = min(end for _, end in (s.analysed for s in seen)) - max(start for start, _ in (s.analysed for s in seen))
    figures = {
        "sessions_at_once": len(cases),
        "analyses_overlap_s": round(overlap, 1),
        "load_alone_s": [round(t, 2) for t in alone],
        "load_during_heavy_s": [round(t, 2) for t in during],
        "heavy_patches": heavy.patches,
        "heavy_progress_before_and_after_the_loads": progress,
    }
    if alone and during:
        figures["slowdown_ratio"] = round(statistics.median(during) / statistics.median(alone), 2)
    for key, value in figures.items():
        record_property(key, value)
    print(f"\nsessions: {figures}")

    for case, one, (area, _) in zip(cases, seen, expected, strict=True):
        others = [c for c in cases if c is not case]
        assert f"Loaded: {case.name}" in one.text
        assert not any(f"Loaded: {other.name}" in one.text for other in others)
        assert abs(one.area_mm2 - area) / area < 0.03, (case.name, one.area_mm2, area)  # its own outline
        assert one.result_patches == one.patches  # its result is of its own outline
        hu, mask, roi_area, n_patches, probability = saved[one.case_id]
        np.testing.assert_array_equal(hu, case.hu)  # its own slice was analysed and saved
        assert round(roi_area or 0) == one.area_mm2 and round(mask.sum() * SPACING_MM**2) == one.area_mm2
        assert n_patches == one.patches and f"{probability:.0%}" == one.risk
    assert len({one.case_id for one in seen}) == len(cases)

"""Measure the Streamlit server's memory for the largest ZIP the app accepts, uploaded through Chromium.

Not a test (it needs a GiB of disk and several of memory, and minutes): a measurement to repeat by
hand, for example before and after a change to how the Analyze page holds uploads::

    .venv/bin/python -m tests.e2e.upload_memory --zip /tmp/cap.zip            # this working tree
    .venv/bin/python -m tests.e2e.upload_memory --zip /tmp/cap.zip --root DIR  # another copy of the app

It builds (once) the largest ZIP a browser uploads (see :func:`browser_cap_bytes`) of real 512×512
DICOM slices (the phantom sample slice, one series, each slice its own position and SOP instance), serves the
app with ``served_app``, uploads the ZIP in a real Chromium, draws a small outline, analyses, and
prints one JSON object: the server's resident memory (MiB) before the upload, its peak (VmHWM),
once the case is on screen, and after the analysis, with the bytes Streamlit's upload store
still holds (``/_stcore/metrics``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from core.limits import MAX_UPLOAD_MB
from core.phantom import sample_case

SMALL_SQUARE = [(200, 200), (240, 200), (240, 240), (200, 240)]  # canvas px: a few patches


def browser_cap_bytes(cap_mb: int = MAX_UPLOAD_MB) -> int:
    """The largest file Streamlit 1.67's uploader sends from a Linux or macOS browser.

    The server counts ``server.maxUploadSize`` in MiB (2**20 bytes), but the browser checks a file
    against it in units of 1024**2 bytes on Windows only and of 1000**2 bytes elsewhere
    (``static/js/utils.*.js``: ``st = isWindows() ? 1024 : 1e3``), so a 1,000 MiB ZIP is refused
    in the browser ("File must be 1.0GB or smaller") before it is sent.
    """
    return cap_mb * 1000**2


def build_zip(path: Path, cap_bytes: int | None = None) -> int:
    """Write a stored (uncompressed) ZIP of one long series just under ``cap_bytes``; its slice count.

    Stored, so that the ZIP is at the cap and expands to the same size (a PACS export of CT often
    barely compresses); every slice differs in position, SOP instance and pixel values.
    """
    cap_bytes = cap_bytes or browser_cap_bytes()
    base = pydicom.dcmread(io.BytesIO(sample_case().dicom_bytes))
    pixels = base.pixel_array.astype(np.uint16)
    series_uid = generate_uid()
    per_file = len(sample_case().dicom_bytes) + 256  # the header grows a little; a ZIP entry adds ~100 bytes
    count = (cap_bytes - 1024**2) // per_file
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for k in range(count):
            base.SeriesInstanceUID = series_uid
            base.SOPInstanceUID = generate_uid()
            base.file_meta.MediaStorageSOPInstanceUID = base.SOPInstanceUID
            base.InstanceNumber = k + 1
            base.ImagePositionPatient = [base.ImagePositionPatient[0], base.ImagePositionPatient[1], float(k)]
            base.PixelData = (pixels + np.uint16(k % 16)).tobytes()
            buffer = io.BytesIO()
            base.save_as(buffer, enforce_file_format=True)
            archive.writestr(f"SERIES/IM{k:05d}", buffer.getvalue())
    assert path.stat().st_size <= cap_bytes, "the ZIP must be one the app accepts"
    return count


def server_pid(port: int) -> int:
    """The process id of the ``streamlit run`` serving ``port``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"streamlit" in args and str(port).encode() in args:
            return int(proc.name)
    raise RuntimeError(f"no streamlit process serves port {port}")


def status_mib(pid: int, field: str) -> float:
    """A memory field of ``/proc/<pid>/status`` (VmRSS, VmHWM) in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1)) / 1024


def upload_store_bytes(base: str) -> int:
    """Bytes in Streamlit's upload store, from its metrics endpoint (0 when it holds no file)."""
    # the endpoint caches this family for 5 s: wait past that for a fresh number
    time.sleep(6)
    with urllib.request.urlopen(f"{base}/_stcore/metrics?families=cache_memory_bytes", timeout=30) as response:
        text = response.read().decode()
    return sum(int(float(v)) for v in re.findall(r'UploadedFileManager"[^\n]*\}\s+([\d.e+]+)', text))


def measure(root: Path, archive: Path, workdir: Path) -> dict[str, object]:
    """Serve the app in ``root``, upload ``archive``, analyse; the memory figures (see the module)."""
    from playwright.sync_api import sync_playwright

    from core.preprocess import PreprocessConfig
    from models.checkpoint import ALLOWLIST_ENV, allow_checkpoint, make_card, save_checkpoint
    from models.resnet import build_resnet50
    from tests.e2e import test_browser_flow as flow

    model = workdir / "model.pt"
    save_checkpoint(model, build_resnet50(seed=0), PreprocessConfig(), make_card("memory", "untrained", "untrained"))
    os.environ[ALLOWLIST_ENV] = str(workdir / "allowed-models.txt")  # served_app passes the environment on
    allow_checkpoint(model, "memory", workdir / "allowed-models.txt")
    flow.ROOT = root  # served_app runs ``streamlit run app.py`` in ROOT
    figures: dict[str, object] = {"root": str(root), "zip_mib": round(archive.stat().st_size / 1024**2, 1)}
    with flow.served_app(workdir, model, show_log=False) as (base, _):
        pid = server_pid(int(base.rsplit(":", 1)[1]))
        peak = {"rss": 0.0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak["rss"] = max(peak["rss"], status_mib(pid, "VmRSS"))
                time.sleep(0.05)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=flow.CHROMIUM, args=flow.CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 2200})
                page.goto(base)
                page.wait_for_selector("text=Analyze a case", timeout=120_000)
                flow._idle(page)
                time.sleep(3)
                figures["rss_before_upload_mib"] = round(status_mib(pid, "VmRSS"))
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                started = time.monotonic()
                page.locator("input[type=file]").first.set_input_files(str(archive))
                page.wait_for_selector("text=Loaded: ", timeout=600_000)
                page.wait_for_selector("canvas", timeout=600_000)
                flow._idle(page, timeout_ms=600_000)
                figures["upload_to_slice_s"] = round(time.monotonic() - started, 1)
                time.sleep(3)
                figures["rss_case_on_screen_mib"] = round(status_mib(pid, "VmRSS"))
                figures["upload_store_bytes_case_on_screen"] = upload_store_bytes(base)
                page.wait_for_timeout(1_000)
                box = page.locator("canvas").last.bounding_box()
                for x, y in [*SMALL_SQUARE, SMALL_SQUARE[0]]:
                    page.mouse.click(box["x"] + x, box["y"] + y)
                    page.wait_for_timeout(250)
                page.wait_for_selector("text=largest diameter", timeout=60_000)
                flow._analyze(page)
                time.sleep(3)
                figures["rss_after_analysis_mib"] = round(status_mib(pid, "VmRSS"))
                figures["upload_store_bytes_after_analysis"] = upload_store_bytes(base)
            finally:
                done.set()
                browser.close()
        figures["rss_peak_sampled_mib"] = round(peak["rss"])
        figures["vm_hwm_mib"] = round(status_mib(pid, "VmHWM"))
    return figures


def main() -> None:
    """Build the ZIP if missing, measure, print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, required=True, help="the ZIP at the cap (built when missing)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2], help="the app to serve")
    args = parser.parse_args()
    if not args.zip.exists():
        print(f"built {build_zip(args.zip)} slices into {args.zip}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        print(json.dumps(measure(args.root.resolve(), args.zip, Path(workdir))), flush=True)


if __name__ == "__main__":
    main()

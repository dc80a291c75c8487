"""The demo model built in the background on first run: one build per machine, resumable, with progress.

A first ``make run`` serves the dashboard at once. When no model is installed at the default
path, the first page view starts ``python -m core demo-model`` as a detached process; every
page reads its progress from ``runs/demo/progress.json`` (written by the training loop) and
Analyze becomes available once the checkpoint exists, without a restart.

One build per machine: the build holds an exclusive ``flock`` on ``runs/demo/build.lock`` for
its lifetime, so a second process started by another session or a restart exits at once.
Killed or crashed, it resumes where it stopped the next time it is started (the training
pipeline resumes from its per-epoch state and finished folds).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from core.files import replaced_on_success

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_WORKDIR = REPO_ROOT / "runs" / "demo"
PROGRESS_ENV = "ICCA_TRAIN_PROGRESS"


class BuildAlreadyRunning(Exception):
    """Another process holds the build lock."""


def lock_path(workdir: Path = DEMO_WORKDIR) -> Path:
    return workdir / "build.lock"


def progress_path(workdir: Path = DEMO_WORKDIR) -> Path:
    return workdir / "progress.json"


@contextmanager
def build_lock(workdir: Path = DEMO_WORKDIR) -> Iterator[None]:
    """Hold the machine's demo-build lock for the enclosed build.

    Raises:
        BuildAlreadyRunning: another process is building.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with lock_path(workdir).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildAlreadyRunning from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Builds this process started, by work folder. A new build spends its first seconds importing torch
# before it takes the lock; without this, a page opened then would call it "stopped".
_started: dict[Path, subprocess.Popen] = {}


def build_running(workdir: Path = DEMO_WORKDIR) -> bool:
    """Whether a build holds the lock now, or one this process started is still alive (not yet locked).

    A crashed build's lock is released by the kernel.
    """
    started = _started.get(workdir.resolve())
    if started is not None and started.poll() is None:
        return True
    if not lock_path(workdir).exists():
        return False
    try:
        with build_lock(workdir):
            return False
    except BuildAlreadyRunning:
        return True


def start_background_build(model_path: Path, workdir: Path = DEMO_WORKDIR) -> bool:
    """Start ``core demo-model`` detached unless the model exists or a build runs; returns whether one started."""
    if model_path.exists() or build_running(workdir):
        return False
    workdir.mkdir(parents=True, exist_ok=True)
    _forget_time_left(workdir)
    with (workdir / "build.log").open("ab") as log:
        _started[workdir.resolve()] = subprocess.Popen(
            [sys.executable, "-m", "core", "demo-model", "--out", str(model_path), "--workdir", str(workdir)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, PROGRESS_ENV: str(progress_path(workdir))},
            start_new_session=True,  # outlives the Streamlit session (and a server restart) that started it
        )
    return True


def _forget_time_left(workdir: Path) -> None:
    """Keep a stopped build's stage and share done, but not its time left: the new process measures its own pace."""
    path = progress_path(workdir)
    with suppress(OSError, ValueError):
        record = json.loads(path.read_text())
        record["seconds_left"] = None
        with replaced_on_success(path) as tmp:
            tmp.write_text(json.dumps(record))


_first_report: tuple[float, float] | None = None  # (time, fraction) of this process's first report


def report_progress(stage: str, fraction: float) -> None:
    """Write the build's progress for the pages (training calls it; it does nothing outside a build).

    Args:
        stage: what runs now, e.g. "fold 2/5, epoch 3/5".
        fraction: share of the whole training done, 0–1 (a resumed build starts above 0).

    The time left is estimated from this process's own pace since its first report, so a
    resumed build does not count the work an earlier process did.
    """
    global _first_report
    target = os.environ.get(PROGRESS_ENV)
    if not target:
        return
    now = time.time()
    if _first_report is None:
        _first_report = (now, fraction)
    since, from_fraction = _first_report
    pace = (fraction - from_fraction) / (now - since) if now > since else 0.0  # fraction per second
    record = {
        "stage": stage,
        "fraction": min(max(fraction, 0.0), 1.0),
        "seconds_left": (1 - fraction) / pace if pace > 0 else None,
        "updated": now,
    }
    with replaced_on_success(Path(target)) as partial:  # a reader never sees half a file
        partial.write_text(json.dumps(record))


@dataclass(frozen=True)
class BuildProgress:
    """What the pages show about the demo build."""

    running: bool
    stage: str
    fraction: float  # 0–1 of the whole training (patch cutting and the engine ranking not counted)
    seconds_left: float | None  # from the build's pace; None before it can be estimated
    log_tail: str = ""

    def sentence(self) -> str:
        if not self.running:
            return (
                "The demo model build stopped before it finished; it resumes where it stopped when a page is "
                f"opened again. Last lines of runs/demo/build.log: {self.log_tail or '(empty)'}"
            )
        minutes = round(self.seconds_left / 60) if self.seconds_left else None
        if minutes is None:
            eta = "estimating the time left"
        elif minutes == 0:  # "about 0 min left" would read as done
            eta = "under a minute left"
        else:
            eta = f"about {minutes} min left"
        return f"Building the demo model (synthetic phantoms): {self.stage}, {self.fraction:.0%} done, {eta}."


def build_progress(workdir: Path = DEMO_WORKDIR) -> BuildProgress:
    """The build's state now: running or stopped, its stage and its share done."""
    running = build_running(workdir)
    record: dict = {}
    with suppress(OSError, ValueError):
        record = json.loads(progress_path(workdir).read_text())
    tail = ""
    if not running:
        log = workdir / "build.log"
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        tail = " | ".join(lines[-2:])[-300:]
    return BuildProgress(
        running=running,
        stage=str(record.get("stage", "preparing the phantom cohort")),
        fraction=float(record.get("fraction", 0.0)),
        seconds_left=record.get("seconds_left"),
        log_tail=tail,
    )

"""The background demo build: one per machine, its progress as the pages read it, resumable estimates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import demo_build
from core.demo_build import BuildAlreadyRunning, build_lock, build_progress, build_running, start_background_build

ROOT = Path(__file__).resolve().parents[2]


def test_one_build_per_machine_the_lock_refuses_a_second_and_frees_on_exit(tmp_path: Path) -> None:
    assert not build_running(tmp_path)
    with build_lock(tmp_path):
        assert build_running(tmp_path)
        with pytest.raises(BuildAlreadyRunning), build_lock(tmp_path):
            pass
        # a second `core demo-model` (another session, a restart) exits at once and trains nothing
        done = subprocess.run(
            [sys.executable, "-m", "core", "demo-model", "--workdir", str(tmp_path), "--out", str(tmp_path / "m.pt")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0 and "already running" in done.stdout
        assert not (tmp_path / "cohort").exists()
        assert not start_background_build(tmp_path / "m.pt", tmp_path)  # nor does the app start one
    assert not build_running(tmp_path)


def test_a_build_just_started_counts_as_running_before_it_takes_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For its first seconds a new build imports torch and holds no lock; a page must not call it stopped."""
    popen = subprocess.Popen
    slow_start = [sys.executable, "-c", "import time; time.sleep(30)"]  # alive, never locks
    monkeypatch.setattr(demo_build.subprocess, "Popen", lambda _, **kwargs: popen(slow_start, **kwargs))
    monkeypatch.setattr(demo_build, "_started", {})
    stopped = {"stage": "fold 5/5, epoch 10/10", "fraction": 0.99, "seconds_left": 2.2, "updated": 0.0}
    demo_build.progress_path(tmp_path).write_text(json.dumps(stopped))  # left by a build that was stopped
    assert start_background_build(tmp_path / "m.pt", tmp_path)
    started = demo_build._started[tmp_path.resolve()]
    try:
        assert build_running(tmp_path) and build_progress(tmp_path).running
        # its stage and share stand; its time left was the stopped process's pace, not this one's
        assert (
            build_progress(tmp_path).sentence().endswith("fold 5/5, epoch 10/10, 99% done, estimating the time left.")
        )
        assert not start_background_build(tmp_path / "m.pt", tmp_path)  # nor a second one meanwhile
    finally:
        started.kill()
        started.wait()
    assert not build_running(tmp_path) and "stopped" in build_progress(tmp_path).sentence()


def test_the_last_seconds_of_a_build_never_read_as_zero_minutes_left() -> None:
    def left(seconds: float) -> str:
        return demo_build.BuildProgress(True, "fold 5/5, epoch 10/10", 0.99, seconds).sentence()

    assert left(2.2).endswith("99% done, under a minute left.")
    assert left(30.0).endswith("99% done, under a minute left.")  # 0.5 min rounds to 0
    assert left(45.0).endswith("about 1 min left.")


def test_an_installed_model_is_never_rebuilt(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"installed")
    assert not start_background_build(model, tmp_path)
    assert not (tmp_path / "build.log").exists()


def test_progress_round_trip_and_the_time_left_comes_from_this_process_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(demo_build.PROGRESS_ENV, str(demo_build.progress_path(tmp_path)))
    monkeypatch.setattr(demo_build, "_first_report", None)
    clock = iter([1000.0, 1060.0])
    monkeypatch.setattr(demo_build.time, "time", lambda: next(clock))
    demo_build.report_progress("fold 3/5, epoch 1/5", 0.40)  # resumed: 40 % was done by an earlier process
    demo_build.report_progress("fold 3/5, epoch 2/5", 0.44)  # 4 % in 60 s: 56 % left is 840 s
    record = json.loads(demo_build.progress_path(tmp_path).read_text())
    assert record["seconds_left"] == pytest.approx(840.0)
    with build_lock(tmp_path):
        progress = build_progress(tmp_path)
    assert progress.sentence() == (
        "Building the demo model (synthetic phantoms): fold 3/5, epoch 2/5, 44% done, about 14 min left."
    )


def test_a_stopped_build_says_so_with_the_end_of_its_log(tmp_path: Path) -> None:
    (tmp_path / "build.log").write_text("patches 100%\nerror: No space left on device\n")
    progress = build_progress(tmp_path)
    assert not progress.running
    assert progress.sentence().startswith("The demo model build stopped before it finished; it resumes")
    assert "No space left on device" in progress.sentence()

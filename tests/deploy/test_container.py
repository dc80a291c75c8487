"""The container, without a container engine (these machines cannot pull base images).

The Dockerfile is linted with hadolint; the entrypoint script runs on a clean checkout (a
``git clone`` of this commit) as the image would run it: it refuses an unsafe configuration
with one sentence, starts, answers the health check, signs a user in through OIDC and serves
the sample case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_browser_flow import CHROMIUM, CHROMIUM_ARGS, _free_port, _idle, _load_sample, _wait_for
from tests.e2e.test_sign_in import sign_in, write_sign_in_config

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = "deploy/entrypoint.sh"


def test_the_dockerfile_passes_hadolint_and_keeps_its_promises() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile  # not root
    assert "download.pytorch.org/whl/cpu torch==" in dockerfile  # CPU-only torch
    assert "core demo-model" in dockerfile and 'VOLUME ["/data"]' in dockerfile
    assert "/_stcore/health" in dockerfile and f'ENTRYPOINT ["/app/{ENTRYPOINT}"]' in dockerfile


@pytest.fixture(scope="module")
def clean_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This commit, cloned: only what is committed (no virtual environment, no model, no data)."""
    target = tmp_path_factory.mktemp("checkout") / "icca"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(target)], check=True)
    return target


def _environment(checkout: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ICCA_DATABASE", "ICCA_PSEUDONYM"))}
    secret = tmp_path / "pseudonym.key"
    secret.write_text("a-test-pseudonym-key\n")
    return {
        **env,
        "ICCA_APP_DIR": str(checkout),
        "PYTHON": sys.executable,
        "ICCA_DATABASE_URL": f"sqlite:///{tmp_path / 'icca.db'}",
        "ICCA_PSEUDONYM_SECRET_FILE": str(secret),
        "ICCA_ENGINE_CACHE": str(tmp_path / "engine-choice.json"),
        **extra,
    }


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        ({"ICCA_ADDRESS": "0.0.0.0"}, "would be reachable from the network without sign-in"),
        ({"ICCA_DATABASE_URL": ""}, "set ICCA_DATABASE_URL"),
        (
            {"ICCA_PSEUDONYM_SECRET_FILE": "/nonexistent/key"},
            "ICCA_PSEUDONYM_SECRET_FILE (/nonexistent/key) cannot be read",
        ),
    ],
)
def test_the_entrypoint_refuses_an_unsafe_or_incomplete_configuration_with_one_sentence(
    clean_checkout: Path, tmp_path: Path, change: dict[str, str], sentence: str
) -> None:
    env = _environment(clean_checkout, tmp_path, PORT=str(_free_port()), **change)
    done = subprocess.run(
        ["bash", str(clean_checkout / ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and sentence in line


@pytest.fixture()
def served_by_entrypoint(clean_checkout: Path, tmp_path: Path, test_checkpoint: Path) -> Iterator[str]:
    from oidc_provider_mock import run_server_in_thread

    with run_server_in_thread() as provider:
        port = _free_port()
        config = write_sign_in_config(tmp_path / "streamlit-secrets.toml", port, provider.server_port)
        env = _environment(
            clean_checkout,
            tmp_path,
            PORT=str(port),
            ICCA_ADDRESS="127.0.0.1",
            ICCA_SIGN_IN_CONFIG=str(config),
            ICCA_MODEL_PATH=str(test_checkpoint),
        )
        proc = subprocess.Popen(
            ["bash", str(clean_checkout / ENTRYPOINT)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_for(f"{base}/_stcore/health", proc, timeout_s=120)
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_the_entrypoint_serves_health_sign_in_and_the_sample_case(served_by_entrypoint: str) -> None:
    from playwright.sync_api import sync_playwright

    base = served_by_entrypoint
    with urllib.request.urlopen(f"{base}/_stcore/health", timeout=5) as health:
        assert health.status == 200 and health.read() == b"ok"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(base)
            page.wait_for_selector("text=sign in with your hospital account", timeout=180_000)
            sign_in(page, "surgeon-a")
            page.wait_for_selector("text=Analyze a case", timeout=120_000)
            _idle(page)
            _load_sample(page)  # the sample case is served: slice, outline and measurements on screen
        finally:
            browser.close()

"""Sign-in through OpenID Connect in a real Chromium, against a local identity provider the test starts.

The provider is ``oidc-provider-mock`` (a real OIDC server: discovery, authorization code flow,
signed ID tokens); Streamlit's own ``st.login`` (Authlib) talks to it as to a hospital's IdP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import db
from tests.e2e.test_browser_flow import CHROMIUM, CHROMIUM_ARGS, _free_port, _idle, served_app

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e
SIGN_IN_TEXT = "sign in with your hospital account"


def write_sign_in_config(path: Path, app_port: int, provider_port: int) -> Path:
    """Streamlit secrets for sign-in against the local provider: one analyst and one admin; others no role."""
    path.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{app_port}/oauth2callback"\n'
        'cookie_secret = "a-test-cookie-secret-of-at-least-32-characters"\n'
        'client_id = "icca-dashboard"\n'
        'client_secret = "icca-test-client-secret"\n'
        f'server_metadata_url = "http://localhost:{provider_port}/.well-known/openid-configuration"\n'
        "[roles]\n"
        'analyst = ["surgeon-a"]\n'
        'admin = ["admin-a"]\n'
    )
    return path


@pytest.fixture()
def shared_app(tmp_path: Path, test_checkpoint: Path) -> Iterator[tuple[str, str]]:
    """The dashboard configured for sign-in through a local OIDC provider."""
    from oidc_provider_mock import run_server_in_thread

    with run_server_in_thread() as provider:
        port = _free_port()
        secrets = write_sign_in_config(tmp_path / "secrets.toml", port, provider.server_port)
        with served_app(tmp_path, test_checkpoint, ["--secrets.files", str(secrets)], port=port) as served:
            yield served


def _sign_out(page: Page, base: str) -> None:
    """Sign out in the app, then end the session at the provider (its confirmation page) and come back."""
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/oauth2/end_session**", timeout=60_000)
    page.get_by_role("button", name="End session").click()
    page.wait_for_url(f"{base}/**", timeout=60_000)
    page.goto(base)
    page.wait_for_selector(f"text={SIGN_IN_TEXT}", timeout=180_000)


def sign_in(page: Page, subject: str) -> None:
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("input[name=sub]", timeout=30_000)  # the identity provider's own form
    page.fill("input[name=sub]", subject)
    page.get_by_role("button", name="Authorize").click()


def test_sign_in_roles_refusal_and_sign_out_in_chromium(shared_app: tuple[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    from tests.core.test_db import _new_case

    base, url = shared_app
    engine = db.make_engine(url)
    db.migrate(engine)
    with Session(engine) as session:  # saved by the test's own administrator, before anyone signs in
        db.add_case(session, *_new_case("P-shared"))
        session.commit()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            for path in ("", "cases"):  # a deep link shows the sign-in too, and nothing of the page
                page.goto(f"{base}/{path}")
                page.wait_for_selector(f"text={SIGN_IN_TEXT}", timeout=180_000)
                _idle(page)
                assert page.get_by_text("Analyze a case").count() == 0
                assert page.get_by_text("Saved cases").count() == 0
                assert page.get_by_role("link", name="Audit").count() == 0  # no page links either

            sign_in(page, "surgeon-a")
            page.wait_for_selector("text=Analyze a case", timeout=60_000)
            _idle(page)
            assert page.get_by_role("link", name="Cases").count() >= 1  # signed in: the page links show
            page.goto(f"{base}/audit")  # an analyst may not read the audit trail
            page.wait_for_selector("text=Your role (analyst) may not read the audit trail", timeout=60_000)
            page.goto(f"{base}/cases")
            page.wait_for_selector("text=Follow-up outcome", timeout=60_000)  # an analyst records follow-ups
            _idle(page)
            page.get_by_test_id("stExpandSidebarButton").click()
            page.wait_for_selector("text=Signed in: oidc:surgeon-a (analyst)", timeout=30_000)
            _sign_out(page, base)

            sign_in(page, "stranger")  # signed in at the provider, but on no list: refused
            page.wait_for_selector("text=your account has no role in this dashboard", timeout=60_000)
            _idle(page)
            assert page.get_by_text("Analyze a case").count() == 0
            assert page.get_by_role("link", name="Cases").count() == 0

            _sign_out(page, base)
            sign_in(page, "admin-a")
            page.wait_for_selector("text=Analyze a case", timeout=60_000)
            page.goto(f"{base}/audit")
            page.wait_for_selector("text=Audit trail", timeout=60_000)
            page.wait_for_selector("text=oidc:surgeon-a", state="attached", timeout=60_000)  # in the grid
        except Exception:
            page.screenshot(path=str(Path(url.removeprefix("sqlite:///")).parent / "failure.png"))
            raise
        finally:
            browser.close()
    with Session(engine) as session:
        events = session.scalars(select(db.AuditEvent).order_by(db.AuditEvent.id)).all()
    assert [(e.action, e.actor, e.case_key) for e in events] == [
        ("case_saved", "test:admin", "P-shared"),
        ("case_opened", "oidc:surgeon-a", "P-shared"),  # the refused stranger left no trace but the sign-in page
    ]
    engine.dispose()

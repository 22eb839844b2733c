"""Fixtures for the dashboard's browser tests: headless Chromium (Debian's `chromium`, which
`make test` installs when it is missing) driven by Playwright.

Without the browser the tests skip, saying how to install it; under CI=true they fail instead.
With DURABLE_SCREENSHOTS=1 the tests save the pictures the README shows (docs/img)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(autouse=True)
def durable_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DURABLE_ORCHESTRATOR_URL", "DURABLE_SIGNING_KEY", "DURABLE_SIGNING_KEY_FALLBACK",
        "DURABLE_EVENT_KEY", "DURABLE_DEV", "DURABLE_SERVE_ORIGIN", "DURABLE_DATABASE_URL",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DURABLE_DIR", str(tmp_path / "durable"))
    monkeypatch.setenv("DURABLE_FAST_RETRIES", "1")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module's tests: Playwright's sync API holds an event loop in this
    thread until it stops, which the async tests after them need free."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        message = (
            f"{CHROMIUM} is missing: install it with `sudo apt-get install -y chromium` "
            "(`make test` does it when run as root)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 820}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        context.close()


def screenshot(page: Any, name: str) -> None:
    """Save the page as docs/img/<name>.png when DURABLE_SCREENSHOTS=1."""
    if os.environ.get("DURABLE_SCREENSHOTS") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / f"{name}.png"))

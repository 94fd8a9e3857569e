"""What the browser tests share: Debian's Chromium, driven by Playwright (no browser download)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("SOHUPROF_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module."""
    playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set SOHUPROF_CHROMIUM)")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def serve_dashboard(store: Path) -> Iterator[str]:
    """The dashboard over ``store`` on 127.0.0.1 and a free port, in a thread: its base URL."""
    from werkzeug.serving import make_server

    from sohuprof.dashboards.app import create_app

    app = create_app(store)
    httpd = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context's page; console errors and page errors collect in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("console", lambda msg: page.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


def settle(page: Any, quiet_ms: int = 300) -> None:
    """Wait until no Dash callback is pending, and still none ``quiet_ms`` later."""
    idle = "() => !document.querySelector('[data-dash-is-loading=\"true\"]')"
    page.wait_for_function(idle)
    page.wait_for_timeout(quiet_ms)
    page.wait_for_function(idle)

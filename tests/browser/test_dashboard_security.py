"""The dashboard's guards in real Chromium: a DNS-rebound name is refused while 127.0.0.1
renders, an unknown page is a 404 that lists the pages, and a store deleted under a running
dashboard raises the banner on every page (no HTTP 5xx).

Chromium is launched here with ``--host-resolver-rules`` mapping ``rebind.test`` to 127.0.0.1:
what DNS rebinding does to a victim's browser (the attacker's name, this machine's address).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from sohuprof.dashboards import security  # noqa: E402

from conftest import CHROMIUM, CHROMIUM_ARGS, serve_dashboard  # noqa: E402  (tests/browser/conftest.py)

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "mixtral-2node" / "store"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium not found at {CHROMIUM} "
                                "(apt-get install chromium, or set SOHUPROF_CHROMIUM)")


@pytest.fixture(scope="module")
def rebinding_browser() -> Iterator[Any]:
    """Chromium that resolves rebind.test to 127.0.0.1, as a rebound DNS answer would."""
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS + ["--host-resolver-rules=MAP rebind.test 127.0.0.1"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Path], int]]:
    """Start the dashboard on a store, on 127.0.0.1 and a free port; returns the port."""
    with ExitStack() as running:
        yield lambda store: int(running.enter_context(serve_dashboard(store)).rsplit(":", 1)[1])


@pytest.fixture
def page(rebinding_browser: Any) -> Iterator[Any]:
    context = rebinding_browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.server_errors = []  # type: ignore[attr-defined]
    page.on("response", lambda r: page.server_errors.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()


def test_a_rebound_name_is_refused_while_127_0_0_1_renders(serve: Callable[[Path], int], page: Any) -> None:
    port = serve(SAMPLE)
    refused = page.goto(f"http://rebind.test:{port}/")
    assert refused is not None and refused.status == 403
    assert page.inner_text("body").strip() == (f"host 'rebind.test' is not allowed; open http://127.0.0.1:{port} "
                                                "or pass --allow-host rebind.test")
    # Nor can that origin reach a callback (its scripts would run from the rebound name).
    status = page.evaluate("""async () => (await fetch('/_dash-update-component', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: '{}'})).status""")
    assert status == 403

    ok = page.goto(f"http://127.0.0.1:{port}/")
    assert ok is not None and ok.status == 200
    page.wait_for_selector(".header .brand")
    assert "mixtral-8x7b" in page.inner_text(".header")
    assert page.locator("#store-banner").is_hidden()
    assert not page.server_errors


def test_an_unknown_page_is_a_404_listing_the_pages(serve: Callable[[Path], int], page: Any) -> None:
    port = serve(SAMPLE)
    response = page.goto(f"http://127.0.0.1:{port}/nope")
    assert response is not None and response.status == 404
    page.wait_for_selector("#not-found li")
    assert "There is no page at /nope." in page.inner_text("#not-found")
    links = page.eval_on_selector_all("#not-found a", "els => els.map(e => e.getAttribute('href'))")
    assert {"/", "/timeline", "/roofline", "/stalls", "/comm", "/serving"} <= set(links)
    page.click("#not-found a[href='/stalls']")
    page.wait_for_selector("#stalls")
    assert not page.server_errors


def test_a_deleted_store_raises_the_banner_on_every_page(serve: Callable[[Path], int], page: Any,
                                                         tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(SAMPLE, store)
    port = serve(store)
    page.goto(f"http://127.0.0.1:{port}/stalls")
    page.wait_for_selector("#stalls")
    assert page.locator("#store-banner").is_hidden()

    shutil.rmtree(store)
    message = f"the trace store {store} is gone (deleted or moved); restart sohuprof dashboard on a store"
    # The poll finds it within one interval; the page is not left silently showing the old bars.
    page.wait_for_selector("#store-banner:not([hidden])", timeout=security.POLL_MS + 10_000)
    assert page.inner_text("#store-banner") == message

    # Another page, by the navigation bar and by a fresh load: the banner from the first paint.
    page.click("#nav-timeline")
    page.wait_for_url(f"http://127.0.0.1:{port}/timeline")
    assert page.inner_text("#store-banner") == message
    for path in ("/", "/comm", "/roofline", "/serving"):
        response = page.goto(f"http://127.0.0.1:{port}{path}")
        assert response is not None and response.status == 200
        page.wait_for_selector("#store-banner:not([hidden])")
        assert page.inner_text("#store-banner") == message, path
        page.wait_for_timeout(500)             # the page's own callbacks answer (with the message)
    assert not page.server_errors, page.server_errors

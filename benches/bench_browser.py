"""The dashboard as a user sees it, in headless Chromium: first paint of every page, the zoom
round-trip on the timeline from the gesture to the redrawn plot, the 256-chip timeline, and the
server's memory.

Targets (issue 15, "Must reach"): on a ~10M-event store every zoom round-trip <= 300 ms from the
gesture to the redrawn plot and first paint of every page <= 1.5 s, the server <= 2 GB; on 256
chips (32 nodes x 8) the timeline's first paint <= 2 s and the page no taller than two screens
(viewport 1500 x 1000).

    python benches/bench_browser.py                       # builds (once) and caches both stores
    python benches/bench_browser.py --store S --store-256 S256
    python benches/bench_browser.py --json out.json       # the figures as JSON too

The server is what a user runs, ``python -m sohuprof dashboard STORE`` in a subprocess; its
memory is the kernel's high-water mark (``VmHWM`` in ``/proc/PID/status``). Every page is visited
once first (the server warms its index and analyses in the background; that visit is printed as
"cold"), then each measured visit opens a fresh browser context (empty cache: a first visit).

How the page is timed (inside the page, ``performance.now()``, whose zero is the navigation):

- **first paint**: the first animation frame from which on the page content is there, no Dash
  callback is in flight or loading, and every ``dcc.Graph`` has a plotly div with ``_fullLayout``
  and is not ``dash-graph--pending``; it must then stay so for 0.5 s (a later callback that
  redraws resets it).
- **zoom round-trip**: from the gesture (the ``mouseup`` of a real drag on the plot area, or the
  ``Plotly.relayout`` call) to the last ``plotly_afterplot`` after the last Dash callback's
  response (``fetch`` of ``/_dash-update-component``, wrapped in the page), once the page has been
  quiet for 0.4 s. The callbacks a zoom caused are counted from Playwright's ``request`` events.

A ``dcc.Interval``'s poll (the store watch) is background work and left out of both. The "last
response" column is when the page's last callback answered: the rest of the first paint is the
browser's. The machine's 2 cores are shared: the load average is printed with the figures.

The browser is Debian's Chromium with the flags of ``tests/browser/conftest.py``; its WebGL is
SwiftShader (software), printed at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))
from conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (tests/browser/conftest.py: the same browser and flags)

ZOOM_TARGET_MS = 300.0
PAINT_TARGET_S = 1.5
PAINT_256_TARGET_S = 2.0
SCREENS_256 = 2.0
MEMORY_TARGET_GB = 2.0
VIEWPORT = {"width": 1500, "height": 1000}
#: Zoom levels: the fraction of the trace in view.
LEVELS = (1.0, 0.1, 0.01, 0.001, 0.0001)
#: Emulated stores: ~10M events (benches/bench_analyze.py's Llama-3-70B run) and 256 chips.
STORE_10M = {"nodes": 2, "requests": 2000}
#: 32 nodes x 8 chips of Llama-3-8B TP8 (32 data-parallel replicas), a few short requests: 0.8 M
#: events, 3 s to build. The cheapest run with 256 ranks.
EMULATE_256 = ["--model", "llama3-8b", "--nodes", "32", "--chips-per-node", "8", "--tp", "8",
               "--requests", "32", "--prompt-len", "128", "--output-len", "8"]

#: Installed in every page before its scripts run: a fetch wrapper timing Dash callbacks, an
#: afterplot hook on every plotly div, the mouseup of a gesture, and the per-frame readiness.
_INIT_JS = r"""
(() => {
  const B = window.__bench = {cb: [], bg: [], afterplot: [], readyAt: null, mouseup: null, frames: 0};
  const fetch0 = window.fetch.bind(window);
  window.fetch = function (input, init) {
    const url = typeof input === 'string' ? input : (input && input.url) || '';
    if (!url.includes('_dash-update-component')) return fetch0(input, init);
    const rec = {start: performance.now(), end: null, bg: false};
    try {   // a dcc.Interval's poll (the store watch) is background, not the page's work
      const ids = JSON.parse(init.body).changedPropIds || [];
      rec.bg = ids.length > 0 && ids.every(id => id.endsWith('.n_intervals'));
    } catch (e) { }
    if (!rec.bg) B.cb.push(rec); else B.bg.push(rec);
    return fetch0(input, init).then(
      r => { rec.end = performance.now(); rec.status = r.status; return r; },
      e => { rec.end = performance.now(); rec.error = String(e); throw e; });
  };
  document.addEventListener('mouseup', () => { B.mouseup = performance.now(); }, true);
  const plotDiv = el => el.classList.contains('js-plotly-plot') ? el : el.querySelector('.js-plotly-plot');
  B.ready = () => {
    const content = document.getElementById('_pages_content');
    if (!content || !content.children.length) return false;
    if (document.querySelector('[data-dash-is-loading="true"]')) return false;
    if (B.cb.some(r => r.end === null)) return false;
    for (const el of document.querySelectorAll('.dash-graph')) {
      if (el.classList.contains('dash-graph--pending')) return false;
      const gd = plotDiv(el);
      if (!gd || !gd._fullLayout || !Array.isArray(gd.data)) return false;
    }
    return true;
  };
  const tick = () => {
    B.frames++;
    for (const gd of document.querySelectorAll('.js-plotly-plot')) {
      if (!gd.__benchHooked && typeof gd.on === 'function') {
        gd.__benchHooked = true;
        gd.on('plotly_afterplot', () => B.afterplot.push(performance.now()));
      }
    }
    if (B.ready()) { if (B.readyAt === null) B.readyAt = performance.now(); } else B.readyAt = null;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})();
"""

_QUIET_JS = "(ms) => window.__bench && window.__bench.readyAt !== null && performance.now() - window.__bench.readyAt > ms"

_GRAPH_STATE_JS = """(id) => { const el = document.getElementById(id);
  const gd = el && (el.classList.contains('js-plotly-plot') ? el : el.querySelector('.js-plotly-plot'));
  if (!gd || !gd._fullLayout) return null;
  const fl = gd._fullLayout, r = gd.getBoundingClientRect();
  return {title: (gd.layout.title && (gd.layout.title.text ?? gd.layout.title)) || '',
          types: [...new Set(gd.data.map(t => t.type || 'scatter'))], traces: gd.data.length,
          range: fl.xaxis ? fl.xaxis.range.slice() : null, dragmode: fl.dragmode,
          left: r.left + fl._size.l, top: r.top + fl._size.t, width: fl._size.w, height: fl._size.h}; }"""


# -- stores ---------------------------------------------------------------------------------------

def store_10m(work: Path) -> Path:
    """benches/bench_analyze.py's ~10M-event store, built once under ``work``."""
    path = work / "store-10M"
    if not (path / "manifest.json").exists():
        from bench_analyze import make_store   # benches/ is the script's own folder
        build = work / "10M.building"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        print(f"building the ~10M-event store in {path} (once; ~15 s) ...", flush=True)
        make_store(build, STORE_10M["requests"], STORE_10M["nodes"])
        (build / "store").rename(path)
        shutil.rmtree(build)
    return path


def store_256(work: Path) -> Path:
    """A 256-chip store (32 nodes x 8), built once under ``work``."""
    path = work / "store-256"
    if not (path / "manifest.json").exists():
        run = work / "run-256"
        print(f"building the 256-chip store in {path} (once; ~5 s) ...", flush=True)
        cli = [sys.executable, "-m", "sohuprof"]
        subprocess.run([*cli, "emulate", *EMULATE_256, "--force", "-o", str(run)], check=True, capture_output=True)
        subprocess.run([*cli, "collect", str(run), "-o", str(path)], check=True, capture_output=True)
        shutil.rmtree(run)
    return path


def events_of(store: Path) -> int:
    manifest = json.loads((store / "manifest.json").read_text())
    return int((manifest.get("tables") or {}).get("events") or 0)


# -- the server -----------------------------------------------------------------------------------

def snapshot(rev: str, work: Path) -> Path:
    """A directory to import ``rev``'s sohuprof from (``git archive``; the shared checkout is
    never touched): ``sohuprof/`` linking the package and its mapped subpackages, as
    pyproject's package-dir does. The compiled replay kernel is copied from the checkout when
    its source is the same."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], check=True, capture_output=True, text=True,
                         cwd=REPO).stdout.strip()
    root = work / f"tree-{sha}"
    path = root / "path"
    if not (path / "sohuprof").exists():
        shutil.rmtree(root, ignore_errors=True)
        (root / "src").mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha], check=True, capture_output=True, cwd=REPO).stdout
        subprocess.run(["tar", "-x", "-C", str(root / "src")], input=archive, check=True)
        src = root / "src"
        for so in (REPO / "analyzers").glob("kernels*.so"):
            pyx = src / "analyzers" / "kernels.pyx"
            if pyx.exists() and pyx.read_bytes() == (REPO / "analyzers" / "kernels.pyx").read_bytes():
                shutil.copy2(so, src / "analyzers" / so.name)
        pkg = path / "sohuprof"
        pkg.mkdir(parents=True)
        for item in (src / "sohuprof").iterdir():
            (pkg / item.name).symlink_to(item)
        for sub in ("analyzers", "collectors", "dashboards"):
            (pkg / sub).symlink_to(src / sub)
    return path


def python_env(tree: Path | None) -> tuple[dict[str, str], Path]:
    """Environment and working directory for a child Python importing sohuprof from ``tree``
    (``None``: the checkout, through the editable install). ``PYTHONPATH`` comes before the
    editable install's finder, and the working directory must not be the checkout (``-m`` puts
    it first on ``sys.path``)."""
    if tree is None:
        return dict(os.environ), REPO
    return dict(os.environ, PYTHONPATH=str(tree)), tree


class Server:
    """``python -m sohuprof dashboard STORE`` on a free port, in a subprocess of this bench."""

    def __init__(self, store: Path, log: Path, tree: Path | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        t = time.perf_counter()
        env, cwd = python_env(tree)
        self.proc = subprocess.Popen([sys.executable, "-m", "sohuprof", "dashboard", str(store.resolve()), "--port",
                                      str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the dashboard exited with {self.proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t > 300:
                raise SystemExit(f"the dashboard did not answer in 300 s; see {log}")
            time.sleep(0.1)
        self.listening_s = time.perf_counter() - t

    def memory_gb(self) -> tuple[float, float]:
        """(VmHWM, VmRSS) of the server process, GB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) * 1024 / 1e9
        return fields["VmHWM"], fields["VmRSS"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- the browser ----------------------------------------------------------------------------------

def page_paths(tree: Path | None) -> tuple[list[str], str]:
    """Every page of ``dashboards.app.PAGES`` by its module's PATH, and where the package is, as
    the server will import them."""
    env, cwd = python_env(tree)
    code = ("import importlib, json, sohuprof.dashboards.app as a; print(json.dumps([[importlib.import_module("
            "'sohuprof.dashboards.pages.' + n).PATH for n in a.PAGES], a.__file__]))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=cwd, env=env)
    paths, where = json.loads(done.stdout.strip().splitlines()[-1])
    return paths, where


def new_page(browser: Any) -> tuple[Any, Any]:
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(_INIT_JS)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.errors = []  # type: ignore[attr-defined]
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.posts = 0  # type: ignore[attr-defined]

    def _count(request: Any) -> None:
        if request.method == "POST" and "_dash-update-component" in request.url:
            ids = (request.post_data_json or {}).get("changedPropIds") or []
            if not (ids and all(i.endswith(".n_intervals") for i in ids)):
                page.posts += 1
    page.on("request", _count)
    return context, page


def first_paint(browser: Any, url: str) -> dict[str, Any]:
    """Open ``url`` in a fresh context: the first paint (s), the page's height and its errors."""
    context, page = new_page(browser)
    try:
        page.goto(url, wait_until="commit")
        # Read in the same poll that saw the quiet, so a callback starting just after cannot race it.
        out = page.wait_for_function(f"""(ms) => ({_QUIET_JS})(ms) && ({{paint: window.__bench.readyAt,
            scroll: document.documentElement.scrollHeight, viewport: window.innerHeight,
            graphs: document.querySelectorAll('.dash-graph').length, callbacks: window.__bench.cb.length,
            response: Math.max(0, ...window.__bench.cb.map(r => r.end))}})""", arg=500, polling=100).json_value()
        return {"paint_s": out["paint"] / 1e3, "response_s": out["response"] / 1e3, "scroll_px": out["scroll"],
                "viewport_px": out["viewport"], "graphs": out["graphs"], "callbacks": out["callbacks"],
                "errors": list(page.errors)}
    finally:
        context.close()


def _settle(page: Any, n0: int, wait_for_callback_ms: int = 5000) -> bool:
    """Wait for the first Dash callback after ``n0`` (False if none came) and then for quiet."""
    try:
        page.wait_for_function("(n0) => window.__bench.cb.length > n0", arg=n0, timeout=wait_for_callback_ms, polling=5)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: the gesture caused no callback
        return False
    page.wait_for_function("""() => { const B = window.__bench; if (!B.ready()) return false;
        const last = Math.max(0, ...B.cb.map(r => r.end), ...B.afterplot);
        return performance.now() - last > 400; }""", polling=20)
    return True


def _round_trip(page: Any, n0: int, a0: int, t0: float, posts0: int, graph: str, before: dict) -> dict[str, Any]:
    came = _settle(page, n0)
    rec = page.evaluate("""([n0, a0]) => { const B = window.__bench;
        return {cb: B.cb.slice(n0), afterplot: B.afterplot.slice(a0)}; }""", [n0, a0])
    state = page.evaluate(_GRAPH_STATE_JS, graph)
    if not came:
        return {"ms": None, "callbacks": page.posts - posts0, "changed": False, "state": state}
    last_response = max(r["end"] for r in rec["cb"])
    after = [t for t in rec["afterplot"] if t >= last_response]
    end = max(after) if after else last_response
    server_ms = sum(r["end"] - r["start"] for r in rec["cb"])
    changed = (state["title"], state["types"], state["traces"]) != (before["title"], before["types"], before["traces"])
    return {"ms": end - t0, "callbacks": page.posts - posts0, "fetch_ms": server_ms, "redrawn": bool(after),
            "changed": changed, "state": state}


def zoom_relayout(page: Any, graph: str, lo: float, hi: float) -> dict[str, Any]:
    """``Plotly.relayout`` of the time axis to ``[lo, hi]`` (ms): the round-trip."""
    before = page.evaluate(_GRAPH_STATE_JS, graph)
    n0, a0 = page.evaluate("() => [window.__bench.cb.length, window.__bench.afterplot.length]")
    posts0 = page.posts
    t0 = page.evaluate("""([id, lo, hi]) => { const el = document.getElementById(id);
        const gd = el.classList.contains('js-plotly-plot') ? el : el.querySelector('.js-plotly-plot');
        const t0 = performance.now(); Plotly.relayout(gd, {'xaxis.range[0]': lo, 'xaxis.range[1]': hi}); return t0; }""",
                       [graph, lo, hi])
    return _round_trip(page, n0, a0, t0, posts0, graph, before)


def zoom_drag(page: Any, graph: str, frac: tuple[float, float]) -> dict[str, Any]:
    """A real mouse drag across ``frac`` of the plot area's width: the round-trip from its mouseup."""
    page.evaluate("(id) => document.getElementById(id).scrollIntoView({block: 'start'})", graph)
    before = page.evaluate(_GRAPH_STATE_JS, graph)
    y = min(before["top"] + min(before["height"] / 2, 200.0), VIEWPORT["height"] - 20)
    x0, x1 = (before["left"] + f * before["width"] for f in frac)
    n0, a0 = page.evaluate("() => [window.__bench.cb.length, window.__bench.afterplot.length]")
    posts0 = page.posts
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(x1, y, steps=8)
    page.mouse.up()
    t0 = page.evaluate("() => window.__bench.mouseup")
    return _round_trip(page, n0, a0, t0, posts0, graph, before)


def zoom_bench(browser: Any, url: str, repeat: int) -> dict[str, Any]:
    """Every zoom level by relayout ``repeat`` times, and mouse drags from the whole trace and from 1 %."""
    context, page = new_page(browser)
    try:
        page.goto(url + "/timeline", wait_until="commit")
        page.wait_for_function(_QUIET_JS, arg=500, polling=100)
        graph = "timeline"
        full = page.evaluate(_GRAPH_STATE_JS, graph)
        x_lo, x_hi = full["range"]
        span = x_hi - x_lo
        print(f"  timeline: x range {x_lo:.3f}-{x_hi:.3f} ms, dragmode {full['dragmode']}, traces {full['types']}")
        zoom_relayout(page, graph, x_lo + 0.3 * span, x_lo + 0.6 * span)        # unmeasured: leave the start view
        levels: dict[str, list[dict[str, Any]]] = {f"{lv:.2%}": [] for lv in LEVELS}
        for k in range(repeat):
            for level in LEVELS:
                width = span * level
                lo = x_lo + (span - width) * (k + 0.5) / repeat
                levels[f"{level:.2%}"].append(zoom_relayout(page, graph, lo, lo + width))
        drags: dict[str, list[dict[str, Any]]] = {"drag from 100%": [], "drag from 1%": []}
        for k in range(repeat):
            a = 0.3 + 0.05 * k / max(repeat - 1, 1)
            zoom_relayout(page, graph, x_lo, x_hi)
            drags["drag from 100%"].append(zoom_drag(page, graph, (a, a + 0.2)))
            lo = x_lo + (span - 0.01 * span) * (k + 0.5) / repeat
            zoom_relayout(page, graph, lo, lo + 0.01 * span)
            drags["drag from 1%"].append(zoom_drag(page, graph, (a, a + 0.2)))
        return {"levels": levels, "drags": drags, "errors": list(page.errors)}
    finally:
        context.close()


# -- report ---------------------------------------------------------------------------------------

def _fmt_zoom_rows(rows: dict[str, list[dict[str, Any]]]) -> list[tuple[str, float | None, float | None]]:
    out = []
    print(f"  {'zoom':>15} {'round-trip ms median / max':>27} {'callbacks':>10} {'fetch ms':>9} "
          f"{'changed':>8}  view after")
    for name, runs in rows.items():
        times = [r["ms"] for r in runs if r["ms"] is not None]
        med, worst = (statistics.median(times), max(times)) if times else (None, None)
        cbs = sorted({r["callbacks"] for r in runs})
        fetch = statistics.median([r["fetch_ms"] for r in runs if "fetch_ms" in r] or [0.0])
        changed = sum(r["changed"] for r in runs)
        missing = len(runs) - len(times)
        last = runs[-1]["state"] or {}
        view = f"{','.join(last.get('types', []))}: {str(last.get('title', ''))[:70]}"
        tm = f"{med:9.0f} / {worst:7.0f}" if times else f"{'-':>9} / {'-':>7}"
        print(f"  {name:>15} {tm:>27} {'/'.join(map(str, cbs)):>10} {fetch:9.0f} {changed:>3}/{len(runs):<4}"
              f"  {view}" + (f"  ({missing} without a callback)" if missing else ""))
        out.append((name, med, worst))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "tmp" / "bench-browser",
                        help="where the stores are built once and kept (default: %(default)s)")
    parser.add_argument("--store", type=Path, help="the ~10M-event store (default: built under --work)")
    parser.add_argument("--store-256", type=Path, help="the 256-chip store (default: built under --work)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh visits per page (default: %(default)s)")
    parser.add_argument("--zoom-repeat", type=int, default=5, help="zooms per level (default: %(default)s)")
    parser.add_argument("--skip-256", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--tree", metavar="REV",
                        help="serve commit REV's code (a git archive under --work) instead of the checkout as it is")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.work.mkdir(parents=True, exist_ok=True)
    big = args.store or store_10m(args.work)
    wide = None if args.skip_256 else (args.store_256 or store_256(args.work))
    tree = snapshot(args.tree, args.work) if args.tree else None
    paths, where = page_paths(tree)
    summary: list[tuple[str, str, str, bool]] = []
    figures: dict[str, Any] = {"pages": paths}
    commit = subprocess.run(["git", "rev-parse", "--short", args.tree or "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip() + ("" if args.tree else " + the checkout's uncommitted edits")
    print(f"code {commit} ({Path(where).parent}); Chromium {CHROMIUM}; viewport {VIEWPORT['width']}x{VIEWPORT['height']}; pages {', '.join(paths)}")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        ctx, pg = new_page(browser)
        gl = pg.evaluate("""() => { const g = document.createElement('canvas').getContext('webgl');
            const d = g && g.getExtension('WEBGL_debug_renderer_info');
            return g ? (d ? g.getParameter(d.UNMASKED_RENDERER_WEBGL) : 'webgl') : 'no WebGL'; }""")
        ctx.close()
        print(f"browser {browser.version}, WebGL: {gl}")
        try:
            for label, store, target, only in (("10M", big, PAINT_TARGET_S, None), ("256 chips", wide, PAINT_256_TARGET_S, "/timeline")):
                if store is None:
                    continue
                print(f"\n== {label}: {store} ({events_of(store):,} events); load average {os.getloadavg()[0]:.1f}")
                server = Server(store, args.work / f"dashboard-{label.replace(' ', '')}.log", tree)
                print(f"  server listening after {server.listening_s:.1f} s (pid {server.proc.pid})")
                try:
                    t = time.perf_counter()
                    cold = {path: first_paint(browser, server.url + path) for path in paths}
                    print(f"  cold visit of every page (the server warming up): {time.perf_counter() - t:.1f} s: "
                          + ", ".join(f"{p} {c['paint_s']:.2f} s" for p, c in cold.items()))
                    print(f"  {'page':>12} {'first paint s median / max':>27} {'last response s':>16} {'graphs':>7} "
                          f"{'callbacks':>10} {'height px':>10} {'screens':>8} errors")
                    paints: dict[str, Any] = {}
                    for path in paths:
                        runs = [first_paint(browser, server.url + path) for _ in range(args.repeat)]
                        ts = [r["paint_s"] for r in runs]
                        errors = sorted({e for r in runs for e in r["errors"]})
                        screens = runs[-1]["scroll_px"] / runs[-1]["viewport_px"]
                        paints[path] = {"median_s": statistics.median(ts), "max_s": max(ts), "scroll_px": runs[-1]["scroll_px"],
                                        "screens": screens, "errors": errors, "cold_s": cold[path]["paint_s"]}
                        resp = statistics.median(r["response_s"] for r in runs)
                        paints[path]["last_response_s"] = resp
                        print(f"  {path:>12} {statistics.median(ts):11.2f} / {max(ts):6.2f}      {resp:>16.2f} {runs[-1]['graphs']:>7} "
                              f"{runs[-1]['callbacks']:>10} {runs[-1]['scroll_px']:>10} {screens:>8.1f} "
                              f"{len(errors)}" + (f": {errors[0][:100]}" if errors else ""))
                        if only is None or path == only:
                            summary.append((f"{label}: first paint {path}", f"{statistics.median(ts):.2f} s (max {max(ts):.2f})",
                                            f"<= {target} s", max(ts) <= target))
                    if only is not None:
                        s = paints[only]["screens"]
                        summary.append((f"{label}: {only} height", f"{paints[only]['scroll_px']} px = {s:.1f} screens",
                                        f"<= {SCREENS_256:.0f} screens", s <= SCREENS_256))
                    figures[label] = {"paint": paints}
                    if only is None:
                        print("  timeline zoom round-trips:")
                        zoom = zoom_bench(browser, server.url, args.zoom_repeat)
                        figures[label]["zoom"] = zoom
                        for name, med, worst in _fmt_zoom_rows({**zoom["levels"], **zoom["drags"]}):
                            summary.append((f"{label}: zoom {name}", "no callback" if med is None else f"{med:.0f} ms (max {worst:.0f})",
                                            f"<= {ZOOM_TARGET_MS:.0f} ms", worst is not None and worst <= ZOOM_TARGET_MS))
                        cbs = max(r["callbacks"] for runs in {**zoom["levels"], **zoom["drags"]}.values() for r in runs)
                        summary.append((f"{label}: callbacks per zoom", f"up to {cbs}", "1", cbs <= 1))
                        if zoom["errors"]:
                            print(f"  console errors while zooming: {len(zoom['errors'])}: {zoom['errors'][0][:160]}")
                    hwm, rss = server.memory_gb()
                    figures[label]["server_gb"] = {"VmHWM": hwm, "VmRSS": rss}
                    print(f"  load average now {os.getloadavg()[0]:.1f} (2 cores)")
                    print(f"  server memory: peak (VmHWM) {hwm:.2f} GB, now {rss:.2f} GB")
                    summary.append((f"{label}: server peak memory", f"{hwm:.2f} GB", f"<= {MEMORY_TARGET_GB:.0f} GB",
                                    hwm <= MEMORY_TARGET_GB))
                finally:
                    server.stop()
        finally:
            browser.close()

    print(f"\n{'what':<34} {'figure':<28} {'target':<14} status")
    for what, figure, target, ok in summary:
        print(f"{what:<34} {figure:<28} {target:<14} {'met' if ok else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "summary": [dict(zip(("what", "figure", "target", "met"), s))
                                                                        for s in summary], **figures}, indent=1, default=str))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

"""The Dash app: :func:`create_app` builds one app over one store; :func:`serve` runs it.

Pages (``dashboards/pages/<name>.py``) register with Dash's page registry inside the factory and
bind their callbacks to the app they are given (``app.callback``), because ``dash.callback``'s
global list is taken by whichever app starts first. A page's layout and callbacks find the
store's cached data on the Flask server of the app serving the request, so several apps in one
process (tests) never see each other's data. Nothing loads at import time.

The browser keeps only the selection (ranks and a time window) in ``dcc.Store("selection")``;
trace data stays on the server. The selection is also in the URL (``?ranks=0,3&start_ms=12.5&end_ms=14``,
ms from the trace start): a reload or a pasted link loads it (:func:`selection_from_url`), and
every change is written back in the browser (:data:`_SELECTION_JS`).
"""

from __future__ import annotations

import logging

import errno
import ipaddress
import os
import socket
import threading
from typing import Any, Union

import dash
from dash import Input, Output, State, dcc, html
from flask import current_app

from sohuprof.dashboards import security
from sohuprof.dashboards.data import DashboardData, Selection, ensure_selection, parse_query
from sohuprof.errors import SohuprofError
from sohuprof.store import TraceStore, open_store

__all__ = ["create_app", "serve", "check_port", "host_warning", "current_data", "PortInUseError", "PAGES"]

PathLike = Union[str, "os.PathLike[str]"]

#: Page modules in navigation order.
PAGES = ("overview", "timeline", "roofline", "stalls", "comm", "serving", "kernels", "idle")
_EXTENSION = "sohuprof"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

log = logging.getLogger(__name__)


class PortInUseError(SohuprofError):
    """The port the dashboard should listen on is taken."""


def current_data() -> DashboardData:
    """The :class:`DashboardData` of the app serving the current request."""
    return current_app.extensions[_EXTENSION]


def _ensure_store(store: PathLike | TraceStore) -> TraceStore:
    return store if isinstance(store, TraceStore) else open_store(store)


def _page_modules() -> list[Any]:
    import importlib
    return [importlib.import_module(f"sohuprof.dashboards.pages.{name}") for name in PAGES]


def _header(data: DashboardData) -> html.Header:
    m = data.manifest
    model = (m.get("model") or {}).get("name") or "trace"
    hw = (m.get("hardware") or {}).get("name") or (m.get("source") or {}).get("format", "")
    events = (m.get("tables") or {}).get("events")
    facts = f"{model} on {hw} · {data.nodes} node(s) · {len(data.ranks)} ranks" + (f" · {events:,} events" if events else "")
    ranks = data.ranks
    options = [{"label": f"r{r} (node {n} · chip {c})", "value": int(r)}
               for r, n, c in zip(ranks["rank"], ranks["node"], ranks["chip"])]
    nav = [dcc.Link(page["name"], href=page["relative_path"], className="nav-link", id=f"nav-{page['name'].lower()}")
           for page in dash.page_registry.values() if page["module"].startswith("sohuprof.dashboards.pages.")]
    return html.Header(className="header", children=[
        html.Div(className="brand", children=[html.B("sohuprof"), html.Span(f" {facts}", className="facts"),
                                               html.Span(f" · {data.store.path.name}", className="facts")]),
        html.Nav(nav, className="nav"),
        html.Div(className="selection-bar", children=[
            html.Span("selection:", className="label"),
            dcc.Dropdown(id="selection-ranks", options=options, multi=True, placeholder="all ranks",
                         style={"minWidth": "260px"}),
            html.Span(id="selection-window", className="window", children="whole trace"),
            html.Button("clear", id="selection-clear", n_clicks=0, className="button"),
        ]),
    ])


_CSS = """
body { font-family: Inter, Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #fafafa; }
.header { background: #1d3557; color: white; padding: 8px 16px; display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: center; }
.header .facts { color: #cdd9e5; font-size: 13px; }
.nav { display: flex; gap: 4px; }
.nav-link { color: white; text-decoration: none; padding: 4px 10px; border-radius: 4px; font-size: 14px; }
.nav-link:hover { background: #457b9d; }
.selection-bar { display: flex; align-items: center; gap: 8px; color: #222; margin-left: auto; }
.selection-bar .label { color: #cdd9e5; font-size: 13px; }
.selection-bar .window { color: white; font-size: 13px; min-width: 160px; }
.button { border: 1px solid #999; background: white; border-radius: 4px; padding: 4px 10px; cursor: pointer; }
main { padding: 12px 20px; }
.kpis { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 16px; }
.kpi { background: white; border: 1px solid #e3e3e3; border-radius: 6px; padding: 10px 16px; min-width: 170px; }
.kpi .value { font-size: 24px; font-weight: 600; }
.kpi .name { font-size: 12px; color: #666; text-transform: uppercase; letter-spacing: .04em; }
.kpi .detail { font-size: 12px; color: #666; }
.card { background: white; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px 12px; margin-bottom: 12px; }
.unavailable { background: #fff4e5; border: 1px solid #f4a261; border-radius: 6px; padding: 12px 16px; }
.status { font-size: 13px; color: #555; margin: 4px 0; }
table.simple { border-collapse: collapse; font-size: 13px; }
table.simple th, table.simple td { border-bottom: 1px solid #eee; padding: 4px 10px; text-align: right; }
table.simple th:first-child, table.simple td:first-child { text-align: left; }
.details { font-size: 13px; }
.row { display: flex; gap: 12px; flex-wrap: wrap; } .row > * { flex: 1 1 480px; }
"""


def create_app(store: PathLike | TraceStore, *, title: str = "sohuprof",
               allowed_hosts: tuple[str, ...] | list[str] | None = None) -> dash.Dash:
    """Build the dashboard over one trace store.

    Parameters
    ----------
    store : str, os.PathLike or TraceStore
        The store to serve (``sohuprof collect`` output). It is opened now; its timeline index
        and analyses are built on first use (or by :meth:`DashboardData.warm`) and cached.
    title : str, default "sohuprof"
        The browser tab's title.
    allowed_hosts : sequence of str, optional
        ``Host`` names answered besides the loopback names and the bound address
        (``--allow-host``; ``*`` allows any): see :mod:`sohuprof.dashboards.security`.

    Returns
    -------
    dash.Dash
        With ``debug`` off; run it with :func:`serve` (or ``app.run``).

    Raises
    ------
    StoreError
        ``store`` is missing, not a trace store, of an unsupported version, or damaged (the
        checks of :func:`sohuprof.store.open_store`): the dashboard refuses to start, with the
        one line naming the damaged file, rather than fail at the first page.
    """
    data = DashboardData(_ensure_store(store))
    app = dash.Dash(__name__, use_pages=True, pages_folder="", title=title, suppress_callback_exceptions=True,
                    routing_callback_inputs={"selection": State("selection", "data")},
                    serve_locally=True, update_title=None, on_error=security.callback_error,
                    # Served, not a script tag of every page: assets/plotly_bundle.js loads it (async).
                    assets_ignore=r"^plotly-sohuprof\.min\.js$")
    app.server.extensions[_EXTENSION] = data
    security.install(app, data.store, allowed_hosts=allowed_hosts)
    modules = _page_modules()
    for order, module in enumerate(modules):
        dash.register_page(module.__name__, path=module.PATH, name=module.NAME, title=f"{module.NAME} · {title}",
                           order=order, layout=module.layout)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + _CSS + "</style>")
    app.layout = lambda: html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Store(id="selection", data=Selection().to_store()),
        dcc.Store(id="selection-origin", data=current_data().origin),
        security.banner(),
        _header(current_data()),
        html.Main(dash.page_container),
    ])
    _register_selection_callbacks(app)
    for module in modules:
        module.register_callbacks(app)
    return app


def window_text(selection: Any, origin: int) -> str:
    """``window 12.500 – 14.000 ms`` for the header, or ``whole trace`` (as :data:`_SELECTION_JS` writes it)."""
    sel = ensure_selection(selection)
    if sel.window is None:
        return "whole trace"
    a, b = ((t - origin) / 1e6 for t in sel.window)
    return f"window {a:,.3f} – {b:,.3f} ms"


def selection_from_url(pathname: str | None, search: str | None, selection: Any, origin: int) -> tuple[Any, Any]:
    """(selection store, rank dropdown) after the URL changed: the query's selection when it
    names one (a reload, a pasted link, a finding's link, back/forward), else ``no_update``."""
    from urllib.parse import parse_qs

    query = {k: v[-1] for k, v in parse_qs((search or "").lstrip("?")).items()}
    sel = parse_query(query, origin)
    if sel is None or sel == ensure_selection(selection):
        return dash.no_update, dash.no_update
    return sel.to_store(), list(sel.ranks) if sel.ranks is not None else None


#: Browser-side selection plumbing (no server round trip): the rank dropdown into the selection,
#: "clear", and the selection out to the header's window text and the URL (``replaceState``,
#: keeping the query parameters other pages own, such as the timeline's ``expand`` and ``search``).
_SELECTION_JS = {
    "ranks": """function(ranks, selection) {
        const cur = selection || {};
        const r = (ranks && ranks.length) ? Array.from(new Set(ranks.map(Number))).sort((a, b) => a - b) : null;
        if (JSON.stringify(r) === JSON.stringify(cur.ranks ?? null)) { return window.dash_clientside.no_update; }
        return {ranks: r, window: cur.window ?? null};
    }""",
    "clear": """function(n) { return [{ranks: null, window: null}, null]; }""",
    "sync": """function(selection, pathname, origin) {
        const sel = selection || {}, w = sel.window, own = ['ranks', 'start_ms', 'end_ms'];
        const ms = t => ((t - origin) / 1e6);
        const fmt = v => v.toLocaleString('en-US', {minimumFractionDigits: 3, maximumFractionDigits: 3});
        const text = w ? `window ${fmt(ms(w[0]))} – ${fmt(ms(w[1]))} ms` : 'whole trace';
        const params = new URLSearchParams(window.location.search);
        const trig = (window.dash_clientside.callback_context.triggered || []).map(t => t.prop_id);
        // A link that carries its own selection wins: the URL callback loads it into the store,
        // which brings us back here. Until then (and on the first load) leave the URL alone.
        const linked = own.some(k => params.has(k));
        if (linked && !trig.includes('selection.data')) {
            // Say the link's window at once, not "whole trace" until the store has it.
            const a = parseFloat(params.get('start_ms')), b = parseFloat(params.get('end_ms'));
            return (isFinite(a) && isFinite(b) && b > a) ? `window ${fmt(a)} – ${fmt(b)} ms` : text;
        }
        if (trig.includes('selection.data') || trig.includes('url.pathname')) {
            own.forEach(k => params.delete(k));
            const runs = [];
            (sel.ranks || []).forEach(r => {
                const last = runs[runs.length - 1];
                if (last && r === last[1] + 1) { last[1] = r; } else { runs.push([r, r]); }
            });
            const ranks = runs.map(([a, b]) => b - a >= 2 ? `${a}-${b}` : Array.from({length: b - a + 1}, (_, i) => a + i).join(','));
            if (ranks.length) { params.set('ranks', ranks.join(',')); }
            const num = v => v.toFixed(6).replace(/\\.?0+$/, '');
            if (w) { params.set('start_ms', num(ms(w[0]))); params.set('end_ms', num(ms(w[1]))); }
            const q = params.toString().replace(/%2C/g, ',');
            const url = window.location.pathname + (q ? '?' + q : '') + window.location.hash;
            if (url !== window.location.pathname + window.location.search + window.location.hash) {
                window.history.replaceState(window.history.state, '', url);
            }
        }
        return text;
    }""",
}


def _register_selection_callbacks(app: dash.Dash) -> None:
    app.clientside_callback(_SELECTION_JS["ranks"], Output("selection", "data", allow_duplicate=True),
                            Input("selection-ranks", "value"), State("selection", "data"), prevent_initial_call=True)
    app.clientside_callback(_SELECTION_JS["clear"], Output("selection", "data", allow_duplicate=True),
                            Output("selection-ranks", "value", allow_duplicate=True),
                            Input("selection-clear", "n_clicks"), prevent_initial_call=True)
    app.clientside_callback(_SELECTION_JS["sync"], Output("selection-window", "children"),
                            Input("selection", "data"), Input("url", "pathname"), State("selection-origin", "data"))

    # After the page router has drawn the page (its store is written on every navigation, first
    # load, link, back/forward): a selection changed before a page is in the DOM would reach
    # callbacks whose other inputs are not there yet. The page drew the URL's selection itself.
    @app.callback(Output("selection", "data", allow_duplicate=True),
                  Output("selection-ranks", "value", allow_duplicate=True),
                  Input("_pages_store", "data"), State("url", "pathname"), State("url", "search"),
                  State("selection", "data"), prevent_initial_call=True)
    def _from_url(_: Any, pathname: str | None, search: str | None, selection: Any) -> tuple[Any, Any]:
        return selection_from_url(pathname, search, selection, current_data().origin)


def host_warning(host: str) -> str | None:
    """A warning line when ``host`` exposes the dashboard beyond this machine, else ``None``."""
    if host in _LOCAL_HOSTS:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"warning: serving on {host}: anyone who can reach this machine can read the trace "
            "(the dashboard has no authentication); use --host 127.0.0.1 to keep it local")


def check_port(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` when ``host:port`` cannot be bound.

    Raises
    ------
    PortInUseError
        The port is taken (or not allowed).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"port {port} is in use; pass --port") from None
            raise PortInUseError(f"cannot listen on {host}:{port} ({exc.strerror}); pass --host or --port") from None


def _warm(data: DashboardData) -> None:
    """The timeline first (its index, then its default view), then the analyses."""
    from sohuprof.dashboards.pages import timeline

    try:
        timeline.warm(data)
    except Exception as exc:  # noqa: BLE001 - the page meets the same error itself, with its own message
        log.error("%s", exc)
    data.warm()


def serve(app: dash.Dash, *, host: str = "127.0.0.1", port: int = 8050, warm: bool = True) -> None:
    """Run ``app`` on ``host:port`` until interrupted (debug off; the reloader never starts).

    The timeline index and analyses are built in a background thread meanwhile, so the first
    page a user opens does not wait for them.

    Raises
    ------
    PortInUseError
        The port is taken.
    """
    check_port(host, port)
    security.bind(app, host)
    data = app.server.extensions[_EXTENSION]
    data.analysis_process = True
    if warm:
        threading.Thread(target=_warm, args=(data,), name="sohuprof-warm", daemon=True).start()
    for name in ("werkzeug", "dash.dash"):
        logging.getLogger(name).setLevel(logging.WARNING)
    app.run(host=host, port=port, debug=False, use_reloader=False)

"""What keeps the dashboard safe to leave running: who may ask it, what an unknown page answers,
and what the pages say when the store under them goes away.

:func:`install` puts it on an app (``create_app`` calls it once); :func:`bind` tells it the
address :func:`~sohuprof.dashboards.app.serve` listens on.

- **Host check** (DNS rebinding): a page on ``evil.example`` whose name is re-pointed at
  127.0.0.1 reaches the dashboard with ``Host: evil.example``; only the bound address, the
  loopback names and the ``--allow-host`` names are answered, anything else gets a 403 saying
  what to open instead. The port is not part of the check (tests bind port 0).
- **Cross-origin POSTs** (the callbacks that return trace data) are refused unless their
  ``Origin`` (or, without one, ``Referer``) is the dashboard's own origin or an allowed name;
  a client that sends neither (curl, tests) is not a browser on another site and is served.
- **Real 404**: Dash answers every path with its page shell; a path that is no page gets that
  shell with status 404 and a layout listing the real pages.
- **Store gone or damaged while running**: a cheap check (the manifest's and listed files'
  ``stat``) behind a banner on every page, polled by a ``dcc.Interval``; a callback (or the
  app's layout) that fails reading the store answers with the banner's message instead of an
  HTTP 500, and the failure sticks in the banner.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dash
from dash import Input, Output, dcc, html
from flask import Response, current_app, request

from sohuprof.errors import StoreError
from sohuprof.store import MANIFEST_NAME, TraceStore

__all__ = ["HostPolicy", "StoreWatch", "install", "bind", "banner", "callback_error", "allow_host_warning",
           "not_found_layout", "LOOPBACK_NAMES", "POLL_MS"]

#: Names that always mean this machine.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
#: Addresses that listen on every interface: the machine's own names and IP literals are allowed.
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
#: How often the browser asks whether the store is still there.
POLL_MS = 5_000
_EXTENSION = "sohuprof-security"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: What a read of a vanished or damaged store raises (the store wraps pyarrow's errors in StoreError).
_READ_ERRORS = (StoreError, OSError)
_BANNER_STYLE = {"background": "#b00020", "color": "white", "padding": "8px 16px", "fontWeight": 600,
                 "fontSize": "14px"}


# -- hosts ------------------------------------------------------------------------------------

def _split_host(value: str) -> tuple[str, int | None]:
    """``name``, ``name:8050``, ``[::1]:8050`` -> (lower-case name without a trailing dot, port)."""
    value = value.strip()
    port: str | None = None
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:
        name = value           # bare IPv6 or no port
    try:
        number = int(port) if port else None
    except ValueError:
        number = -1            # a port that is no number matches nothing
    return name.lower().rstrip("."), number


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _url_host(name: str) -> str:
    return f"[{name}]" if ":" in name else name


class HostPolicy:
    """Which ``Host`` names the dashboard answers.

    Parameters
    ----------
    allowed : sequence of str, default ()
        ``--allow-host`` names, each ``NAME`` (any port) or ``NAME:PORT``; ``*`` allows any.
    bound : str, default "127.0.0.1"
        The address it listens on (:meth:`bind` changes it when serving starts).
    """

    def __init__(self, allowed: tuple[str, ...] | list[str] = (), *, bound: str = "127.0.0.1") -> None:
        self.allowed = tuple(str(a).strip() for a in allowed)
        self.any_host = "*" in self.allowed
        self._explicit = [_split_host(a) for a in self.allowed if a != "*"]
        self.bind(bound)

    def bind(self, host: str) -> None:
        """Record the address the server listens on (a wildcard adds this machine's name)."""
        self.bound = host if host in _WILDCARDS else _split_host(host)[0]
        names = set(LOOPBACK_NAMES)
        names.add(socket.gethostname().lower() if host in _WILDCARDS else self.bound)
        self._names = frozenset(names)

    def _listed(self, name: str, port: int | None) -> bool:
        return any(n == name and (p is None or p == port) for n, p in self._explicit)

    def host_allowed(self, header: str) -> bool:
        """Is ``header`` (a ``Host`` value) a name of this dashboard?"""
        if self.any_host:
            return True
        name, port = _split_host(header)
        if name in self._names or self._listed(name, port):
            return True
        # Listening everywhere: an IP literal cannot be rebound (rebinding needs a name).
        return self.bound in _WILDCARDS and _is_ip(name)

    def origin_allowed(self, origin: str, scheme: str, host: str) -> bool:
        """Is ``origin`` (``scheme://host[:port]``) this dashboard's own, or an allowed name's?"""
        parts = urlsplit(origin)
        if not parts.scheme or not parts.netloc:
            return False       # "null" (sandboxed frame, file://) or garbage
        default = {"http": 80, "https": 443}

        def key(s: str, netloc: str) -> tuple[str, str, int | None]:
            name, port = _split_host(netloc)
            return s.lower(), name, port if port is not None else default.get(s.lower())

        theirs, ours = key(parts.scheme, parts.netloc), key(scheme, host)
        return theirs == ours or self._listed(theirs[1], theirs[2])

    def refusal(self, header: str, port: str | int | None) -> str:
        """The 403 body for a refused ``Host``: what to open instead, or what to pass."""
        name = _split_host(header)[0][:100] or "(none)"
        where = "127.0.0.1" if self.bound in _WILDCARDS else _url_host(self.bound)
        suffix = f":{port}" if port and str(port) != "80" else ""
        return f"host {name!r} is not allowed; open http://{where}{suffix} or pass --allow-host {name}\n"


def allow_host_warning(allowed: tuple[str, ...] | list[str]) -> str | None:
    """A warning line when ``--allow-host '*'`` turns the Host check off, else ``None``."""
    if not any(a.strip() == "*" for a in allowed):
        return None
    return ("warning: --allow-host '*': every Host name is answered, so a web page you visit can read the trace "
            "by DNS rebinding (the dashboard has no authentication); name the hosts instead")


# -- the store --------------------------------------------------------------------------------

def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class StoreWatch:
    """Whether the store the dashboard started on is still there, unchanged and readable.

    Parameters
    ----------
    store : TraceStore
        The store being served; its manifest lists every file with its size.

    Notes
    -----
    A check is a ``stat`` of the manifest and of each listed file, no read (microseconds a
    file), so it is not cached. A read failure reported by :meth:`failed` sticks: the pages
    are no longer trustworthy until a restart.
    """

    def __init__(self, store: TraceStore) -> None:
        self.path = Path(store.path)
        self._manifest = _fingerprint(self.path / MANIFEST_NAME)
        files = store.manifest.get("files")
        self._files = {str(rel): int(meta["bytes"]) for rel, meta in files.items()
                       if isinstance(meta, dict) and isinstance(meta.get("bytes"), int)} if isinstance(files, dict) else {}
        self._failure: str | None = None
        self._lock = threading.Lock()

    def _restart(self, what: str) -> str:
        return f"the trace store {self.path} {what}; restart sohuprof dashboard on a store"

    def _check(self) -> str | None:
        manifest = self.path / MANIFEST_NAME
        if not self.path.is_dir() or not manifest.is_file():
            return self._restart("is gone (deleted or moved)")
        if _fingerprint(manifest) != self._manifest:
            return self._restart("was replaced or rewritten since the dashboard started (the pages show the old one)")
        for rel, size in self._files.items():
            now = _fingerprint(self.path / rel)
            if now is None:
                return self._restart(f"is damaged: {rel} is gone")
            if now[2] != size:
                return self._restart(f"is damaged: {rel} is {now[2]:,} bytes, the manifest says {size:,}")
        return None

    def problem(self) -> str | None:
        """What is wrong with the store now, in one line (``None``: nothing)."""
        with self._lock:
            return self._failure if self._failure is not None else self._check()

    def failed(self, exc: BaseException) -> str:
        """Record a failed read of the store; the message every page shows from now on."""
        problem = self.problem()
        if problem is None:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problem = (f"the trace store {self.path} cannot be read ({text[:300]}); run `sohuprof check {self.path}`, "
                       "then restart sohuprof dashboard on a sound store")
        with self._lock:
            self._failure = problem
        return problem


@dataclass
class _Guard:
    policy: HostPolicy
    watch: StoreWatch


def _guard() -> _Guard:
    return current_app.extensions[_EXTENSION]


# -- Flask hooks ------------------------------------------------------------------------------

def _plain(text: str, status: int) -> Response:
    return Response(text, status=status, mimetype="text/plain")


def _check_request() -> Response | None:
    """Refuse a foreign ``Host`` and a cross-origin write before Dash sees the request."""
    policy = _guard().policy
    host = request.headers.get("Host", "")
    if not policy.host_allowed(host):
        return _plain(policy.refusal(host, request.environ.get("SERVER_PORT")), 403)
    if request.method in _UNSAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin is None and request.headers.get("Referer"):
            parts = urlsplit(request.headers["Referer"])
            origin = f"{parts.scheme}://{parts.netloc}"
        if origin is not None and not policy.origin_allowed(origin, request.scheme, host):
            return _plain(f"cross-origin {request.method} from {origin[:100]!r} refused; use the dashboard at "
                          f"{request.scheme}://{host[:100]}/ (or pass --allow-host for that origin's name)\n", 403)
    return None


def _page_path(app: dash.Dash, path: str) -> bool:
    """Is ``path`` one of the registered pages (not the 404 page)?"""
    wanted = app.strip_relative_path(path) or ""
    for page in dash.page_registry.values():
        if page["module"] == _NOT_FOUND_MODULE:
            continue
        if wanted == page["path"].strip("/"):
            return True
        template = page.get("path_template")
        if template:
            ours, theirs = template.strip("/").split("/"), wanted.split("/")
            if len(ours) == len(theirs) and all(a == b or a.startswith("<") for a, b in zip(ours, theirs)):
                return True
    return False


def _status_hook(app: dash.Dash) -> Any:
    catchall = app.config.routes_pathname_prefix + "<path:path>"

    def fix_status(response: Response) -> Response:
        # Dash's catch-all route serves its shell for any path; the router then draws a 404
        # layout with status 200. A path that is no page says so in its status too.
        if (request.url_rule is not None and request.url_rule.rule == catchall and response.status_code == 200
                and not _page_path(app, request.path)):
            response.status_code = 404
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
    return fix_status


def _guard_layout(app: dash.Dash) -> Any:
    """A before-request hook that wraps the app's layout function, once, on the first request
    (``create_app`` sets the layout after :func:`install`), before Dash's first-request setup
    calls it: a layout that fails reading the store becomes the banner alone. Dash would
    otherwise answer 500 and, failing inside its setup, never finish setting up."""
    lock = threading.Lock()

    def wrap() -> None:
        with lock:
            inner = app.layout
            if not callable(inner) or getattr(inner, "_sohuprof_guarded", False):
                return

            def layout() -> Any:
                try:
                    return inner()
                except _READ_ERRORS as exc:
                    return html.Div([_banner_div(_guard().watch.failed(exc))])
            layout._sohuprof_guarded = True  # type: ignore[attr-defined]
            app.layout = layout
    return wrap


# -- the 404 page and the banner ---------------------------------------------------------------

_NOT_FOUND_MODULE = f"{__name__}.not_found_404"


def not_found_layout(**_: Any) -> html.Div:
    """The layout Dash's router draws for a path that is no page: the real pages, as links."""
    try:
        path = dash.callback_context.inputs.get("_pages_location.pathname")
    except Exception:  # noqa: BLE001 - outside a callback (tests, validation): no path to name
        path = None
    pages = [p for p in dash.page_registry.values() if p["module"] != _NOT_FOUND_MODULE]
    return html.Div(id="not-found", children=[
        html.H2("Page not found"),
        html.P(f"There is no page at {path}." if path else "There is no page here.", className="status"),
        html.P("The dashboard's pages:"),
        html.Ul([html.Li(dcc.Link(f"{p['name']} ({p['relative_path']})", href=p["relative_path"])) for p in pages]),
    ])


def banner() -> html.Div:
    """The store banner and its poll, for the app's layout: shown (with the problem) from the
    first paint when the store is already gone, else hidden until a poll finds a problem."""
    problem = _guard().watch.problem()
    return html.Div([_banner_div(problem), dcc.Interval(id="store-poll", interval=POLL_MS, disabled=problem is not None)])


def _banner_div(problem: str | None) -> html.Div:
    return html.Div(problem or "", id="store-banner", role="alert", hidden=problem is None, style=_BANNER_STYLE)


def _register_banner_callback(app: dash.Dash) -> None:
    @app.callback(Output("store-banner", "children"), Output("store-banner", "hidden"),
                  Output("store-poll", "disabled"), Input("store-poll", "n_intervals"), prevent_initial_call=True)
    def _poll(_: int | None) -> tuple[str, bool, bool]:
        problem = _guard().watch.problem()
        # Once the store is gone it stays gone for this server: stop asking.
        return (problem or "", problem is None, problem is not None)


def _message_for(spec: Any, text: str) -> Any:
    from sohuprof.dashboards import figures

    if isinstance(spec, list):     # a pattern-matching output: leave the group alone
        return dash.no_update
    prop = spec.get("property")
    if spec.get("id") == "store-banner":
        return text if prop == "children" else False if prop == "hidden" else dash.no_update
    if prop == "figure":
        return figures.message_figure(text)
    if prop == "children":
        return html.Div(text, className="unavailable")
    return dash.no_update


def callback_error(exc: Exception) -> Any:
    """Dash's ``on_error``: a callback that failed because the store is gone or unreadable
    answers with the message in its figures and panels (never an HTTP 500, never the old
    picture without a word). Any other exception is a bug and is raised again."""
    watch = _guard().watch
    problem = watch.problem()
    if problem is None:
        if not isinstance(exc, _READ_ERRORS):
            raise exc
        problem = watch.failed(exc)
    outputs = dash.callback_context.outputs_list
    if isinstance(outputs, dict):
        return _message_for(outputs, problem)
    return [_message_for(spec, problem) for spec in outputs]


# -- installing -------------------------------------------------------------------------------

def install(app: dash.Dash, store: TraceStore, *, allowed_hosts: tuple[str, ...] | list[str] | None = None) -> None:
    """Put the Host and Origin checks, the 404 status and page, and the store banner's poll on
    ``app`` (call once, from ``create_app``; add :func:`banner` to the layout and pass
    :func:`callback_error` as Dash's ``on_error``).

    Parameters
    ----------
    app : dash.Dash
        The app, with ``use_pages=True``.
    store : TraceStore
        The store it serves.
    allowed_hosts : sequence of str, optional
        Extra ``Host`` names (``--allow-host``); ``*`` allows any.
    """
    server = app.server
    server.extensions[_EXTENSION] = _Guard(HostPolicy(tuple(allowed_hosts or ())), StoreWatch(store))
    # First in line: a refused request must not even start Dash's first-request setup.
    server.before_request_funcs.setdefault(None, []).insert(0, _check_request)
    server.before_request_funcs[None].insert(1, _guard_layout(app))
    server.after_request(_status_hook(app))
    dash.register_page(_NOT_FOUND_MODULE, path="/404", name="Not found", title="Not found",
                       layout=not_found_layout)
    _register_banner_callback(app)


def bind(app: dash.Dash, host: str) -> None:
    """Tell the checks the address ``app`` is served on (``serve`` calls it)."""
    app.server.extensions[_EXTENSION].policy.bind(host)

"""What the dashboard serves from: one store, its timeline index and analyses, built once and cached.

:class:`DashboardData` is created by :func:`~sohuprof.dashboards.app.create_app` and lives on the
Flask server (``server.extensions["sohuprof"]``), so every page and callback of one app reads the
same cached objects and two apps in one process never share them. Nothing here builds a path from
user input: every read goes through the one :class:`~sohuprof.store.TraceStore` given at start.

Pages read the analyses through their JSON contract (``result.to_json()``) plus the few plot
attributes (``roofline.sample``, ``serving.latencies``) they need, with a guard when a report does
not apply to the store or is missing. With a selection (ranks, a time window) the analyzers run on
it themselves (:class:`sohuprof.analyzers.engine.Selection`, as ``analyze --ranks --start-ms``
does); the last few selections' results are cached.

The selection travels in the page URL as ``ranks=0,3,5-7&start_ms=12.5&end_ms=14.25`` (ms from
:attr:`DashboardData.origin`): :func:`parse_query` and :func:`selection_query` convert both ways.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from sohuprof.errors import SohuprofError
from sohuprof.store import TraceStore

__all__ = ["DashboardData", "Selection", "ensure_selection", "NotAvailable", "parse_ranks", "format_ranks",
           "parse_query", "selection_query", "QUERY_KEYS", "SELECTION_CACHE"]

log = logging.getLogger("sohuprof.dashboard")


#: The URL query parameters the selection owns (the timeline's ``expand``, ``search`` are not).
QUERY_KEYS = ("ranks", "start_ms", "end_ms")
#: How many selections keep their analyses cached (the current one and the last few visited).
SELECTION_CACHE = 4
#: A rank range in a URL expands to at most this many ranks (``0-99999999`` is no selection).
_MAX_RANKS = 1 << 16


class NotAvailable(Exception):
    """A report does not apply to this store (the message says why); pages show it, never crash."""


@dataclass(frozen=True)
class Selection:
    """What the user selected, carried across pages in ``dcc.Store("selection")``.

    Attributes
    ----------
    ranks : tuple of int, optional
        Ranks to show; ``None`` is every rank.
    window : tuple of (int, int), optional
        Time window ``[start, end)`` in ns on the store's clock; ``None`` is the whole trace.
    """

    ranks: tuple[int, ...] | None = None
    window: tuple[int, int] | None = None

    def to_store(self) -> dict[str, Any]:
        """The JSON kept in the browser: ids and numbers only, never trace rows."""
        return {"ranks": list(self.ranks) if self.ranks is not None else None,
                "window": list(self.window) if self.window is not None else None}


def ensure_selection(value: Any) -> Selection:
    """Turn the browser's ``selection`` store (a dict, ``None`` or a Selection) into a Selection.

    Anything malformed is dropped rather than trusted: ranks must be ints, a window two ints in
    increasing order.
    """
    if isinstance(value, Selection):
        return value
    if not isinstance(value, dict):
        return Selection()
    ranks = value.get("ranks")
    ranks_t: tuple[int, ...] | None = None
    if isinstance(ranks, (list, tuple)) and ranks:
        try:
            ranks_t = tuple(sorted({int(r) for r in ranks}))
        except (TypeError, ValueError):
            ranks_t = None
    window = value.get("window")
    window_t: tuple[int, int] | None = None
    if isinstance(window, (list, tuple)) and len(window) == 2:
        try:
            a, b = int(window[0]), int(window[1])
            window_t = (a, b) if b > a else None
        except (TypeError, ValueError):
            window_t = None
    return Selection(ranks_t, window_t)


def parse_ranks(text: Any) -> tuple[int, ...] | None:
    """``"0,3,5-7"`` as ``(0, 3, 5, 6, 7)``; ``None`` when empty or malformed (every rank).

    A malformed or huge spec selects nothing rather than something unexpected.
    """
    if isinstance(text, (list, tuple)):
        text = ",".join(map(str, text))
    if not isinstance(text, str) or not text.strip():
        return None
    out: set[int] = set()
    for part in text.split(","):          # a handful of parts typed by a person
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            return None
        if a < 0 or b < a or b - a >= _MAX_RANKS or len(out) + b - a >= _MAX_RANKS:
            return None
        out.update(range(a, b + 1))
    return tuple(sorted(out)) or None


def format_ranks(ranks: Sequence[int]) -> str:
    """``(0, 3, 5, 6, 7)`` as ``"0,3,5-7"`` (runs of three or more consecutive ranks as ranges)."""
    r = np.unique(np.asarray(ranks, dtype=np.int64))
    if not len(r):
        return ""
    cut = np.flatnonzero(np.diff(r) != 1) + 1
    starts, ends = r[np.r_[0, cut]], r[np.r_[cut - 1, len(r) - 1]]
    return ",".join(f"{a}-{b}" if b - a >= 2 else ",".join(map(str, range(a, b + 1)))
                    for a, b in zip(starts.tolist(), ends.tolist()))


def _ms(value: Any) -> float | None:
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    try:
        ms = float(value)
    except (TypeError, ValueError):
        return None
    return ms if math.isfinite(ms) else None


def parse_query(query: Mapping[str, Any], origin: int) -> Selection | None:
    """The selection a URL's query parameters name, or ``None`` when they name none.

    ``ranks=0,3,5-7`` and ``start_ms``/``end_ms`` (ms from ``origin``, the trace start). A window
    needs both ends, in increasing order; a malformed part is dropped, never trusted.
    """
    if not any(query.get(k) not in (None, "") for k in QUERY_KEYS):
        return None
    ranks = parse_ranks(query.get("ranks"))
    a, b = _ms(query.get("start_ms")), _ms(query.get("end_ms"))
    window = None
    if a is not None and b is not None and b > a:
        window = (int(origin) + int(round(a * 1e6)), int(origin) + int(round(b * 1e6)))
    return Selection(ranks, window)


def selection_query(selection: Any, origin: int) -> dict[str, str]:
    """The URL query parameters of ``selection`` (empty for everything), as :func:`parse_query` reads them."""
    sel = ensure_selection(selection)
    out: dict[str, str] = {}
    if sel.ranks is not None:
        out["ranks"] = format_ranks(sel.ranks)
    if sel.window is not None:
        out["start_ms"], out["end_ms"] = (f"{(t - int(origin)) / 1e6:.6f}".rstrip("0").rstrip(".") for t in sel.window)
    return out


def whole_trace_reports(store: TraceStore) -> tuple[dict[str, Any], dict[str, str]]:
    """Every report on the whole store, and for each one not there why (one failing report does
    not take the others down). A module function: the server runs it in a worker process."""
    from sohuprof.analyzers.report import REPORTS, load_analysis, run_reports

    results: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    try:
        reports = run_reports(store)
        results = dict(reports.results)
        ctx = reports.ctx
    except Exception as exc:  # noqa: BLE001 - one failing report must not take the pages down
        ctx = None
        for name in REPORTS:
            try:
                results.update(run_reports(store, [name]).results)
            except Exception as one:  # noqa: BLE001
                reasons[name] = f"{type(one).__name__}: {one}"
        reasons.setdefault("all", f"{type(exc).__name__}: {exc}")
    for name in REPORTS:
        if name in results or name in reasons:
            continue
        why = None
        if ctx is not None:
            try:
                why = load_analysis(REPORTS[name]).applies(ctx)
            except Exception as exc:  # noqa: BLE001
                why = f"{type(exc).__name__}: {exc}"
        reasons[name] = why or "the analysis did not run"
    return results, reasons


class DashboardData:
    """One store's timeline index, analysis results and small tables, built lazily and cached.

    Parameters
    ----------
    store : TraceStore
        The store to serve; nothing outside it is ever read.

    Notes
    -----
    Building is thread-safe (Dash serves callbacks from a thread pool): the first caller builds,
    the others wait. :meth:`warm` builds everything in the background right after start.
    """

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.manifest = store.manifest
        self._lock = threading.RLock()
        self._index: Any = None
        self._reports: dict[str, Any] | None = None
        self._reasons: dict[str, str] = {}
        self._json: dict[str, dict[str, Any]] = {}
        self._requests: pd.DataFrame | None = None
        self._origin: int | None = None
        self._trace_start: int | None = None
        #: Run the whole-trace analyses in a worker process (what :func:`~sohuprof.dashboards.app.serve`
        #: sets): the server then holds the index and the results only, and the analyses do not
        #: hold its GIL while pages are served.
        self.analysis_process = False
        # Selection key -> {report name: result or NotAvailable}; least recently used first.
        self._selected: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
        self._selected_locks: dict[tuple[Any, ...], threading.Lock] = {}

    # -- built once -----------------------------------------------------------------------

    @property
    def index(self) -> Any:
        """The :class:`~sohuprof.analyzers.timeline.TimelineIndex` of the store (built once)."""
        with self._lock:
            if self._index is None:
                from sohuprof.analyzers.timeline import TimelineIndex
                self._index = TimelineIndex(self.store)
            return self._index

    def _run_reports(self) -> None:
        if not self.analysis_process:
            self._reports, self._reasons = whole_trace_reports(self.store)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter (a fork would copy the index and the server's threads).
        from concurrent.futures.process import BrokenProcessPool

        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                self._reports, self._reasons = pool.submit(whole_trace_reports, self.store).result()
        except Exception as exc:  # noqa: BLE001 - the worker died (out of memory, killed) or a result did not pickle
            log.error("the analysis worker failed: %s", exc if isinstance(exc, BrokenProcessPool) else
                      f"{type(exc).__name__}: {exc}")
            self._reports, self._reasons = {}, {"all": f"the analysis worker failed: {exc}"}

    def result(self, name: str, selection: Any = None) -> Any:
        """The analysis result named ``name`` (``roofline``, ``stalls``, ``comm`` ...).

        Parameters
        ----------
        name : str
            A report name of :data:`sohuprof.analyzers.report.REPORTS`.
        selection : Selection or dict, optional
            Ranks and a time window: the analyzers then run on those events only (their own
            selection, as ``analyze --ranks --start-ms --end-ms``). ``None``, or a selection of
            everything: the whole trace.

        Raises
        ------
        NotAvailable
            The report does not apply to this store or this selection (the critical path and
            the findings need every rank), the selection holds no events, or it failed; the
            message says why.
        """
        key = self.selection_key(selection)
        if key is not None:
            return self._selected_results([name], key)[name]
        with self._lock:
            if self._reports is None:
                self._run_reports()
            reports = self._reports or {}
            if name not in reports:
                raise NotAvailable(self._reasons.get(name, f"no {name!r} report for this trace"))
            return reports[name]

    def report(self, name: str, selection: Any = None) -> dict[str, Any]:
        """The report's JSON contract (``result.to_json()``) for ``selection`` (see :meth:`result`), cached."""
        key = self.selection_key(selection)
        if key is not None:
            return self._selected_results([name], key, as_json=True)[name]
        with self._lock:
            if name not in self._json:
                self._json[name] = self.result(name).to_json()
            return self._json[name]

    def prefetch(self, names: Sequence[str], selection: Any = None) -> None:
        """Compute ``names`` for ``selection`` in one pass over its events (a page that shows
        several reports asks for them together; later :meth:`report` calls hit the cache)."""
        key = self.selection_key(selection)
        if key is not None:
            self._selected_results(list(names), key, raise_missing=False)
            return
        with self._lock:
            if self._reports is None:
                self._run_reports()

    # -- selections -------------------------------------------------------------------------

    def page_selection(self, selection: Any, query: Mapping[str, Any] | None = None) -> Selection:
        """What a page's first render shows: the URL's selection when its query names one (a
        reload, a pasted link: the shared store has not caught up yet), else the shared store's.

        Dash pages pass the query parameters to ``layout(**query)``; pass them on.
        """
        from_url = parse_query(query or {}, self.origin)
        return from_url if from_url is not None else ensure_selection(selection)

    @property
    def trace_start(self) -> int:
        """Time zero of the analyzers' ``start_ms``/``end_ms``: the first event or counter sample (ns)."""
        with self._lock:
            if self._trace_start is None:
                ts = self.store.read("counters", columns=["ts"]).column("ts")
                first = pc.min(ts).as_py() if len(ts) else None
                self._trace_start = min(self.origin, int(first)) if first is not None else self.origin
            return self._trace_start

    def selection_key(self, selection: Any) -> tuple[Any, ...] | None:
        """``(ranks, window)`` of a selection that leaves something out, else ``None`` (whole trace).

        Every rank of the store selected is no rank selection (the diagnosis then still runs).
        """
        sel = ensure_selection(selection)
        ranks = sel.ranks
        if ranks is not None and set(ranks) >= set(self.ranks["rank"].tolist()):
            ranks = None
        if ranks is None and sel.window is None:
            return None
        return (ranks, sel.window)

    def analysis_selection(self, selection: Any) -> Any:
        """The :class:`sohuprof.analyzers.engine.Selection` of ``selection`` (``None``: everything)."""
        from sohuprof.analyzers.engine import Selection as EngineSelection

        key = self.selection_key(selection)
        if key is None:
            return None
        ranks, window = key
        start_ms = end_ms = None
        if window is not None:
            t0 = self.trace_start
            # A window reaching left of the trace starts at its start (the engine refuses < 0).
            start_ms, end_ms = max(window[0] - t0, 0) / 1e6, (window[1] - t0) / 1e6
        return EngineSelection(ranks=list(ranks) if ranks is not None else None, start_ms=start_ms, end_ms=end_ms)

    def _selected_results(self, names: list[str], key: tuple[Any, ...], *, as_json: bool = False,
                          raise_missing: bool = True) -> dict[str, Any]:
        """``names`` for the selection ``key``: cached, else computed in one ``run_reports`` pass.

        One lock per selection: two callbacks asking for the same window wait for one run, while
        other selections (and the whole trace) are served meanwhile.
        """
        with self._lock:
            lock = self._selected_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                entry = self._selected.setdefault(key, {})
                self._selected.move_to_end(key)
                missing = [n for n in dict.fromkeys(names) if n not in entry]
            if missing:
                computed = self._compute_selected(missing, key)
                with self._lock:
                    entry.update(computed)
                    while len(self._selected) > SELECTION_CACHE:
                        old, _ = self._selected.popitem(last=False)
                        self._selected_locks.pop(old, None)
            out: dict[str, Any] = {}
            for name in names:
                value = entry[name]
                if isinstance(value, NotAvailable):
                    if raise_missing:
                        raise NotAvailable(str(value))
                    continue
                if as_json:
                    # The JSON is cached beside its result, under a key no report name takes.
                    jkey = f"{name}.json"
                    if jkey not in entry:
                        entry[jkey] = value.to_json()
                    value = entry[jkey]
                out[name] = value
            return out

    def _compute_selected(self, names: list[str], key: tuple[Any, ...]) -> dict[str, Any]:
        """Run the analyzers on the selection: ``{name: result or NotAvailable(reason)}``."""
        from sohuprof.analyzers.analysis import ReportError
        from sohuprof.analyzers.engine import build_context
        from sohuprof.analyzers.report import REPORTS, load_analysis, run_reports

        esel = self.analysis_selection(Selection(*key))
        out: dict[str, Any] = {}
        try:
            ctx = build_context(self.store, selection=esel)
        except (ReportError, SohuprofError) as exc:     # no events there, ranks the store lacks
            return {n: NotAvailable(str(exc)) for n in names}
        runnable = []
        for name in names:
            if name not in REPORTS:
                out[name] = NotAvailable(f"no {name!r} report")
                continue
            why = load_analysis(REPORTS[name]).applies(ctx)
            if why is not None:
                out[name] = NotAvailable(why)
            else:
                runnable.append(name)
        if runnable:
            try:
                out.update(run_reports(self.store, runnable, selection=esel).results)
            except Exception as exc:  # noqa: BLE001 - a failing report must not take the page down
                log.warning("reports %s on %s failed: %s", runnable, key, exc)
                out.update({n: NotAvailable(f"{type(exc).__name__}: {exc}") for n in runnable})
        return out

    def requests(self) -> pd.DataFrame:
        """The served requests (arrival, first token, finish, tokens); empty when none."""
        with self._lock:
            if self._requests is None:
                self._requests = self.store.read("requests").to_pandas()
            return self._requests

    def warm(self) -> None:
        """Build the index and every analysis now (run in a background thread at start).

        A store that fails to read (damaged after the server started) is one line in the log,
        not a thread's traceback; the pages meet the same error when they ask."""
        try:
            self.index
            self.result("summary")
        except NotAvailable:
            pass
        except SohuprofError as exc:
            log.error("%s", exc)

    # -- small facts ----------------------------------------------------------------------

    @property
    def origin(self) -> int:
        """The trace's first instant (ns): time zero of every axis."""
        with self._lock:
            if self._index is not None:
                return int(self._index.start)
            if self._origin is None:
                ts = self.store.read("events", columns=["ts"]).column("ts")
                self._origin = int(pc.min(ts).as_py() or 0) if len(ts) else 0
            return int(self._origin)

    @property
    def ranks(self) -> pd.DataFrame:
        """``rank``, ``node``, ``chip`` of every rank, from the manifest when it lists them."""
        entries = self.manifest.get("ranks")
        if isinstance(entries, list) and entries and isinstance(entries[0], dict):
            frame = pd.DataFrame(entries)
            for col in ("node", "chip"):
                if col not in frame:
                    frame[col] = 0
            return frame[["rank", "node", "chip"]].astype("int64").sort_values("rank").reset_index(drop=True)
        lanes = self.index.lanes
        return lanes[["rank", "node", "chip"]].drop_duplicates("rank").sort_values("rank").reset_index(drop=True)

    @property
    def nodes(self) -> int:
        """Number of nodes (one more than the largest node index)."""
        ranks = self.ranks
        return int(ranks["node"].max()) + 1 if len(ranks) else 1

    def hardware_roof(self) -> tuple[float | None, float | None]:
        """(peak FLOP/s, HBM bytes/s) the roofline uses, else from the manifest's hardware."""
        try:
            hw = self.report("roofline")["hardware"]
            return float(hw["peak_flops"]), float(hw["hbm_bandwidth"])
        except (NotAvailable, KeyError, TypeError):
            pass
        hw = self.manifest.get("hardware") or {}
        dtype = (self.manifest.get("model") or {}).get("dtype")
        peak = hw.get(f"peak_flops_{dtype}") if dtype else None
        peak = peak or max([v for k, v in hw.items() if k.startswith("peak_flops")] or [0]) or None
        bw = hw.get("hbm_bandwidth")
        return (float(peak) if peak else None), (float(bw) if bw else None)

    def event_at(self, lane: int, t_ns: int) -> dict[str, Any] | None:
        """The full store row of the op drawn on ``lane`` at instant ``t_ns`` (or the nearest one).

        A filtered read (one rank, a window around ``t_ns``) of the store; the roofline position
        (intensity, attained FLOP/s, roof, efficiency) is added for ops with FLOPs and bytes.
        """
        lanes = self.index.lanes
        if not 0 <= lane < len(lanes):
            return None
        row = lanes.iloc[int(lane)]
        ix = self.index
        lo, hi = int(ix.bounds[lane]), int(ix.bounds[lane + 1])
        if hi <= lo:
            return None
        ts = ix.ts[lo:hi]
        i = int(np.clip(np.searchsorted(ts, t_ns, side="right") - 1, 0, hi - lo - 1))
        if t_ns >= ts[i] + ix.dur[lo + i] and i + 1 < hi - lo and ts[i + 1] - t_ns < t_ns - (ts[i] + ix.dur[lo + i]):
            i += 1
        start = int(ts[i])
        flt = ((pc.field("node") == int(row["node"])) & (pc.field("rank") == int(row["rank"]))
               & (pc.field("ts") == start))
        table = self.store.read("events", filters=flt).to_pandas()
        table = table[(table["track"].astype(str) == str(row["track"]))
                      & (table["category"].astype(str) == str(row["category"]))]
        if not len(table):
            return None
        event = {k: (None if pd.isna(v) else (v.item() if hasattr(v, "item") else v))
                 for k, v in table.iloc[0].to_dict().items()}
        event = {k: (str(v) if k in ("track", "name", "op", "category", "phase") and v is not None else v)
                 for k, v in event.items()}
        flops, nbytes, dur = event.get("flops"), event.get("hbm_bytes"), event.get("dur")
        peak, bw = self.hardware_roof()
        if flops and nbytes and dur and peak and bw:
            intensity = flops / nbytes
            attained = flops / (dur / 1e9)
            roof = min(peak, bw * intensity)
            event["roofline"] = {"intensity": intensity, "attained_flops": attained, "roof_flops": roof,
                                 "efficiency": attained / roof if roof else None,
                                 "bound": "compute" if bw * intensity >= peak else "memory"}
        return event

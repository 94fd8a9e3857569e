"""What the dashboard serves from: one store, its timeline index and analyses, built once and cached.

:class:`DashboardData` is created by :func:`~sohuprof.dashboards.app.create_app` and lives on the
Flask server (``server.extensions["sohuprof"]``), so every page and callback of one app reads the
same cached objects and two apps in one process never share them. Nothing here builds a path from
user input: every read goes through the one :class:`~sohuprof.store.TraceStore` given at start.

Pages read the analyses through their JSON contract (``result.to_json()``) plus the few plot
attributes (``roofline.sample``, ``serving.latencies``) they need, with a guard when a report does
not apply to the store or is missing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from sohuprof.errors import SohuprofError
from sohuprof.store import TraceStore

__all__ = ["DashboardData", "Selection", "ensure_selection", "NotAvailable"]

log = logging.getLogger("sohuprof.dashboard")


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
        from sohuprof.analyzers.report import REPORTS, load_analysis, run_reports

        results: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        try:
            reports = run_reports(self.store)
            results = dict(reports.results)
            ctx = reports.ctx
        except Exception as exc:  # noqa: BLE001 - one failing report must not take the pages down
            ctx = None
            for name in REPORTS:
                try:
                    results.update(run_reports(self.store, [name]).results)
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
        self._reports, self._reasons = results, reasons

    def result(self, name: str) -> Any:
        """The analysis result named ``name`` (``roofline``, ``stalls``, ``comm`` ...).

        Raises
        ------
        NotAvailable
            The report does not apply to this store, or failed; the message says why.
        """
        with self._lock:
            if self._reports is None:
                self._run_reports()
            reports = self._reports or {}
            if name not in reports:
                raise NotAvailable(self._reasons.get(name, f"no {name!r} report for this trace"))
            return reports[name]

    def report(self, name: str) -> dict[str, Any]:
        """The report's JSON contract (``result.to_json()``), computed once."""
        with self._lock:
            if name not in self._json:
                self._json[name] = self.result(name).to_json()
            return self._json[name]

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

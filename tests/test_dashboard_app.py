"""The dashboard without a browser: the factory, page layouts, callbacks as pure functions, CLI errors."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import dash
import pandas as pd
import plotly.io as pio
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sohuprof.cli import cli
from sohuprof.dashboards import components, figures
from sohuprof.dashboards.app import PAGES, check_port, create_app, current_data, host_warning, window_text
from sohuprof.analyzers.reports.serving import throughput_series
from sohuprof.dashboards.data import NotAvailable, Selection, ensure_selection
from sohuprof.dashboards.pages import comm, overview, roofline, serving, stalls, timeline
from sohuprof.errors import StoreError

from dashboard_support import SAMPLE, app, data  # noqa: F401  (pytest fixtures; tests/dashboard_support.py)



def _ids(component: Any) -> set[str]:
    """Every string id in a component tree."""
    found: set[str] = set()
    stack = [component]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, tuple)):
            stack.extend(node)
            continue
        if not hasattr(node, "to_plotly_json"):
            continue
        if isinstance(getattr(node, "id", None), str):
            found.add(node.id)
        stack.append(getattr(node, "children", None))
    return found


def test_factory_serves_the_app_shell(app: dash.Dash) -> None:
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    shell = client.get("/_dash-layout")
    assert shell.status_code == 200
    text = shell.get_data(as_text=True)
    assert '"selection"' in text and "selection-ranks" in text and "mixtral-8x7b" in text
    registered = [p["module"].rsplit(".", 1)[-1] for p in dash.page_registry.values()
                  if p["module"].startswith("sohuprof.dashboards.pages.")]
    assert registered == list(PAGES)
    assert client.get("/_dash-dependencies").status_code == 200


def test_two_apps_keep_their_own_data_and_callbacks(app: dash.Dash, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(SAMPLE, copy)
    other = create_app(copy)
    with other.server.test_request_context("/"):
        assert current_data().store.path == copy
    with app.server.test_request_context("/"):
        assert current_data().store.path == SAMPLE
    for one in (app, other):
        outputs = " ".join(one.callback_map)
        assert "timeline.figure" in outputs and "stalls.figure" in outputs


@pytest.mark.parametrize("module, graph", [(overview, "overview-kpis"), (timeline, "timeline"),
                                           (roofline, "roofline"), (stalls, "stalls"), (comm, "comm-matrix"),
                                           (serving, "serving-latency")])
def test_every_page_layout_has_its_graph(app: dash.Dash, module: Any, graph: str) -> None:
    with app.server.test_request_context("/"):
        assert graph in _ids(module.layout(selection=None))


def test_selection_is_sanitized() -> None:
    assert ensure_selection(None) == Selection()
    assert ensure_selection({"ranks": ["3", 1, 1], "window": [5, 9]}) == Selection((1, 3), (5, 9))
    assert ensure_selection({"ranks": ["../etc"], "window": [9, 5]}) == Selection()
    assert ensure_selection({"ranks": [], "window": "x"}).to_store() == {"ranks": None, "window": None}
    assert window_text({"window": [1_000_000, 3_000_000]}, 0) == "window 1.000 – 3.000 ms"


def test_stall_and_straggler_clicks_select_ranks(data: Any) -> None:
    assert components.rank_from_click({"points": [{"x": "r5", "customdata": 5}]}) == 5
    assert components.rank_from_click({"points": [{"x": "r7"}]}) == 7
    assert components.toggle_rank(5, [1]) == [1, 5] and components.toggle_rank(5, [1, 5]) == [1]
    assert components.toggle_rank(None, [1]) is dash.no_update
    fig = stalls.build_figure(data, {"ranks": [5]})        # the stalls of the selected ranks only
    assert list(fig.data[0].x) == ["r5"] and list(fig.data[0].customdata) == [5]
    assert comm.comm_frames(data)["stragglers"]["rank"].iloc[0] == 5


def _text(component: Any) -> str:
    return json.dumps(component.to_plotly_json(), default=lambda o: o.to_plotly_json())


def test_stragglers_by_root_cost(data: Any) -> None:
    strag = comm.comm_frames(data)["stragglers"]
    # Injected at 1.3x compute: its memory-bound ops (decode GEMMs streaming weights) barely slow.
    assert strag["rank"].iloc[0] == 5 and strag["peer_ratio"].iloc[0] >= 1.1
    fig = comm.stragglers_figure(data, None)
    assert list(fig.data[0].x)[0] == pytest.approx(strag["root_cost_ns"].iloc[0] / 1e6)
    assert "root cost" in fig.layout.xaxis.title.text and "own excess" in fig.layout.title.text
    row = {"rank": 7, "node": 1, "chip": 3, "delay_cost_ns": 9_000_000, "late_count": 40, "cause": None,
           "peers": 7}
    assert "no rank's own excess" in figures.stragglers_figure(pd.DataFrame([{**row, "root_cost_ns": 0}])).layout \
        .annotations[0].text
    # The overview names a straggler only through the findings (replayed, above noise).
    text = _text(overview.findings_list(data, Selection()))
    assert "rank 5 (node 1, chip 1) computes" in text


def test_roofline_filters_by_phase_and_selection(data: Any) -> None:
    sample = data.result("roofline").sample
    decode = roofline.select_points(sample, "decode", None)
    assert len(decode) and set(decode["phase"].astype(str)) == {"decode"}
    one = roofline.select_points(sample, "all", {"ranks": [2]})
    assert set(one["rank"]) == {2}
    fig = roofline.build_figure(data, "prefill", None)
    assert "prefill" in fig.layout.title.text and fig.layout.xaxis.type == "log"


def test_serving_figures_and_throughput(data: Any) -> None:
    requests = data.requests()
    series = throughput_series(requests, data.origin, data.origin + 100_000_000, bins=50)
    total = series["tokens_per_s"].sum() * (100_000_000 / 50) / 1e9
    assert total == pytest.approx(requests["output_tokens"].sum(), rel=0.02)
    fig = serving.throughput(data, {"window": [data.origin, data.origin + 5_000_000]})
    assert any(shape.type == "rect" for shape in fig.layout.shapes)


def test_pages_say_when_a_report_does_not_apply(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(SAMPLE, store)
    empty = pq.read_table(store / "requests.parquet").slice(0, 0)
    pq.write_table(empty, store / "requests.parquet")
    # Say so in the manifest too, or opening refuses the store as damaged (size, row count).
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["tables"]["requests"] = 0
    manifest.pop("files", None)
    (store / "manifest.json").write_text(json.dumps(manifest))
    app = create_app(store)
    with app.server.test_request_context("/"):
        with pytest.raises(NotAvailable):
            current_data().result("serving")
        page = json.dumps(serving.layout().to_plotly_json(), default=lambda o: o.to_plotly_json())
        assert "Serving is not available for this trace: " in page
        assert "serving-unavailable" in _ids(serving.layout())
        overview.layout()   # still renders, with n/a tiles


def test_figures_carry_units() -> None:
    assert figures.message_figure("nothing").layout.annotations[0].text == "nothing"


# -- CLI -----------------------------------------------------------------------------------


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_dashboard_missing_or_corrupt_store_is_one_line(tmp_path: Path) -> None:
    result = _invoke("dashboard", str(tmp_path / "nope"))
    assert result.exit_code == 1 and "does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    result = _invoke("dashboard", str(bad))
    assert result.exit_code == 1 and "cannot be read" in result.output
    with pytest.raises(StoreError):
        create_app(tmp_path / "nope")


def test_dashboard_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _invoke("dashboard", str(SAMPLE), "--port", str(port))
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"Error: port {port} is in use; pass --port"


def test_dashboard_serves_with_debug_off_and_warns_off_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run(self: dash.Dash, **kwargs: Any) -> None:
        calls.append(kwargs)

    monkeypatch.setattr(dash.Dash, "run", fake_run)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = _invoke("dashboard", str(SAMPLE), "--port", str(port))
    assert result.exit_code == 0, result.output
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["debug"] is False and calls[-1]["port"] == port
    assert "warning" not in result.stderr
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    assert "no authentication" in (host_warning("0.0.0.0") or "")
    result = _invoke("dashboard", str(SAMPLE), "--port", str(port), "--host", "0.0.0.0")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: serving on 0.0.0.0")


def test_check_port_free() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    check_port("127.0.0.1", port)


@pytest.mark.parametrize("command", ["dashboard", "demo"])
def test_help(command: str) -> None:
    result = _invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    if command == "demo":
        assert "--serve" in result.output


def test_demo_collects_analyzes_and_can_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Any] = []
    monkeypatch.setattr("sohuprof.dashboards.app.serve", lambda app, **kw: served.append((app, kw)))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = _invoke("demo", "-o", str(tmp_path / "demo"), "--serve", "--port", str(port))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "store" / "manifest.json").is_file()
    assert "where to look: sohuprof dashboard" in result.stdout and "stalls" in result.stdout
    assert served and served[0][1] == {"host": "127.0.0.1", "port": port}

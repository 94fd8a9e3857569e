"""The Communication, Roofline, Kernels and Idle pages in Debian's headless Chromium: each renders
with its graphs and no console error; the roofline paints its markers in a WebGL canvas; the
Kernels and Idle pages of a PyTorch profiler store (collected with the CLI from a real Kineto
trace) show the reports' numbers, and on a Sohu store say why they do not apply. Screenshots go
to ``tmp/browser-artifacts/`` (gitignored)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from click.testing import CliRunner  # noqa: E402
from sohuprof.analyzers.report import run_reports  # noqa: E402
from sohuprof.cli import cli  # noqa: E402
from sohuprof.dashboards.components import fmt_ms  # noqa: E402
from sohuprof.store import open_store  # noqa: E402

from conftest import CHROMIUM, serve_dashboard, settle as _settle  # noqa: E402  (tests/browser/conftest.py)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_traces" / "mixtral-2node" / "store"
KINETO = REPO / "tests" / "data" / "kineto"          # HTA's A100 ResNet DDP trace, rank 0
ARTIFACTS = REPO / "tmp" / "browser-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium not found at {CHROMIUM} "
                                "(apt-get install chromium, or set SOHUPROF_CHROMIUM)")


@pytest.fixture(scope="module")
def sohu() -> Iterator[str]:
    with serve_dashboard(SAMPLE) as url:
        yield url


@pytest.fixture(scope="module")
def kineto_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kineto") / "store"
    result = CliRunner().invoke(cli, ["collect", str(KINETO), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def kineto(kineto_store: Path) -> Iterator[str]:
    with serve_dashboard(kineto_store) as url:
        yield url


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"pages-{name}.png"), full_page=True)


def _graph_drawn(page: Any, graph: str) -> None:
    page.wait_for_selector(f"#{graph} .main-svg")
    page.wait_for_function(f"() => document.getElementById('{graph}').querySelector('.js-plotly-plot')"
                           f"?.data?.length > 0")


def test_communication_page(sohu: str, page: Any) -> None:
    page.goto(sohu + "/comm")
    for graph in ("comm-links", "comm-nics", "comm-stragglers", "comm-matrix", "comm-busbw"):
        _graph_drawn(page, graph)
    _settle(page)
    heat = page.evaluate("""() => { const g = document.querySelector('#comm-matrix .js-plotly-plot');
        const t = g._fullData[0]; return {zmin: t.zmin, z: t._z || t.z}; }""")
    assert heat["zmin"] == 0
    assert all(v >= 0 for row in heat["z"] for v in row) and heat["z"][0][0] > 0     # intra-node on the diagonal
    roof = page.evaluate("""() => document.querySelector('#comm-busbw .js-plotly-plot').data
        .map(t => t.name)""")
    assert any(name and name.startswith("link roof") for name in roof)
    assert "first root cause of waiting: r5" in page.inner_text("#comm-headline")
    assert "r5" in page.inner_text("#comm-root-causes")
    assert "link roof" in page.inner_text("#comm-collectives")
    _shot(page, "comm")
    assert page.errors == []


def test_roofline_paints_in_webgl(sohu: str, page: Any) -> None:
    page.goto(sohu + "/roofline")
    _graph_drawn(page, "roofline")
    page.wait_for_selector("#roofline .gl-container canvas")
    _settle(page)
    state = page.evaluate("""() => { const g = document.querySelector('#roofline .js-plotly-plot');
        const gl = g._fullData.filter(t => t.type === 'scattergl');
        const c = g.querySelector('.gl-container canvas');
        const ridge = Array.from(g.querySelectorAll('.annotation-text')).map(a => a.textContent)
            .find(t => t.startsWith('ridge'));
        const box = g.querySelector('.annotation').getBoundingClientRect();
        const plot = g.querySelector('.nsewdrag').getBoundingClientRect();
        return {traces: gl.length, colours: gl.map(t => t.marker.color), points: gl.reduce((n, t) => n + t.x.length, 0),
                canvas: c ? [c.width, c.height] : null, ridge: ridge,
                inside: box.left >= plot.left && box.right <= plot.right && box.top >= plot.top
                        && box.bottom <= plot.bottom,
                svgPoints: g.querySelectorAll('.scatterlayer .point').length}; }""")
    assert state["traces"] >= 6 and len(set(state["colours"])) == state["traces"]
    assert state["points"] > 10_000 and state["svgPoints"] == 0      # markers in the canvas, not SVG nodes
    assert state["canvas"] and state["canvas"][0] > 0 and state["canvas"][1] > 0
    assert state["ridge"] and state["inside"], state
    _shot(page, "roofline")
    assert page.errors == []


def test_kernels_and_idle_pages_on_a_pytorch_store(kineto: str, kineto_store: Path, page: Any) -> None:
    want = run_reports(open_store(kineto_store), ["kernels", "idle"]).to_json()
    page.goto(kineto + "/kernels")
    _graph_drawn(page, "kernels-types")
    _graph_drawn(page, "kernels-names")
    _settle(page)
    assert fmt_ms(want["kernels"]["kernel_ns"]) in page.inner_text("#kernels-kpi-time")
    computation = next(r for r in want["kernels"]["types"] if r["kernel_type"] == "COMPUTATION")
    assert f"{computation['pct']:.1f} %" in page.inner_text("#kernels-kpi-computation")
    assert want["kernels"]["launchers"][0]["cpu_op"] in page.inner_text("#kernels-launchers")
    _shot(page, "kernels")
    page.click("#nav-idle")
    _graph_drawn(page, "idle-streams")
    _settle(page)
    idle = sum(s["idle_ns"] for s in want["idle"]["streams"])
    assert fmt_ms(idle) in page.inner_text("#idle-kpi-idle")
    assert page.locator("#idle-streams-table tbody tr").count() == len(want["idle"]["streams"])
    _shot(page, "idle")
    assert page.errors == []


def test_kernels_and_idle_say_why_on_a_sohu_store(sohu: str, page: Any) -> None:
    for path, name in (("/kernels", "Kernels"), ("/idle", "Idle")):
        page.goto(sohu + path)
        page.wait_for_selector(f"#{name.lower()}-unavailable")
        assert f"{name} is not available for this trace" in page.inner_text(f"#{name.lower()}-unavailable")
    assert page.errors == []

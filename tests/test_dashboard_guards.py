"""The dashboard's guards through Flask's test client (tests/browser/test_dashboard_security.py drives them
in Chromium; a basename of its own, as pytest collects both): the Host check (DNS rebinding),
cross-origin POSTs, a real 404, and a store deleted or damaged while serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dash
import pytest
from click.testing import CliRunner

from sohuprof.cli import cli
from sohuprof.dashboards import app as app_module
from sohuprof.dashboards import security
from sohuprof.dashboards.app import PAGES, create_app, current_data

SAMPLE = Path(__file__).resolve().parents[1] / "sample_traces" / "mixtral-2node" / "store"


@pytest.fixture(scope="module")
def app() -> dash.Dash:
    return create_app(SAMPLE)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A copy of the sample store this test may delete or damage."""
    copy = tmp_path / "store"
    shutil.copytree(SAMPLE, copy)
    return copy


def _key(app: dash.Dash, output: str) -> str:
    """The callback_map key of the callback whose outputs include ``output`` (``id.prop``)."""
    client = app.server.test_client()
    client.get("/")                        # the pages' router callback registers on the first request
    keys = [k for k in app.callback_map if output in k.split("..")[1:-1] or k.split("@")[0] == output]
    assert len(keys) == 1, (output, list(app.callback_map))
    return keys[0]


def _call(app: dash.Dash, output: str, values: dict[str, Any], *, headers: dict[str, str] | None = None) -> Any:
    """POST the callback writing ``output`` as the renderer does, ``values`` by ``id.prop``."""
    key = _key(app, output)
    cb = app.callback_map[key]
    outputs = cb["output"] if isinstance(cb["output"], list) else [cb["output"]]
    specs = [{"id": o.component_id, "property": o.component_property} for o in outputs]

    def filled(deps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [dict(d, value=values.get(f"{d['id']}.{d['property']}")) for d in deps]

    body = {"output": key, "outputs": specs if isinstance(cb["output"], list) else specs[0],
            "inputs": filled(cb["inputs"]), "state": filled(cb["state"]),
            "changedPropIds": [f"{d['id']}.{d['property']}" for d in cb["inputs"]]}
    return app.server.test_client().post("/_dash-update-component", json=body, headers=headers or {})


BANNER = "store-banner.children"


# -- Host ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["rebind.test", "rebind.test:8050", "evil.example:80", "127.0.0.1.evil.test",
                                  "localhost.evil.test:8050", "[::2]:8050", "10.0.0.7:8050"])
def test_a_foreign_host_is_refused_with_what_to_do(app: dash.Dash, host: str) -> None:
    name = security._split_host(host)[0]
    for path in ("/", "/timeline", "/_dash-layout", "/_dash-dependencies"):
        r = app.server.test_client().get(path, headers={"Host": host})
        assert r.status_code == 403, (host, path)
        assert r.mimetype == "text/plain"
        assert r.get_data(as_text=True) == (f"host {name!r} is not allowed; open http://127.0.0.1 "
                                            f"or pass --allow-host {name}\n")


def test_the_refusal_names_the_port_served(app: dash.Dash) -> None:
    r = app.server.test_client().get("/", headers={"Host": "rebind.test:8050"},
                                     environ_overrides={"SERVER_PORT": "8050"})
    assert r.status_code == 403
    assert "open http://127.0.0.1:8050 or pass --allow-host rebind.test" in r.get_data(as_text=True)


def test_a_rebound_callback_post_gets_no_trace_data(app: dash.Dash) -> None:
    """The rebinding attack itself: Host and Origin both the attacker's name (same-origin to the
    browser); the stalls callback must not answer."""
    attack = {"Host": "rebind.test:8050", "Origin": "http://rebind.test:8050"}
    r = _call(app, "stalls.figure", {"selection.data": None}, headers=attack)
    assert r.status_code == 403
    assert "rank" not in r.get_data(as_text=True)
    ok = _call(app, "stalls.figure", {"selection.data": None}, headers={"Host": "127.0.0.1:8050",
                                                                        "Origin": "http://127.0.0.1:8050"})
    assert ok.status_code == 200 and "stall" in ok.get_data(as_text=True).lower()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.1:8050", "127.0.0.1:40123", "[::1]:8050",
                                  "LOCALHOST.", "localhost:1"])
def test_the_loopback_names_are_served_on_any_port(app: dash.Dash, host: str) -> None:
    assert app.server.test_client().get("/", headers={"Host": host}).status_code == 200


def test_allow_host_adds_names(store: Path) -> None:
    app = create_app(store, allowed_hosts=["Box.Example", "proxy.example:9000"])
    client = app.server.test_client()
    assert client.get("/", headers={"Host": "box.example:8050"}).status_code == 200
    assert client.get("/", headers={"Host": "box.example"}).status_code == 200
    assert client.get("/", headers={"Host": "proxy.example:9000"}).status_code == 200
    assert client.get("/", headers={"Host": "proxy.example:9001"}).status_code == 403
    assert client.get("/", headers={"Host": "other.example"}).status_code == 403
    star = create_app(store, allowed_hosts=["*"]).server.test_client()
    assert star.get("/", headers={"Host": "anything.example:1"}).status_code == 200


def test_the_bound_address_is_allowed(store: Path) -> None:
    app = create_app(store)
    client = app.server.test_client()
    assert client.get("/", headers={"Host": "10.1.2.3:8050"}).status_code == 403
    security.bind(app, "10.1.2.3")
    assert client.get("/", headers={"Host": "10.1.2.3:8050"}).status_code == 200
    assert client.get("/", headers={"Host": "10.1.2.4:8050"}).status_code == 403
    # Listening everywhere: an IP literal (which cannot be rebound) and the machine's name are
    # answered, any other name still refused.
    security.bind(app, "0.0.0.0")
    assert client.get("/", headers={"Host": "10.1.2.4:8050"}).status_code == 200
    import socket
    assert client.get("/", headers={"Host": f"{socket.gethostname()}:8050"}).status_code == 200
    r = client.get("/", headers={"Host": "rebind.test:8050"}, environ_overrides={"SERVER_PORT": "8050"})
    assert r.status_code == 403 and "open http://127.0.0.1:8050" in r.get_data(as_text=True)


# -- Origin ------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, status", [
    ({}, 200),                                                               # curl, tests: no browser
    ({"Origin": "http://localhost"}, 200),                                   # same origin
    ({"Origin": "http://localhost:80"}, 200),
    ({"Referer": "http://localhost/stalls"}, 200),
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "http://localhost:8051"}, 403),                              # another port is another origin
    ({"Origin": "https://localhost"}, 403),                                  # and another scheme
    ({"Origin": "null"}, 403),                                               # sandboxed frame, file://
    ({"Referer": "http://evil.example/page"}, 403),
    ({"Origin": "http://evil.example", "Referer": "http://localhost/"}, 403),  # Origin wins
])
def test_cross_origin_posts_are_refused(app: dash.Dash, headers: dict[str, str], status: int) -> None:
    r = _call(app, "stalls.figure", {"selection.data": None}, headers=headers)
    assert r.status_code == status, r.get_data(as_text=True)[:200]
    if status == 403:
        text = r.get_data(as_text=True)
        assert text.startswith("cross-origin POST from ") and "refused" in text and "rank" not in text
    else:
        assert json.loads(r.get_data(as_text=True))["response"]["stalls"]["figure"]["data"]


def test_an_allowed_name_may_post_from_its_origin(store: Path) -> None:
    """Behind a proxy the Host is the local address, the Origin the proxy's allowed name."""
    app = create_app(store, allowed_hosts=["hub.example"])
    headers = {"Host": "127.0.0.1:8050", "Origin": "https://hub.example"}
    assert _call(app, "stalls.figure", {"selection.data": None}, headers=headers).status_code == 200
    headers["Origin"] = "https://evil.example"
    assert _call(app, "stalls.figure", {"selection.data": None}, headers=headers).status_code == 403


# -- 404 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/nope", "/timeline/nope", "/404", "/favicon.ico", "/assets/nope.css"])
def test_an_unknown_path_answers_404(app: dash.Dash, path: str) -> None:
    assert app.server.test_client().get(path).status_code == 404


def test_known_paths_keep_their_status(app: dash.Dash) -> None:
    client = app.server.test_client()
    pages = [p["relative_path"] for p in dash.page_registry.values() if p["module"].startswith("sohuprof.dashboards.pages.")]
    assert len(pages) == len(PAGES)
    for path in pages + ["/timeline/", "/_dash-layout", "/_dash-dependencies", "/_favicon.ico"]:
        assert client.get(path).status_code == 200, path


def test_the_404_page_lists_the_real_pages(app: dash.Dash) -> None:
    r = app.server.test_client().get("/nope")
    assert r.status_code == 404 and "_dash-renderer" in r.get_data(as_text=True)   # the app shell, to render
    r = _call(app, "_pages_content.children", {"_pages_location.pathname": "/nope", "_pages_location.search": ""})
    assert r.status_code == 200
    text = json.dumps(json.loads(r.get_data(as_text=True)), separators=(",", ":"))   # "/" unescaped
    assert "There is no page at /nope." in text
    for page in dash.page_registry.values():
        if page["module"].startswith("sohuprof.dashboards.pages."):
            assert f'"href":"{page["relative_path"]}"' in text, page["relative_path"]


# -- the store going away ---------------------------------------------------------------------

def _banner(app: dash.Dash) -> dict[str, Any]:
    r = _call(app, BANNER, {"store-poll.n_intervals": 1})
    assert r.status_code == 200
    return json.loads(r.get_data(as_text=True))["response"]


def test_a_sound_store_shows_no_banner(store: Path) -> None:
    app = create_app(store)
    assert _banner(app) == {"store-banner": {"children": "", "hidden": True}, "store-poll": {"disabled": False}}
    layout = json.dumps(app.server.test_client().get("/_dash-layout").get_json(), separators=(",", ":"))
    assert '"hidden":true,"id":"store-banner"' in layout or '"id":"store-banner","hidden":true' in layout


def _every_callback(app: dash.Dash) -> list[tuple[str, Any]]:
    """POST every server callback with empty inputs, as a page the store vanished under would."""
    _key(app, BANNER)
    out = []
    for key, cb in list(app.callback_map.items()):
        outputs = cb["output"] if isinstance(cb["output"], list) else [cb["output"]]
        if "callback" not in cb or any(str(o.component_id).startswith("{") for o in outputs):
            continue      # clientside, or pattern-matching outputs
        specs = [{"id": o.component_id, "property": o.component_property} for o in outputs]

        def filled(deps: list[dict[str, Any]]) -> list[Any]:
            return [[] if d["id"].startswith("{") else dict(d, value=None) for d in deps]

        body = {"output": key, "outputs": specs if isinstance(cb["output"], list) else specs[0],
                "inputs": filled(cb["inputs"]), "state": filled(cb["state"]),
                "changedPropIds": [f"{d['id']}.{d['property']}" for d in cb["inputs"] if not d["id"].startswith("{")]}
        out.append((key, app.server.test_client().post("/_dash-update-component", json=body)))
    return out


def _assert_no_500(app: dash.Dash, message: str) -> None:
    """Every page and callback answers; the layout carries the banner, and so do the figures and
    panels of the callbacks that failed reading the store."""
    client = app.server.test_client()
    for path in ["/", "/timeline", "/stalls", "/roofline", "/comm", "/serving"]:
        assert client.get(path).status_code == 200
    layout = client.get("/_dash-layout")
    assert layout.status_code == 200 and message in json.dumps(layout.get_json())
    for path in ["/", "/timeline", "/stalls", "/roofline", "/comm", "/serving"]:
        r = _call(app, "_pages_content.children", {"_pages_location.pathname": path, "_pages_location.search": "",
                                                   "selection.data": None})
        assert r.status_code in (200, 204), (path, r.get_data(as_text=True)[-400:])
    answered = _every_callback(app)
    assert len(answered) >= 8
    for key, r in answered:
        assert r.status_code in (200, 204), (key, r.get_data(as_text=True)[-400:])
    said = [key for key, r in answered if r.status_code == 200 and message in json.dumps(r.get_json())]
    assert any("figure" in key and "store-banner" not in key for key in said), said


def test_a_deleted_store_gives_the_banner_never_500(store: Path) -> None:
    app = create_app(store)
    shutil.rmtree(store)
    message = f"the trace store {store} is gone (deleted or moved); restart sohuprof dashboard on a store"
    assert _banner(app) == {"store-banner": {"children": message, "hidden": False}, "store-poll": {"disabled": True}}
    _assert_no_500(app, message)


def test_a_store_deleted_after_warming_is_not_silently_stale(store: Path) -> None:
    app = create_app(store)
    with app.server.test_request_context("/"):
        current_data().warm()                 # every analysis cached: the pages could answer from memory
    ok = _call(app, "stalls.figure", {"selection.data": None})
    assert ok.status_code == 200
    shutil.move(str(store), str(store.with_name("moved")))
    response = _banner(app)
    assert response["store-banner"]["hidden"] is False and "is gone (deleted or moved)" in response["store-banner"]["children"]


def test_a_store_rewritten_under_the_dashboard_says_so(store: Path) -> None:
    app = create_app(store)
    manifest = store / "manifest.json"
    text = manifest.read_text()
    manifest.unlink()
    manifest.write_text(text)            # what `collect --force` does: a new manifest in its place
    assert _banner(app)["store-banner"]["children"] == (
        f"the trace store {store} was replaced or rewritten since the dashboard started (the pages show the old "
        "one); restart sohuprof dashboard on a store")


def test_a_damaged_store_file_is_named(store: Path) -> None:
    app = create_app(store)
    part = store / "events" / "node=1" / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:1000])
    message = _banner(app)["store-banner"]["children"]
    assert message == (f"the trace store {store} is damaged: events/node=1/part-0.parquet is 1,000 bytes, the "
                       f"manifest says {json.loads((store / 'manifest.json').read_text())['files']['events/node=1/part-0.parquet']['bytes']:,}; "
                       "restart sohuprof dashboard on a store")
    _assert_no_500(app, message)


def test_a_failed_read_sticks_as_the_banner(store: Path) -> None:
    """A read failing where stat sees nothing wrong (same size, bad bytes) becomes the banner."""
    app = create_app(store)
    part = store / "events" / "node=0" / "part-0.parquet"
    raw = bytearray(part.read_bytes())
    raw[-200:-8] = b"\0" * 192                # the footer, same size
    part.write_bytes(bytes(raw))
    assert app.server.extensions["sohuprof-security"].watch._check() is None      # stat cannot tell
    answered = _every_callback(app)
    assert all(r.status_code in (200, 204) for _, r in answered)
    said = [json.dumps(r.get_json()) for _, r in answered if r.status_code == 200]
    assert any("cannot be read" in text and f"sohuprof check {store}" in text for text in said)
    banner = _banner(app)["store-banner"]
    assert banner["hidden"] is False and "events/node=0/part-0.parquet" in banner["children"]


def test_a_bug_in_a_callback_still_raises(app: dash.Dash) -> None:
    """Only store failures become messages; anything else keeps its traceback."""
    with app.server.test_request_context("/"):
        with pytest.raises(ZeroDivisionError):
            security.callback_error(ZeroDivisionError("a bug"))


# -- the CLI -----------------------------------------------------------------------------------

def test_the_cli_passes_allow_host(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}
    monkeypatch.setattr(app_module, "check_port", lambda host, port: None)
    monkeypatch.setattr(app_module, "serve", lambda app, host, port: served.update(app=app, host=host, port=port))
    result = CliRunner().invoke(cli, ["dashboard", str(SAMPLE), "--allow-host", "box.example",
                                      "--allow-host", "proxy.example:9000", "--port", "8061"])
    assert result.exit_code == 0, result.output
    policy = served["app"].server.extensions["sohuprof-security"].policy
    assert policy.allowed == ("box.example", "proxy.example:9000") and served["port"] == 8061
    client = served["app"].server.test_client()
    assert client.get("/", headers={"Host": "box.example:8061"}).status_code == 200
    assert client.get("/", headers={"Host": "rebind.test:8061"}).status_code == 403
    assert "warning" not in result.output

    result = CliRunner().invoke(cli, ["dashboard", str(SAMPLE), "--allow-host", "*"])
    assert result.exit_code == 0, result.output
    assert "warning: --allow-host '*': every Host name is answered" in result.output
    assert "--allow-host NAME" in CliRunner().invoke(cli, ["dashboard", "--help"]).output

"""Operations: /metrics, /readyz, optional API keys, and their configuration."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine import Engine
from service.settings import Settings, parse
from tests.conftest import DEFAULT_NAME, DEFAULT_WEIGHTS, Server
from tests.helpers import value

LIMITS = dict(max_horizon=500, max_series_per_request=4, max_points_per_request=5000,
              max_body_bytes=200_000, max_series=3)
KEYS = "alpha-key-1,beta-key-2"


def make_client(**settings) -> TestClient:
    s = Settings(**{**LIMITS, **settings})
    return TestClient(create_app(s, Engine.load(str(DEFAULT_WEIGHTS), "cpu", s.max_series)))


@pytest.fixture()
def client():
    with make_client() as c:
        yield c


@pytest.fixture()
def keyed():
    with make_client(api_keys=KEYS) as c:
        yield c


def ramp(n: int) -> list[float]:
    return [float(i % 24) + 0.01 * i for i in range(n)]






# ---- metrics -------------------------------------------------------------------------------

def test_metrics_count_requests_by_route_template(client):
    for sid in ("plant-1.temp", "plant-2.temp"):
        assert client.post(f"/series/{sid}/append", json={"values": ramp(40)}).status_code == 200
    assert client.get("/series/plant-9/forecast?horizon=4").status_code == 404
    assert client.post("/forecast", json={"series": [{"id": "a", "values": ramp(64)}],
                                          "horizon": 5}).status_code == 200
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    append = {"method": "POST", "route": "/series/{series_id}/append"}
    assert value(text, "rimer_http_requests_total", **append, status="200") == 2
    assert value(text, "rimer_http_requests_total", method="GET",
                 route="/series/{series_id}/forecast", status="404") == 1
    assert value(text, "rimer_http_requests_total", method="POST", route="/forecast",
                 status="200") == 1
    assert "plant-1" not in text and "plant-9" not in text  # templates, never raw ids
    # latency histogram: buckets, count and sum per route
    assert value(text, "rimer_http_request_duration_seconds_count", **append) == 2
    assert value(text, "rimer_http_request_duration_seconds_bucket", **append, le="+Inf") == 2
    assert value(text, "rimer_http_request_duration_seconds_sum", **append) > 0
    # time inside engine calls (successful ones), engine gauges, throughput
    # (every call goes through the micro-batcher, on by default: one "batch" per engine call,
    # here the two appends, the 404 forecast and the stateless forecast, each alone)
    assert value(text, "rimer_model_step_seconds_count", op="batch") == 4
    assert value(text, "rimer_model_step_seconds_count", op="append") is None
    assert value(text, "rimer_model_step_seconds_count", op="forecast") is None
    assert value(text, "rimer_batch_requests_count") == 4
    assert value(text, "rimer_series_held") == 2
    assert value(text, "rimer_series_capacity") == 3
    assert value(text, "rimer_state_bytes_held") == 2 * value(text, "rimer_state_bytes_per_series")
    assert value(text, "rimer_points_appended_total") == 80
    assert value(text, "rimer_points_forecast_total", op="forecast") == 5
    assert value(text, "rimer_ready") == 1
    # (auto on the CPU: onnx, since the default weights ship a current graph)
    assert value(text, "rimer_model_info", model=DEFAULT_NAME, backend="onnx", device="cpu") == 1
    client.delete("/series/plant-1.temp")
    assert value(client.get("/metrics").text, "rimer_series_held") == 1


def test_unmatched_paths_and_odd_methods_share_one_label(client):
    client.get("/no/such/path/12345")
    client.request("PROPFIND", "/healthz")
    text = client.get("/metrics").text
    assert value(text, "rimer_http_requests_total", method="GET", route="unmatched",
                 status="404") == 1
    assert value(text, "rimer_http_requests_total", method="other", route="/healthz",
                 status="405") == 1
    assert "12345" not in text and "PROPFIND" not in text


def test_each_app_has_its_own_registry():
    with make_client() as a, make_client() as b:
        a.get("/healthz")
        a.get("/healthz")
        b.get("/healthz")
        get = dict(method="GET", route="/healthz", status="200")
        assert value(a.get("/metrics").text, "rimer_http_requests_total", **get) == 2
        assert value(b.get("/metrics").text, "rimer_http_requests_total", **get) == 1


def test_body_size_limit_still_413(client):
    big = '{"values": [' + ",".join(["1.5"] * 60_000) + "]}"
    r = client.post("/series/a/append", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"
    assert value(client.get("/metrics").text, "rimer_http_requests_total", method="POST",
                 route="/series/{series_id}/append", status="413") == 1


# ---- health and readiness ------------------------------------------------------------------

def test_readyz_503_until_the_weights_are_loaded():
    app = create_app(Settings(**LIMITS), Engine.load(str(DEFAULT_WEIGHTS), "cpu", 3))
    before = TestClient(app)  # no `with`: the lifespan (which installs the engine) has not run
    assert before.get("/healthz").json() == {"status": "ok"}
    r = before.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "loading"
    assert value(before.get("/metrics").text, "rimer_ready") == 0
    assert before.get("/series/a").status_code == 503
    with TestClient(app) as after:
        r = after.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ready", "model": DEFAULT_NAME, "backend": "onnx",
                            "device": "cpu"}
        assert after.get("/healthz").json() == {"status": "ok"}


def test_a_failed_log_makes_readiness_503_and_sets_its_gauge(tmp_path, caplog):
    """With the disk full (/dev/full in place of the log's file) every change is refused until a
    restart: /readyz says so with a 503 and `rimer_wal_failed` is 1, while forecasts and
    /healthz still answer, and the clean stop says why it wrote no snapshot."""
    with make_client(data_dir=str(tmp_path / "data"), snapshot_interval_s=0) as c:
        assert c.post("/series/a/append", json={"values": ramp(40)}).status_code == 200
        assert c.get("/readyz").status_code == 200
        assert value(c.get("/metrics").text, "rimer_wal_failed") == 0
        wal = c.app.state.store.wal
        os.close(wal._fd)
        wal._fd = os.open("/dev/full", os.O_WRONLY)
        r = c.post("/series/a/append", json={"values": [1.0]})
        assert r.status_code == 503 and "write-ahead log failed" in r.json()["detail"]
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failing"
        assert "No space left" in r.json()["detail"] and "restarted" in r.json()["detail"]
        assert c.head("/readyz").status_code == 503
        assert value(c.get("/metrics").text, "rimer_wal_failed") == 1
        assert c.get("/series/a/forecast", params={"horizon": 4}).status_code == 200
        assert c.get("/series/a").json()["length"] == 40  # (the refused point is not there)
        assert c.get("/healthz").status_code == 200
    assert "no shutdown snapshot: the write-ahead log failed" in caplog.text


def test_probes_have_one_operation_each_in_the_schema(client):
    """GET and HEAD of a probe were one route with two methods: the same operation id twice
    (FastAPI warned at every start, and OpenAPI generators choke on it)."""
    paths = client.get("/openapi.json").json()["paths"]
    for probe in ("/healthz", "/readyz"):
        assert list(paths[probe]) == ["get"]
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert client.head("/healthz").status_code == 200 and client.head("/readyz").status_code == 200


# ---- API keys ------------------------------------------------------------------------------

def assert_401(r):
    assert r.status_code == 401, r.text
    assert r.json()["field"] == "authorization" and r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert "alpha" not in r.text and "beta" not in r.text


def test_api_keys_are_required(keyed):
    assert_401(keyed.get("/models"))
    assert_401(keyed.get("/models", headers={"Authorization": "Bearer wrong"}))
    assert_401(keyed.get("/models", headers={"X-API-Key": "alpha-key-"}))  # a prefix is not a key
    assert_401(keyed.get("/models", headers={"Authorization": "Basic alpha-key-1"}))
    assert_401(keyed.post("/series/a/append", json={"values": ramp(4)}))
    assert_401(keyed.get("/docs"))
    assert_401(keyed.get("/metrics"))  # not public unless --metrics-public
    assert keyed.get("/models", headers={"Authorization": "Bearer alpha-key-1"}).status_code == 200
    assert keyed.get("/models", headers={"authorization": "bearer beta-key-2"}).status_code == 200
    assert keyed.get("/models", headers={"X-API-Key": "beta-key-2"}).status_code == 200
    r = keyed.post("/series/a/append", json={"values": ramp(4)}, headers={"X-API-Key": "alpha-key-1"})
    assert r.json() == {"id": "a", "length": 4}
    text = keyed.get("/metrics", headers={"X-API-Key": "alpha-key-1"}).text
    assert value(text, "rimer_http_requests_total", method="GET", route="/models",
                 status="401") == 4
    assert value(text, "rimer_http_requests_total", method="POST",
                 route="/series/{series_id}/append", status="401") == 1


def test_health_and_readiness_are_open_with_keys(keyed):
    assert keyed.get("/healthz").json() == {"status": "ok"}
    assert keyed.get("/readyz").json()["status"] == "ready"


def test_metrics_public(tmp_path):
    with make_client(api_keys=KEYS, metrics_public=True) as c:
        assert c.get("/metrics").status_code == 200
        assert_401(c.get("/models"))


def test_unauthorised_large_body_is_401_and_authorised_one_413(keyed):
    big = '{"values": [' + ",".join(["1.5"] * 60_000) + "]}"
    headers = {"content-type": "application/json"}
    assert_401(keyed.post("/series/a/append", content=big, headers=headers))
    r = keyed.post("/series/a/append", content=big, headers={**headers, "X-API-Key": "beta-key-2"})
    assert r.status_code == 413 and r.json()["field"] == "body"


# ---- configuration -------------------------------------------------------------------------

def test_keys_from_env_file_and_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("RIMER_API_KEYS", raising=False)
    monkeypatch.delenv("RIMER_METRICS_PUBLIC", raising=False)
    assert parse([]).api_keys == "" and parse([]).metrics_public is False
    monkeypatch.setenv("RIMER_API_KEYS", "k1, k2")
    monkeypatch.setenv("RIMER_METRICS_PUBLIC", "yes")
    s = parse([])
    assert s.api_keys == "k1, k2" and s.metrics_public is True
    assert parse(["--api-keys", "k3", "--no-metrics-public"]).api_keys == "k3"
    assert parse(["--no-metrics-public"]).metrics_public is False
    monkeypatch.setenv("RIMER_METRICS_PUBLIC", "maybe")
    with pytest.raises(SystemExit):
        parse([])
    monkeypatch.delenv("RIMER_METRICS_PUBLIC")
    monkeypatch.delenv("RIMER_API_KEYS")

    keys = tmp_path / "keys"
    keys.write_text("# service keys\n\nfile-key-1\n  file-key-2  \n")
    s = parse(["--api-keys-file", str(keys)])
    with TestClient(create_app(s, Engine.load(str(DEFAULT_WEIGHTS), "cpu", 3))) as c:
        assert c.get("/models", headers={"X-API-Key": "file-key-2"}).status_code == 200
        assert_401(c.get("/models", headers={"X-API-Key": "# service keys"}))
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(SystemExit):  # a keys file with no keys would silently open the service
        parse(["--api-keys-file", str(empty)])
    with pytest.raises(SystemExit):
        parse(["--api-keys-file", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):  # keys given, none in them: not silently open either
        parse(["--api-keys", " , ,"])
    assert parse(["--api-keys", " "]).api_keys == " "  # blank: no keys asked for


@pytest.mark.parametrize("flag, value", [
    ("--port", "-1"), ("--port", "99999"), ("--torch-threads", "-1"), ("--max-horizon", "0"),
    ("--max-series-per-request", "0"), ("--max-points-per-request", "0"),
    ("--max-body-bytes", "0"), ("--body-timeout-s", "0"), ("--gil-switch-us", "-1"),
    # not a number at all (passed every range check: a NaN timeout broke each connection, a
    # NaN switch interval aborted the interpreter)
    ("--gil-switch-us", "nan"), ("--header-timeout-s", "nan"), ("--body-timeout-s", "nan"),
    ("--snapshot-interval-s", "nan"), ("--idle-expiry-s", "inf"), ("--batch-window-ms", "-inf"),
])
def test_unusable_settings_are_refused(flag, value, capsys):
    """A value that would listen elsewhere than asked, fail later, or refuse every request."""
    with pytest.raises(SystemExit):
        parse([flag, value])
    assert flag in capsys.readouterr().err


def test_keys_are_not_shown(capsys, monkeypatch):
    monkeypatch.setenv("RIMER_API_KEYS", "very-secret-key")
    s = parse([])
    assert "very-secret-key" not in repr(s) and "very-secret-key" not in str(s)
    with pytest.raises(SystemExit):
        parse(["--help"])
    assert "very-secret-key" not in capsys.readouterr().out


# ---- through uvicorn -----------------------------------------------------------------------

@pytest.mark.slow
def test_keys_and_metrics_through_a_real_server(monkeypatch):
    monkeypatch.setenv("RIMER_API_KEYS", "real-server-key")  # the env, as a deployment would
    server = Server("--access-log")  # waits on /healthz, which needs no key
    try:
        c = server.client
        assert c.get("/readyz").json()["status"] == "ready"
        assert_401(c.get("/models"))
        assert c.get("/models", headers={"Authorization": "Bearer real-server-key"}).status_code == 200
        r = c.post("/series/s-1/append", json={"values": ramp(40), "horizon": 3},
                   headers={"X-API-Key": "real-server-key"})
        assert r.status_code == 200 and len(r.json()["forecast"]["mean"]) == 3
        assert_401(c.get("/metrics"))
        text = c.get("/metrics", headers={"X-API-Key": "real-server-key"}).text
        assert value(text, "rimer_http_requests_total", method="GET", route="/models",
                     status="200") == 1
        assert value(text, "rimer_http_requests_total", method="GET", route="/models",
                     status="401") == 1
        assert value(text, "rimer_model_step_seconds_count", op="batch") == 1
        assert value(text, "rimer_series_held") == 1
    finally:
        server.stop()
    log = server.proc.stdout.read().decode()
    assert "GET /models" in log  # the access log is there, and it never shows the key
    assert "real-server-key" not in log


def test_the_triton_backend_without_triton_is_refused_before_serving(monkeypatch):
    """Not ready and then a 500 on every streaming request: one line before anything loads."""
    import importlib.util

    from service import __main__ as entry
    real = importlib.util.find_spec
    monkeypatch.setattr(entry.importlib.util, "find_spec",
                        lambda name, *args: None if name == "triton" else real(name, *args))
    settings = parse(["--backend", "triton", "--device", "cpu"])
    assert "needs the triton package" in entry.preflight(settings)
    assert entry.preflight(parse(["--backend", "torch", "--device", "cpu"])) is None

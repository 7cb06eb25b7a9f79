"""The API's documentation: served offline, complete, and its examples accepted by the service."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

ROUTES_4XX = {  # what each route can answer besides 2xx, by the code that refuses
    ("post", "/forecast"): {401, 413, 415, 422, 503},
    ("post", "/series/append"): {401, 409, 413, 415, 422, 503},
    ("post", "/series/{series_id}/append"): {401, 409, 413, 415, 422, 503},
    ("get", "/series/{series_id}/forecast"): {401, 404, 409, 413, 422, 503},
    ("get", "/series/{series_id}/plot"): {401, 404, 409, 422, 503},
    ("get", "/series/{series_id}"): {401, 404, 422, 503},
    ("delete", "/series/{series_id}"): {401, 404, 422, 503},
    ("get", "/series"): {401, 422, 503},
    ("get", "/models"): {401, 422, 503},
    ("get", "/series/{series_id}/export"): {401, 404, 422, 503},
    ("put", "/series/{series_id}/import"): {401, 409, 413, 422, 503},
}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings())) as c:  # the shipped default model (it has quantiles)
        yield c


@pytest.mark.slow
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_only_assets_the_service_serves(client, page):
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assert "http://" not in html.text and "https://" not in html.text.replace(
        "https://github.com", "")  # (no CDN: a machine without internet still renders it)
    refs = re.findall(r'(?:src|href)="([^"]+)"', html.text) + re.findall(r"url: '([^']+)'", html.text)
    assert len(refs) >= 2, refs
    for ref in refs:
        r = client.get(ref)
        assert r.status_code == 200 and len(r.content) > 100, ref
    scripts = re.findall(r'src="([^"]+\.js)"', html.text)
    assert scripts and all(len(client.get(s).content) > 100_000 for s in scripts)


def test_every_route_is_documented_with_its_real_error_body(client):
    spec = client.get("/openapi.json").json()
    tags = {t["name"] for t in spec["tags"]}
    assert tags == {"forecasts", "series", "operations", "cluster"}
    seen = set()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            seen.add((method, path))
            assert op.get("summary") and op.get("tags") and set(op["tags"]) <= tags, (method, path)
            if (method, path) not in ROUTES_4XX:
                continue
            assert op.get("description"), (method, path)
            codes = {int(c) for c in op["responses"] if int(c) >= 400}
            assert codes == ROUTES_4XX[(method, path)], (method, path, codes)
            assert "422" in op["responses"] and "HTTPValidationError" not in str(op["responses"])
            for code in codes:
                shown = op["responses"][str(code)]["content"]["application/json"]
                assert shown["schema"]["$ref"].endswith("ValidationErrorBody" if code == 422
                                                        else "ErrorBody")
                bodies = ([shown["example"]] if "example" in shown
                          else [e["value"] for e in shown["examples"].values()])
                assert bodies and all("detail" in b for b in bodies), (method, path, code)
                # (a null field is left out of the schema's JSON by FastAPI)
    assert set(ROUTES_4XX) <= seen
    body = spec["components"]["schemas"]["ErrorBody"]["properties"]
    assert set(body) == {"detail", "field"}


def test_the_request_examples_are_accepted(client):
    """Each example the docs offer ("Try it out") is a 2xx, not the 422 FastAPI's generated
    example body used to get."""
    spec = client.get("/openapi.json").json()
    tried = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            examples = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                        .get("examples", {}))
            for name, example in examples.items():
                url = path.replace("{series_id}", f"docs-example-{tried}")
                r = client.request(method.upper(), url, json=example["value"])
                assert r.status_code == 200, (path, name, r.text)
                tried += 1
    assert tried >= 5


def test_the_documented_error_examples_are_what_the_service_sends(client):
    """The examples /docs shows for a 404, a 415 and a 422 are the service's own answers to
    such requests, word for word; the import's raw body is described too."""
    import gzip

    from service.docs import EXAMPLE

    assert client.get("/series/nope").json() == EXAMPLE[404]
    r = client.post("/series/ex/append", content=gzip.compress(b'{"values": [1]}'),
                    headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 415 and r.json() == EXAMPLE[415]
    r = client.post("/series/ex/append", content=b'{"values": [1.0, NaN]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json() == EXAMPLE[422]
    # /series/append words it in each form's way: both shown, each as sent
    spec = client.get("/openapi.json").json()
    shown = spec["paths"]["/series/append"]["post"]["responses"]["422"]["content"]
    bulk = {name: e["value"] for name, e in shown["application/json"]["examples"].items()}
    for name, body in (("per item", b'{"series": [{"id": "ex2", "values": [1.0, NaN]}]}'),
                       ("columnar", b'{"ids": ["ex2"], "offsets": [0], "values": [1.0, NaN]}')):
        r = client.post("/series/append", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json() == bulk[name], name
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/series/{series_id}/import"]["put"]["requestBody"]
    assert body["required"] and "application/vnd.rimer.series-record" in body["content"]


def test_the_refusals_match_the_documented_body(client):
    """The 4xx bodies the service sends are the documented ones (fields and types)."""
    bad = client.post("/forecast", json={"series": [{"id": "a", "values": [1.0, "x"]}]})
    assert bad.status_code == 422
    body = bad.json()
    assert set(body) == {"detail", "field", "errors"} and body["field"] == "series[0].values[1]"
    assert all(set(e) == {"field", "message"} for e in body["errors"])
    missing = client.get("/series/no-such-series")
    assert missing.status_code == 404 and set(missing.json()) == {"detail", "field"}
    # the service's own checks (here the columnar form's) list their problem in `errors` too
    columnar = client.post("/series/append", json={"ids": ["a", "b"], "offsets": [0, 1],
                                                   "values": ["x", "y"]})
    assert columnar.status_code == 422
    assert columnar.json()["errors"] == [{"field": "values[0]",
                                          "message": "a value is a number or null"}]
    assert columnar.json()["detail"] == "values[0]: a value is a number or null"


def test_plot_is_a_png_of_the_series_forecast(client):
    values = [10.0 + (i % 24) * 0.5 for i in range(200)]
    assert client.post("/series/plotted/append", json={"values": values}).status_code == 200
    r = client.get("/series/plotted/plot?horizon=48&level=90")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n" and len(r.content) > 10_000
    assert client.get("/series/unknown/plot").status_code == 404
    refused = client.get("/series/plotted/plot?horizon=0")
    assert refused.status_code == 422 and refused.json()["field"] == "horizon"
    assert client.get("/series/plotted/plot?level=100").json()["field"].startswith("level")


def test_a_plot_of_a_series_with_timestamps_has_its_times_on_the_x_axis(client):
    """Its recent points and forecast at their datetimes, in the series' offset (before: the
    point index, even for a series with timestamps)."""
    from datetime import datetime, timedelta, timezone

    from service import timeline

    stamps = [(datetime(2024, 5, 1, tzinfo=timezone(timedelta(hours=2))) + timedelta(hours=k)).isoformat()
              for k in range(100)]
    body = {"values": [float(k % 24) for k in range(100)], "timestamps": stamps}
    assert client.post("/series/timed/append", json=body).status_code == 200
    r = client.get("/series/timed/plot?horizon=5")
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    meta = client.app.state.engine.meta["timed"]
    past, future = timeline.plot_times(meta, 3, 2)
    assert [t.isoformat() for t in past] == stamps[-3:]
    assert [t.isoformat() for t in future] == ["2024-05-05T04:00:00+02:00", "2024-05-05T05:00:00+02:00"]
    # a forecast the forecast route refuses (past the year 9999) is refused here alike
    late = [f"9999-12-29T{h:02d}:00:00Z" for h in range(24)] + [f"9999-12-30T{h:02d}:00:00Z"
                                                                for h in range(9)]
    assert client.post("/series/late/append", json={"values": [1.0] * 33,
                                                     "timestamps": late}).status_code == 200
    for path in ("/series/late/forecast?horizon=30", "/series/late/plot?horizon=30"):
        r = client.get(path)
        assert r.status_code == 422 and r.json()["field"] == "horizon", (path, r.text)
    assert client.get("/series/late/plot?horizon=10").status_code == 200
    assert timeline.plot_times({"t": meta["t"], "freq": None}, 3, 2) is None


def test_recent_points_are_the_last_points_appended(client):
    """The plot's history is what the state holds: the last points, exactly (float32)."""
    import numpy as np

    values = [float(v) for v in np.random.default_rng(0).normal(size=700).astype(np.float32)]
    client.post("/series/recent/append", json={"values": values[:650]})
    client.post("/series/recent/append", json={"values": values[650:]})
    e = client.app.state.engine
    recent = e.recent_points("recent")
    cfg = e.model.cfg
    held = min(cfg.history_len, 700 // cfg.patch_len * cfg.patch_len) + 700 % cfg.patch_len
    assert recent == values[-held:]

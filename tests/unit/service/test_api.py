"""The HTTP contract: shapes of answers, and 4xx errors that name the field for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine import Engine
from service.responses import json_response
from service.settings import Settings
from tests.conftest import DEFAULT_NAME, DEFAULT_WEIGHTS, ORIGINAL_PTH, rel_err

LIMITS = Settings(max_horizon=500, max_series_per_request=4, max_points_per_request=5000,
                  max_body_bytes=200_000, max_series=3)


@pytest.fixture()
def client():
    engine = Engine.load(str(DEFAULT_WEIGHTS), "cpu", max_series=LIMITS.max_series)
    with TestClient(create_app(LIMITS, engine)) as c:
        yield c


def ramp(n: int) -> list[float]:
    return [float(i % 24) + 0.01 * i for i in range(n)]


def assert_error(r, status: int, field: str | None):
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    if field is not None:
        assert body["field"] == field, body


def test_forecast_shape(client):
    r = client.post("/forecast", json={"series": [{"id": "a", "values": ramp(100)},
                                                  {"id": "b", "values": ramp(64)}], "horizon": 7})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == DEFAULT_NAME and body["horizon"] == 7
    assert [f["id"] for f in body["forecasts"]] == ["a", "b"]
    assert all(len(f["mean"]) == 7 for f in body["forecasts"])


def test_answers_leave_out_null_fields_and_write_non_finite_floats_as_null(client):
    """Bulk appends and /forecast write their JSON directly (not through the response model):
    the fields a series without timestamps lacks are left out, as the models say, and a
    non-finite float would be null, as pydantic writes it, never a bare NaN (invalid JSON)."""
    r = client.post("/series/append", json={"series": [{"id": "n1", "values": ramp(40)}],
                                            "horizon": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    [item] = r.json()["series"]
    assert set(item) == {"id", "length", "forecast"} and set(item["forecast"]) == {"mean"}
    r = client.post("/series/append", json={"series": [{"id": "n1", "values": [1.0]}]})
    assert r.json() == {"series": [{"id": "n1", "length": 41}]}
    r = client.post("/forecast", json={"series": [{"id": "a", "values": ramp(40)}], "horizon": 3})
    assert set(r.json()["forecasts"][0]) == {"id", "mean"}
    raw = json_response({"mean": [1.5, float("nan"), float("-inf")], "n": 2}).body
    assert json.loads(raw) == {"mean": [1.5, None, None], "n": 2}


def test_series_lifecycle(client):
    r = client.post("/series/plant-1.temp/append", json={"values": ramp(40)})
    assert r.json() == {"id": "plant-1.temp", "length": 40}
    r = client.post("/series/plant-1.temp/append", json={"values": ramp(3), "horizon": 5})
    assert r.json()["length"] == 43 and len(r.json()["forecast"]["mean"]) == 5
    info = client.get("/series/plant-1.temp").json()
    assert info["length"] == 43 and info["patches"] == 1 and info["tail_points"] == 11
    assert info["model"] == DEFAULT_NAME and info["state_bytes"] > 0
    assert client.delete("/series/plant-1.temp").status_code == 204
    assert_error(client.get("/series/plant-1.temp"), 404, "id")


def test_models_and_health(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    m = client.get("/models").json()["models"][0]
    assert m["name"] == DEFAULT_NAME and m["streamable"] is True
    assert m["config"]["norm"] == "causal" and m["config"]["pos_emb"] == "none"
    assert "sha256" in m["manifest"]


@pytest.mark.parametrize("body, field", [
    ({"series": [{"id": "a", "values": []}]}, "series[0].values"),
    ({"series": []}, "series"),
    ({"series": [{"id": "a", "values": ramp(40)}], "horizon": 0}, "horizon"),
    ({"series": [{"id": "a", "values": ramp(40)}], "horizon": 501}, "horizon"),
    ({"series": [{"id": "a", "values": ramp(10)}], "horizon": 5}, "series[0].values"),
    ({"series": [{"id": "a", "values": [1.0, "x"]}]}, "series[0].values[1]"),
    ({"series": [{"id": "../etc", "values": ramp(40)}]}, "series[0].id"),
    ({"series": [{"id": "a", "values": ramp(40), "extra": 1}]}, "series[0].extra"),
])
@pytest.mark.slow
def test_forecast_rejects_bad_input(client, body, field):
    assert_error(client.post("/forecast", json=body), 422, field)


def test_non_finite_values_are_rejected(client):
    for token in ("NaN", "Infinity", "-Infinity"):
        raw = f'{{"series": [{{"id": "a", "values": [1.0, {token}]}}]}}'
        r = client.post("/forecast", content=raw, headers={"content-type": "application/json"})
        assert_error(r, 422, "series[0].values[1]")
        r = client.post("/series/a/append", content=f'{{"values": [{token}]}}',
                        headers={"content-type": "application/json"})
        assert_error(r, 422, "values[0]")
    assert_error(client.get("/series/a"), 404, "id")


def test_a_body_not_sent_as_json_names_its_content_type(client):
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        r = client.post("/series/a/append", content='{"values": [1.0]}',
                        headers={"content-type": content_type})
        assert_error(r, 422, "body")
        assert "application/json" in r.json()["detail"] and content_type in r.json()["detail"]
        assert r.json()["errors"][0]["message"] in r.json()["detail"]  # (the list agrees)
    r = client.post("/series/a/append", content='{"values": [1.0]}')  # (no content-type at all)
    assert_error(r, 422, "body")
    assert "application/json; no content-type was given" in r.json()["detail"], r.text
    r = client.post("/series/a/append", content='{"values": [1.0]',
                    headers={"content-type": "application/json"})
    assert_error(r, 422, "body")
    assert "JSON decode error" in r.json()["detail"]
    assert_error(client.get("/series/a"), 404, "id")


def test_oversized_requests_are_refused(client):
    many = {"series": [{"id": f"s{i}", "values": ramp(40)} for i in range(5)]}
    assert_error(client.post("/forecast", json=many), 413, "series")
    points = {"series": [{"id": "a", "values": ramp(2600)}, {"id": "b", "values": ramp(2600)}]}
    assert_error(client.post("/forecast", json=points), 413, "series")
    big = '{"values": [' + ",".join(["1.5"] * 60_000) + "]}"
    r = client.post("/series/a/append", content=big, headers={"content-type": "application/json"})
    assert_error(r, 413, "body")

    def chunks():  # no Content-Length: the limit is found while the body streams in
        for k in range(0, len(big), 4096):
            yield big[k:k + 4096].encode()

    r = client.post("/series/a/append", content=chunks(),
                    headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "body")
    assert_error(client.get("/series/a"), 404, "id")  # nothing applied


def test_a_body_that_trickles_in_is_refused_with_408():
    """The body must arrive whole within --body-timeout-s of the first read, however it is cut
    (a byte every so often would hold a connection without end); a prompt body goes through."""
    import asyncio

    from service.limits import BodySizeLimit

    async def app(scope, receive, send):  # reads the body, then answers with its length
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    async def call(chunk_delays: list[float]) -> list[dict]:
        chunks, sent = iter(chunk_delays), []

        async def receive():
            delay = next(chunks, None)
            if delay is None:
                await asyncio.sleep(3600)  # (a client that never sends the rest)
            await asyncio.sleep(delay)
            return {"type": "http.request", "body": b"x" * 10, "more_body": True}

        async def send(message):
            sent.append(message)

        limited = BodySizeLimit(app, max_bytes=1000, timeout_s=0.3)
        await asyncio.wait_for(limited({"type": "http", "headers": []}, receive, send), 5)
        return sent

    sent = asyncio.run(call([0.05] * 20))  # each piece prompt, the whole late
    assert sent[0]["status"] == 408 and len(sent) == 2
    assert json.loads(sent[1]["body"])["field"] == "body"
    assert asyncio.run(call([0.0]))[0]["status"] == 408  # the rest never comes
    sent = asyncio.run(call([0.0] * 200))  # prompt but too large: 413 as it passes the limit
    assert sent[0]["status"] == 413 and len(sent) == 2


def test_query_parameters_are_the_routes_own_and_given_once(client):
    """A stray query parameter is a 422 naming it, as an unknown JSON field is: a horizon in the
    query of an append (it belongs in the body) would otherwise be ignored without a word."""
    assert client.post("/series/q/append", json={"values": [1.0] * 40}).status_code == 200
    r = client.post("/series/q/append?horizon=8", json={"values": [2.0]})
    assert_error(r, 422, "horizon")
    assert "no query parameters" in r.json()["detail"]
    assert client.get("/series/q").json()["length"] == 40  # not applied
    assert_error(client.get("/series/q/forecast?Horizon=8"), 422, "Horizon")
    r = client.get("/series/q/forecast?horizon=4&horizon=8")
    assert_error(r, 422, "horizon")
    assert "more than once" in r.json()["detail"]
    assert_error(client.get("/series?limit=2&limit=1"), 422, "limit")
    assert_error(client.get("/series?page=2"), 422, "page")
    assert_error(client.post("/forecast?x=" + "y" * 10, json={"series": []}), 422, "x")
    assert_error(client.delete("/series/q?force=1"), 422, "force")
    assert client.get("/series/q").json()["length"] == 40
    assert len(client.get("/series/q/forecast?horizon=4").json()["mean"]) == 4
    assert client.get("/series?limit=1&cursor=a").status_code == 200
    assert client.get("/healthz?probe=1").status_code == 200  # probes may add their own


def test_invalid_series_ids(client):
    for bad in ("-lead", "a" * 129, "sp ace", ".hidden"):
        assert_error(client.post(f"/series/{bad}/append", json={"values": [1.0]}), 422,
                     "series_id")


def test_rejected_append_changes_nothing(client):
    client.post("/series/k/append", json={"values": ramp(50)})
    before = client.get("/series/k/forecast", params={"horizon": 12}).json()
    # (null is a missing point now, filled: tests/unit/service/test_timestamps.py; a string is still refused)
    assert_error(client.post("/series/k/append", json={"values": [1.0, "x"]}), 422, "values[1]")
    assert_error(client.post("/series/k/append", json={"values": [1.0], "horizon": 501}), 422,
                 "horizon")
    assert_error(client.post("/series/k/append", json={"values": [], "horizon": 3}), 422,
                 "values")
    assert client.get("/series/k/forecast", params={"horizon": 12}).json() == before
    # A first append that cannot be honoured does not create the series.
    assert_error(client.post("/series/new/append", json={"values": ramp(5), "horizon": 3}), 422,
                 "horizon")
    assert_error(client.get("/series/new"), 404, "id")


def test_forecast_of_unknown_or_short_series(client):
    assert_error(client.get("/series/nope/forecast"), 404, "id")
    client.post("/series/short/append", json={"values": ramp(10)})
    assert_error(client.get("/series/short/forecast", params={"horizon": 4}), 422, "horizon")
    assert_error(client.get("/series/short/forecast", params={"horizon": 0}), 422, "horizon")
    client.post("/series/short/append", json={"values": ramp(40)})
    assert client.get("/series/short/forecast", params={"horizon": 8}).status_code == 200
    for bad in ("8_0", "8.0", "+8", " 8", "\u0668", "1e3", "eight"):  # (80, 8, ... to a lax parser)
        r = client.get("/series/short/forecast", params={"horizon": bad})
        assert_error(r, 422, "horizon")
        assert r.json()["detail"].endswith("horizon must be a whole number in plain digits")
    assert_error(client.get("/series", params={"limit": "1_0"}), 422, "limit")


def test_series_count_is_bounded(client):
    for i in range(3):
        assert client.post(f"/series/c{i}/append", json={"values": [1.0]}).status_code == 200
    assert_error(client.post("/series/c3/append", json={"values": [1.0]}), 409, "id")


@pytest.mark.slow
def test_window_normalised_model_refuses_streaming_and_long_inputs():
    engine = Engine.load(str(ORIGINAL_PTH), "cpu", max_series=10)
    roomy = Settings(max_points_per_request=200_000, max_body_bytes=10_000_000,
                     max_horizon=10_000)
    with TestClient(create_app(roomy, engine)) as c:
        assert_error(c.post("/series/a/append", json={"values": ramp(64)}), 409, None)
        r = c.post("/forecast", json={"series": [{"id": "a", "values": ramp(64)}], "horizon": 8})
        assert r.status_code == 200
        # 5000 patches is the whole sinusoidal table: exactly full is fine, one more is not.
        full = {"series": [{"id": "a", "values": ramp(5000 * 32)}], "horizon": 32}
        assert c.post("/forecast", json=full).status_code == 200
        over = {"series": [{"id": "a", "values": ramp(5000 * 32 + 1)}], "horizon": 32}
        assert_error(c.post("/forecast", json=over), 422, "series[0].values")
        rollout_over = {"series": [{"id": "a", "values": ramp(4990 * 32)}], "horizon": 12 * 32}
        assert_error(c.post("/forecast", json=rollout_over), 422, "series[0].values")


@pytest.mark.slow
@pytest.mark.parametrize("raw", ["not json", '{"series": [', "[1, 2]", '"text"'])
def test_a_body_that_is_not_a_json_object_is_named_as_the_body(client, raw):
    """Malformed JSON or a body of the wrong type is a 422 naming `body` (a decode error's
    location is a character offset, which must not read as a field)."""
    r = client.post("/forecast", content=raw, headers={"content-type": "application/json"})
    assert_error(r, 422, "body")


def test_values_beyond_float32_range_are_refused(client):
    """A finite float64 above float32's range would become infinity inside the model and ruin a
    streaming series for good (every later forecast null): refused, naming the value, and the
    series is left as it was. The bound's edge is served with finite forecasts."""
    assert client.post("/series/big/append", json={"values": ramp(40)}).status_code == 200
    before = client.get("/series/big/forecast", params={"horizon": 8}).json()
    for bad in (1e31, -1e39, 1e300):
        r = client.post("/series/big/append", json={"values": [1.0, bad]})
        assert_error(r, 422, "values[1]")
        assert "float32" in r.json()["detail"] and f"{bad:.6g}" in r.json()["detail"], r.json()
        assert_error(client.post("/series/append", json={"series": [
            {"id": "big", "values": [1.0]}, {"id": "b2", "values": [bad]}]}), 422,
            "series[1].values[0]")
        assert_error(client.post("/forecast", json={"series": [
            {"id": "a", "values": [bad] * 40}], "horizon": 4}), 422, "series[0].values[0]")
    assert client.get("/series/big/forecast", params={"horizon": 8}).json() == before
    assert_error(client.get("/series/b2"), 404, "id")
    edge = [1e30 * (-1) ** i for i in range(64)]
    r = client.post("/series/big/append", json={"values": edge, "horizon": 8})
    assert r.status_code == 200, r.text
    assert all(isinstance(v, float) for v in r.json()["forecast"]["mean"])  # not null
    r = client.post("/forecast", json={"series": [{"id": "a", "values": edge}], "horizon": 8})
    assert all(isinstance(v, float) for v in r.json()["forecasts"][0]["mean"])


@pytest.mark.parametrize("body, field", [
    ({"values": ["1"]}, "values[0]"),
    ({"values": [1.0, " 2 "]}, "values[1]"),
    ({"values": [True]}, "values[0]"),
    ({"values": ramp(40), "horizon": "8"}, "horizon"),
    ({"values": ramp(40), "horizon": True}, "horizon"),
    ({"values": ramp(40), "horizon": 8.0}, "horizon"),
    ({"values": [1.0], "timestamps": ["2024-05-01T00:00:00Z"], "freq": "\u0661h"}, "freq"),
])
@pytest.mark.slow
def test_json_types_are_not_coerced(client, body, field):
    """A string or a boolean where a number belongs is a client's mistake to hear about, not a
    value to guess (pydantic's lax mode would read "1" as 1.0 and true as 1)."""
    assert_error(client.post("/series/t/append", json=body), 422, field)
    assert_error(client.get("/series/t"), 404, "id")


@pytest.mark.slow
@pytest.mark.parametrize("raw", [b'{"values": [1.0]}\xff\xfe', b'{"values": ' + b"[" * 100_000])
def test_an_unparseable_body_is_named_as_the_body(client, raw):
    """Bytes that are not UTF-8, or JSON nested past the parser's depth: FastAPI's own 400, with
    the field every error names."""
    r = client.post("/series/u/append", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert_error(r, r.status_code, "body")


def test_a_huge_horizon_is_not_echoed(client):
    huge = "9" * 4000
    r = client.post("/series/h/append", content='{"values": [1.0], "horizon": ' + huge + "}",
                    headers={"content-type": "application/json"})
    assert_error(r, 422, "horizon")
    assert len(r.text) < 500
    assert "above the limit of 500" in r.json()["detail"]


def test_a_huge_freq_is_not_echoed(client):
    huge = "9" * 4000
    body = ('{"values": [1.0, 2.0], "timestamps": ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z"],'
            ' "freq": ' + huge + "}")
    r = client.post("/series/h/append", content=body, headers={"content-type": "application/json"})
    assert_error(r, 422, "freq")
    assert len(r.text) < 1000 and "366 days" in r.json()["detail"]


@pytest.mark.parametrize("body, key", [
    (b'{"values": [1.0], "values": [2.0, 3.0]}', "values"),
    (b'{"values": [1.0], "horizon": 2, "horizon": 3}', "horizon"),
])
def test_a_key_given_twice_is_a_422_naming_it(client, body, key):
    r = client.post("/series/dup/append", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == key, r.text
    assert client.get("/series/dup").status_code == 404  # nothing appended
    bulk = client.post("/series/append", headers={"content-type": "application/json"},
                       content=b'{"series": [{"id": "a", "values": [1.0], "id": "b"}]}')
    assert bulk.status_code == 422 and bulk.json()["field"] == "series[0].id", bulk.text
    bulk = client.post("/series/append", headers={"content-type": "application/json"},
                       content=b'{"series": [{"id": "a", "values": [1.0]}, {"id": "b", '
                               b'"values": [1.0], "values": [2.0]}]}')
    assert bulk.status_code == 422 and bulk.json()["field"] == "series[1].values", bulk.text
    assert client.get("/series/a").status_code == 404


@pytest.mark.parametrize("body, status, field, says", [
    (b'{"values": [1' + b"0" * 5000 + b"]}", 422, "body", "4,300 digits"),  # (Python's limit)
    (b'{"values": [1.0], "horizon": 1' + b"0" * 5000 + b"}", 422, "body", "4,300 digits"),
    (b'{"values": [\xff\xfe]}', 422, "body", "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, 422, "body", "nests"),
])
def test_bodies_no_parser_reads_are_a_422_not_a_500(client, body, status, field, says):
    for path in ("/series/big/append", "/forecast", "/series/append"):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status and r.json()["field"] == field, (path, r.text[:300])
        assert says in r.json()["detail"], r.json()
        assert "sys." not in r.json()["detail"], r.json()  # (no interpreter settings: a client has none)
    assert client.get("/series/big").status_code == 404


def test_a_compressed_body_is_a_415_naming_the_encoding(client):
    import gzip

    r = client.post("/series/gz/append", content=gzip.compress(b'{"values": [1.0]}'),
                    headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 415 and r.json()["field"] == "content-encoding", r.text
    assert client.get("/series/gz").status_code == 404


def test_405_allows_every_method_of_the_path(client):
    r = client.options("/series/abc")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD"
    assert client.put("/forecast").headers["allow"] == "POST"


def test_head_beside_every_get(client):
    """RFC 9110 9.1: a server supports GET and HEAD (`curl -I /series/x` was a 405): HEAD is
    GET's status and headers, with no body, its checks included; none in the schema."""
    assert client.post("/series/h/append", json={"values": ramp(40)}).status_code == 200
    for path in ("/series/h", "/metrics", "/healthz", "/series/h/forecast?horizon=3", "/models",
                 "/series/h/forecast?horizon=3&level=80&quantiles=0.5"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200 and head.content == b"", (path, head)
        for name in ("content-type", "content-length"):  # (the response model's too: a
            # forecast's HEAD once counted `"timestamps": null`, which GET leaves out)
            if path != "/metrics" or name != "content-length":  # (its counters move between)
                assert head.headers[name] == get.headers[name], (path, name)
    assert client.head("/series/nope").status_code == 404
    assert client.head("/series/h/forecast?horizon=0").status_code == 422
    assert client.head("/series/h/forecast?bogus=1").status_code == 422
    assert client.head("/forecast").status_code == 405  # (a POST route: no GET, no HEAD)
    schema = client.get("/openapi.json").json()["paths"]
    assert not any("head" in ops for ops in schema.values())


def test_an_answer_past_max_answer_values_is_a_413_naming_horizon():
    """Series x horizon x (mean, two bounds per level, one per quantile) is bounded: 1,024
    series x 2,048 points with ten levels and ten quantiles came to 307 MB of JSON."""
    from dataclasses import replace

    settings = replace(LIMITS, max_answer_values=100)
    engine = Engine.load(str(DEFAULT_WEIGHTS), "cpu", max_series=LIMITS.max_series)
    two = [{"id": "a", "values": ramp(40)}, {"id": "b", "values": ramp(40)}]
    with TestClient(create_app(settings, engine)) as c:
        r = c.post("/forecast", json={"series": two, "horizon": 20, "level": [80]})  # 2 x 20 x 3
        assert_error(r, 413, "horizon")
        assert "120" in r.json()["detail"] and "--max-answer-values" in r.json()["detail"]
        assert c.post("/forecast", json={"series": two, "horizon": 16, "level": [80]}).status_code == 200
        assert_error(c.post("/series/append", json={"series": two, "horizon": 51}), 413, "horizon")
        columnar = {"ids": ["a", "b"], "offsets": [0, 40], "values": ramp(40) + ramp(40)}
        assert_error(c.post("/series/append", json={**columnar, "horizon": 11, "quantiles": [0.5, 0.9],
                                                     "level": [50]}), 413, "horizon")
        assert c.get("/series").json()["series"] == []  # nothing applied
        assert c.post("/series/append", json={**columnar, "horizon": 50}).status_code == 200
        # one series: GET .../forecast and an append with a horizon (1 x 34 x 3 = 102)
        assert_error(c.get("/series/a/forecast", params={"horizon": 34, "level": 80}), 413, "horizon")
        assert_error(c.post("/series/a/append", json={"values": [1.0], "horizon": 34, "level": [80]}),
                     413, "horizon")
        assert c.get("/series/a").json()["length"] == 40  # not applied
        assert c.get("/series/a/forecast", params={"horizon": 33, "level": 80}).status_code == 200


def test_the_newest_points_of_an_unfinished_patch_inform_the_first_forecast_step(client):
    """64 points of 10 and then 16 of 100: forecast near 100 from the first step, streamed or
    sent whole (the forecast starts afresh at the newest point; it was 10 for 16 steps)."""
    values = [10.0] * 64 + [100.0] * 16
    r = client.post("/forecast", json={"series": [{"id": "x", "values": values}], "horizon": 8})
    assert r.status_code == 200, r.text
    whole = r.json()["forecasts"][0]["mean"]
    assert min(whole) > 50, whole
    client.post("/series/jump/append", json={"values": values[:70]})
    streamed = client.post("/series/jump/append", json={"values": values[70:], "horizon": 8})
    assert rel_err(torch.tensor(streamed.json()["forecast"]["mean"]), torch.tensor(whole)) < 1e-4


def test_realigned_forecasts_can_be_turned_off():
    """--no-realign-forecasts: the forecast from inside a patch starts at the last complete
    patch, as before (the cheapest: no fresh state), its first steps the model's earlier
    forecast of them."""
    from dataclasses import replace

    engine = Engine.load(str(DEFAULT_WEIGHTS), "cpu", max_series=LIMITS.max_series)
    values = [10.0] * 64 + [100.0] * 16
    with TestClient(create_app(replace(LIMITS, realign_forecasts=False), engine)) as c:
        r = c.post("/forecast", json={"series": [{"id": "x", "values": values}], "horizon": 8})
        assert r.status_code == 200 and max(r.json()["forecasts"][0]["mean"]) < 20, r.text


def test_a_series_whose_scale_dropped_is_forecast_at_its_new_scale(client):
    """2,400 points of noise at 1e6 and then 2,400 of 1.0 (a review's case): the forecast was in
    the hundreds (the causal variance follows a drop over hundreds of patches); the state's
    statistics are stale, so it is forecast afresh over its last 16 patches."""
    import numpy as np

    rng = np.random.default_rng(0)
    values = (1e6 * rng.random(2400)).round(3).tolist() + [1.0] * 2400  # (under 5,000 points)
    r = client.post("/forecast", json={"series": [{"id": "s", "values": values}], "horizon": 8})
    assert r.status_code == 200, r.text
    assert max(abs(v - 1.0) for v in r.json()["forecasts"][0]["mean"]) < 0.5, r.json()


def test_probes_answer_head_and_models_say_whether_forecasts_realign(client):
    assert client.head("/healthz").status_code == 200
    assert client.head("/readyz").status_code == 200
    (info,) = client.get("/models").json()["models"]
    assert info["realigns_forecasts"] is True  # (the default lag model, --realign-forecasts)


def test_a_level_or_quantile_asked_twice_is_refused_naming_it(client):
    """[80, 80] was answered with two identical intervals: a mistake, refused with a 422."""
    values = [float(i % 24) for i in range(64)]
    r = client.post("/forecast", json={"series": [{"id": "s", "values": values}], "horizon": 4,
                                       "level": [80, 95, 80]})
    assert r.status_code == 422 and r.json()["field"] == "level", r.text
    assert r.json()["detail"] == "level: 80 is given twice"
    r = client.post("/forecast", json={"series": [{"id": "s", "values": values}], "horizon": 4,
                                       "quantiles": [0.5, 0.5]})
    assert r.status_code == 422 and r.json()["field"] == "quantiles", r.text
    assert client.post("/series/twice/append", json={"values": values}).status_code == 200
    r = client.get("/series/twice/forecast?horizon=4&level=80&level=80")
    assert r.status_code == 422 and r.json()["field"] == "level", r.text
    ok = client.post("/forecast", json={"series": [{"id": "s", "values": values}], "horizon": 4,
                                        "level": [80, 95]})
    assert ok.status_code == 200 and len(ok.json()["forecasts"][0]["intervals"]) == 2


def test_the_default_horizon_is_capped_at_a_lower_max_horizon():
    """96 is a default nobody asked for: under `--max-horizon 10` a forecast without a horizon
    gives 10 points (it was a 422 about 'horizon 96'); one asking for 96 is still refused."""
    engine = Engine.load(str(DEFAULT_WEIGHTS), "cpu", max_series=3)
    with TestClient(create_app(Settings(max_horizon=10), engine)) as c:
        assert c.post("/series/capped/append", json={"values": ramp(64)}).status_code == 200
        assert len(c.get("/series/capped/forecast").json()["mean"]) == 10
        assert c.get("/series/capped/plot").status_code == 200
        stateless = c.post("/forecast", json={"series": [{"id": "s", "values": ramp(64)}]})
        assert stateless.status_code == 200 and stateless.json()["horizon"] == 10
        assert_error(c.get("/series/capped/forecast?horizon=96"), 422, "horizon")
        assert_error(c.post("/forecast", json={"series": [{"id": "s", "values": ramp(64)}],
                                               "horizon": 96}), 422, "horizon")

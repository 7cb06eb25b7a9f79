"""Prediction intervals, quantiles and anomaly flags through the HTTP API, with a model that has
a quantile head (a tiny random one): shapes, order, errors, and that streamed and stateless
answers agree."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine import Engine
from service.settings import Settings
from tests.helpers import MANIFEST, P, head_model, tiny_model, walk

SETTINGS = Settings(max_horizon=200, max_series_per_request=8, max_points_per_request=5000,
                    batch_window_ms=0.0)


@pytest.fixture(scope="module")
def client():
    engine = Engine(head_model(), MANIFEST, 50, backend="torch")
    with TestClient(create_app(SETTINGS, engine)) as c:
        yield c


def history(n: int, seed: int = 1) -> list[float]:
    return [round(v, 4) for v in walk(n, seed).tolist()]


def assert_ordered(intervals: list[dict], quantiles: list[dict]) -> None:
    by_level = sorted(intervals, key=lambda i: i["level"])
    for narrow, wide in zip(by_level, by_level[1:]):  # a wider interval contains a narrower one
        assert all(w <= n for w, n in zip(wide["lo"], narrow["lo"]))
        assert all(w >= n for w, n in zip(wide["hi"], narrow["hi"]))
    for i in intervals:
        assert all(lo <= hi for lo, hi in zip(i["lo"], i["hi"]))
    by_q = sorted(quantiles, key=lambda q: q["q"])
    for a, b in zip(by_q, by_q[1:]):
        assert all(x <= y for x, y in zip(a["values"], b["values"]))


def test_stateless_forecast_with_levels_and_quantiles(client):
    r = client.post("/forecast", json={"series": [{"id": "a", "values": history(5 * P)}],
                                       "horizon": 2 * P + 3, "level": [80, 95, 50],
                                       "quantiles": [0.1, 0.5, 0.9, 0.975]})
    assert r.status_code == 200, r.text
    [fc] = r.json()["forecasts"]
    assert [i["level"] for i in fc["intervals"]] == [80, 95, 50]
    assert [q["q"] for q in fc["quantiles"]] == [0.1, 0.5, 0.9, 0.975]
    for i in fc["intervals"]:
        assert len(i["lo"]) == len(i["hi"]) == 2 * P + 3
    assert_ordered(fc["intervals"], fc["quantiles"])
    plain = client.post("/forecast", json={"series": [{"id": "a", "values": history(5 * P)}],
                                           "horizon": 2 * P + 3}).json()["forecasts"][0]
    assert plain["mean"] == fc["mean"] and "intervals" not in plain and "quantiles" not in plain


def test_streamed_intervals_equal_stateless_ones(client):
    values = history(6 * P + 5, seed=3)
    client.post("/series/iv/append", json={"values": values[:P + 2]})
    client.post("/series/iv/append", json={"values": values[P + 2: 4 * P]})
    streamed = client.post("/series/iv/append", json={
        "values": values[4 * P:], "horizon": P + 1, "level": [80, 95], "quantiles": [0.25]}).json()
    got = client.get("/series/iv/forecast?horizon=9&level=80&level=95&quantiles=0.25").json()
    stateless = client.post("/forecast", json={"series": [{"id": "x", "values": values}],
                                               "horizon": P + 1, "level": [80, 95],
                                               "quantiles": [0.25]}).json()["forecasts"][0]
    def close(xs, ys):  # relative to the forecast's size
        return max(abs(x - y) for x, y in zip(xs, ys)) <= 1e-4 * max(abs(y) for y in ys)

    for a, b in ((streamed["forecast"], stateless), (got, stateless)):
        for ia, ib in zip(a["intervals"], b["intervals"]):
            assert close(ia["lo"] + ia["hi"], ib["lo"] + ib["hi"])
        assert close(a["mean"], b["mean"])
        assert close(a["quantiles"][0]["values"], b["quantiles"][0]["values"])


def test_a_flat_series_continuing_at_its_value_is_no_anomaly(client):
    """A constant float32 cannot hold exactly (held as 123456792) gives a zero-width interval
    at the rounded value: the point itself, compared as the model holds it, is inside."""
    for sid, x in (("flat-big", 123456789.0), ("flat-odd", 16777217.0), ("flat-small", 3.3)):
        assert client.post(f"/series/{sid}/append", json={"values": [x] * (2 * P)}).status_code == 200
        again = client.post(f"/series/{sid}/append", json={"values": [x], "anomaly_level": 99})
        assert again.status_code == 200 and again.json()["anomalies"] == [], (sid, again.json())
    moved = client.post("/series/flat-big/append", json={"values": [123456789.0 + 1e4],
                                                          "anomaly_level": 99})
    assert [a["index"] for a in moved.json()["anomalies"]] == [0]


def test_anomalies_flag_points_outside_the_calibrated_interval(client):
    client.post("/series/an/append", json={"values": history(4 * P, seed=5)})
    normal = client.post("/series/an/append", json={"values": [history(4 * P + 1, 5)[-1]],
                                                    "anomaly_level": 99})
    assert normal.status_code == 200 and normal.json()["anomalies"] == []
    spike = client.post("/series/an/append", json={"values": [1e6, -1e6], "anomaly_level": 99})
    found = spike.json()["anomalies"]
    assert [a["index"] for a in found] == [0, 1]
    assert all(a["lo"] < a["hi"] and not a["lo"] <= a["value"] <= a["hi"] for a in found)
    metrics = client.get("/metrics").text
    assert any(line.startswith("rimer_anomalies_total") and float(line.split()[-1]) >= 2
               for line in metrics.splitlines())
    new = client.post("/series/new-one/append", json={"values": [1.0], "anomaly_level": 99})
    assert new.json()["anomalies"] == []  # no forecast before a series' first patch
    bulk = client.post("/series/append", json={"series": [{"id": "an", "values": [1e7]},
                                                          {"id": "an", "values": [2.0]}],
                                               "anomaly_level": 95})
    assert bulk.status_code == 200, bulk.text
    first, second = bulk.json()["series"]
    assert len(first["anomalies"]) == 1 and isinstance(second["anomalies"], list)


@pytest.mark.parametrize("body, field", [
    ({"level": [0]}, "level[0]"), ({"level": [100]}, "level[0]"), ({"level": ["80"]}, "level[0]"),
    ({"level": [80] * 11}, "level"), ({"quantiles": [1.0]}, "quantiles[0]"),
    ({"quantiles": [0.5, True]}, "quantiles[1]"), ({"quantiles": [0.1] * 11}, "quantiles"),
])
def test_bad_levels_and_quantiles_are_422s_naming_them(client, body, field):
    r = client.post("/forecast", json={"series": [{"id": "a", "values": history(2 * P)}],
                                       "horizon": 4, **body})
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_levels_need_a_horizon_and_a_model_with_quantiles(client):
    client.post("/series/h/append", json={"values": history(2 * P)})
    r = client.post("/series/h/append", json={"values": [1.0], "level": [80]})
    assert r.status_code == 422 and r.json()["field"] == "level"
    r = client.get("/series/h/forecast?horizon=4&level=150")
    assert r.status_code == 422 and r.json()["field"].startswith("level")
    plain = Engine(tiny_model(), MANIFEST, 10, backend="torch")
    with TestClient(create_app(SETTINGS, plain)) as c:
        r = c.post("/forecast", json={"series": [{"id": "a", "values": history(2 * P)}],
                                      "horizon": 4, "level": [80]})
        assert r.status_code == 422 and r.json()["field"] == "level", r.text
        assert "no quantiles" in r.json()["detail"]


def test_calibration_widens_intervals_that_are_too_narrow(client):
    """A series far noisier than the model expects: after a while its intervals are wider than
    the same history's forecast without calibration would draw (static ones)."""
    import random

    rng = random.Random(0)
    noisy = [10 + 40 * rng.gauss(0, 1) for _ in range(40 * P)]
    r = client.post("/forecast", json={"series": [{"id": "n", "values": noisy}], "horizon": P,
                                       "level": [80], "quantiles": [0.1, 0.9]})
    fc = r.json()["forecasts"][0]
    calibrated = fc["intervals"][0]["hi"][0] - fc["intervals"][0]["lo"][0]
    static = fc["quantiles"][1]["values"][0] - fc["quantiles"][0]["values"][0]
    assert math.isfinite(calibrated) and calibrated > static

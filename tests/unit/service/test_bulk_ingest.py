"""The per-item form's plain bulk ingest, checked in bulk (service/bulk_ingest.py): every body,
accepted or refused, gets the answer the item-by-item path gives it, and leaves the same series,
metadata and forecasts; what the bulk check does not take falls through to pydantic."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient

from model import checkpoint
from service import bulk_ingest
from service.app import create_app
from service.engine import Engine
from service.settings import Settings
from tests.conftest import DEFAULT_WEIGHTS
from tests.helpers import series

LIMITS = Settings(max_horizon=500, max_series_per_request=6, max_points_per_request=300,
                  max_series=12)


@pytest.fixture(scope="module")
def loaded():
    return checkpoint.load(DEFAULT_WEIGHTS)


def client_for(loaded) -> TestClient:
    model, manifest = loaded
    return TestClient(create_app(LIMITS, Engine(model, manifest, LIMITS.max_series,
                                                backend="torch")))


def post(c: TestClient, body: str):
    return c.post("/series/append", content=body, headers={"content-type": "application/json"})


def bodies(rng: random.Random) -> list[str]:
    """Plain ingests and near misses of every kind, as JSON text."""
    def ids(k):
        return [f"s{rng.randrange(8)}" for _ in range(k)]

    def plain(k=3, n=2):
        return {"series": [{"id": i, "values": [round(rng.gauss(10, 2), 3) for _ in range(n)]}
                           for i in ids(k)]}

    out = [plain(3, 1), plain(5, 33), plain(2, 40), plain(6, 1)]
    b = plain(2, 3)
    b["series"][0]["values"][1] = 7  # an int: taken as 7.0
    out.append(b)
    near = [
        ("values", 1, True), ("values", 1, "3.5"), ("values", 1, None), ("values", 1, 1e31),
        ("values", 1, 10**400), ("values", 0, []), ("id", None, "bad id"), ("id", None, "a\nb"),
        ("id", None, 5), ("id", None, "x" * 129), ("values", None, "1.0"), ("values", None, {}),
    ]
    for key, at, value in near:
        b = plain(3, 2)
        if at is None:
            b["series"][1][key] = value
        elif key == "values" and value == []:
            b["series"][1]["values"] = []
        else:
            b["series"][1]["values"][at] = value
        out.append(b)
    b = plain(2, 2)
    b["series"][0]["timestamps"] = ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z"]
    out.append(b)
    b = plain(2, 2)
    del b["series"][1]["id"]
    b["series"][1]["name"] = "s1"
    out.append(b)
    out += [{"series": []}, {"series": "s1"}, {"series": [["s1", 1.0]]}, {**plain(2, 2), "horizon": 2},
            plain(7, 1), plain(4, 80), {**plain(2, 1), "max_gap_points": 0}]
    text = [json.dumps(x) for x in out]
    text.append('{"series": [{"id": "s1", "values": [NaN]}]}')
    text.append('{"series": [{"id": "s1", "values": [1.0], "id": "s2"}]}')  # a key twice
    return text


def test_every_body_is_answered_as_the_item_by_item_path_answers_it(loaded, monkeypatch):
    rng = random.Random(7)
    fast, slow = client_for(loaded), client_for(loaded)
    with fast, slow:
        # a series with timestamps: plain appends to it take the per-item rules (grid points)
        stamped = {"values": series(40, 1), "timestamps": [f"2024-01-01T{h % 24:02d}:00:00Z"
                                                            if h < 24 else
                                                            f"2024-01-02T{h - 24:02d}:00:00Z"
                                                            for h in range(40)]}
        for c in (fast, slow):
            assert c.post("/series/s7/append", json=stamped).status_code == 200
        recognised = 0
        for text in bodies(rng) + bodies(rng):
            recognised += bulk_ingest.recognise(json.loads(text)) is not None
            a = post(fast, text)
            with monkeypatch.context() as m:
                m.setattr(bulk_ingest, "recognise", lambda body: None)
                b = post(slow, text)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), text[:200]
        assert recognised >= 10  # (the bulk check did take the plain ones)
        listing = fast.get("/series", params={"limit": 100}).json()
        assert listing == slow.get("/series", params={"limit": 100}).json()
        for item in listing["series"]:
            sid = item["id"]
            assert fast.get(f"/series/{sid}").json() == slow.get(f"/series/{sid}").json()
            if item["length"] >= 32:
                ask = {"horizon": 5, "level": [80]}
                assert (fast.get(f"/series/{sid}/forecast", params=ask).json()
                        == slow.get(f"/series/{sid}/forecast", params=ask).json())


def test_only_plain_bodies_are_recognised():
    ok = bulk_ingest.recognise({"series": [{"id": "a", "values": [1, 2.5]}, {"id": "b",
                                                                            "values": [3.0]}]})
    assert ok is not None and ok.ids == ["a", "b"] and ok.bounds == [0, 2, 3]
    assert ok.floats == [1.0, 2.5, 3.0] and all(type(v) is float for v in ok.floats)
    assert ok.metas() == [{"last": 2.5}, {"last": 3.0}]
    request = ok.as_request()
    assert [(s.id, s.values) for s in request.series] == [("a", [1.0, 2.5]), ("b", [3.0])]
    for body in ({"series": [{"id": "a", "values": [1.0]}], "horizon": 3},
                 {"series": [{"id": "a", "values": [None]}]},
                 {"series": [{"id": "a", "values": [float("inf")]}]},
                 {"series": [{"id": "a", "values": [1.0], "freq": "1h"}]},
                 {"series": [{"id": "a", "values": [False]}]},
                 {"series": []}, [], None):
        assert bulk_ingest.recognise(body) is None, body

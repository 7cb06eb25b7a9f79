"""The columnar form of POST /series/append (service/columnar.py, Engine.append_columns): the
same states, forecasts, metadata and log records as the per-item form; bulk checks whose errors
name the field; nothing applied when anything is refused."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model import checkpoint
from service.app import create_app
from service.engine import Engine, Op
from service.settings import Settings
from service.store import Store
from service.wal import read_segment
from tests.conftest import DEFAULT_WEIGHTS
from tests.helpers import series

LIMITS = Settings(max_horizon=500, max_series_per_request=4, max_points_per_request=5000,
                  max_series=3)


@pytest.fixture(scope="module")
def loaded():
    return checkpoint.load(DEFAULT_WEIGHTS)


def client_for(loaded, settings: Settings, max_series: int | None = None) -> TestClient:
    model, manifest = loaded
    engine = Engine(model, manifest, max_series or settings.max_series, backend="torch")
    return TestClient(create_app(settings, engine))


def columns(items: list[dict], **extra) -> dict:
    """The per-item form's items as one columnar body."""
    out = {"ids": [], "offsets": [], "values": []}
    stamps = []
    for item in items:
        out["ids"].append(item["id"])
        out["offsets"].append(len(out["values"]))
        out["values"] += item["values"]
        stamps += item.get("timestamps", [])
    if stamps:
        out["timestamps"] = stamps
    return {**out, **extra}


def post(c: TestClient, body) -> object:
    return c.post("/series/append", content=json.dumps(body),
                  headers={"content-type": "application/json"})


def as_items(answer: dict) -> list[dict]:
    """A columnar answer as the per-item form's items."""
    fc = answer.get("forecast")
    out = []
    for j, (sid, n) in enumerate(zip(answer["ids"], answer["lengths"])):
        item = {"id": sid, "length": n}
        if fc:
            a, b = fc["offsets"][j], (fc["offsets"] + [len(fc["mean"])])[j + 1]
            one = {"mean": fc["mean"][a:b]}
            if "intervals" in fc:
                one["intervals"] = [{"level": x["level"], "lo": x["lo"][a:b], "hi": x["hi"][a:b]}
                                    for x in fc["intervals"]]
            if "quantiles" in fc:
                one["quantiles"] = [{"q": x["q"], "values": x["values"][a:b]} for x in fc["quantiles"]]
            if fc.get("timestamps") and fc["timestamps"][a] is not None:
                one["timestamps"] = fc["timestamps"][a:b]
            item["forecast"] = one
        out.append(item)
    return out


def same_states(a: Engine, b: Engine, ids) -> None:
    for sid in ids:
        sa, sb = a.store.state_of(sid).tensors(), b.store.state_of(sid).tensors()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), sid
        assert a.meta.get(sid) == b.meta.get(sid), sid


@pytest.mark.parametrize("window", [0.0, 2.0])
def test_columnar_equals_per_item_bit_for_bit(loaded, window):
    settings = replace(Settings(), batch_window_ms=window)
    ids = [f"s{i}" for i in range(5)]
    rounds = [[{"id": sid, "values": series(40 + 3 * i, i)} for i, sid in enumerate(ids)]]
    rounds += [[{"id": sid, "values": [float(k + i)]} for i, sid in enumerate(ids)] for k in range(24)]
    rounds.append([{"id": "s0", "values": [1.5, None]}, {"id": "s1", "values": [None, 2.0, 3.0]},
                   {"id": "s0", "values": series(33, 7)}])  # nulls, and an id named twice
    with client_for(loaded, settings, 20) as item_c, client_for(loaded, settings, 20) as col_c:
        for r, items in enumerate(rounds):
            a, b = post(item_c, {"series": items}), post(col_c, columns(items))
            assert a.status_code == b.status_code == 200, (r, a.text, b.text)
            assert as_items(b.json()) == a.json()["series"], r
        ask = {"horizon": 7, "level": [80], "quantiles": [0.1, 0.9]}
        items = [{"id": sid, "values": [2.5]} for sid in ids[:4]]
        a, b = post(item_c, {"series": items, **ask}), post(col_c, columns(items, **ask))
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        got = b.json()
        assert got["forecast"]["offsets"] == [0, 7, 14, 21] and len(got["forecast"]["mean"]) == 28
        assert as_items(got) == a.json()["series"]  # forecasts, intervals and quantiles, exactly
        same_states(item_c.app.state.engine, col_c.app.state.engine, ids)
        for sid in ids:
            assert (item_c.get(f"/series/{sid}/forecast", params={"horizon": 5}).json()
                    == col_c.get(f"/series/{sid}/forecast", params={"horizon": 5}).json())
        metrics = col_c.get("/metrics").text
        total = sum(len(x["values"]) for items in rounds for x in items) + 4
        assert f"rimer_points_appended_total {float(total)}" in metrics


BAD = [  # body, status, field
    ({"ids": ["a", "b"], "offsets": [0, 1], "values": [1.0, "2"]}, 422, "values[1]"),
    ({"ids": ["a", "b"], "offsets": [0, 1], "values": [1.0, True]}, 422, "values[1]"),
    ({"ids": ["a", "b"], "offsets": [0, 1], "values": [1.0, 2e30]}, 422, "values[1]"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0, float("nan")]}, 422, "values[1]"),
    ({"ids": ["a"], "offsets": [0], "values": [float("inf")]}, 422, "values[0]"),
    ({"ids": ["a"], "offsets": [0], "values": []}, 422, "values"),
    ({"ids": ["a"], "offsets": [0], "values": 3}, 422, "values"),
    ({"ids": [], "offsets": [], "values": [1.0]}, 422, "ids"),
    ({"ids": ["a", "b c"], "offsets": [0, 1], "values": [1.0, 2.0]}, 422, "ids[1]"),
    ({"ids": ["a", "b\n"], "offsets": [0, 1], "values": [1.0, 2.0]}, 422, "ids[1]"),
    ({"ids": ["a", 7], "offsets": [0, 1], "values": [1.0, 2.0]}, 422, "ids[1]"),
    ({"ids": ["a", "x" * 129], "offsets": [0, 1], "values": [1.0, 2.0]}, 422, "ids[1]"),
    ({"ids": list("abcde"), "offsets": [0, 1, 2, 3, 4], "values": [1.0] * 5}, 413, "ids"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0] * 5001}, 413, "values"),
    ({"ids": ["a", "b"], "offsets": [0], "values": [1.0, 2.0]}, 422, "offsets"),
    ({"ids": ["a", "b"], "offsets": [1, 1], "values": [1.0, 2.0]}, 422, "offsets[0]"),
    ({"ids": ["a", "b", "c"], "offsets": [0, 2, 2], "values": [1.0] * 3}, 422, "offsets[2]"),
    ({"ids": ["a", "b", "c"], "offsets": [0, 2, 1], "values": [1.0] * 3}, 422, "offsets[2]"),
    ({"ids": ["a", "b"], "offsets": [0, 2], "values": [1.0, 2.0]}, 422, "offsets[1]"),
    ({"ids": ["a", "b"], "offsets": [0, 1.0], "values": [1.0, 2.0]}, 422, "offsets[1]"),
    ({"ids": ["a", "b"], "offsets": [0, 10**30], "values": [1.0, 2.0]}, 422, "offsets[1]"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0], "series": []}, 422, "series"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0], "anomaly_level": 95}, 422, "anomaly_level"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0], "colour": 1}, 422, "colour"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0], "horizon": 0}, 422, "horizon"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0], "horizon": 501}, 422, "horizon"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0], "horizon": True}, 422, "horizon"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0], "level": [80]}, 422, "level"),
    ({"ids": ["a"], "offsets": [0], "values": [1.0], "freq": "1 month"}, 422, "freq"),
    ({"ids": ["a"], "offsets": [0], "values": [None]}, 422, "values[0]"),  # nothing to carry
    ({"ids": ["a", "b"], "offsets": [0, 1], "values": [1.0, 2.0], "timestamps": ["2024-01-01"]},
     422, "timestamps"),
    ({"ids": ["a", "b"], "offsets": [0, 1], "values": [1.0, 2.0], "freq": "1h",
      "timestamps": ["2024-01-01T00:00:00Z", "yesterday"]}, 422, "timestamps[1]"),
    ({"ids": ["a", "b"], "offsets": [0, 1], "values": [1.0, 2.0], "horizon": 4}, 422, "horizon"),
    ({"ids": ["evil\nx"], "offsets": [0], "values": [1.0]}, 422, "ids[0]"),  # (not two ids)
    ({"ids": ["a", "b\nc", "d"], "offsets": [0, 1, 2], "values": [1.0] * 3}, 422, "ids[1]"),
    ({"ids": ["a", "b", "c", "d"], "offsets": [0, 1, 2, 3], "values": [1.0] * 4}, 409, "ids[3]"),
]


@pytest.mark.parametrize("window", [0.0, 2.0])
def test_columnar_errors_name_the_field_and_change_nothing(loaded, window):
    with client_for(loaded, replace(LIMITS, batch_window_ms=window)) as c:
        for body, status, field in BAD:
            r = post(c, body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["field"] == field, (body, r.json())
            assert field in r.json()["detail"] or status != 422, r.json()
        assert c.get("/series").json() == {"series": [], "next_cursor": None}


def test_a_point_is_named_by_its_place_in_the_body(loaded):
    """A run's point is `values[k]` of the flat array, in the field and the message alike
    (the message said `values[0]`, the point's place in its run, beside `values[1]`)."""
    with client_for(loaded, LIMITS) as c:
        r = post(c, {"ids": ["n1", "n2"], "offsets": [0, 1], "values": [2.0, None]})
        assert r.status_code == 422 and r.json()["field"] == "values[1]", r.text
        assert "values[0]" not in r.json()["detail"] and "'n2'" in r.json()["detail"], r.text


def test_a_refused_columnar_append_changes_nothing(loaded):
    with client_for(loaded, LIMITS) as c:
        assert post(c, {"ids": ["a"], "offsets": [0], "values": series(40, 1)}).status_code == 200
        before = c.get("/series/a/forecast", params={"horizon": 4}).json()
        refused = [  # the engine's refusal (the service's 3 series), the timeline's (a null
            # first point of a new series, after a good run)
            ({"ids": ["a", "n1", "n2", "n3"], "offsets": [0, 1, 2, 3], "values": [5.0] * 4},
             409, "ids[3]"),
            ({"ids": ["a", "n1"], "offsets": [0, 2], "values": [5.0, 6.0, None]}, 422, "values[2]"),
        ]
        for body, status, field in refused:
            r = post(c, body)
            assert r.status_code == status and r.json()["field"] == field, r.text
        assert c.get("/series").json()["series"] == [{"id": "a", "length": 40}]
        assert c.get("/series/a/forecast", params={"horizon": 4}).json() == before


def test_a_too_short_series_for_the_horizon_is_named_alike_in_both_forms(loaded):
    """The body's `horizon` is the field in both forms (an item has no horizon of its own: the
    per-item form named `series[1].horizon`), the message says which series; nothing changes."""
    with client_for(loaded, LIMITS) as c:
        assert post(c, {"ids": ["a"], "offsets": [0], "values": series(40, 1)}).status_code == 200
        per_item = post(c, {"series": [{"id": "a", "values": [1.0]}, {"id": "short", "values":
                                                                   [1.0, 2.0]}], "horizon": 2})
        col = post(c, {"ids": ["a", "short"], "offsets": [0, 1], "values": [1.0, 1.0, 2.0],
                       "horizon": 2})
        for r, which in ((per_item, "series[1]"), (col, "ids[1]")):
            assert r.status_code == 422 and r.json()["field"] == "horizon", r.text
            assert r.json()["detail"].startswith(f"horizon: for {which} ('short'), "), r.text
        assert c.get("/series").json()["series"] == [{"id": "a", "length": 40}]


def test_columnar_timestamps_take_the_per_item_rules(loaded):
    hours = [f"2024-05-01T{h:02d}:00:00Z" for h in range(24)]
    with client_for(loaded, Settings(), 10) as c:
        first = {"ids": ["t0", "t1"], "offsets": [0, 1], "values": [1.0, 2.0],
                 "timestamps": [hours[0], hours[0]], "freq": "1h"}
        r = post(c, first)
        assert r.json() == {"ids": ["t0", "t1"], "lengths": [1, 1]}, r.text
        # a gap (filled), the next grid points without timestamps, then a forecast's timestamps
        r = post(c, {"ids": ["t0", "t1"], "offsets": [0, 2], "values": [1.0, 2.0, 3.0],
                     "timestamps": [hours[3], hours[4], hours[1]]})
        assert r.json()["lengths"] == [5, 2], r.text
        r = post(c, {"ids": ["t0", "t1"], "offsets": [0, 1], "values": series(40, 1)})
        assert r.json()["lengths"] == [6, 41], r.text
        r = post(c, {"ids": ["t1", "t0"], "offsets": [0, 1], "values": series(27, 2), "horizon": 2})
        got = r.json()
        assert got["lengths"] == [42, 32] and got["forecast"]["timestamps"] == [
            "2024-05-02T18:00:00Z", "2024-05-02T19:00:00Z",
            "2024-05-02T08:00:00Z", "2024-05-02T09:00:00Z"], r.text
        assert c.get("/series/t0").json()["last_timestamp"] == "2024-05-02T07:00:00Z"
        # a late first timestamp of the second run: 409 naming it in the flat array
        r = post(c, {"ids": ["t0", "t1"], "offsets": [0, 1], "values": [1.0, 2.0],
                     "timestamps": ["2024-05-02T08:00:00Z", hours[5]]})
        assert r.status_code == 409 and r.json()["field"] == "timestamps[1]", r.text
        assert "ids[1]" in r.json()["detail"]
        assert c.get("/series/t0").json()["length"] == 32  # nothing applied


def test_columnar_log_records_equal_per_item_and_recover(loaded, tmp_path):
    model, manifest = loaded
    ids = [f"s{i}" for i in range(6)]
    runs = [[(sid, series(58 + i, i)) for i, sid in enumerate(ids)]]  # each completes a
    runs += [[(sid, [float(k) + 0.25 * i]) for i, sid in enumerate(ids)] for k in range(8)]  # patch
    dirs, engines = {}, {}
    for form in ("per-item", "columnar"):
        e = engines[form] = Engine(model, manifest, 20, backend="torch")
        dirs[form] = tmp_path / form
        store = Store(dirs[form], e, snapshot_interval_s=0)
        store.open()
        for run in runs:
            metas = [{"last": v[-1]} for _, v in run]
            if form == "per-item":
                [out] = e.apply_batch([[Op(s, v, meta=m) for (s, v), m in zip(run, metas)]])
            else:
                bounds = np.cumsum([0] + [len(v) for _, v in run]).tolist()
                out = e.append_columns([s for s, _ in run], bounds,
                                       np.array([x for _, v in run for x in v]), metas)[0]
            assert not isinstance(out, Exception)
        store.close(snapshot=False)
    logs = {form: [r for p in sorted(d.glob("wal-*.log")) for r in read_segment(p, True)[1]]
            for form, d in dirs.items()}  # (one column record a request: the same records)
    assert logs["per-item"] == logs["columnar"] and len(logs["columnar"]) == len(ids) * len(runs)
    sizes = {form: sum(p.stat().st_size for p in d.glob("wal-*.log")) for form, d in dirs.items()}
    assert sizes["columnar"] < sizes["per-item"]
    same_states(engines["per-item"], engines["columnar"], ids)  # (Op path against columnar)
    again = Engine(model, manifest, 20, backend="torch")
    store = Store(dirs["columnar"], again, snapshot_interval_s=0)
    assert store.open()["replayed"] == len(ids) * len(runs)
    for sid in ids:
        assert again.forecast_series(sid, 9) == engines["columnar"].forecast_series(sid, 9)
    same_states(again, engines["columnar"], ids)
    store.close()


def test_the_docs_show_both_forms(loaded):
    with client_for(loaded, LIMITS) as c:
        spec = c.get("/openapi.json").json()
    body = spec["paths"]["/series/append"]["post"]["requestBody"]["content"]["application/json"]
    refs = {s["$ref"].rsplit("/", 1)[1] for s in body["schema"]["oneOf"]}
    assert refs == {"BulkAppendRequest", "ColumnarAppendRequest"}
    assert {"ids", "offsets", "values", "timestamps"} <= set(
        spec["components"]["schemas"]["ColumnarAppendRequest"]["properties"])
    assert "ids" in body["examples"]["columnar"]["value"]
    answer = spec["paths"]["/series/append"]["post"]["responses"]["200"]["content"]
    assert "ColumnarAppendResponse" in json.dumps(answer)


def test_columnar_with_spilled_states_equals_per_item(loaded, tmp_path):
    """Past the device's capacity states spill to host memory and disk; a columnar append takes
    them back as a per-item one does."""
    model, manifest = loaded
    ids = [f"s{i}" for i in range(5)]
    runs = [[(sid, series(30 + i, i)) for i, sid in enumerate(ids)]]
    runs += [[(sid, [float(k) - i]) for i, sid in enumerate(ids)] for k in range(4)]
    engines = {}
    for form in ("per-item", "columnar"):
        e = engines[form] = Engine(model, manifest, 20, backend="torch", capacity=2,
                                   host_capacity=1, spill_dir=str(tmp_path / form))
        for run in runs:
            for part in (run[:3], run[3:]):  # (the first part's states spill in the second)
                metas = [{"last": v[-1]} for _, v in part]
                if form == "per-item":
                    [out] = e.apply_batch([[Op(s, v, meta=m) for (s, v), m in zip(part, metas)]])
                    assert not isinstance(out, Exception)
                else:
                    bounds = np.cumsum([0] + [len(v) for _, v in part]).tolist()
                    e.append_columns([s for s, _ in part], bounds,
                                     np.array([x for _, v in part for x in v]), metas)
        assert e.cache_sizes["device"] <= 3 and e.cache_stats["misses"] > 0
    for sid in ids:
        assert engines["columnar"].forecast_series(sid, 5) == engines["per-item"].forecast_series(sid, 5)
    same_states(engines["per-item"], engines["columnar"], ids)


def test_a_group_stepping_again_steps_on_its_batch_as_the_gather_would(monkeypatch):
    """A bulk ingest's series complete their patches in the same groups every patch_len
    requests; such a group steps on the batch its rows were split from (resident.rows_of)
    instead of gathering them. Same states, bit for bit, as with the gather, and used."""
    from service.engine import resident
    from tests.helpers import MANIFEST, P, head_model

    model = head_model()
    ids = [f"s{i}" for i in range(6)]
    start = [series(2 * P + i % 3, i) for i in range(6)]
    rng = np.random.default_rng(5)
    points = rng.normal(100, 3, (3 * P, len(ids)))
    used = []
    found = resident.rows_of
    engines = {}
    for shortcut in (False, True):
        monkeypatch.setattr(resident, "rows_of", (lambda g: used.append(found(g)) or used[-1])
                            if shortcut else (lambda g: None))
        e = engines[shortcut] = Engine(model, MANIFEST, 20, backend="torch")
        bounds = np.cumsum([0] + [len(v) for v in start]).tolist()
        e.append_columns(ids, bounds, np.array([x for v in start for x in v]), [None] * len(ids))
        for k, row in enumerate(points):  # (one request in another order: no shortcut then)
            order = ids[::-1] if k == 2 * P - 1 else ids  # (s0 and s3 step then)
            e.append_columns(order, list(range(len(ids) + 1)), row, [None] * len(ids))
    assert sum(u is not None for u in used) >= 2
    same_states(engines[False], engines[True], ids)
    for sid in ids:
        assert engines[False].forecast_series(sid, 7) == engines[True].forecast_series(sid, 7)


@pytest.mark.parametrize("bad", [b'"x"', b"true", b"[2]", b"NaN", b"-Infinity", b"9" * 400, b"1e31"])
def test_every_form_words_a_bad_point_alike(loaded, bad):
    """A bad point is refused with the same words by the single append, the per-item bulk form,
    the columnar form and POST /forecast (they were pydantic's in three and the columnar
    checks' own in one: 'Input should be a valid number' against 'a value is a number or
    null', and a 400-digit integer named by its size in one form only)."""
    point = b"[1.0, " + bad + b"]"
    bodies = {"/series/w/append": (b'{"values": ' + point + b"}", "values[1]"),
              "/series/append": (b'{"series": [{"id": "w", "values": ' + point + b"}]}",
                                 "series[0].values[1]"),
              "columnar": (b'{"ids": ["w"], "offsets": [0], "values": ' + point + b"}", "values[1]"),
              "/forecast": (b'{"series": [{"id": "w", "values": ' + point + b"}]}",
                            "series[0].values[1]")}
    said = set()
    with client_for(loaded, LIMITS) as client:
        for path, (body, field) in bodies.items():
            r = client.post("/series/append" if path == "columnar" else path, content=body,
                            headers={"content-type": "application/json"})
            assert r.status_code == 422 and r.json()["field"] == field, (path, r.text)
            [listed] = r.json()["errors"]
            assert listed["field"] == field and r.json()["detail"] == f"{field}: {listed['message']}"
            said.add(listed["message"])
        assert client.get("/series/w").status_code == 404  # (nothing applied)
    assert len(said) == 1, said

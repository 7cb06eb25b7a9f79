"""Bulk ingest, the series list, and micro-batching (service/scheduler.py): batched results equal
unbatched ones, a rejected request affects no other, ops on one series keep their order, and the
write-ahead log replays to the same states."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch
from fastapi.testclient import TestClient

from model import checkpoint
from service.app import create_app
from service.engine import Engine, EngineError, Op
from service.settings import Settings, parse
from service.store import Store
from tests.conftest import DEFAULT_WEIGHTS, Server, rel_err
from tests.helpers import series, tiny_model, value, walk

LIMITS = Settings(max_horizon=500, max_series_per_request=4, max_points_per_request=5000,
                  max_series=3)


@pytest.fixture(scope="module")
def loaded():
    return checkpoint.load(DEFAULT_WEIGHTS)


def client_for(loaded, settings: Settings, max_series: int | None = None) -> TestClient:
    model, manifest = loaded
    engine = Engine(model, manifest, max_series or settings.max_series, backend="torch")
    return TestClient(create_app(settings, engine))


def assert_error(r, status: int, field: str | None):
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.json()


# ---- bulk ingest and the list ------------------------------------------------------------------

@pytest.mark.parametrize("window", [0.0, 2.0])
def test_bulk_append_validated_whole(loaded, window):
    with client_for(loaded, replace(LIMITS, batch_window_ms=window)) as c:
        bad_value = {"series": [{"id": "a", "values": [1.0]}, {"id": "b", "values": [1.0, 2.0, "x"]}]}
        assert_error(c.post("/series/append", json=bad_value), 422, "series[1].values[2]")
        short = {"series": [{"id": "a", "values": series(40, 1)}, {"id": "b", "values": [1.0]}],
                 "horizon": 4}
        assert_error(c.post("/series/append", json=short), 422, "horizon")  # (for series[1])
        four_new = {"series": [{"id": f"n{i}", "values": [1.0]} for i in range(4)]}
        assert_error(c.post("/series/append", json=four_new), 409, "series[3].id")  # max_series 3
        five = {"series": [{"id": f"n{i}", "values": [1.0]} for i in range(5)]}
        assert_error(c.post("/series/append", json=five), 413, "series")
        assert c.get("/series").json() == {"series": [], "next_cursor": None}  # nothing applied

        ok = {"series": [{"id": "a", "values": series(40, 1)[:30]}, {"id": "b", "values": [5.0]},
                         {"id": "a", "values": series(40, 1)[30:]}], "horizon": None}
        r = c.post("/series/append", json=ok)
        assert r.status_code == 200, r.text
        # Duplicate ids apply in order: the second append to "a" sees the first.
        assert r.json() == {"series": [{"id": "a", "length": 30}, {"id": "b", "length": 1},
                                       {"id": "a", "length": 40}]}
        r = c.post("/series/append", json={"series": [{"id": "a", "values": [1.0]}], "horizon": 6})
        got = r.json()["series"][0]
        assert got["length"] == 41 and len(got["forecast"]["mean"]) == 6
        assert got["forecast"]["mean"] == c.get("/series/a/forecast", params={"horizon": 6}).json()["mean"]


def test_series_list_pages(loaded):
    with client_for(loaded, Settings(), max_series=100) as c:
        ids = [f"s{i:02d}" for i in range(7)]
        c.post("/series/append", json={"series": [{"id": i, "values": [1.0] * (k + 1)}
                                                  for k, i in enumerate(reversed(ids))]})
        seen, cursor = [], None
        while True:
            page = c.get("/series", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
            seen += page["series"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [s["id"] for s in seen] == ids
        assert seen[0] == {"id": "s00", "length": 7}
        assert c.get("/series", params={"limit": 1001}).status_code == 422
        assert c.get("/series", params={"limit": 0}).status_code == 422
        assert len(c.get("/series").json()["series"]) == 7


def test_batch_flags():
    s = parse(["--batch-window-ms", "0", "--max-batch", "64"])
    assert (s.batch_window_ms, s.max_batch) == (0.0, 64)
    assert (parse([]).batch_window_ms, parse([]).max_batch) == (2.0, 1024)
    assert parse(["--batch-max-points", "100"]).batch_max_points == 100
    for bad in (["--max-batch", "0"], ["--batch-max-points", "-1"]):
        with pytest.raises(SystemExit):
            parse(bad)


def test_a_large_append_does_not_hold_up_small_ones(loaded):
    """The batcher has one worker: a request of more than --batch-max-points values runs on its
    own thread instead, so other series' appends go on while it computes. Here the large append's
    model call is held until the small append has been answered (with no bypass, the small one
    would queue behind it and the wait would time out)."""
    model, manifest = loaded
    settings = replace(LIMITS, batch_window_ms=2.0, batch_max_points=64, max_points_per_request=500)
    release, large_started = threading.Event(), threading.Event()
    real_append = model.append

    def held(state, values):
        if max(len(v) for v in values) > 64:
            large_started.set()
            assert release.wait(30), "the small append never came through"
        return real_append(state, values)

    try:
        model.append = held
        with client_for(loaded, settings) as c:
            big: dict = {}
            t = threading.Thread(target=lambda: big.update(r=c.post(
                "/series/large/append", json={"values": series(200, 1)})))
            t.start()
            assert large_started.wait(30)
            small = c.post("/series/small/append", json={"values": series(40, 2), "horizon": 4})
            assert small.status_code == 200 and not release.is_set()  # answered meanwhile
            release.set()
            t.join(30)
            assert big["r"].status_code == 200 and big["r"].json()["length"] == 200
            assert c.get("/series/large").json()["length"] == 200
    finally:
        release.set()
        del model.append


@pytest.mark.parametrize("path", ["/series/append", "/forecast"])
def test_a_request_of_much_forecasting_does_not_hold_up_small_ones(loaded, path):
    """Forecast points count as work too: a request of few values but many forecasts (a bulk
    append naming one series twice, or a stateless forecast of two series, each 96 forecast
    points (horizon 48) on 64 values or fewer, over a limit of 64)
    runs on its own thread, so a small append goes on while it computes (through the batcher's
    one worker it would wait for the whole request; the wait would time out)."""
    model, manifest = loaded
    settings = replace(LIMITS, batch_window_ms=2.0, batch_max_points=64, max_points_per_request=500)
    release, big_started = threading.Event(), threading.Event()
    real_forecast = model.forecast

    def held(state, horizon, **kw):
        big_started.set()
        assert release.wait(30), "the small append never came through"
        return real_forecast(state, horizon, **kw)

    body = {"series": [{"id": "r", "values": series(40, 1)}, {"id": "r", "values": [1.0]}],
            "horizon": 48}
    if path == "/forecast":
        body["series"] = [{"id": "r", "values": series(32, 1)},
                          {"id": "s", "values": series(32, 3)}]  # 64 values, 96 forecast
    try:
        model.forecast = held
        with client_for(loaded, settings) as c:
            big: dict = {}
            t = threading.Thread(target=lambda: big.update(r=c.post(path, json=body)))
            t.start()
            assert big_started.wait(30)
            small = c.post("/series/small/append", json={"values": series(40, 2)})
            assert small.status_code == 200 and not release.is_set()  # answered meanwhile
            release.set()
            t.join(30)
            assert big["r"].status_code == 200, big["r"].text
            got = big["r"].json()
            means = [i["forecast"]["mean"] for i in got["series"]] if path != "/forecast" else \
                [f["mean"] for f in got["forecasts"]]
            assert [len(m) for m in means] == [48, 48]
    finally:
        release.set()
        del model.forecast


def test_large_requests_are_planned_off_the_event_loop(loaded, monkeypatch):
    """Checking and planning a large request's timestamps takes seconds (500,000 of them: about
    3 s): it runs in the thread pool, so the event loop goes on answering other clients. Small
    requests stay on the loop (no thread hop)."""
    import asyncio

    from service import timeline
    on_loop: list[bool] = []
    real = timeline.plan_append

    def recording(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(timeline, "plan_append", recording)
    settings = replace(LIMITS, batch_max_points=64, max_points_per_request=500, max_series=10)
    stamps = [f"2024-01-01T{h:02d}:{m:02d}:00Z" for h in range(24) for m in range(0, 60, 5)]
    with client_for(loaded, settings) as c:
        for n, expect_on_loop in ((64, True), (65, False)):
            on_loop.clear()
            body = {"values": series(n, 1), "timestamps": stamps[:n]}
            assert c.post(f"/series/p{n}/append", json=body).status_code == 200
            r = c.post("/series/append", json={"series": [{"id": f"q{n}", **body}]})
            assert r.status_code == 200
            r = c.post("/forecast", json={"series": [{"id": "f", **body}], "horizon": 4})
            assert r.status_code == 200
            assert on_loop == [expect_on_loop] * 3
        bad = {"values": series(65, 1), "timestamps": stamps[:64] + ["not a time"]}
        assert_error(c.post("/series/bad/append", json=bad), 422, "timestamps[64]")


# ---- the engine's batches ----------------------------------------------------------------------

def test_batch_isolates_rejected_requests_and_keeps_order(loaded):
    model, manifest = loaded
    batched = Engine(model, manifest, max_series=10, backend="torch")
    single = Engine(model, manifest, max_series=10, backend="torch")
    x = series(100, 5)
    requests = [
        [Op("a", x[:20])],
        [Op("a", x[20:33], horizon=8)],                 # a completes a patch: 33 points
        [Op("b", x[:10], horizon=4)],                   # rejected (too short): b not created
        [Op("c", x[:50]), Op("zz", None, horizon=3)],   # rejected whole (zz unknown): no c
        [Op("a", x[33:70]), Op("c", x[:40], horizon=5)],
        [Op("a", None, horizon=12)],                    # forecast after the appends before it
    ]
    out = batched.apply_batch(requests)
    assert isinstance(out[2], EngineError) and out[2].field == "horizon"
    assert isinstance(out[3], EngineError) and out[3].status == 404 and out[3].field == "id"
    want = [[single.append("a", x[:20], None)], [single.append("a", x[20:33], 8)], None, None,
            [single.append("a", x[33:70], None), single.append("c", x[:40], 5)],
            [single.forecast_series("a", 12)]]
    for got, expected in zip(out, want):
        if expected is not None:
            assert [g[0] for g in got] == [e[0] for e in expected]
            for (_, gm), (_, em) in zip(got, expected):
                assert (gm is None) == (em is None)
                if gm is not None:
                    assert rel_err(torch.tensor(gm), torch.tensor(em)) <= 1e-5
    assert batched.list_series(10) == [("a", 70), ("c", 40)]


def test_journal_records_replay_to_the_same_states(loaded, tmp_path):
    model, manifest = loaded
    engine = Engine(model, manifest, max_series=20, backend="torch")
    store = Store(tmp_path, engine, snapshot_interval_s=0)
    store.open()
    ids = [f"p{i}" for i in range(6)]
    logged = 0
    for step in range(4):
        requests = [[Op(i, series(13 + 7 * k + step, 31 * k + step))] for k, i in enumerate(ids)]
        requests.append([Op("p0", series(9, step)), Op("p1", [1.0, 2.0], horizon=5)])
        requests.append([Op("p2", [1.0]), Op("nope", None, horizon=5)])  # rejected whole: never logged
        outcomes = engine.apply_batch(requests)
        assert isinstance(outcomes[-1], EngineError)
        # p1 is too short to forecast at step 0 (22 points): that request is refused whole.
        assert isinstance(outcomes[-2], EngineError) == (step == 0)
        logged += sum(len(r) for r, o in zip(requests, outcomes) if not isinstance(o, EngineError))
    before = {i: engine.forecast_series(i, 24) for i in ids}
    store.close(snapshot=False)
    again = Engine(model, manifest, max_series=20, backend="torch")
    stats = Store(tmp_path, again, snapshot_interval_s=0).open()
    assert stats["replayed"] == logged == 6 + 3 * 8
    assert {i: again.forecast_series(i, 24) for i in ids} == before  # bit for bit


def test_triton_backend_batches_per_op():
    pytest.importorskip("kernels")  # sets TRITON_INTERPRET=1 without CUDA first
    model = tiny_model()
    engine = Engine(model, {"name": "tiny"}, 4, backend="triton", scratch_slots=3,
                    cuda_graphs=False)
    out = engine.apply_batch([[Op("a", walk(5, 1).tolist()), Op("b", walk(3, 2).tolist())],
                              [Op("c", walk(2, 3).tolist()), Op("d", [1.0]), Op("e", [1.0])],  # 5 > 4
                              [Op("a", walk(2, 4).tolist())]])
    assert [o[0] for o in out[0]] == [5, 3] and out[2][0][0] == 7
    assert isinstance(out[1], EngineError) and out[1].status == 409 and out[1].field == "id"
    assert engine.list_series(10) == [("a", 7), ("b", 3)]


# ---- a real server: batching on and off give the same forecasts --------------------------------

def _concurrent_appends(server: Server, ids: list[str], chunks: int, horizon: int) -> dict:
    """Each id's history in `chunks` appends from its own thread; the last forecast of each."""
    last = {}

    def work(k: int, sid: str) -> None:
        x = series(160, k)
        step = len(x) // chunks
        for j in range(chunks):
            hi = len(x) if j == chunks - 1 else (j + 1) * step
            r = server.client.post(f"/series/{sid}/append",
                                   json={"values": x[j * step:hi], "horizon": horizon}
                                   if hi >= 32 else {"values": x[j * step:hi]})
            assert r.status_code == 200, r.text
        last[sid] = r.json()["forecast"]["mean"]

    threads = [threading.Thread(target=work, args=(k, sid)) for k, sid in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return last


@pytest.mark.slow
def test_batching_on_and_off_agree_on_a_real_server():
    ids = [f"m{k}" for k in range(12)]
    results = {}
    for window in ("0", "5"):
        server = Server("--batch-window-ms", window)
        try:
            results[window] = _concurrent_appends(server, ids, chunks=5, horizon=16)
            if window != "0":
                metrics = server.client.get("/metrics").text
                batches = value(metrics, "rimer_batch_requests_count")
                assert batches and value(metrics, "rimer_batch_requests_sum") > batches  # coalesced
            streamed = {i: server.client.get(f"/series/{i}/forecast", params={"horizon": 16}).json()
                        for i in ids}
            whole = server.client.post("/forecast", json={
                "series": [{"id": i, "values": series(160, k)} for k, i in enumerate(ids)],
                "horizon": 16}).json()["forecasts"]
        finally:
            server.stop()
        for k, i in enumerate(ids):
            assert streamed[i]["mean"] == results[window][i]
            assert rel_err(torch.tensor(results[window][i]), torch.tensor(whole[k]["mean"])) <= 1e-4
    for i in ids:  # CPU matrix products round differently with the batch size: not bit for bit
        assert rel_err(torch.tensor(results["5"][i]), torch.tensor(results["0"][i])) <= 1e-5


def test_appends_that_complete_no_patch_wait_for_one(loaded):
    """Points that complete no patch are only copied into the tail: the engine defers them (no
    model call) until a patch completes or a forecast needs them, with the same result."""
    model, manifest = loaded
    engine = Engine(model, manifest, max_series=5, backend="torch")
    calls = []
    real_append = model.append

    def counting(state, values):
        calls.append((state.batch, max(map(len, values))))
        return real_append(state, values)

    x = series(100, 7)
    try:
        model.append = counting
        for k in range(31):
            engine.append("d", x[k:k + 1], None)
        assert calls == [] and engine.describe("d")["length"] == 31
        engine.apply_batch([[Op("d", x[31:33])]])  # completes the first patch: one call
        assert calls == [(1, 33)]  # (the 31 points waiting and these 2)
        for k in range(33, 63):
            engine.apply_batch([[Op("d", x[k:k + 1])]])
        assert calls == [(1, 33)]
        got = engine.forecast_series("d", 12)  # folds the 30 pending points first: a copy into
        # the tail (RimerState.extend_tail), with no model call; the forecast from inside the
        # patch then starts afresh over the last 32 points (Rimer.forecast): that one call
        assert calls == [(1, 33), (1, 32)]
    finally:
        del model.append
    reference = model.append(model.init_state([torch.tensor(x[:63])]), [torch.tensor(x[:63])])
    expected = model.forecast(reference, 12)[0].tolist()
    assert got[0] == 63 and rel_err(torch.tensor(got[1]), torch.tensor(expected)) <= 1e-5


def test_concurrent_stateless_forecasts_share_one_engine_call():
    """`POST /forecast`s waiting together run as one `forecast_histories` per horizon; on the
    onnx backend each answer is the same bits as the request alone. A group that holds a bad
    request is answered request by request: the bad one gets its own error (naming its own item),
    the others their forecasts."""
    import asyncio

    from service.scheduler import Scheduler

    e = Engine.load(str(DEFAULT_WEIGHTS), "cpu", 10, "onnx")
    alone = e.forecast_histories
    calls, gate = [], threading.Event()

    def counted(histories, horizon):
        calls.append((len(histories), horizon))
        if len(calls) == 1:
            gate.wait(10)  # hold the worker until the others are queued
        return alone(histories, horizon)

    e.forecast_histories = counted
    scheduler = Scheduler(e, window_ms=20, max_batch=64)
    xs = [series(300 + 41 * i, 50 + i) for i in range(5)]
    asks = [([xs[1]], 24), ([xs[2], xs[3]], 24), ([xs[4]], 24),  # one call of 4 series
            ([xs[0]], 12), ([xs[1][:5]], 12)]  # too short: the horizon-12 group splits

    async def run():
        first = asyncio.create_task(scheduler.forecast([xs[0]], 24))
        while not calls:
            await asyncio.sleep(0.01)
        rest = [asyncio.create_task(scheduler.forecast(h, n)) for h, n in asks]
        await asyncio.sleep(0.1)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    try:
        got = asyncio.run(run())
    finally:
        scheduler.close()
    assert calls[0] == (1, 24) and (4, 24) in calls and (2, 12) in calls
    assert (1, 12) in calls  # (the split group's good request, alone)
    assert got[0] == alone([xs[0]], 24)
    for (histories, horizon), answer in zip(asks[:4], got[1:5]):
        assert answer == alone(histories, horizon)
    bad = got[5]
    assert isinstance(bad, EngineError) and bad.status == 422 and bad.field == "series[0].values"

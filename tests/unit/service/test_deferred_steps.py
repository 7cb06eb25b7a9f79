"""Deferred steps (service/engine/resident_defer.py): a columnar bulk ingest answered before the
patches it completes are stepped, the steps taken later by the batcher's worker or by whatever
reads the state first. Nothing a client or the log can see may differ: the same forecasts and
states, bit for bit, as stepping at once; the same log records, and a replay that agrees."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine import Engine
from service.engine.resident_defer import MAX_GROUPS
from service.settings import Settings
from service.store import Store
from tests.conftest import DEFAULT_WEIGHTS
from tests.helpers import series

P = 32  # the default model's patch


def onnx_engine(**cache) -> Engine:
    return Engine.load(str(DEFAULT_WEIGHTS), "cpu", 50, backend="onnx", **cache)


def workload(n: int, seed: int):
    """Columnar requests: a start, then runs of 1, 21 and 41 points per series (41 completes one
    or two patches) and one of 600 (more patches than the chunk graph takes: stepped at once)."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" for i in range(n)]
    start = [series(40 + 7 * i, i) for i in range(n)]
    out = [(ids, start)]
    for r in range(40):
        k = 600 if r == 25 else (1, 21, 41)[r % 3]
        order = ids if r % 4 else ids[::-1]
        out.append((order, [list(100 + np.cumsum(rng.normal(0, 1, k))) for _ in order]))
    return out


def run(e: Engine, requests, settle_every: int = 0) -> int:
    """Apply the requests; settle a few series every `settle_every` requests (as the worker
    would between them); the most groups any series held at once."""
    most = 0
    for r, (ids, runs) in enumerate(requests):
        bounds = np.cumsum([0] + [len(v) for v in runs]).tolist()
        e.append_columns(list(ids), bounds, np.array([x for v in runs for x in v]),
                         [{"last": v[-1]} for v in runs])
        most = max([most] + [len(x.deferred) for x in e.store.series.values()])
        if settle_every and r % settle_every == 0:
            e.settle_some(3)
    return most


def exported(e: Engine) -> dict[str, dict[str, torch.Tensor]]:
    ids, chunks, _ = e.export_states()
    with chunks:
        rows = [c.select([b]).tensors() for c in chunks for b in range(c.batch)]
    return dict(zip(ids, rows))


def assert_same(a: Engine, b: Engine, ids) -> None:
    sa, sb = exported(a), exported(b)
    assert sorted(sa) == sorted(sb)
    for sid in ids:
        assert all(torch.equal(sa[sid][k], sb[sid][k]) for k in sa[sid] if sa[sid][k] is not None), sid
    for sid in ids:
        assert a.forecast_series(sid, 40) == b.forecast_series(sid, 40), sid


@pytest.mark.parametrize("settle_every", [0, 2])
def test_deferred_steps_change_no_bit_of_states_forecasts_or_log(tmp_path, settle_every):
    requests = workload(6, 1)
    ids = requests[0][0]
    engines, dirs = {}, {}
    for defer in (False, True):
        e = engines[defer] = onnx_engine()
        assert e.defer_steps() if defer else e.batch_invariant  # (the probe passes here)
        dirs[defer] = tmp_path / str(defer)
        store = Store(dirs[defer], e, snapshot_interval_s=0)
        store.open()
        most = run(e, requests, settle_every)
        if defer:
            assert 1 <= most <= MAX_GROUPS  # used, and bounded
            assert e.store.deferred_ids  # (some still wait: the export and forecasts take them)
        else:
            assert most == 0
        store.close(snapshot=False)
    logs = {d: b"".join(p.read_bytes() for p in sorted(dirs[d].glob("wal-*.log"))) for d in dirs}
    assert logs[True] == logs[False]
    assert_same(engines[False], engines[True], ids)
    again = onnx_engine()  # the log replayed (one append at a time) gives the same bits
    store = Store(dirs[True], again, snapshot_interval_s=0)
    store.open()
    assert_same(again, engines[True], ids)
    store.close(snapshot=False)


def test_deferred_steps_with_spilled_states(tmp_path):
    """States spilled with steps waiting take them first (a spill file holds a settled state)."""
    requests = workload(5, 2)
    ids = requests[0][0]
    plain = onnx_engine()
    run(plain, requests)
    e = onnx_engine(capacity=2, host_capacity=1, spill_dir=str(tmp_path))
    assert e.defer_steps()
    for order, runs in requests:  # in two parts: the first part's states spill
        for part in (slice(0, 3), slice(3, None)):
            sub = list(order[part])
            vals = runs[part]
            bounds = np.cumsum([0] + [len(v) for v in vals]).tolist()
            e.append_columns(sub, bounds, np.array([x for v in vals for x in v]),
                             [{"last": v[-1]} for v in vals])
    assert e.cache_stats["misses"] > 0
    assert_same(plain, e, ids)


def test_the_worker_takes_deferred_steps_between_requests():
    """Served: a bulk ingest answers before its steps; the batcher's worker takes them while no
    request waits, and a forecast after it equals one from an engine that stepped at once."""
    requests = workload(4, 3)[:8]
    ids = requests[0][0]
    plain = onnx_engine()
    run(plain, requests)
    e = onnx_engine()
    with TestClient(create_app(Settings(batch_window_ms=2.0), e)) as c:
        for order, runs in requests:
            offsets = np.cumsum([0] + [len(v) for v in runs[:-1]]).tolist()
            body = {"ids": list(order), "offsets": offsets, "values": [x for v in runs for x in v]}
            assert c.post("/series/append", json=body).status_code == 200
        deadline = time.monotonic() + 30
        while e.store.deferred_ids and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not e.store.deferred_ids
        text = c.get("/metrics").text
        assert "rimer_series_steps_deferred 0.0" in text
        taken = re.search(r'rimer_model_step_seconds_count\{op="deferred"\} (\S+)', text)
        assert taken and float(taken.group(1)) >= 1
        for sid in ids:
            got = c.get(f"/series/{sid}/forecast", params={"horizon": 40}).json()
            assert got["mean"] == plain.forecast_series(sid, 40)[1]


def test_the_points_waiting_are_bounded_in_all_and_counted_back(monkeypatch):
    """Past the store's budget of waiting points a request's series step at once; the count
    comes back to 0 when they are stepped or deleted; the bits are the same either way."""
    from service.engine import resident_defer

    monkeypatch.setattr(resident_defer, "MAX_POINTS", 3 * P)
    requests = workload(6, 4)
    ids = requests[0][0]
    plain = onnx_engine()
    run(plain, requests[:12])
    e = onnx_engine()
    assert e.defer_steps()
    most = 0
    for order, runs in requests[:12]:
        bounds = np.cumsum([0] + [len(v) for v in runs]).tolist()
        e.append_columns(list(order), bounds, np.array([x for v in runs for x in v]),
                         [{"last": v[-1]} for v in runs])
        held = sum(len(g) for x in e.store.series.values() for g in x.deferred)
        assert e.store.deferred_points == held <= 3 * P
        most = max(most, held)
    assert most > 0
    e.delete(ids[0])
    plain.delete(ids[0])
    assert e.store.deferred_points == sum(len(g) for x in e.store.series.values() for g in x.deferred)
    assert_same(plain, e, ids[1:])
    assert e.store.deferred_points == 0 and not e.store.deferred_ids

"""Durability (--data-dir): the write-ahead log, snapshots and recovery, with real files; the
crash tests kill -9 a real server and restart it on the same directory."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from model import checkpoint
from service import snapshots as snapshot_module
from service import store as store_module
from service.engine import Engine, EngineError
from service.metrics import Metrics
from service.settings import parse
from service.store import HEADER_SIZE, Store, StoreError
from service.wal import WAL_NAME, wal_path
from tests.conftest import DEFAULT_NAME, DEFAULT_WEIGHTS, ROOT, Server
from tests.helpers import series, value


@pytest.fixture(scope="module")
def loaded():
    return checkpoint.load(DEFAULT_WEIGHTS)


def new_engine(loaded, backend: str = "torch", manifest: dict | None = None) -> Engine:
    model, shipped = loaded
    return Engine(model, manifest or shipped, max_series=50, backend=backend)


def open_store(directory: Path, engine: Engine, **kw) -> Store:
    s = Store(directory, engine, snapshot_interval_s=0, **kw)
    s.open()
    return s


def fill(engine: Engine, rng: random.Random, ids: list[str], appends: int) -> dict[str, int]:
    totals: dict[str, int] = {}
    for _ in range(appends):
        sid = rng.choice(ids)
        values = series(rng.randint(1, 40), rng.randint(0, 10**6))
        totals[sid] = engine.append(sid, values, None)[0]
    return totals


def forecasts(engine: Engine, ids) -> dict[str, tuple[int, list[float]]]:
    return {i: engine.forecast_series(i, 24) for i in ids}


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def assert_recovers(loaded, directory: Path, store: Store, before: dict) -> None:
    """`store` closed as a crash leaves it (no last snapshot) and started again: every series
    of `before` forecasts as it did."""
    store.close(snapshot=False)
    again = new_engine(loaded)
    reopened = open_store(directory, again)
    try:
        assert forecasts(again, list(before)) == before
    finally:
        reopened.close()


def test_snapshot_then_log_recovers_exactly(loaded, tmp_path):
    rng, ids = random.Random(1), [f"s{i}" for i in range(5)]
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    fill(engine, rng, ids, 30)
    engine.delete("s4")
    snap = store.snapshot()
    assert snap is not None and store.snapshot() is None  # nothing new: no second file
    fill(engine, rng, ids[:3], 12)
    engine.append("s4", series(50, 9), None)  # recreated after the snapshot
    engine.delete("s3")
    before = forecasts(engine, ["s0", "s1", "s2", "s4"])
    store.close(snapshot=False)  # as after a crash: the snapshot plus 14 records of log

    again = new_engine(loaded)
    store2 = Store(tmp_path, again, snapshot_interval_s=0)
    stats = store2.open()
    assert stats == {"restored": 4, "replayed": 14, "seconds": stats["seconds"]}
    assert forecasts(again, before) == before
    with pytest.raises(EngineError):
        again.describe("s3")
    store2.close()  # clean shutdown: a snapshot, and the log it covers is gone
    assert [p.stat().st_size for p in segments(tmp_path)] == [HEADER_SIZE]
    third = new_engine(loaded)
    store3 = Store(tmp_path, third, snapshot_interval_s=0)
    assert store3.open()["replayed"] == 0
    assert forecasts(third, before) == before
    store3.close()


def test_single_tail_appends_log_and_apply_as_the_batch_path_does(loaded, tmp_path, monkeypatch):
    """The store's lane for one append that completes no patch (service/engine/resident_tail.py)
    against the batch path on the same appends: the same lengths, states, metadata, and the same
    log bytes; and the lane's log recovers the same series."""
    from service.engine import resident_tail

    taken = []
    lane = resident_tail.tail_append

    def counted(store, op):
        out = lane(store, op)
        taken.append(out is not None)
        return out

    monkeypatch.setattr("service.engine.resident.tail_append", counted)
    engines, stores = {}, {}
    for name in ("lane", "batch"):
        engines[name] = new_engine(loaded)
        stores[name] = open_store(tmp_path / name, engines[name])
    batch = engines["batch"].store
    monkeypatch.setattr(batch, "apply", batch._apply_locked)  # (an instance's own: no lane)
    rng = random.Random(5)
    for k in range(300):
        sid = f"s{rng.randrange(3)}"
        values = series(rng.choice([1, 1, 1, 2, 5, 33]), k)
        meta = {"last": values[-1]} if k % 3 else None
        for e in engines.values():
            e.append(sid, values, None, meta)
    assert sum(taken) > 150 and not all(taken)  # (the lane took most; patches took the batch path)
    lane_e, batch_e = engines["lane"], engines["batch"]
    assert lane_e.meta == batch_e.meta
    for sid in ("s0", "s1", "s2"):
        assert lane_e.describe(sid) == batch_e.describe(sid)
        a, b = lane_e.store.state_of(sid).tensors(), batch_e.store.state_of(sid).tensors()
        assert a.keys() == b.keys() and all(torch.equal(a[f], b[f]) for f in a)
    want = forecasts(lane_e, ["s0", "s1", "s2"])
    for store in stores.values():
        store.close(snapshot=False)
    logs = {name: [p.read_bytes() for p in segments(tmp_path / name)] for name in stores}
    assert logs["lane"] == logs["batch"]
    again = new_engine(loaded)
    store = Store(tmp_path / "lane", again, snapshot_interval_s=0)
    store.open()
    assert forecasts(again, want) == want
    store.close()


def test_torn_last_record_is_dropped_with_a_warning(loaded, tmp_path, caplog):
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    engine.append("a", series(40, 1), None)
    engine.append("b", series(70, 2), None)
    engine.append("a", series(9, 3), None)  # to be torn
    store.close(snapshot=False)
    wal = segments(tmp_path)[-1]
    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size - 5)

    again = new_engine(loaded)
    with caplog.at_level(logging.WARNING, logger="rimer.store"):
        store2 = open_store(tmp_path, again)
    assert any("torn last record" in r.message and wal.name in r.getMessage() for r in caplog.records)
    assert again.describe("a")["length"] == 40 and again.describe("b")["length"] == 70
    again.append("a", series(5, 4), None)  # the log goes on in a new segment
    store2.close(snapshot=False)
    third = new_engine(loaded)
    open_store(tmp_path, third).close(snapshot=False)
    assert third.describe("a")["length"] == 45


def test_corrupt_record_mid_log_is_an_error(loaded, tmp_path):
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    for k in range(3):
        engine.append("a", series(10, k), None)
    store.close(snapshot=False)
    wal = segments(tmp_path)[-1]
    data = bytearray(wal.read_bytes())
    data[HEADER_SIZE + 30] ^= 0x01  # inside the first record's values
    wal.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"{wal.name}: corrupt record at byte {HEADER_SIZE} "
                                          r"\(CRC mismatch\)"):
        open_store(tmp_path, new_engine(loaded))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_snapshot_is_an_error(loaded, tmp_path, damage):
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    engine.append("a", series(100, 1), None)
    store.close()  # a snapshot
    snap = next(tmp_path.glob("snapshot-*.safetensors"))
    data = bytearray(snap.read_bytes())
    if damage == "flip":
        data[-100] ^= 0x10  # a tensor byte
    else:
        data = data[: len(data) // 2]
    snap.write_bytes(bytes(data))
    expected = "corrupt: its content's sha256" if damage == "flip" else "corrupt or truncated"
    with pytest.raises(StoreError, match=rf"snapshot {snap}.*{expected}.*refusing to start"):
        open_store(tmp_path, new_engine(loaded))


def test_failing_snapshots_leave_no_empty_segments_and_log_one_line(loaded, tmp_path,
                                                                    monkeypatch, caplog):
    """Snapshots that keep failing (a full disk) rotated the log every try, leaving an empty
    segment each time and a traceback in the log: now the empty segment is the next one, the
    failure is one line, and once a snapshot succeeds recovery is exact."""
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    engine.append("a", series(40, 1), None)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "write_snapshot", full)
    with caplog.at_level(logging.ERROR, logger="rimer.store"):
        for _ in range(4):
            store._snapshot_quietly()
    assert len(segments(tmp_path)) == 2  # the first (one record) and one empty, not five
    failures = [r for r in caplog.records if "snapshot failed" in r.getMessage()]
    assert len(failures) == 4 and not any(r.exc_info for r in failures)
    assert "No space left on device" in failures[0].getMessage()
    engine.append("a", series(8, 2), None)
    caplog.clear()
    store2_probe = open_store(tmp_path / "probe", new_engine(loaded))  # (a clean stop, disk full)
    store2_probe.engine.append("p", series(8, 1), None)
    with caplog.at_level(logging.ERROR, logger="rimer.store"):
        store2_probe.close()
    shutdown = [r for r in caplog.records if "shutdown snapshot failed" in r.getMessage()]
    assert len(shutdown) == 1 and not shutdown[0].exc_info
    monkeypatch.undo()
    assert store.snapshot() is not None
    engine.append("b", series(33, 3), None)
    assert_recovers(loaded, tmp_path, store, forecasts(engine, ["a", "b"]))


def test_a_failed_rotation_keeps_the_log_on_its_segment(loaded, tmp_path, monkeypatch, caplog):
    """A snapshot whose next log segment could not be made (a full disk, a read-only directory)
    closed the current segment first: later records went to a closed descriptor, whatever file
    or socket had reused its number. Now the log goes on in its segment, the half-made one is
    removed, the failure is one line, and every later change recovers."""
    from service import wal as wal_module

    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    engine.append("a", series(40, 1), None)
    [first] = segments(tmp_path)

    def full(directory):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wal_module, "_fsync_dir", full)  # (after the new segment's header)
    with caplog.at_level(logging.ERROR, logger="rimer.store"):
        store._snapshot_quietly()
    [failure] = [r for r in caplog.records if "snapshot failed" in r.getMessage()]
    assert not failure.exc_info and segments(tmp_path) == [first]  # the new one removed
    size = first.stat().st_size
    engine.append("a", series(8, 2), None)  # written to the log's own segment, and synced
    engine.append("b", series(33, 3), None)
    assert first.stat().st_size > size and store.wal.broken is None
    monkeypatch.undo()
    wal_path(tmp_path, store.wal.segment + 1).write_bytes(b"RIM")
    assert store.snapshot() is not None  # (a header-torn leftover of the next number replaced)
    engine.append("b", series(5, 4), None)
    assert_recovers(loaded, tmp_path, store, forecasts(engine, ["a", "b"]))


def test_segments_with_torn_headers_hold_nothing_wherever_they_are(loaded, tmp_path, caplog):
    """A segment shorter than its header (a crash or a full disk while it was made) holds no
    records. One at the end was dropped at start-up; several (failing snapshot tries of an
    earlier build) refused the start: now each is an empty segment, the last removed, the others
    made whole so that the numbers stay consecutive, and the next starts recover too."""
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    engine.append("a", series(40, 1), None)
    before = forecasts(engine, ["a"])
    store.close(snapshot=False)
    [wal] = segments(tmp_path)
    number = int(WAL_NAME.match(wal.name)[1])
    for k, junk in ((1, b""), (2, b"RIMERWAL\x04"), (3, b"")):
        wal_path(tmp_path, number + k).write_bytes(junk)
    for _ in range(2):  # (and again: nothing left that a start refuses)
        again = new_engine(loaded)
        with caplog.at_level(logging.WARNING, logger="rimer.store"):
            store2 = open_store(tmp_path, again)
        try:
            assert forecasts(again, ["a"]) == before
            again.append("a", series(3, 2), None)
            before = forecasts(again, ["a"])
        finally:
            store2.close(snapshot=False)
    assert any("header was never written" in r.getMessage() for r in caplog.records)
    assert all(p.stat().st_size >= HEADER_SIZE for p in segments(tmp_path))


def test_restarts_without_changes_add_no_empty_segments(loaded, tmp_path):
    """A clean stop leaves one snapshot and an empty log segment (a backup is those and
    MODEL.json); each restart without changes added one more empty segment: now a start whose
    last segment holds no records writes on in it."""
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    engine.append("a", series(40, 1), None)
    store.close()
    [only] = segments(tmp_path)
    for _ in range(3):
        again = new_engine(loaded)
        open_store(tmp_path, again).close()
        assert segments(tmp_path) == [only] and only.stat().st_size == HEADER_SIZE
    again = new_engine(loaded)
    store = open_store(tmp_path, again)
    again.append("a", series(7, 2), None)
    assert segments(tmp_path) == [only] and only.stat().st_size > HEADER_SIZE  # (written there)
    assert_recovers(loaded, tmp_path, store, forecasts(again, ["a"]))


def test_no_snapshot_tries_once_the_log_failed(loaded, tmp_path, caplog):
    """Once the log failed (changes refused until a restart), every periodic snapshot logged a
    traceback of the refusal and counted a failure, for ever: now they wait for the restart."""
    engine = new_engine(loaded)
    store = Store(tmp_path, engine, snapshot_interval_s=0)
    store.metrics = metrics = Metrics(lambda: engine, lambda: store)
    store.open()
    engine.append("a", series(40, 1), None)
    store.wal.fail("fsync: test")
    with caplog.at_level(logging.ERROR, logger="rimer.store"):
        for _ in range(3):
            store._snapshot_quietly()
    assert not [r for r in caplog.records if "snapshot failed" in r.getMessage() or r.exc_info]
    assert value(metrics.exposition()[0].decode(), "rimer_snapshot_failures_total") == 0
    store.close()


def test_snapshot_of_another_model_or_state_version_is_refused(loaded, tmp_path, monkeypatch):
    """The snapshot's own check, for a directory from before MODEL.json (moved aside here)."""
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    engine.append("a", series(40, 1), None)
    store.close()
    (tmp_path / "MODEL.json").unlink()
    other = new_engine(loaded, manifest={"name": "retrained", "sha256": {"model.safetensors": "0"}})
    with pytest.raises(StoreError, match=rf"written by model '{DEFAULT_NAME}'.*loaded 'retrained'"):
        open_store(tmp_path, other)
    assert not (tmp_path / "MODEL.json").exists()  # (a refused start names no model)
    monkeypatch.setattr(snapshot_module, "STATE_VERSION", 99)
    monkeypatch.setattr(store_module, "STATE_VERSION", 99)
    with pytest.raises(StoreError, match=r"STATE_VERSION 2, this build uses 99"):
        open_store(tmp_path, new_engine(loaded))


def test_another_model_is_refused_before_the_first_snapshot_too(loaded, tmp_path, monkeypatch):
    """A directory that crashed before its first snapshot holds only log records, which carry
    no model: a restart with other weights replayed them under it without a word, while the
    same directory stopped cleanly (with a snapshot) refused them. MODEL.json makes both refuse,
    naming the file and both models; the right model still recovers everything."""
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    engine.append("a", series(40, 1), None)
    before = forecasts(engine, ["a"])
    store.close(snapshot=False)  # (as a kill -9 before the first snapshot)
    assert not list(tmp_path.glob("snapshot-*")) and (tmp_path / "MODEL.json").stat().st_mode & 0o077 == 0
    other = new_engine(loaded, manifest={"name": "retrained", "sha256": {"model.safetensors": "0"}})
    with pytest.raises(StoreError, match=r"MODEL\.json: the directory's series belong to model "
                                         rf"'{DEFAULT_NAME}'.*loaded 'retrained'"):
        open_store(tmp_path, other)
    monkeypatch.setattr(store_module, "STATE_VERSION", 99)
    with pytest.raises(StoreError, match=r"MODEL\.json: .*STATE_VERSION 2, this build uses 99"):
        open_store(tmp_path, new_engine(loaded))
    monkeypatch.undo()
    again = new_engine(loaded)
    store2 = open_store(tmp_path, again)
    try:
        assert forecasts(again, ["a"]) == before
    finally:
        store2.close()
    (tmp_path / "MODEL.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"MODEL\.json cannot be read"):
        open_store(tmp_path, new_engine(loaded))


def test_durability_flags():
    s = parse(["--data-dir", "/tmp/x", "--fsync", "interval", "--fsync-interval-ms", "5",
               "--snapshot-interval-s", "0.5"])
    assert (s.data_dir, s.fsync, s.fsync_interval_ms, s.snapshot_interval_s) == ("/tmp/x", "interval",
                                                                                 5, 0.5)
    assert parse([]).data_dir == "" and parse([]).fsync == "always"
    for bad in (["--fsync", "sometimes"], ["--fsync-interval-ms", "0"], ["--snapshot-interval-s", "-1"]):
        with pytest.raises(SystemExit):
            parse(bad)


def test_data_dir_is_locked(loaded, tmp_path):
    store = open_store(tmp_path, new_engine(loaded))
    with pytest.raises(StoreError, match="in use by another process"):
        open_store(tmp_path, new_engine(loaded))
    store.close()


@pytest.mark.slow
def test_triton_backend_exports_and_imports_states(tmp_path):
    """The slot pool's export/import (the triton backend, Triton's interpreter on the CPU) agrees
    with the torch backend, through a snapshot and a log replayed in either backend."""
    from tests.helpers import DEVICE, MANIFEST, tiny_model, walk

    model = tiny_model().to(DEVICE)  # on a GPU the pool's one-patch appends replay CUDA graphs
    pool = Engine(model, MANIFEST, 4, backend="triton", scratch_slots=2)
    store = open_store(tmp_path, pool)
    pool.append("a", walk(19, 1).tolist(), None)
    pool.append("b", walk(11, 2).tolist(), None)
    store.snapshot()
    pool.append("a", walk(6, 3).tolist(), None)
    pool.delete("b")
    pool.append("c", walk(9, 4).tolist(), None)
    want = {i: pool.forecast_series(i, 5) for i in ("a", "c")}
    store.close(snapshot=False)
    for backend in ("torch", "triton"):
        engine = Engine(model, MANIFEST, 4, backend=backend, scratch_slots=2)
        restored = open_store(tmp_path, engine)
        got = {i: engine.forecast_series(i, 5) for i in ("a", "c")}
        assert engine.series_held == 2
        for i in want:
            assert got[i][0] == want[i][0]
            torch.testing.assert_close(torch.tensor(got[i][1]), torch.tensor(want[i][1]),
                                       rtol=1e-4, atol=1e-5)
        if backend == "triton":  # the log replayed in batches: the same bits as appended live
            assert engine.batch_invariant and got == want
        restored.close(snapshot=False)


# ---- a real server, killed ------------------------------------------------------------------

def append_from_threads(server: Server, ids: list[str], threads: int, per_thread: int) -> dict:
    """Appends from several threads; the acknowledged total per series."""
    acked = {i: 0 for i in ids}
    lock = threading.Lock()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(per_thread):
            sid, n = rng.choice(ids), rng.randint(1, 45)
            r = server.client.post(f"/series/{sid}/append",
                                   json={"values": series(n, rng.randint(0, 10**6))})
            assert r.status_code == 200, r.text
            with lock:
                acked[sid] += n

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return acked


def state_of(server: Server, ids) -> dict:
    out = {}
    for i in ids:
        length = server.client.get(f"/series/{i}").json()["length"]
        # (the default predicts quantiles: its calibrated intervals must come back too)
        r = server.client.get(f"/series/{i}/forecast",
                              params=[("horizon", 24), ("level", 80), ("level", 95)])
        out[i] = (length, (r.json()["mean"], r.json()["intervals"]) if length >= 32 else None)
    return out


def kill(server: Server) -> None:
    server.proc.kill()
    server.proc.wait(10)


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_append(tmp_path):
    ids = [f"plant-{k}.load" for k in range(5)]
    server = Server("--data-dir", str(tmp_path), "--snapshot-interval-s", "0")
    try:
        assert server.client.post("/series/gone/append", json={"values": [1.0]}).status_code == 200
        assert server.client.delete("/series/gone").status_code == 204
        acked = append_from_threads(server, ids, threads=4, per_thread=15)
        before = state_of(server, ids)
        assert {i: length for i, (length, _) in before.items()} == acked
    finally:
        kill(server)
    assert not list(tmp_path.glob("snapshot-*"))  # all of it from the log
    server = Server("--data-dir", str(tmp_path), "--snapshot-interval-s", "0")
    try:
        assert server.client.get("/readyz").status_code == 200
        assert state_of(server, ids) == before
        assert server.client.get("/series/gone").status_code == 404
        metrics = server.client.get("/metrics").text
        assert value(metrics, "rimer_recovery_records_replayed") == 62
    finally:
        kill(server)


@pytest.mark.slow
def test_kill_9_mid_flight(tmp_path):
    """Killed while appends are in flight: each series holds every acknowledged append, and at
    most the one in flight besides (sent, maybe logged, never acknowledged)."""
    ids = [f"t{k}" for k in range(3)]
    acked, in_flight, stop = dict.fromkeys(ids, 0), dict.fromkeys(ids, 0), threading.Event()
    server = Server("--data-dir", str(tmp_path), "--snapshot-interval-s", "0.3")

    def work(k: int) -> None:
        rng, sid = random.Random(k), ids[k]
        while not stop.is_set():
            in_flight[sid] = n = rng.randint(1, 45)
            try:
                r = server.client.post(f"/series/{sid}/append", json={"values": series(n, k)})
            except Exception:
                return  # the server is gone
            if r.status_code != 200:
                return
            acked[sid], in_flight[sid] = acked[sid] + n, 0

    workers = [threading.Thread(target=work, args=(k,)) for k in range(len(ids))]
    try:
        for t in workers:
            t.start()
        time.sleep(2.0)
    finally:
        kill(server)
        stop.set()
        for t in workers:
            t.join()
    assert all(acked.values())
    server = Server("--data-dir", str(tmp_path), "--snapshot-interval-s", "0")
    try:
        for sid in ids:
            length = server.client.get(f"/series/{sid}").json()["length"]
            assert length in (acked[sid], acked[sid] + in_flight[sid]), (sid, length, acked, in_flight)
    finally:
        kill(server)


@pytest.mark.slow
def test_kill_9_after_a_periodic_snapshot(tmp_path):
    ids = ["a", "b", "c"]
    server = Server("--data-dir", str(tmp_path), "--snapshot-interval-s", "0.5",
                    "--fsync", "interval", "--fsync-interval-ms", "20")
    try:
        append_from_threads(server, ids, threads=2, per_thread=6)
        deadline = time.time() + 30
        while not value(server.client.get("/metrics").text, "rimer_snapshot_duration_seconds_count"):
            assert time.time() < deadline, "no snapshot in 30 s"
            time.sleep(0.1)
        append_from_threads(server, ids, threads=2, per_thread=6)
        before = state_of(server, ids)
    finally:
        kill(server)
    server = Server("--data-dir", str(tmp_path))
    try:
        assert state_of(server, ids) == before
        assert value(server.client.get("/metrics").text, "rimer_recovery_records_replayed") < 24
    finally:
        server.stop()  # SIGTERM, a clean shutdown: a last snapshot covers everything
    assert [p.stat().st_size for p in segments(tmp_path)] == [HEADER_SIZE]
    assert len(list(tmp_path.glob("snapshot-*.safetensors"))) == 1


@pytest.mark.slow
def test_server_refuses_to_start_on_a_corrupt_snapshot(loaded, tmp_path):
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine)
    engine.append("a", series(40, 1), None)
    store.close()
    snap = next(tmp_path.glob("snapshot-*.safetensors"))
    data = bytearray(snap.read_bytes())
    data[-7] ^= 0xFF
    snap.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "service", "--device", "cpu", "--port", "0",
                           "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert f"snapshot {snap} is corrupt" in proc.stdout + proc.stderr


def test_log_lag_metrics(loaded, tmp_path):
    engine = new_engine(loaded)
    store = open_store(tmp_path, engine, fsync="interval", fsync_interval_ms=600_000)
    metrics = Metrics(lambda: engine, lambda: store)
    try:
        for k in range(3):
            engine.append("lag", series(10, k), None)
        text = metrics.exposition()[0].decode()
        assert value(text, "rimer_wal_unsynced_records") == 3  # the 10-minute fsync is ahead
        assert value(text, "rimer_wal_records_since_snapshot") == 3
        store.wal.flush()
        store.snapshot(force=True)
        text = metrics.exposition()[0].decode()
        assert value(text, "rimer_wal_unsynced_records") == 0
        assert value(text, "rimer_wal_records_since_snapshot") == 0
    finally:
        store.close(snapshot=False)


def test_bench_recovery_replays_both_ways_bit_identically(tmp_path):
    """bench/recovery.py's two replays (batched, one at a time) of a small bulk-ingest log both
    rebuild every sampled forecast bit for bit, and its JSON says so."""
    from bench import recovery

    out = tmp_path / "recovery.json"
    result = recovery.main(["--series", "20", "--rounds", "6", "--reps", "1", "--out", str(out)])
    assert result["records"] == 20 * 7
    for runs in result["runs"].values():
        assert [r["forecasts_bit_identical"] for r in runs] == [True]
    assert json.loads(out.read_text())["speedup"] == result["speedup"]

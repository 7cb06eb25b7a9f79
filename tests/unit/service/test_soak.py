"""Memory under spilling and snapshots (issue 26): reading spill files leaks nothing; a snapshot
streams its states to the file a chunk at a time, from what was taken at its cut, and recovery
from it is bit-identical, spilled series included. The long run: bench/soak.py."""

from __future__ import annotations

import gc
import hashlib
import random
import tracemalloc
import weakref

import torch

from model.state import RimerState
from service.cache import SpillTiers
from service.engine import Engine, ops
from service.store import Store
from tests.helpers import series, tiny_model

MANIFEST = {"name": "tiny"}


def test_spill_cycles_grow_nothing(tmp_path):
    """Take and put back through the disk tier many times: the spill tier's Python allocations stay flat (the
    spill files were read with safetensors' safe_open, whose get_tensor leaked on every read),
    and the directory holds exactly the disk tier's files."""
    cfg = tiny_model().cfg
    tiers = SpillTiers(0, tmp_path)
    ids = [f"s{k}" for k in range(20)]
    for k, sid in enumerate(ids):
        state = RimerState.zeros(cfg, 1)
        state.tail.fill_(k)
        tiers.put(sid, state)

    def cycle(times):
        for _ in range(times):
            for sid in ids:
                tiers.put(sid, tiers.take(sid))

    cycle(5)  # (warm: caches of the first reads)
    gc.collect()
    # Only what the spill tier's code and safetensors allocate: not other tests' threads.
    ours = [tracemalloc.Filter(True, "*service/cache.py"), tracemalloc.Filter(True, "*safetensors*")]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(ours)
        cycle(100)  # 2,000 reads
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(ours)
    finally:
        tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename"))
    top = [str(d) for d in after.compare_to(before, "lineno")[:4]]
    # (safe_open kept ~900 kB here; the bound leaves room for other tests' threads still running)
    assert grown < 200_000, f"{grown} bytes kept by 2,000 spill reads: {top}"
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == sorted(
        hashlib.sha256(sid.encode()).hexdigest() + ".safetensors" for sid in ids)
    assert all(float(tiers.take(sid).tail[0, 0]) == k for k, sid in enumerate(ids))


def engine_with(tmp_path, name, capacity=3, host=4, max_series=40):
    return Engine(tiny_model(), MANIFEST, max_series, backend="torch", capacity=capacity,
                  host_capacity=host, spill_dir=str(tmp_path / name))


def fill(engine, ids, seed):
    rng = random.Random(seed)
    for _ in range(3):
        for sid in ids:
            engine.append(sid, series(rng.randint(1, 40), rng.randint(0, 999)), None)


def test_snapshot_streams_one_chunk_at_a_time(tmp_path, monkeypatch):
    """Chunks of at most SNAPSHOT_CHUNK states, each gone before the next is made; appends after
    the cut do not reach the snapshot (its states are those of the cut, spilled ones included);
    recovery from the file gives every series' forecast bit for bit."""
    monkeypatch.setattr(ops, "SNAPSHOT_CHUNK", 4)
    ids = [f"q{k:02d}" for k in range(20)]
    engine = engine_with(tmp_path, "spill")
    store = Store(tmp_path / "data", engine, fsync="interval", snapshot_interval_s=0)
    store.open()
    fill(engine, ids, seed=1)
    assert engine.cache_sizes["disk"] > 0 and engine.cache_sizes["host"] > 0
    at_cut = {sid: engine.forecast_series(sid, 12) for sid in ids}

    sizes, alive = [], []
    iterate = ops.StateChunks.__iter__

    def watched(self):
        for chunk in iterate(self):
            gc.collect()
            alive.append(sum(ref() is not None for ref in refs))
            refs.append(weakref.ref(chunk.wkv))
            sizes.append(chunk.batch)
            yield chunk
            del chunk

    refs: list = []
    monkeypatch.setattr(ops.StateChunks, "__iter__", watched)
    export = engine.export_states

    def export_then_append(cut=None):  # appends between the cut and the file's write
        out = export(cut)
        for sid in ids:
            engine.append(sid, series(40, 7), None)
        return out

    monkeypatch.setattr(engine, "export_states", export_then_append)
    path = store.snapshot(force=True)
    assert sizes and max(sizes) <= 4 and sum(sizes) == len(ids)
    assert max(alive) == 0, "a chunk was still held when the next was made"
    assert not list((tmp_path / "spill" / ".rimer-snapshot-pins").iterdir())  # links removed
    monkeypatch.undo()

    # The snapshot holds the cut: restored without the log after it, forecasts are at_cut's.
    again = engine_with(tmp_path, "spill2")
    data2 = tmp_path / "data2"
    data2.mkdir()
    (data2 / path.name).write_bytes(path.read_bytes())
    Store(data2, again, snapshot_interval_s=0).open()
    assert {sid: again.forecast_series(sid, 12) for sid in ids} == at_cut
    # And with the log: every append, as before the restart, with its tiers.
    after = {sid: engine.forecast_series(sid, 12) for sid in ids}
    store.close()
    third = engine_with(tmp_path, "spill3")
    Store(tmp_path / "data", third, snapshot_interval_s=0).open()
    assert {sid: third.forecast_series(sid, 12) for sid in ids} == after


def test_streamed_snapshot_reads_like_a_whole_one(tmp_path):
    """The streamed file is a plain safetensors file of the batch (every field, in the ids'
    order), with the content sha256 the reader checks."""
    from safetensors.torch import load_file

    from service.snapshots import read_snapshot, write_snapshot
    engine = engine_with(tmp_path, "s", capacity=40)
    ids = [f"w{k}" for k in range(9)]
    fill(engine, ids, seed=3)
    states = RimerState.cat([engine.store.state_of(i) for i in ids])
    chunks = [states.select(list(range(a, min(a + 2, 9)))) for a in range(0, 9, 2)]
    path = tmp_path / "snapshot-0000000000000001.safetensors"
    write_snapshot(path, ids, chunks, engine, seq=5, wal_from=1)
    raw = load_file(path)
    for name, t in states.tensors().items():
        assert torch.equal(raw[name], t)
    got_ids, got, seq, wal_from, metas = read_snapshot(path, engine)
    assert (got_ids, seq, wal_from, metas) == (ids, 5, 1, [None] * 9)
    empty = tmp_path / "snapshot-0000000000000002.safetensors"
    write_snapshot(empty, [], [], engine, seq=0, wal_from=2)
    assert read_snapshot(empty, engine)[0] == []

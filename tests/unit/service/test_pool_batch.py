"""The triton backend's batched path (`Engine.apply_batch` on the slot pool): a micro-batch of
requests is applied as a few batched kernel calls, and must give every series the same bits as
applying its requests one by one, refuse what the plan or the log refuses without touching it,
and leave nothing half-applied when the computation itself fails. On the CPU the kernels run
under Triton's interpreter (no CUDA graphs, so every append takes `append_slots`); on a GPU the
same tests also cover the graph-replay path."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from runtime.pool import PoolRunner
from service import store
from service.engine import Engine, EngineError, Op
from tests.conftest import rel_err
from tests.helpers import DEVICE, MANIFEST, P, assert_states_equal, tiny_model, walk

pytestmark = pytest.mark.gpu  # the Triton kernels (under TRITON_INTERPRET=1 on a CPU)


@pytest.fixture(scope="module")
def model(tiny):
    return tiny.to(DEVICE)  # (the session's tiny model, on the GPU when there is one)


def triton_engine(model, **kw) -> Engine:
    return Engine(model, MANIFEST, kw.pop("max_series", 8), backend="triton", scratch_slots=2, **kw)


def seeded(model, **kw) -> Engine:
    """Three series of uneven lengths (a: 2 patches + 3, b: 1 patch + 5, c: 4 points)."""
    e = triton_engine(model, **kw)
    for sid, n, seed in (("a", 2 * P + 3, 1), ("b", P + 5, 2), ("c", 4, 3)):
        e.append(sid, walk(n, seed).tolist(), None)
    return e


def vals(n: int, seed: int) -> list[float]:
    return walk(n, seed).tolist()


def requests() -> list[list[Op]]:
    """Four requests: one naming a series twice (two rounds), a rejected one (unknown series),
    a new series, forecasts of two horizons, and a forecast-only op."""
    return [
        [Op("a", vals(3, 10), 5, "series[0]"), Op("n1", vals(P + 4, 11), None, "series[1]"),
         Op("b", None, 4, "series[2]")],
        [Op("a", vals(P, 12), 4, "series[0]"), Op("c", vals(2, 13), None, "series[1]")],
        [Op("b", vals(2, 14), None, "series[0]"), Op("nope", None, 3, "series[1]")],
        [Op("n2", vals(2 * P + 1, 15), 5, "series[0]"), Op("b", vals(1, 16), 5, "series[1]")],
    ]


def op_by_op(e: Engine, reqs: list[list[Op]], refused: set[int]) -> list:
    """What `Engine.append` and `Engine.forecast_series` give op by op (the per-op path a log
    replay takes), for the requests not in `refused`."""
    out = []
    for r, ops in enumerate(reqs):
        if r in refused:
            out.append(None)
            continue
        out.append([e.forecast_series(op.series_id, op.horizon) if op.values is None
                    else e.append(op.series_id, op.values, op.horizon) for op in ops])
    return out


def states_of(e: Engine, ids: list[str]):
    sp = e.store
    return sp.pool.select(sp.rows([sp.slot[i] for i in ids]))


@pytest.mark.slow
def test_batched_equals_request_by_request_bit_for_bit(model):
    batched, alone = seeded(model), seeded(model)
    calls = {"append_slots": 0}
    runner = batched.store.runner
    real = runner.append_slots

    def counting(*args, **kw):
        calls["append_slots"] += 1
        return real(*args, **kw)

    runner.append_slots = counting
    try:
        got = batched.apply_batch(requests())
    finally:
        del runner.append_slots
    want = op_by_op(alone, requests(), refused={2})
    assert isinstance(got[2], EngineError) and got[2].status == 404
    assert got[2].field == "series[1].id"
    for g, w in zip(got, want):
        if w is None:
            continue
        assert [length for length, _ in g] == [length for length, _ in w]
        for (_, mg), (_, mw) in zip(g, w):
            assert (mg is None) == (mw is None)
            if mg is not None:
                assert torch.equal(torch.tensor(mg), torch.tensor(mw))
    ids = ["a", "b", "c", "n1", "n2"]
    assert_states_equal(states_of(batched, ids), states_of(alone, ids))
    for sid in ids:
        assert batched.describe(sid) == alone.describe(sid)
    assert "nope" not in batched.store.length
    # One append_slots per round where appends took it (two rounds), not one per append; on a
    # GPU the short appends replay graphs instead.
    assert calls["append_slots"] <= 2


@pytest.mark.slow
def test_more_series_than_the_device_holds_go_op_by_op_with_the_same_bits(model, tmp_path):
    small = seeded(model, capacity=2, spill_dir=str(tmp_path / "spill"))
    roomy = seeded(model)
    got = small.apply_batch(requests())
    want = roomy.apply_batch(requests())
    for g, w in zip(got, want):
        if isinstance(w, EngineError):
            assert isinstance(g, EngineError) and g.status == w.status
            continue
        assert g == w
    for sid in ("a", "b", "n1", "n2"):
        assert small.forecast_series(sid, 7) == roomy.forecast_series(sid, 7)
    assert small.describe("c") == roomy.describe("c")


def with_log(e: Engine, directory) -> store.WriteAheadLog:
    e.journal = store.WriteAheadLog(directory, 0, 0, "always")
    return e.journal


def test_a_broken_log_applies_what_it_holds_and_nothing_after(model, tmp_path,
                                                                          monkeypatch):
    e = seeded(model)
    wal = with_log(e, tmp_path)
    before = {sid: states_of(e, [sid]).clone() for sid in ("a", "b", "c")}
    writes = {"n": 0}
    real_write = os.write

    def failing_write(fd, data):
        writes["n"] += 1
        if writes["n"] == 3:  # the third record: the second op of the second request
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(store.os, "write", failing_write)
    reqs = [[Op("a", vals(3, 20), None)],
            [Op("b", vals(2, 21), None), Op("x", vals(4, 22), None)],
            [Op("c", vals(1, 23), None)]]
    got = e.apply_batch(reqs)
    # Every request of the batch is refused: the log can no longer make even the first durable.
    assert all(isinstance(g, EngineError) and g.status == 503 for g in got)
    # The log holds a's append and b's (written before the break): both applied, as on torch;
    # x (refused at the break) was never created, c never touched.
    assert e.describe("a")["length"] == 2 * P + 6 and e.describe("b")["length"] == P + 7
    assert "x" not in e.store.length and "x" not in e.store.slot
    assert len(e.store.free) == e.capacity - 3
    assert_states_equal(states_of(e, ["c"]), before["c"])
    assert not torch.equal(states_of(e, ["a"]).tail, before["a"].tail)
    assert wal.broken is not None
    [refused] = e.apply_batch([[Op("c", vals(1, 24), None)]])
    assert isinstance(refused, EngineError) and refused.status == 503
    with pytest.raises(EngineError) as single:  # a new series alone (op by op), refused too
        e.append("y", vals(3, 25), None)
    assert single.value.status == 503
    # No trace of the refused new series (idle expiry walks `touched`).
    assert set(e.store.touched) == set(e.store.length) == {"a", "b", "c"}
    assert len(e.store.free) + len(e.store.slot) == e.capacity


@pytest.mark.slow
def test_a_failed_computation_puts_the_states_back_and_stops_the_log(model, tmp_path):
    e = seeded(model)
    wal = with_log(e, tmp_path)
    before = states_of(e, ["a", "b", "c"]).clone()
    free = list(e.store.free)

    runner = e.store.runner
    real = runner.append_slots

    def broken(*args, **kw):  # fails after it changed the pool
        real(*args, **kw)
        raise RuntimeError("device lost")

    runner.append_slots = broken
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            e.apply_batch([[Op("a", vals(2 * P, 30), None), Op("new", vals(P, 31), None)],
                           [Op("b", vals(2 * P, 32), 3)]])
    finally:
        del runner.append_slots
    assert_states_equal(states_of(e, ["a", "b", "c"]), before)
    assert "new" not in e.store.slot and sorted(e.store.free) == sorted(free)
    assert [e.describe(s)["length"] for s in "abc"] == [2 * P + 3, P + 5, 4]
    # The log holds appends that were not applied: changes are refused until a restart.
    assert wal.broken is not None and "device lost" in wal.broken
    [refused] = e.apply_batch([[Op("c", vals(1, 33), None)]])
    assert isinstance(refused, EngineError) and refused.status == 503


@pytest.mark.slow
def test_engine_batch_benchmark_checks_bits_before_timing(model):
    """bench.engine_batch (run on a GPU by gpu_check.sh) on one tiny case: both paths timed, and
    the states and answers of the batched path compared with op by op."""
    from bench import engine_batch
    row = engine_batch.run_case(model, MANIFEST, DEVICE, 3, P, None, rounds=1)
    assert row["bit_identical"] and row["series"] == 3
    assert len(row["times_s"]["batched"]) == len(row["times_s"]["by_op"]) == 1


def corrupt_spill_of(directory, series_id: str) -> None:
    path = directory / (hashlib.sha256(series_id.encode()).hexdigest() + ".safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the CRC catches it
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_an_unreadable_spilled_state_refuses_its_requests_and_the_rest_are_planned_without_them(
        model, tmp_path):
    """The request naming the unreadable series fails (500, naming its item); a later request on
    a series it also named is planned as if it never came."""
    e = triton_engine(model, capacity=2, spill_dir=str(tmp_path))
    reference = triton_engine(model)
    for eng in (e, reference):
        for sid, seed in (("a", 1), ("b", 2), ("c", 3)):  # "a" spills to disk
            eng.append(sid, vals(P, seed), None)
    corrupt_spill_of(tmp_path, "a")
    got = e.apply_batch([[Op("b", vals(5, 4), None, "series[0]"),
                          Op("a", vals(1, 5), None, "series[1]")],
                         [Op("b", vals(3, 6), 4, "series[0]")]])
    assert isinstance(got[0], EngineError) and got[0].status == 500
    assert got[0].field == "series[1].id"
    want = reference.append("b", vals(3, 6), 4)
    assert got[1] == [want] and want[0] == P + 3
    assert_states_equal(states_of(e, ["b"]), states_of(reference, ["b"]))
    assert set(e.store.touched) == set(e.store.length)


def test_a_failing_spill_while_bringing_series_in_leaves_no_trace(model, tmp_path, monkeypatch):
    e = triton_engine(model, capacity=2, spill_dir=str(tmp_path))
    for sid, seed in (("a", 1), ("b", 2)):
        e.append(sid, vals(P + 2, seed), None)
    before = {sid: e.forecast_series(sid, 5) for sid in "ab"}
    writes = {"n": 0}
    real_write = type(e.spill)._write

    def full_disk(self, series_id, state):
        writes["n"] += 1
        if writes["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_write(self, series_id, state)

    monkeypatch.setattr(type(e.spill), "_write", full_disk)
    [out] = e.apply_batch([[Op("n1", vals(3, 7), None), Op("n2", vals(3, 8), None)]])
    assert isinstance(out, EngineError) and out.status == 503, out  # (not a 500 with a path)
    assert "No space left on device" in out.message and str(tmp_path) not in out.message
    sp = e.store
    assert "n1" not in sp.slot and "n2" not in sp.slot and not {"n1", "n2"} & set(sp.touched)
    assert len(sp.free) + len(sp.slot) == e.capacity
    ids, _, _ = e.export_states()
    assert sorted(ids) == ["a", "b"]
    monkeypatch.undo()
    assert {sid: e.forecast_series(sid, 5) for sid in "ab"} == before  # nothing lost


def test_a_failed_forecast_only_batch_leaves_the_log_open(model, tmp_path):
    e = seeded(model)
    wal = with_log(e, tmp_path)

    def broken(*args, **kw):
        raise RuntimeError("device lost")

    e.store.runner.forecast_slots = broken
    try:
        with pytest.raises(RuntimeError):
            e.apply_batch([[Op("a", None, 4)]])
    finally:
        del e.store.runner.forecast_slots
    assert wal.broken is None  # nothing was logged: no reason to refuse changes
    [ok] = e.apply_batch([[Op("c", vals(1, 40), None)]])
    assert ok == [(5, None)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_sinusoidal_model_batch_near_the_table_end_is_planned_per_series(backend):
    """With a position table of 8 patches, a series at 7 patches and one at 1 append a patch and
    two in one batch, and forecast in one group: each is within the table, so the batch is too
    (padding and the rollout steps a row does not use need no position)."""
    sinus = tiny_model(pos_emb="sinusoidal", max_positions=8).to(DEVICE)
    engines = [Engine(sinus, MANIFEST, 4, backend=backend, scratch_slots=2) for _ in range(2)]
    for eng in engines:
        eng.append("a", vals(7 * P, 1), None)
        eng.append("b", vals(P, 2), None)
    batch = [[Op("a", vals(P, 3), None, "series[0]")], [Op("b", vals(2 * P, 4), None, "series[0]")]]
    got = engines[0].apply_batch(batch)
    assert got == [[(8 * P, None)], [(3 * P, None)]]
    engines[1].append("a", vals(P, 3), None)
    engines[1].append("b", vals(2 * P, 4), None)
    # a has used the whole table: a forecast of a point past it is refused, a's own tail is not
    for eng in engines:
        eng.append("a", vals(P - 1, 5), None)
        eng.append("b", vals(P - 1, 6), None)
    both = engines[0].apply_batch([[Op("a", None, 1)], [Op("b", None, 1)]])
    alone = [engines[1].forecast_series("a", 1), engines[1].forecast_series("b", 1)]
    for [(length, mean)], (want_length, want_mean) in zip(both, alone):
        assert length == want_length
        if backend == "triton":  # (torch's CPU products change in the last bits with the batch)
            assert mean == want_mean
        assert rel_err(torch.tensor(mean), torch.tensor(want_mean)) <= 1e-5
    refused = engines[0].apply_batch([[Op("a", None, 2)]])[0]
    assert isinstance(refused, EngineError) and refused.status == 422


@pytest.mark.slow
@pytest.mark.parametrize("counts", [(4, 2, 3), (1, 1, 1)], ids=["several", "one-each"])
def test_copying_points_into_the_tail_is_what_the_network_paths_write(model, counts):
    """`SlotPoolStore.extend_tails` (appends that complete no patch, batched or single) writes the bits
    `append_slots` and the one-patch step (`step_slots`, the CUDA graphs' body) write: every
    field of every row (a tail's unused points stay zero on each path). One point each is a
    bulk ingest's case, which has a path of its own."""
    runner = PoolRunner(model)
    e = seeded(model)  # tails of 3, 5 and 4 points
    sp, ids = e.store, ["a", "b", "c"]
    adds = {s: vals(n, 50 + k) for k, (s, n) in enumerate(zip(ids, counts))}
    rows = sp.rows([sp.slot[s] for s in ids])
    by_append, by_step = sp.pool.clone(), sp.pool.clone()
    e.store.extend_tails([Op(s, adds[s], length=sp.length[s] + len(adds[s])) for s in ids],
                         sp.slot)
    runner.append_slots(by_append, rows, [torch.tensor(adds[s]) for s in ids])
    values = torch.zeros(len(ids), 2 * P, device=DEVICE)
    for b, s in enumerate(ids):
        values[b, : len(adds[s])] = torch.tensor(adds[s])
    counts = torch.tensor([len(adds[s]) for s in ids], device=DEVICE)
    runner.step_slots(by_step, rows, values, counts)
    assert_states_equal(sp.pool, by_append)
    assert_states_equal(sp.pool, by_step)

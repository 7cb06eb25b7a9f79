"""The bounded state cache (service/cache.py and the engine's tiers): with a device capacity far
below the number of series, every series' forecast stays what it would be with no limit, through
spills to host memory and disk and back; corrupt spill files are refused; idle series expire."""

from __future__ import annotations

import hashlib
import random
import threading
import time

import pytest
import torch

from model import checkpoint
from model.state import RimerState
from service.cache import SpillError, SpillTiers
from service.engine import Engine, EngineError, Op
from tests.conftest import DEFAULT_WEIGHTS, Server, rel_err
from tests.helpers import series, tiny_model, value, walk


@pytest.fixture(scope="module")
def loaded():
    return checkpoint.load(DEFAULT_WEIGHTS)


def play(engine: Engine, ids: list[str], rounds: int, seed: int, batched: bool = False) -> dict:
    """Random appends over `ids` (some batched), then every series' forecast."""
    rng = random.Random(seed)
    for _ in range(rounds):
        if batched and rng.random() < 0.3:
            picked = rng.sample(ids, 3)
            out = engine.apply_batch([[Op(i, series(rng.randint(1, 40), rng.randint(0, 999)))]
                                      for i in picked])
            assert not any(isinstance(o, EngineError) for o in out)
        else:
            engine.append(rng.choice(ids), series(rng.randint(1, 40), rng.randint(0, 999)), None)
    return {i: engine.forecast_series(i, 20) for i in ids if engine.describe(i)["length"] >= 32}


@pytest.mark.slow
@pytest.mark.parametrize("batched", [False, True])
def test_torch_spills_and_reloads_exactly(loaded, tmp_path, batched):
    model, manifest = loaded
    ids = [f"s{k}" for k in range(12)]
    unbounded = Engine(model, manifest, max_series=50, backend="torch")
    bounded = Engine(model, manifest, max_series=50, backend="torch", capacity=3,
                     host_capacity=2, spill_dir=str(tmp_path / "spill"))
    expected = play(unbounded, ids, 80, seed=1, batched=batched)
    got = play(bounded, ids, 80, seed=1, batched=batched)
    assert got.keys() == expected.keys() and len(got) >= 8
    for i in expected:  # the same bits: spills copy states, they never recompute them
        assert got[i] == expected[i]
    sizes = bounded.cache_sizes
    assert sizes["device"] <= 3 and sizes["host"] <= 2 and sum(sizes.values()) == len(ids)
    assert bounded.spill.spills["disk"] > 0 and bounded.spill.loads["disk"] > 0
    assert bounded.spill.loads["host"] > 0 and bounded.cache_stats["misses"] > 0
    assert len(list((tmp_path / "spill").glob("*.safetensors"))) == sizes["disk"]
    assert bounded.list_series(100) == unbounded.list_series(100)


def test_export_and_import_cover_every_tier(loaded, tmp_path):
    model, manifest = loaded
    ids = [f"e{k}" for k in range(9)]
    bounded = Engine(model, manifest, max_series=50, backend="torch", capacity=2,
                     host_capacity=2, spill_dir=str(tmp_path / "a"))
    before = play(bounded, ids, 40, seed=2)
    names, chunks, _ = bounded.export_states()
    assert sorted(names) == sorted(i for i in ids if bounded.describe(i)["length"] > 0)
    again = Engine(model, manifest, max_series=50, backend="torch", capacity=2, host_capacity=2,
                   spill_dir=str(tmp_path / "b"))
    again.import_states(names, RimerState.cat(list(chunks)))
    assert again.cache_sizes["device"] == 2 and again.cache_sizes["disk"] > 0
    assert {i: again.forecast_series(i, 20) for i in before} == before


def test_corrupt_spill_file_is_refused(loaded, tmp_path):
    model, manifest = loaded
    engine = Engine(model, manifest, max_series=10, backend="torch", capacity=1,
                    host_capacity=0, spill_dir=str(tmp_path))
    engine.append("a", series(40, 1), None)
    engine.append("b", series(40, 2), None)  # "a" goes to disk
    (path,) = tmp_path.glob("*.safetensors")
    assert path.name == hashlib.sha256(b"a").hexdigest() + ".safetensors"  # the id never is the path
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the tensors: the CRC catches it
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError) as info:
        engine.forecast_series("a", 8)
    assert info.value.status == 500 and "fails its check" in info.value.message
    assert engine.forecast_series("b", 8)[0] == 40  # the others are unaffected


def test_start_up_removes_only_spill_files(tmp_path):
    """The spill directory may be one the user has other files in (a mistyped --spill-dir, or the
    data directory): start-up removes the previous run's spill files, nothing else."""
    spill = tmp_path / "spill"
    (spill / "sub").mkdir(parents=True)
    keep = ["notes.txt", "snapshot-0000000000000001.safetensors", "abc.safetensors", "sub"]
    for name in keep[:3]:
        (spill / name).write_text("not ours")
    a_name = hashlib.sha256(b"a").hexdigest() + ".safetensors"
    # series "a", a half-written "ab", and "a" as earlier versions named it (the id's hex)
    for name in (a_name, hashlib.sha256(b"ab").hexdigest() + ".tmp", "61.safetensors"):
        (spill / name).write_text("stale state")
    tiers = SpillTiers(1, spill)
    assert sorted(p.name for p in spill.iterdir()) == sorted(keep)
    tiers.put("a", RimerState.zeros(tiny_model().cfg, 1))
    tiers.put("b", RimerState.zeros(tiny_model().cfg, 1))  # "a" goes to disk
    assert (spill / a_name).exists() and "a" in tiers


def test_ids_of_every_allowed_length_spill_and_come_back(loaded, tmp_path):
    """A file is named by the id's SHA-256: 128-character ids (the longest allowed) spill to
    disk and back like short ones (named by the id's hex, 122 or more characters made names
    over the file system's 255 bytes, and every spill after failed)."""
    model, manifest = loaded
    engine = Engine(model, manifest, max_series=20, backend="torch", capacity=1,
                    host_capacity=1, spill_dir=str(tmp_path))
    ids = [c * 128 for c in "abcdef"] + ["short"]
    for k, sid in enumerate(ids):
        engine.append(sid, series(40, k), None)
    assert len(list(tmp_path.glob("*.safetensors"))) == len(ids) - 2  # (1 on device, 1 on host)
    assert all(len(p.name) == 64 + len(".safetensors") for p in tmp_path.glob("*.safetensors"))
    free = Engine(model, manifest, max_series=20, backend="torch")
    for k, sid in enumerate(ids):
        free.append(sid, series(40, k), None)
    for sid in ids:
        assert engine.forecast_series(sid, 8) == free.forecast_series(sid, 8)


def test_a_failed_spill_to_disk_loses_no_state(tmp_path, monkeypatch):
    """The disk refusing a write: the put fails whole (the caller keeps its state), and the
    state the host tier would have handed down stays on the host."""

    cfg = tiny_model().cfg
    tiers = SpillTiers(1, tmp_path / "spill")
    a = RimerState.zeros(cfg, 1)
    a.tail.fill_(1.0)
    tiers.put("a", a)

    def full_disk(self, series_id, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SpillTiers, "_write", full_disk)
    with pytest.raises(SpillError) as info:
        tiers.put("b", RimerState.zeros(cfg, 1))
    assert "No space left on device" in str(info.value) and str(tmp_path) not in str(info.value)
    assert list(tiers.host) == ["a"] and not tiers.disk
    assert torch.equal(tiers.take("a").tail, a.tail)


@pytest.mark.parametrize("refusal", ["os", "safetensors"])
def test_a_refused_spill_fails_no_request(loaded, tmp_path, monkeypatch, refusal):
    """The disk refusing the least recently used state after a request was applied: the
    request is answered as done (it was, and logged), the states stay on the device over its
    capacity, and once the disk takes them again they spill as before."""
    model, manifest = loaded
    engine = Engine(model, manifest, max_series=10, backend="torch", capacity=1,
                    host_capacity=0, spill_dir=str(tmp_path))
    from safetensors import SafetensorError

    from service import cache

    save = cache.save_file

    def full_disk(tensors, path, metadata=None):
        with open(path, "wb") as f:  # (half written, as a full disk leaves it)
            f.write(b"\0" * 16)
        if refusal == "os":
            raise OSError(28, "No space left on device")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(cache, "save_file", full_disk)
    for k, sid in enumerate("abc"):
        assert engine.append(sid, series(40, k), None)[0] == 40
    assert not list(tmp_path.iterdir())  # (nor a half-written temporary)
    monkeypatch.setattr(cache, "save_file", save)
    engine.append("d", series(40, 3), None)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    free = Engine(model, manifest, max_series=10, backend="torch")
    for k, sid in enumerate("abcd"):
        free.append(sid, series(40, k), None)
        assert engine.forecast_series(sid, 8) == free.forecast_series(sid, 8)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_idle_series_expire(loaded, backend):
    """Series no request touched (append, forecast, describe) for the given time are deleted."""
    if backend == "triton":
        pytest.importorskip("kernels")
        model = tiny_model()
        engine = Engine(model, {"name": "tiny"}, 10, backend="triton", capacity=2,
                        host_capacity=1, scratch_slots=2, cuda_graphs=False)
    else:
        model = loaded[0]
        engine = Engine(model, loaded[1], max_series=10, backend="torch", capacity=2,
                        host_capacity=1)
    n = 2 * model.cfg.patch_len
    for k in range(4):
        engine.append(f"x{k}", series(n, k), None)
    time.sleep(0.05)
    engine.forecast_series("x1", 8)  # touched: kept
    engine.describe("x2")  # a read too
    assert sorted(engine.expire_idle(0.03)) == ["x0", "x3"]
    assert engine.list_series(10) == [("x1", n), ("x2", n)]
    assert engine.cache_stats["expired"] == 2
    with pytest.raises(EngineError):
        engine.describe("x0")
    engine.close()
    assert not engine.spill.directory.exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("via", ["append", "apply_batch", "forecast"])
def test_a_series_is_idle_from_the_end_of_its_last_request(loaded, backend, via):
    """An append (or forecast) that computes for longer than the expiry must not leave its series
    to be expired the moment it is answered: the expiry that waited for it finds it touched. Here
    the expiry starts while the model call is held, with a cutoff after the request began."""
    if backend == "triton":
        pytest.importorskip("kernels")
        model, name = tiny_model(), "append_slots"
        engine = Engine(model, {"name": "tiny"}, 4, backend="triton", scratch_slots=2,
                        cuda_graphs=False)
    else:
        model, name = loaded[0], "append"
        engine = Engine(model, loaded[1], 4, backend="torch")
    if via == "forecast":
        name = "forecast_slots" if backend == "triton" else "forecast"
    p = model.cfg.patch_len
    engine.append("s", series(2 * p, 1), None)
    target = engine.store.runner if backend == "triton" else model  # what the engine calls
    real = getattr(target, name)
    expired: list = []

    def held(*args, **kwargs):
        time.sleep(0.1)  # the request began more than max_idle ago when the expiry starts
        expiry = threading.Thread(target=lambda: expired.extend(engine.expire_idle(0.05)))
        expiry.start()
        time.sleep(0.2)  # it has taken its cutoff and waits for this series' lock
        held.expiry = expiry
        return real(*args, **kwargs)

    setattr(target, name, held)
    try:
        if via == "append":
            engine.append("s", series(3 * p, 2)[2 * p:], None)
        elif via == "apply_batch":
            [[_]] = engine.apply_batch([[Op("s", series(3 * p, 2)[2 * p:])]])
        else:
            engine.forecast_series("s", 4)
    finally:
        delattr(target, name)
    held.expiry.join(10)
    assert expired == []
    assert engine.describe("s")["length"] == (2 * p if via == "forecast" else 3 * p)


@pytest.mark.slow
def test_triton_pool_spills_and_reloads_exactly(tmp_path):
    pytest.importorskip("kernels")  # sets TRITON_INTERPRET=1 without CUDA first
    model = tiny_model()
    unbounded = Engine(model, {"name": "tiny"}, 8, backend="triton", scratch_slots=2,
                       cuda_graphs=False)
    bounded = Engine(model, {"name": "tiny"}, 8, backend="triton", scratch_slots=2,
                     cuda_graphs=False, capacity=2, host_capacity=1, spill_dir=str(tmp_path))
    rng = random.Random(3)
    steps = [(f"t{rng.randrange(5)}", walk(rng.randint(1, 12), rng.randrange(99)).tolist())
             for _ in range(14)]
    for engine in (unbounded, bounded):
        for sid, values in steps:
            engine.append(sid, values, None)
    ids = sorted({s for s, _ in steps})
    for i in ids:
        n = unbounded.describe(i)["length"]
        if n >= model.cfg.patch_len:
            assert bounded.forecast_series(i, 6) == unbounded.forecast_series(i, 6)
    assert bounded.cache_sizes["device"] <= 2 and bounded.spill.spills["disk"] > 0
    assert bounded.spill.loads["disk"] + bounded.spill.loads["host"] > 0
    assert bounded.list_series(10) == unbounded.list_series(10)


@pytest.mark.slow
def test_real_server_with_capacity_far_below_the_series(tmp_path):
    """30 series through a real server holding 3 on the device and 3 in host memory, with a data
    dir and a restart: every forecast matches the stateless forecast of its whole history."""
    ids = [f"c{k:02d}" for k in range(30)]
    histories = {i: [] for i in ids}
    args = ("--cache-capacity", "3", "--host-capacity", "3", "--max-series", "100",
            "--data-dir", str(tmp_path), "--snapshot-interval-s", "0")
    server = Server(*args)
    try:
        rng = random.Random(4)
        for _ in range(3):
            for i in rng.sample(ids, len(ids)):
                values = series(rng.randint(20, 50), rng.randrange(10**6))
                histories[i] += values
                r = server.client.post(f"/series/{i}/append", json={"values": values})
                assert r.status_code == 200, r.text
        metrics = server.client.get("/metrics").text
        assert value(metrics, "rimer_cache_spills_total", tier="disk") > 0
        assert value(metrics, "rimer_cache_loads_total", tier="disk") > 0
        assert value(metrics, "rimer_cache_series", tier="device") <= 3
        streamed = {i: server.client.get(f"/series/{i}/forecast", params={"horizon": 24}).json()
                    for i in ids}
    finally:
        server.stop()  # clean stop: a snapshot of every tier
    stateless = Server("--max-series", "100")
    try:
        whole = stateless.client.post("/forecast", json={
            "series": [{"id": i, "values": histories[i]} for i in ids], "horizon": 24}).json()
    finally:
        stateless.stop()
    for k, i in enumerate(ids):
        assert streamed[i]["length"] == len(histories[i])
        assert rel_err(torch.tensor(streamed[i]["mean"]),
                       torch.tensor(whole["forecasts"][k]["mean"])) <= 1e-4
    again = Server(*args)
    try:
        for i in ids:
            r = again.client.get(f"/series/{i}/forecast", params={"horizon": 24}).json()
            assert r["mean"] == streamed[i]["mean"]
        page = again.client.get("/series", params={"limit": 1000}).json()
        assert [s["id"] for s in page["series"]] == ids
    finally:
        again.stop()


def test_the_directories_the_service_makes_are_its_own(loaded, tmp_path):
    """The data and spill directories it creates are 0700, like its files are 0600 (spill files
    are named by a hash of the id, but a listing should still be the service's alone)."""
    from service.store import Store

    model, manifest = loaded
    SpillTiers(1, tmp_path / "made" / "spill")
    store = Store(tmp_path / "data", Engine(model, manifest, 4, backend="torch"), snapshot_interval_s=0)
    store.open()
    store.close()
    for made in (tmp_path / "made" / "spill", tmp_path / "data"):
        assert made.stat().st_mode & 0o777 == 0o700, made

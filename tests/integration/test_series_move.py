"""Moving one series between replicas: GET /series/{id}/export and PUT /series/{id}/import
(service/routes/cluster.py), with real data directories. The record is checked (damage, another
id, another model refused), the import is durable (logged: it survives a restart with no
snapshot) and idempotent (the same record twice changes nothing; another state is a 409), and
the moved series forecasts and appends bit-identically to where it came from."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model import checkpoint
from service.app import create_app
from service.engine import Engine
from service.settings import Settings
from service.snapshots import record_sha256
from service.store import Store
from tests.conftest import DEFAULT_WEIGHTS
from tests.helpers import series


@pytest.fixture(scope="module")
def loaded():
    return checkpoint.load(DEFAULT_WEIGHTS)


class Replica:
    """An app on an engine of the shipped model with its own data directory (no snapshots but
    at close: the log carries everything); `restart()` recovers it from the directory."""

    def __init__(self, loaded, directory: Path, name: str = "", manifest: dict | None = None):
        self.loaded, self.directory, self.name, self.manifest = loaded, directory, name, manifest
        self.open()

    def open(self) -> None:
        model, shipped = self.loaded
        self.engine = Engine(model, self.manifest or shipped, max_series=100, backend="torch")
        self.store = Store(self.directory, self.engine, snapshot_interval_s=0)
        self.store.open()
        self.app = create_app(Settings(device="cpu", replica_name=self.name), engine=self.engine)
        self.http = TestClient(self.app)
        self.http.__enter__()

    def close(self, snapshot: bool = True) -> None:
        self.http.__exit__(None, None, None)
        self.store.close(snapshot=snapshot)

    def restart(self, snapshot: bool = False) -> None:
        self.close(snapshot=snapshot)
        self.open()

    def forecast(self, sid: str) -> dict:
        r = self.http.get(f"/series/{sid}/forecast", params={"horizon": 24})
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def pair(loaded, tmp_path):
    a, b = Replica(loaded, tmp_path / "a", "a"), Replica(loaded, tmp_path / "b", "b")
    yield a, b
    a.close()
    b.close()


def fill(replica: Replica, ids: list[str], seed: int = 0, stamps: bool = True) -> None:
    rng = random.Random(seed)
    for k in range(3):
        for sid in ids:
            body = {"values": series(rng.randint(20, 90), rng.randint(0, 10**6))}
            if stamps and k == 0 and sid.endswith("t"):  # some with timestamps: their metadata moves too
                n = len(body["values"])
                body["timestamps"] = [f"2024-01-01T{h // 60:02d}:{h % 60:02d}:00Z" for h in range(n)]
            r = replica.http.post(f"/series/{sid}/append", json=body)
            assert r.status_code == 200, r.text


def test_export_import_moves_a_series_bit_identically_and_durably(pair):
    a, b = pair
    ids = ["s0", "s1t", "s2"]
    fill(a, ids)
    for sid in ids:
        exported = a.http.get(f"/series/{sid}/export")
        assert exported.status_code == 200
        assert exported.headers["x-rimer-replica"] == "a"
        assert exported.headers["content-type"] == "application/vnd.rimer.series-record"
        digest = exported.headers["x-rimer-sha256"]
        assert digest == record_sha256(exported.content)
        put = b.http.put(f"/series/{sid}/import", content=exported.content)
        assert put.status_code == 201, put.text
        assert put.json() == {"id": sid, "length": a.forecast(sid)["length"], "imported": True,
                              "sha256": digest}
        again = b.http.put(f"/series/{sid}/import", content=exported.content)  # idempotent
        assert again.status_code == 200 and again.json()["imported"] is False
        assert b.http.get(f"/series/{sid}/export").headers["x-rimer-sha256"] == digest
        assert b.forecast(sid) == a.forecast(sid)  # bit for bit (JSON floats are exact)
        assert b.http.get(f"/series/{sid}").json() == a.http.get(f"/series/{sid}").json()
    # the import was logged: a restart without a snapshot (kill-like) replays it
    b.restart(snapshot=False)
    assert not list(b.directory.glob("snapshot-*"))
    for sid in ids:
        assert b.forecast(sid) == a.forecast(sid)
    # and after the move, the same appends give the same bits on both
    fill(a, ids, seed=7, stamps=False)
    fill(b, ids, seed=7, stamps=False)
    for sid in ids:
        assert b.forecast(sid) == a.forecast(sid)
        assert (b.http.get(f"/series/{sid}/export").headers["x-rimer-sha256"]
                == a.http.get(f"/series/{sid}/export").headers["x-rimer-sha256"])
    b.restart(snapshot=True)  # from the snapshot too
    for sid in ids:
        assert b.forecast(sid) == a.forecast(sid)


def test_import_refuses_damage_another_id_another_state_and_another_model(pair, loaded, tmp_path):
    a, b = pair
    fill(a, ["x", "y"])
    record = a.http.get("/series/x/export").content
    assert a.http.get("/series/nope/export").status_code == 404
    for bad in (record[:-10], record[:100], b"garbage", b""):
        r = b.http.put("/series/x/import", content=bad)
        assert r.status_code == 422 and r.json()["field"] == "body", r.text
    flipped = bytearray(record)
    flipped[-5] ^= 0x40  # one bit of a state's bytes
    r = b.http.put("/series/x/import", content=bytes(flipped))
    assert r.status_code == 422 and "sha256" in r.json()["detail"]
    r = b.http.put("/series/y/import", content=record)
    assert r.status_code == 422 and r.json()["field"] == "id"
    # b holds another x: never overwritten
    fill(b, ["x"], seed=3)
    before = b.forecast("x")
    r = b.http.put("/series/x/import", content=record)
    assert r.status_code == 409 and r.json()["field"] == "id"
    assert b.forecast("x") == before
    # a replica serving another model (its fingerprint differs) refuses the record
    other = Replica(loaded, tmp_path / "c", manifest={**loaded[1], "sha256": "0" * 64})
    try:
        r = other.http.put("/series/x/import", content=record)
        assert r.status_code == 409 and "fingerprint" in r.json()["detail"]
        assert other.http.get("/series/x").status_code == 404
    finally:
        other.close()
    assert not b.http.get("/series").json()["series"] == []  # (b still has its own x)


def test_delete_after_import_and_reimport_are_logged_in_order(pair):
    a, b = pair
    fill(a, ["m"])
    record = a.http.get("/series/m/export").content
    assert b.http.put("/series/m/import", content=record).status_code == 201
    assert b.http.delete("/series/m").status_code == 204
    assert b.http.put("/series/m/import", content=record).status_code == 201
    assert b.http.delete("/series/m").status_code == 204
    b.restart(snapshot=False)
    assert b.http.get("/series/m").status_code == 404
    assert b.http.put("/series/m/import", content=record).status_code == 201
    b.restart(snapshot=False)
    assert b.forecast("m") == a.forecast("m")

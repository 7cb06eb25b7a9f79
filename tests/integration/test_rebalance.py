"""deploy/rebalance.py against in-process replicas (each an app with its own data directory),
interrupted at every one of its steps in turn: after each interruption and a rerun, every series
is on exactly one replica, its owner under the new ring, with the exact state it had (its
record's sha256 and its forecast); a rerun with nothing left moves nothing; and an append that
slips in during a move is detected, never lost. The same tool runs against a real cluster in
tests/integration/test_cluster.py (killed at a random step there)."""

from __future__ import annotations

import httpx
import pytest
from rimer_client import Ring

from deploy import rebalance
from tests.helpers import series
from tests.integration.test_series_move import Replica, loaded  # noqa: F401 (a fixture)

NAMES = [f"r{i}:8000" for i in range(4)]
IDS = [f"s{k:03d}" for k in range(24)]


class Dispatch(httpx.BaseTransport):
    """Sends each request to the in-process replica its URL names."""

    def __init__(self, replicas: dict[str, Replica]):
        self.replicas = replicas

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.replicas[request.url.netloc.decode()].http._transport.handle_request(request)


class Interrupted(Exception):
    pass


def mover(replicas, old: int, new: int, stop_at: int | None = None, at_step=None):
    m = rebalance.Mover([f"http://{n}" for n in NAMES[:old]], [f"http://{n}" for n in NAMES[:new]],
                        log=lambda line: None)
    m.http = httpx.Client(transport=Dispatch(replicas))
    plain = m.step

    def step():
        plain()
        if at_step is not None:
            at_step(m.steps)
        if stop_at is not None and m.steps >= stop_at:
            raise Interrupted(m.steps)
    m.step = step
    return m


@pytest.fixture
def cluster(loaded, tmp_path):  # noqa: F811
    replicas = {n: Replica(loaded, tmp_path / n.split(":")[0], n) for n in NAMES}
    three = Ring(NAMES[:3])
    for k, sid in enumerate(IDS):
        r = replicas[three.owner(sid)].http.post(f"/series/{sid}/append",
                                                 json={"values": series(40 + k, k)})
        assert r.status_code == 200
    yield replicas
    for r in replicas.values():
        r.close()


def state(replicas) -> dict[str, list[tuple[str, str, dict]]]:
    """Series id -> [(replica, sha256, forecast)] over every replica holding it."""
    out: dict[str, list] = {}
    for name, r in replicas.items():
        for item in r.http.get("/series", params={"limit": 1000}).json()["series"]:
            sid = item["id"]
            digest = r.http.get(f"/series/{sid}/export").headers["x-rimer-sha256"]
            out.setdefault(sid, []).append((name, digest, r.forecast(sid)))
    return out


def test_interrupted_at_every_step_then_rerun_loses_nothing(cluster):
    before = state(cluster)
    assert sorted(before) == IDS and all(len(v) == 1 for v in before.values())
    four, three = Ring(NAMES), Ring(NAMES[:3])
    changed = {sid for sid in IDS if four.owner(sid) != three.owner(sid)}
    assert changed
    steps = 4 * len(changed)
    for stop_at in range(1, steps + 1):  # each run stops one step further in
        with pytest.raises(Interrupted):
            mover(cluster, 3, 4, stop_at=stop_at).run()
        middle = state(cluster)
        assert sorted(middle) == IDS
        for sid, copies in middle.items():  # every copy is the series' exact state
            assert {(d, str(f)) for _, d, f in copies} == {(before[sid][0][1], str(before[sid][0][2]))}
        # and put back where it was, for the next interruption point
        report = mover(cluster, 4, 3).run()
        assert report["failed"] == {}
        assert {sid: [c[0] for c in v] for sid, v in state(cluster).items()} == {
            sid: [three.owner(sid)] for sid in IDS}
    report = mover(cluster, 3, 4).run()
    assert report["failed"] == {} and report["moved"] == len(changed)
    after = state(cluster)
    assert {sid: v[0][0] for sid, v in after.items()} == {sid: four.owner(sid) for sid in IDS}
    assert all(len(v) == 1 for v in after.values())
    assert {sid: v[0][1:] for sid, v in after.items()} == {sid: v[0][1:] for sid, v in before.items()}
    assert mover(cluster, 3, 4).run()["moved"] == 0  # nothing left to move


def test_an_append_during_a_move_is_detected_and_not_lost(cluster):
    four, three = Ring(NAMES), Ring(NAMES[:3])
    sid = next(s for s in IDS if four.owner(s) != three.owner(s))
    source = cluster[three.owner(sid)]

    def append_after_import(step: int) -> None:
        if step == 2:  # the series' copy is imported and verified: an append reaches the old one
            r = source.http.post(f"/series/{sid}/append", json={"values": [1.0, 2.0]})
            assert r.status_code == 200
    m = mover(cluster, 3, 4, at_step=append_after_import)
    m.plan = lambda: [(sid, three.owner(sid), four.owner(sid))]
    report = m.run()
    assert list(report["failed"]) == [sid] and "changed" in report["failed"][sid]
    # the old copy, with the append, is kept
    assert source.http.get(f"/series/{sid}").json()["length"] == 40 + IDS.index(sid) + 2
    # and the stale copy on the new owner is refused as another state on a rerun (409), so the
    # series stays where its newest state is until an operator deletes the stale copy
    again = mover(cluster, 3, 4).run()
    assert sid in again["failed"] and "refused" in again["failed"][sid]
    assert source.http.get(f"/series/{sid}").status_code == 200

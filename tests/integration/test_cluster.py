"""A real cluster on loopback (deploy/local.sh: replicas behind Debian's nginx), end to end:

- 3 replicas; 1,000 series appended through the proxy in bulks split by rimer_client's Ring;
  every forecast through the proxy is bit-identical to a single server's fed the same appends,
  and every answer came from the replica the Ring names (X-Rimer-Replica): the client's ketama
  agrees with nginx's on every id;
- a mixed bulk without X-Rimer-Series is refused by the proxy (400, a message);
- one replica killed with SIGKILL and started again (`local.sh up 3`) loses nothing;
- 3 -> 4: changes paused at the proxy, the fourth replica started, deploy/rebalance.py killed at
  a random step of its moves and run again, the proxy switched to the new ring: exactly the
  series whose owner changed moved (15% to 35% of them), each is on exactly one replica, its
  owner, and every forecast is still bit-identical to the single server's.

Skipped only when nginx is missing and cannot be installed (not root, or no apt-get): as root
with apt-get (CI), deploy/local.sh installs Debian's nginx-light."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from rimer_client import Client, Ring

from tests.conftest import ROOT, Server

LOCAL = ROOT / "deploy" / "local.sh"
N_SERIES = 1000
H = 8

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None and (os.geteuid() != 0
                                                          or shutil.which("apt-get") is None),
                       reason="nginx is not installed, and cannot be here (needs root and apt-get)"),
]


def free_base(span: int = 8) -> int:
    """A port p with p..p+span free on loopback."""
    for _ in range(200):
        base = random.randint(20_000, 60_000)
        try:
            socks = []
            for p in range(base, base + span):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


class Cluster:
    def __init__(self, directory):
        self.env = dict(os.environ, RIMER_CLUSTER_DIR=str(directory),
                        RIMER_CLUSTER_PORT=str(free_base()), PYTHON=sys.executable,
                        PYTHONPATH=f"{ROOT}:{ROOT / 'client'}",
                        RIMER_REPLICA_ARGS="--device cpu --snapshot-interval-s 0")
        self.dir = directory

    def sh(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(["bash", str(LOCAL), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"local.sh {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout.strip()

    def up(self, n: int) -> str:
        return self.sh("up", str(n)).splitlines()[-1]  # the proxy's URL: the last line

    def rebalance(self, old: str, new: str, crash_at: int | None = None):
        env = dict(self.env)
        if crash_at is not None:
            env["RIMER_REBALANCE_CRASH_AT"] = str(crash_at)
        return subprocess.run([sys.executable, "-m", "deploy.rebalance", "--from", old, "--to", new],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    subprocess.run(["bash", str(LOCAL), "down"], env=c.env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one server with a data directory (so its appends follow the same batching
    rules as the replicas', which all have one)."""
    server = Server("--data-dir", str(tmp_path_factory.mktemp("single")),
                    "--snapshot-interval-s", "0")
    yield server
    server.stop()


def frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(N_SERIES):
        n = int(rng.integers(20, 70))
        y = np.sin(np.arange(n) / (3 + k % 7) + k) * (1 + k % 5) + rng.normal(0, 0.1, n) + 10
        parts.append(pd.DataFrame({"unique_id": f"meter-{k:04d}.kw", "ds": np.arange(n), "y": y}))
    return pd.concat(parts, ignore_index=True)


IDS = [f"meter-{k:04d}.kw" for k in range(N_SERIES)]


def forecasts(url: str, ring: Ring | None = None) -> dict[str, dict]:
    """Every series' forecast from `url`; with `ring`, each answer must come from the replica it
    names."""
    out, wrong = {}, []
    with httpx.Client(base_url=url, timeout=60) as http:
        for sid in IDS:
            r = http.get(f"/series/{sid}/forecast", params={"horizon": H})
            assert r.status_code == 200, (sid, r.text)
            if ring is not None and r.headers["x-rimer-replica"] != ring.owner(sid):
                wrong.append((sid, r.headers["x-rimer-replica"], ring.owner(sid)))
            out[sid] = r.json()
    assert not wrong, f"{len(wrong)} ids answered by another replica than the Ring's: {wrong[:5]}"
    return out


def holdings(urls: str) -> dict[str, list[str]]:
    """Series id -> the replicas that hold it."""
    held: dict[str, list[str]] = {}
    for url in urls.split(","):
        ids = Client(url).series(page_size=1000)["unique_id"].tolist()
        for sid in ids:
            held.setdefault(sid, []).append(url.split("//")[1])
    return held


def test_cluster_end_to_end(cluster, single):
    start = time.time()
    proxy = cluster.up(3)
    assert proxy == f"http://127.0.0.1:{cluster.env['RIMER_CLUSTER_PORT']}"
    ring3 = Ring([u.split("//")[1] for u in cluster.sh("urls").split(",")])
    assert httpx.get(proxy + "/cluster/ring").json()["servers"] == ring3.servers

    # a mixed bulk that names no replica: refused by the proxy, with the way out
    r = httpx.post(proxy + "/series/append", json={"series": [{"id": "a", "values": [1.0]},
                                                             {"id": "b", "values": [2.0]}]})
    assert r.status_code == 400 and "X-Rimer-Series" in r.json()["detail"]

    # 1,000 series in two rounds of bulks, split by owner, through the proxy; the same to one server
    for seed in (1, 2):
        df = frame(seed)
        with Client(proxy, ring="proxy") as c:
            got = c.append(df)
        with Client(single.url) as c:
            want = c.append(df)
        pd.testing.assert_frame_equal(got, want)
    reference = forecasts(single.url)
    assert forecasts(proxy, ring3) == reference  # bit for bit (JSON floats round-trip exactly)

    # kill -9 one replica, start it again: nothing lost (its log is replayed)
    pid_file = cluster.dir / "replica-1.pid"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    time.sleep(0.5)
    owned = [sid for sid in IDS if ring3.owner(sid) == ring3.servers[1]]
    assert httpx.get(f"{proxy}/series/{owned[0]}").status_code == 502  # down: never re-hashed
    assert cluster.up(3) == proxy
    assert forecasts(proxy, ring3) == reference

    # 3 -> 4: pause changes, start replica 3, move (interrupted at a random step, then rerun)
    old_urls = cluster.sh("urls", "3")
    before = holdings(old_urls)
    assert sorted(before) == IDS and all(len(v) == 1 for v in before.values())
    cluster.sh("pause")
    r = httpx.post(f"{proxy}/series/{IDS[0]}/append", json={"values": [1.0]})
    assert r.status_code == 503  # changes refused while paused; reads go on
    assert httpx.get(f"{proxy}/series/{IDS[0]}").status_code == 200
    new_urls = cluster.sh("replicas", "4").splitlines()[-1]
    ring4 = Ring([u.split("//")[1] for u in new_urls.split(",")])
    changed = {sid for sid in IDS if ring3.owner(sid) != ring4.owner(sid)}
    assert 0.15 * N_SERIES <= len(changed) <= 0.35 * N_SERIES, len(changed)
    assert all(ring4.owner(sid) == ring4.servers[3] for sid in changed)  # only onto the new one

    crash_at = random.Random().randint(1, 4 * len(changed))  # 4 steps per move
    first = cluster.rebalance(old_urls, new_urls, crash_at=crash_at)
    assert first.returncode == 3, (crash_at, first.stdout, first.stderr)
    middle = holdings(new_urls)
    assert sorted(middle) == IDS  # nothing lost mid-way: each series whole somewhere
    second = cluster.rebalance(old_urls, new_urls)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["failed"] == {} and report["held"] >= N_SERIES
    assert cluster.rebalance(old_urls, new_urls).stdout.count('"moved": 0') == 1  # nothing left

    after = holdings(new_urls)
    assert sorted(after) == IDS
    assert all(len(v) == 1 for v in after.values()), {k: v for k, v in after.items() if len(v) > 1}
    assert all(after[sid] == [ring4.owner(sid)] for sid in IDS)
    moved = {sid for sid in IDS if after[sid] != before[sid]}
    assert moved == changed  # exactly the series whose owner changed

    assert cluster.up(4) == proxy  # the proxy on the new ring
    cluster.sh("resume")
    assert httpx.get(proxy + "/cluster/ring").json()["servers"] == ring4.servers
    assert forecasts(proxy, ring4) == reference  # bit-identical after the move
    # and the moved series keep streaming like the single server's
    df = frame(3)
    with Client(proxy, ring="proxy") as c:
        got = c.append(df)
    with Client(single.url) as c:
        want = c.append(df)
    pd.testing.assert_frame_equal(got, want)
    assert forecasts(proxy, ring4) == forecasts(single.url)
    print(f"cluster test: {time.time() - start:.1f} s, crash at step {crash_at}, "
          f"{len(changed)} of {N_SERIES} moved")

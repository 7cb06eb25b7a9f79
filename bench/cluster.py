"""Appends per second through a cluster's proxy (deploy/local.sh: replicas behind nginx on
loopback) with 1, 2 and 3 replicas, side by side in one run, and one replica without the proxy.

    python -m bench.cluster [--replicas 1 2 3] [--seconds 10] [--warmup 2] [--concurrency 64]
                            [--out bench/results/cluster.json]

Per case: a fresh cluster (`deploy/local.sh up N`, each replica `--device cpu` with its own data
directory, `--fsync always`: every append is in the write-ahead log and fsynced before its
answer), one series per client worker created first (64 + (w mod 32) points, so the appends
complete patches at different moments), then single-point appends `POST /series/{id}/append` from
--concurrency keep-alive connections (bench.http's raw asyncio client) for --seconds after
--warmup. Reported: appends/s, client-side latency p50/p99, and how busy the machine's cores were
(from /proc/stat: replicas, nginx, and the load generator together).

The load generator, nginx and every replica share this machine's cores: on a 2-core machine the
cores, not the replicas, are the limit, and adding replicas cannot add throughput there (it adds
processes competing for the same two cores). docs/benchmarks.md has the figures and what N
machines would hold on paper."""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.common import cpu_name, write_json
from bench.http import Workload, run_raw, walk

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "deploy" / "local.sh"


def free_base(span: int = 8) -> int:
    for _ in range(200):
        base = random.randint(20_000, 60_000)
        socks = []
        try:
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


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def post(url: str, body: dict) -> None:
    import urllib.request
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200


def measure(port: int, workers: int, seconds: float, warmup: float, prefix: str) -> dict:
    ids = [f"{prefix}-w{w:03d}" for w in range(workers)]
    for w, sid in enumerate(ids):
        post(f"http://127.0.0.1:{port}/series/{sid}/append", {"values": walk(64 + w % 32, 3000 + w)})
    bodies = {sid: [json.dumps({"values": [v]}).encode() for v in walk(64, 1000 + i)]
              for i, sid in enumerate(ids)}
    load = Workload("single", lambda w: f"/series/{ids[w]}/append", lambda w: bodies[ids[w]], 1,
                    workers)
    spans, marks = run_raw(port, load, warmup, seconds,
                           lambda: {"cpu0": cpu_busy(), "wall0": time.perf_counter()},
                           lambda: {"cpu1": cpu_busy(), "wall1": time.perf_counter()})
    flat = [s for w in spans for s in w]
    elapsed = max(e for _, e in flat) - marks["t0"]
    lat = np.array([e - s for s, e in flat]) * 1e3
    (b0, t0), (b1, t1) = marks["cpu0"], marks["cpu1"]
    cores = os.cpu_count() or 1
    return {"appends": len(flat), "seconds": round(elapsed, 3),
            "appends_per_s": round(len(flat) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "machine_cpu_busy": round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else None,
            "machine_cores_busy": round(cores * (b1 - b0) / (t1 - t0), 2) if t1 > t0 else None}


def run_case(n: int | None, args, workdir: Path) -> dict:
    """n replicas behind the proxy; None: one replica addressed directly (no proxy)."""
    replicas = n or 1
    env = dict(os.environ, RIMER_CLUSTER_DIR=str(workdir / f"cluster-{n or 'direct'}"),
               RIMER_CLUSTER_PORT=str(free_base()), PYTHON=sys.executable,
               RIMER_REPLICA_ARGS="--device cpu")
    try:
        done = subprocess.run(["bash", str(LOCAL), "up", str(replicas)], env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"local.sh up {replicas}: {done.stderr}")
        port = int(done.stdout.strip().splitlines()[-1].rsplit(":", 1)[1])
        if n is None:
            port += 1  # replica 0 itself
        row = measure(port, args.concurrency, args.seconds, args.warmup, f"c{n}")
    finally:
        subprocess.run(["bash", str(LOCAL), "down"], env=env, capture_output=True, timeout=300)
    return {"case": f"{n} replica(s) via the proxy" if n else "1 replica, no proxy",
            "replicas": replicas, "proxy": n is not None, "concurrency": args.concurrency, **row}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--no-direct", action="store_true", help="skip the case without the proxy")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cluster.json")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rimer-bench-cluster-") as tmp:
        cases = ([] if args.no_direct else [None]) + args.replicas
        for n in cases:
            rows.append(run_case(n, args, Path(tmp)))
            r = rows[-1]
            print(f"{r['case']:<28} {r['appends_per_s']:>9.1f} appends/s  p50 {r['p50_ms']:>7.2f} ms"
                  f"  p99 {r['p99_ms']:>7.2f} ms  cores busy {r['machine_cores_busy']}"
                  f" of {os.cpu_count()}", flush=True)
    result = {"benchmark": "cluster", "created": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
              "note": ("load generator, nginx and replicas share this machine's cores; single-point "
                       "appends, --fsync always, one series per connection"),
              "seconds": args.seconds, "warmup": args.warmup, "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

"""What sharing the interpreter lock costs the batcher's worker in a columnar bulk ingest.

    python -m bench.gil_convoy [--weights W] [--requests 150] [--rounds 2] [--out bench/out/gil_convoy.json]

The served columnar ingest (bench/http.py, 1,000 series x 1 point, one client) is bound by the
batcher's worker: ~95% busy, ~7.7 ms a request, where the same engine calls alone take ~5.3 ms.
This measures the difference in one process, side by side: the engine applies the bulk ingest
and steps the deferred patches (`Engine.append_columns` then `settle_some` until none waits, as
the worker does) alone, and then with a second thread doing what the event loop does for each
request in bursts (parsing the request's JSON body twice and a little Python, then sleeping
3 ms: ~0.3 ms of work holding the lock per burst, as py-spy --gil saw the served main thread
hold it). The worker's time per request with the competitor, minus alone, minus the
competitor's own work per request (which the lock serialises in any case), is the convoy: the
worker waiting to get the lock back after each operator that lets it go (ONNX Runtime, every
torch operator, NumPy loops over 500 elements) whenever the other thread took it meanwhile.

Rounds alternate alone / with the competitor. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import cpu_name, write_json

SWITCH_US = 50  # the server's --gil-switch-us default


class Competitor(threading.Thread):
    """Bursts of lock-holding Python (two parses of a 1,000-series columnar body and a loop),
    3 ms apart, until stopped; `work` is the time its bursts took run alone."""

    def __init__(self, body: bytes):
        super().__init__(daemon=True)
        self.body, self.stop, self.bursts = body, threading.Event(), 0

    def burst(self) -> None:
        for _ in range(2):
            json.loads(self.body)
            sum(range(2000))

    def run(self) -> None:
        while not self.stop.is_set():
            self.burst()
            self.bursts += 1
            time.sleep(0.003)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="default: the service's default weights")
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=150, help="timed requests per case and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench/out/gil_convoy.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sys.setswitchinterval(SWITCH_US * 1e-6)
    from service.engine.facade import Engine
    from service.settings import DEFAULT_WEIGHTS

    weights = str(args.weights or DEFAULT_WEIGHTS)
    engine = Engine.load(weights, "cpu", 2 * args.series, backend="auto")
    if engine.backend != "onnx" or not engine.defer_steps():
        raise SystemExit(f"needs the onnx backend with deferred steps (got {engine.backend})")
    n = args.series
    ids = [f"s{i:05d}" for i in range(n)]
    rng = np.random.default_rng(0)
    sizes = [600 + i % 32 for i in range(n)]  # (staggered: ~1/32 of the series complete a patch per request)
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    engine.append_columns(ids, bounds, np.cumsum(rng.standard_normal(bounds[-1])), [{}] * n)
    one = list(range(n + 1))
    body = json.dumps({"ids": ids, "offsets": list(range(n)),
                       "values": [round(float(v), 4) for v in rng.standard_normal(n)]}).encode()

    def requests(count: int) -> float:
        t0 = time.perf_counter()
        for _ in range(count):
            engine.append_columns(ids, one, rng.standard_normal(n), [{}] * n)
            while engine.settle_some(64):
                pass
        return (time.perf_counter() - t0) / count

    probe = Competitor(body)
    probe.burst()
    t0 = time.perf_counter()
    for _ in range(50):
        probe.burst()
    burst_s = (time.perf_counter() - t0) / 50

    requests(30)  # warm-up
    rows = []
    for r in range(args.rounds):
        alone = requests(args.requests)
        comp = Competitor(body)
        comp.start()
        t0 = time.perf_counter()
        shared = requests(args.requests)
        wall = time.perf_counter() - t0
        comp.stop.set()
        comp.join()
        work = comp.bursts * burst_s / args.requests  # the competitor's own work per request
        rows.append({"round": r + 1, "alone_ms": alone * 1e3, "shared_ms": shared * 1e3,
                     "competitor_work_ms": work * 1e3, "bursts_per_request": comp.bursts / args.requests,
                     "convoy_ms": (shared - alone - work) * 1e3, "wall_s": wall})
    print(f"{'round':>5} {'alone ms':>9} {'shared ms':>10} {'competitor work ms':>19} {'convoy ms':>10}")
    for row in rows:
        print(f"{row['round']:5d} {row['alone_ms']:9.2f} {row['shared_ms']:10.2f} "
              f"{row['competitor_work_ms']:19.2f} {row['convoy_ms']:10.2f}")
    result = {"bench": "gil_convoy", "cpu": cpu_name(), "weights": weights, "series": n,
              "switch_interval_us": SWITCH_US, "burst_ms": burst_s * 1e3, "rounds": rows,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()

"""Small appends while one large append runs: does one client's upload hold up everyone else?

    python -m bench.large_append [--points 500000] [--small 20] [--out bench/out/large_append.json]

Starts `python -m service --device cpu` three times (shipped default weights, micro-batching on,
its default 2 ms window): with the default --batch-max-points (a large append is planned and
computed off the event loop and the batcher's worker), the same with an ISO timestamp per value
in the large append (checking those takes seconds), and with --batch-max-points above the large
append's size (it goes through the batcher's one worker and is planned on the event loop, as every
append was before the option existed). On each: one client sends a single append of --points
values to a new series; meanwhile another sends --small one-point appends (with a 4-point
forecast) to another series, one after the other, and times each. Prints the large append's time
and the small ones' latency (median and max), and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import cpu_name, write_json
from bench.http import Server, git_state, http_post, walk


def iso_hours(n: int) -> list[str]:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    return [(start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ") for i in range(n)]


def run(args: list[str], points: int, small: int, log_dir: str, name: str,
        timestamps: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    server = Server(args, env, log_dir, name)
    try:
        url = server.url
        status, _ = http_post(url + "/series/small/append",
                              json.dumps({"values": walk(64, 1)}).encode())
        assert status == 200, status
        big = {"values": walk(points, 2)}
        if timestamps:
            big["timestamps"] = iso_hours(points)
        big_body = json.dumps(big).encode()
        large: dict = {}

        def send_large():
            t0 = time.perf_counter()
            large["status"], _ = http_post(url + "/series/large/append", big_body, timeout=600)
            large["seconds"] = time.perf_counter() - t0

        t = threading.Thread(target=send_large)
        t.start()
        time.sleep(1.0)  # the large request is parsed and computing by now
        latencies = []
        for i in range(small):
            body = json.dumps({"values": [float(i % 7)], "horizon": 4}).encode()
            t0 = time.perf_counter()
            status, _ = http_post(url + "/series/small/append", body)
            latencies.append(time.perf_counter() - t0)
            assert status == 200, status
        during = t.is_alive()
        t.join()
        assert large["status"] == 200, large
        return {"server_args": args, "large_points": points, "large_timestamps": timestamps,
                "large_body_bytes": len(big_body), "large_seconds": large["seconds"],
                "small_requests": small, "small_all_while_large_ran": during,
                "small_median_ms": 1e3 * statistics.median(latencies),
                "small_max_ms": 1e3 * max(latencies)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=500_000)
    ap.add_argument("--small", type=int, default=20)
    ap.add_argument("--out", default="bench/out/large_append.json")
    args = ap.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as logs:
        for k, (name, extra, stamped) in enumerate((
                ("own thread (default)", [], False),
                ("own thread, timestamps", [], True),
                ("through the batcher", ["--batch-max-points", str(args.points)], False))):
            rows[name] = run(extra, args.points, args.small, logs, f"server{k}", stamped)
    print(f"{'large append':<24} {'large s':>8} {'small p50 ms':>13} {'small max ms':>13}  all during")
    for name, r in rows.items():
        print(f"{name:<24} {r['large_seconds']:>8.1f} {r['small_median_ms']:>13.1f} "
              f"{r['small_max_ms']:>13.1f}  {r['small_all_while_large_ran']}")
    result = {"benchmark": "large_append", "cpu": cpu_name(), "cpus": os.cpu_count(),
              "commit": git_state(), "cases": rows}
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()

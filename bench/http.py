"""HTTP throughput and latency of streaming appends against a real server on loopback.

    python -m bench.http [--seconds 5] [--warmup 1] [--concurrency 1 16 64] [--bulk-concurrency 1 4]
                         [--bulk-series 1000] [--forecast-concurrency 1] [--forecast-points 512]
                         [--client raw|httpx] [--out bench/out/http.json]
    python -m bench.http --quick          # smoke run: tiny durations, fewer series

Starts `python -m service --device cpu` (shipped default weights unless --weights) as a subprocess
on a free loopback port, waits for /readyz, then measures, each case after a warm-up with the same
connections (keep-alive, one connection per client worker):
  1. single appends, `POST /series/{id}/append` with `{"values": [x]}`, at each --concurrency;
     worker w appends to its own series, created beforehand with --initial-points + (w mod 32)
     points (so forecasts are possible and the workers' patches complete at different moments);
  2. bulk appends, `POST /series/append` with --bulk-series series x 1 point per request, at each
     --bulk-concurrency; each bulk worker has its own series, created beforehand likewise
     staggered (about 1/32 of them complete a patch, running the network, in each request);
     in both forms, one after the other on the same series: per item (`{"series": [{"id",
     "values"}, ...]}`, case `bulk`) and columnar (`{"ids", "offsets", "values"}`, case
     `columnar`), and the ratio of their throughputs (`bulk_forms` in the JSON);
  3. stateless forecasts, `POST /forecast` of one series of --forecast-points points (a new random
     walk per request, of a cycle of 8), horizon 96, at each --forecast-concurrency (none: skipped);
     its points/s are history points consumed;
  4. micro-batching: single appends at the largest --concurrency on a second server started with
     `--batch-window-ms 0` (off), against the same case on the first (`--batch-window-ms 2`,
     the default), and the ratio of their throughputs.
Per case: requests/s, points/s, client-side latency p50/p99 (send to last response byte), the
server's mean latency from its own histogram, the server's and the client's CPU use, and (batching
on) the mean requests per engine batch. Prints a table and writes JSON.

The client (`raw`: one asyncio loop, a minimal HTTP/1.1 keep-alive client, to spend as little CPU
as possible; `httpx`: one thread with its own httpx.Client per worker) runs on the same machine as
the server and shares its cores: on a small machine the figures include that contention.

Run it as a module (`python -m bench.http`) or a script (`python bench/http.py`).
"""

from __future__ import annotations

# ruff: noqa: E402  (the imports below come after the sys.path fix for script runs)
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script, bench/ is first on sys.path and this file would shadow the stdlib's `http`.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from importlib import metadata

import numpy as np

from bench.common import cpu_name, machine_probe_ms, write_json

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SINGLE_PATH = "/series/{}/append"
BULK_PATH = "/series/append"
FORECAST_PATH = "/forecast"
SHARED_NOTE = ("client and server share this machine's {cpus} CPU cores (other jobs may be running "
               "too): throughput and latency include the client's own CPU use and that contention")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes, timeout: float = 300.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(url: str) -> dict[str, float]:
    """The server's /metrics as {'name{labels}': value}."""
    status, body = http_get(url + "/metrics")
    out = {}
    if status != 200:
        return out
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def metric(m: dict[str, float], name: str, route: str | None = None) -> float:
    return sum(v for k, v in m.items()
               if k.split("{", 1)[0] == name and (route is None or f'route="{route}"' in k))


class Server:
    """`python -m service` on a free loopback port; its output goes to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: str, name: str):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.args = ["--host", HOST, "--port", str(self.port), "--device", "cpu", *args]
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "service", *self.args], cwd=ROOT,
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if http_get(self.url + "/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in 120 s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ---- workloads: what each worker sends ---------------------------------------------------------

def walk(n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return [round(float(v), 4) for v in 50 + 5 * np.sin(t / 7 + seed) + np.cumsum(rng.normal(0, 0.3, n))]


class Workload:
    """Per worker: a cycle of (path, body bytes) requests, each carrying `points` values."""

    def __init__(self, name: str, path_of, bodies_of, points: int, workers: int):
        self.name, self.points, self.workers = name, points, workers
        self.requests = [[(path_of(w), b) for b in bodies_of(w)] for w in range(workers)]


def single_ids(workers: int, prefix: str) -> list[str]:
    return [f"{prefix}-w{w:03d}" for w in range(workers)]


def single_workload(ids: list[str], cycle: int = 64) -> Workload:
    bodies = {sid: [json.dumps({"values": [v]}).encode() for v in walk(cycle, 1000 + i)]
              for i, sid in enumerate(ids)}
    return Workload("single", lambda w: SINGLE_PATH.format(ids[w]), lambda w: bodies[ids[w]],
                    1, len(ids))


def bulk_ids(worker: int, n: int, prefix: str) -> list[str]:
    return [f"{prefix}-b{worker}-{i:05d}" for i in range(n)]


def bulk_workload(workers: int, n: int, prefix: str, cycle: int = 8) -> Workload:
    def bodies_of(w: int) -> list[bytes]:
        ids = bulk_ids(w, n, prefix)
        values = np.asarray(walk(cycle * n, 2000 + w)).reshape(cycle, n)
        return [json.dumps({"series": [{"id": sid, "values": [float(v)]}
                                       for sid, v in zip(ids, row)]}).encode() for row in values]
    return Workload("bulk", lambda w: BULK_PATH, bodies_of, n, workers)


def columnar_workload(workers: int, n: int, prefix: str, cycle: int = 8) -> Workload:
    """The bulk workload's requests (the same series and values) in the columnar form."""
    def bodies_of(w: int) -> list[bytes]:
        ids = bulk_ids(w, n, prefix)
        values = np.asarray(walk(cycle * n, 2000 + w)).reshape(cycle, n)
        return [json.dumps({"ids": ids, "offsets": list(range(n)),
                            "values": [float(v) for v in row]}).encode() for row in values]
    return Workload("columnar", lambda w: BULK_PATH, bodies_of, n, workers)


def forecast_workload(workers: int, points: int, cycle: int = 8) -> Workload:
    def bodies_of(w: int) -> list[bytes]:
        return [json.dumps({"series": [{"id": "a", "values": walk(points, 5000 + 100 * w + i)}],
                            "horizon": 96}).encode() for i in range(cycle)]
    return Workload("forecast", lambda w: FORECAST_PATH, bodies_of, points, workers)


def create_series(url: str, ids: list[str], initial: int, max_per_request: int = 1000) -> None:
    """Each id gets initial + (its index mod 32) points, in bulk requests."""
    for start in range(0, len(ids), max_per_request):
        items = [{"id": sid, "values": walk(initial + (start + i) % 32, 3000 + start + i)}
                 for i, sid in enumerate(ids[start:start + max_per_request])]
        status, body = http_post(url + BULK_PATH, json.dumps({"series": items}).encode())
        if status != 200:
            raise RuntimeError(f"creating series: {status} {body[:500]!r}")


# ---- clients -----------------------------------------------------------------------------------

class RawConnection:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams (POST, Content-Length bodies)."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 20)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nhost: {HOST}:{self.port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = None
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"response without content-length: {raw[:300]!r}")
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass


def run_raw(port: int, load: Workload, warmup: float, seconds: float, at_start, at_end):
    """Workers on one asyncio loop; returns per worker [(start, end)] of measured requests."""

    async def main():
        conns = [RawConnection(port) for _ in range(load.workers)]
        await asyncio.gather(*(c.open() for c in conns))
        t0 = time.perf_counter() + warmup
        t1 = t0 + seconds
        marks: dict[str, float] = {}
        spans: list[list[tuple[float, float]]] = [[] for _ in range(load.workers)]
        errors: list[str] = []

        async def worker(w: int):
            reqs, i, out = load.requests[w], 0, spans[w]
            while True:
                start = time.perf_counter()
                if start >= t1:
                    return
                path, body = reqs[i % len(reqs)]
                status, data = await conns[w].post(path, body)
                end = time.perf_counter()
                if status != 200:
                    errors.append(f"{status} {data[:300]!r}")
                    return
                if start >= t0:
                    out.append((start, end))
                i += 1

        async def marker():
            await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
            marks.update(await asyncio.to_thread(at_start))  # off the loop: workers go on

        try:
            await asyncio.gather(marker(), *(worker(w) for w in range(load.workers)))
        finally:
            await asyncio.gather(*(c.close() for c in conns))
        if errors:
            raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
        marks.update(at_end())
        marks["t0"] = t0
        return spans, marks

    return asyncio.run(main())


def run_httpx(port: int, load: Workload, warmup: float, seconds: float, at_start, at_end):
    """One thread with its own httpx.Client (keep-alive) per worker."""
    import httpx

    t0 = time.perf_counter() + warmup + 0.5  # the threads' start-up is not measured
    t1 = t0 + seconds
    spans: list[list[tuple[float, float]]] = [[] for _ in range(load.workers)]
    errors: list[str] = []

    def worker(w: int):
        reqs, i, out = load.requests[w], 0, spans[w]
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=300) as client:
            while True:
                start = time.perf_counter()
                if start >= t1:
                    return
                path, body = reqs[i % len(reqs)]
                r = client.post(path, content=body, headers=headers)
                end = time.perf_counter()
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:300]}")
                    return
                if start >= t0:
                    out.append((start, end))
                i += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(load.workers)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, t0 - time.perf_counter()))
    marks = dict(at_start())
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
    marks.update(at_end())
    marks["t0"] = t0
    return spans, marks


# ---- one case ----------------------------------------------------------------------------------

def measure(server: Server, load: Workload, args, case: str, route: str, window_ms: float) -> dict:
    def snapshot():
        return {"wall": time.perf_counter(), "server_cpu": server.cpu_seconds(),
                "client_cpu": time.process_time(), "metrics": scrape(server.url)}

    run = run_raw if args.client == "raw" else run_httpx
    spans, marks = run(server.port, load, args.warmup, args.seconds,
                       lambda: {f"start_{k}": v for k, v in snapshot().items()},
                       lambda: {f"end_{k}": v for k, v in snapshot().items()})
    flat = [s for w in spans for s in w]
    if not flat:
        raise RuntimeError(f"{case}: no request completed in the measured {args.seconds} s")
    t0 = marks["t0"]
    elapsed = max(e for _, e in flat) - t0
    lat = np.array([e - s for s, e in flat]) * 1e3
    n = len(flat)
    m0, m1 = marks["start_metrics"], marks["end_metrics"]
    wall = marks["end_wall"] - marks["start_wall"]
    row = {
        "case": case, "endpoint": f"POST {route}", "concurrency": load.workers,
        "batch_window_ms": window_ms, "points_per_request": load.points,
        "requests": n, "seconds": elapsed,
        "requests_per_s": n / elapsed, "points_per_s": n * load.points / elapsed,
        "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
        "mean_ms": float(lat.mean()),
        "per_worker_requests_min_max": [min(len(w) for w in spans), max(len(w) for w in spans)],
    }
    count = (metric(m1, "rimer_http_request_duration_seconds_count", route)
             - metric(m0, "rimer_http_request_duration_seconds_count", route))
    total = (metric(m1, "rimer_http_request_duration_seconds_sum", route)
             - metric(m0, "rimer_http_request_duration_seconds_sum", route))
    row["server_mean_ms"] = total / count * 1e3 if count else None
    batches = metric(m1, "rimer_batch_requests_count") - metric(m0, "rimer_batch_requests_count")
    if batches:
        row["batches"] = batches
        row["mean_requests_per_batch"] = (metric(m1, "rimer_batch_requests_sum")
                                          - metric(m0, "rimer_batch_requests_sum")) / batches
        row["mean_ops_per_batch"] = (metric(m1, "rimer_batch_series_sum")
                                     - metric(m0, "rimer_batch_series_sum")) / batches
    if marks["start_server_cpu"] is not None and marks["end_server_cpu"] is not None:
        cpu = marks["end_server_cpu"] - marks["start_server_cpu"]
        row["server_cpu_cores"] = cpu / wall
        row["server_cpu_us_per_request"] = cpu / count * 1e6 if count else None
    row["client_cpu_cores"] = (marks["end_client_cpu"] - marks["start_client_cpu"]) / wall
    return row


def fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def print_table(rows: list[dict]) -> None:
    print(f"{'case':<8} {'conc':>4} {'window':>7} {'req/s':>8} {'points/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'srv ms':>7} {'req/batch':>9} {'srv CPU':>7} {'cli CPU':>7}")
    for r in rows:
        window = f"{r['batch_window_ms']:g} ms" if r["batch_window_ms"] else "off"
        per_batch = f"{r['mean_requests_per_batch']:.1f}" if "mean_requests_per_batch" in r else "-"
        srv = fmt_ms(r["server_mean_ms"]) if r.get("server_mean_ms") is not None else "-"
        srv_cpu = f"{r['server_cpu_cores']:.2f}" if "server_cpu_cores" in r else "-"
        print(f"{r['case']:<8} {r['concurrency']:>4} {window:>7} {r['requests_per_s']:>8.0f} "
              f"{r['points_per_s']:>9.0f} {fmt_ms(r['p50_ms']):>7} {fmt_ms(r['p99_ms']):>7} "
              f"{srv:>7} {per_batch:>9} {srv_cpu:>7} {r['client_cpu_cores']:>7.2f}")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "fastapi", "uvicorn", "pydantic", "starlette", "httpx", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_state() -> str | None:
    """`git describe --always --dirty` of the served tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def server_torch_threads(env: dict[str, str], server_args: list[str]) -> int:
    """The server's torch (and ONNX Runtime) threads: its `--torch-threads` (default 1), or for
    0 torch's default, torch.get_num_threads() in a process started like the server."""
    from service.settings import parse

    chosen = parse(server_args).torch_threads
    if chosen:
        return chosen
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


# Long (~120 lines): ~40 of them the command line's arguments, the rest one case after another,
# kept in one place so the benchmark reads top to bottom as it runs.
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per case")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each case")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64],
                    help="client workers for single appends; the largest is also run unbatched")
    ap.add_argument("--bulk-concurrency", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--bulk-series", type=int, default=1000, help="series (1 point each) per bulk request")
    ap.add_argument("--forecast-concurrency", type=int, nargs="*", default=[1],
                    help="client workers for stateless forecasts (none: skip the case)")
    ap.add_argument("--forecast-points", type=int, default=512,
                    help="history points per stateless forecast request")
    ap.add_argument("--initial-points", type=int, default=40,
                    help="points each series is created with (plus its index mod 32)")
    ap.add_argument("--batch-window-ms", type=float, default=2.0,
                    help="the batching server's window (the unbatched one runs with 0)")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw")
    ap.add_argument("--weights", default=None, help="served checkpoint (default: the server's)")
    ap.add_argument("--server-threads", type=int, default=None,
                    help="OMP_NUM_THREADS for the servers (default: torch's own choice)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for both servers (repeatable)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 0.5 s cases, 0.2 s warm-up, 200 bulk series, bulk at concurrency 1")
    ap.add_argument("--note", default="", help="free text kept in the JSON (what was served, why)")
    ap.add_argument("--out", default="bench/out/http.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = min(args.seconds, 0.5), min(args.warmup, 0.2)
        args.bulk_series, args.bulk_concurrency = min(args.bulk_series, 200), args.bulk_concurrency[:1]
    if args.batch_window_ms <= 0:
        ap.error("--batch-window-ms must be positive (the second server runs with 0)")
    if args.bulk_series > 1024:
        ap.error("--bulk-series above the server's default --max-series-per-request (1024)")
    top = max(args.concurrency)
    max_series = top + sum(args.bulk_concurrency) * args.bulk_series + 1000
    server_args = ["--max-series", str(max_series)] + (["--weights", args.weights] if args.weights else [])
    server_args += args.server_arg
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    if args.server_threads:
        env["OMP_NUM_THREADS"] = str(args.server_threads)
    cpus = os.cpu_count()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    probe_start = machine_probe_ms()
    git = git_state()  # before the servers start: the tree they serve
    note = SHARED_NOTE.format(cpus=cpus)
    threads = server_torch_threads(env, server_args)
    print(f"bench.http: {note}")
    if load_start:
        print(f"load average at start (1/5/15 min): {' '.join(f'{x:.2f}' for x in load_start)}")
    print(f"server torch threads {threads}; client {args.client}; {args.seconds:g} s per case after "
          f"{args.warmup:g} s warm-up")
    rows: list[dict] = []
    servers: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as log_dir:
        for window in (args.batch_window_ms, 0.0):
            batching = window > 0
            sargs = server_args + ["--batch-window-ms", str(window)]
            t = time.perf_counter()
            server = Server(sargs, env, log_dir, f"window{window:g}")
            startup = time.perf_counter() - t
            try:
                status, body = http_get(server.url + "/readyz")
                ready = json.loads(body)
                servers.append({"args": server.args, "startup_s": startup, "readyz": ready})
                prefix = "on" if batching else "off"
                ids = single_ids(top, prefix)
                create_series(server.url, ids, args.initial_points)
                for c in (args.concurrency if batching else [top]):
                    rows.append(measure(server, single_workload(ids[:c]), args, "single",
                                        "/series/{series_id}/append", window))
                created = 0  # bulk workers whose series exist (the next case reuses them)
                for c in (args.bulk_concurrency if batching else []):
                    create_series(server.url, [s for w in range(created, c)
                                               for s in bulk_ids(w, args.bulk_series, prefix)],
                                  args.initial_points)
                    created = max(created, c)
                    # the two forms of one workload, side by side (the same series, values
                    # and order of requests): per item, then columnar
                    rows.append(measure(server, bulk_workload(c, args.bulk_series, prefix), args,
                                        "bulk", BULK_PATH, window))
                    rows.append(measure(server, columnar_workload(c, args.bulk_series, prefix),
                                        args, "columnar", BULK_PATH, window))
                for c in (args.forecast_concurrency if batching else []):
                    rows.append(measure(server, forecast_workload(c, args.forecast_points), args,
                                        "forecast", FORECAST_PATH, window))
            except BaseException:
                print(f"server log tail:\n{server.log_tail()}", file=sys.stderr)
                raise
            finally:
                server.stop()
    on = next(r for r in rows if r["case"] == "single" and r["concurrency"] == top and r["batch_window_ms"])
    off = next(r for r in rows if r["case"] == "single" and r["concurrency"] == top
               and not r["batch_window_ms"])
    ratio = on["requests_per_s"] / off["requests_per_s"]
    print_table(rows)
    forms = []
    for r in rows:
        if r["case"] == "columnar":
            item = next(b for b in rows if b["case"] == "bulk" and b["concurrency"] == r["concurrency"])
            forms.append({"concurrency": r["concurrency"], "series_per_request": r["points_per_request"],
                          "per_item_points_per_s": item["points_per_s"],
                          "columnar_points_per_s": r["points_per_s"],
                          "ratio": r["points_per_s"] / item["points_per_s"]})
            print(f"bulk ingest, {r['points_per_request']} series x 1 point, {r['concurrency']} "
                  f"client(s): per item {item['points_per_s']:.0f} points/s, columnar "
                  f"{r['points_per_s']:.0f} points/s: x{forms[-1]['ratio']:.2f}")
    print(f"micro-batching at concurrency {top}: {on['requests_per_s']:.0f} req/s with a "
          f"{args.batch_window_ms:g} ms window, {off['requests_per_s']:.0f} req/s off: x{ratio:.2f}")
    print("req/s, points/s, p50/p99: measured by the client (send to last byte); srv ms: the server's "
          "own mean (its histogram); srv/cli CPU: cores busy in the server / client process")
    probe_end = machine_probe_ms()
    print(f"machine probe (bench.common.machine_probe_ms, lower is faster): {probe_start:.1f} ms "
          f"before, {probe_end:.1f} ms after")
    result = {
        "benchmark": "http", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "cpu": cpu_name(), "cpu_count": cpus,
                    "load_average_at_start": load_start,
                    "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "probe_ms_at_start": probe_start, "probe_ms_at_end": probe_end},
        "note": note, "user_note": args.note, "git": git,
        "server": {"device": "cpu", "torch_threads": threads,
                   "omp_num_threads": env.get("OMP_NUM_THREADS"),
                   "weights": args.weights or "server default", "runs": servers},
        "client": {"kind": args.client, "connections": "one keep-alive connection per worker",
                   "same_machine": True},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "note")},
        "versions": versions(),
        "cases": rows,
        "bulk_forms": forms,
        "batching": {"concurrency": top, "window_ms": args.batch_window_ms,
                     "on_requests_per_s": on["requests_per_s"],
                     "off_requests_per_s": off["requests_per_s"], "ratio": ratio},
    }
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()

"""Recovery time: replaying a write-ahead log one append at a time against in batches.

    python -m bench.recovery [--series 1000] [--rounds 100] [--reps 2] [--out bench/out/recovery.json]

Builds a log the way bulk ingest writes one: --series series created with 40 + (index mod 32)
points each, then --rounds bulk appends of one point to every series (one `Engine.apply_batch`
per round, the engine's default onnx backend on the CPU, a `Store` with `--fsync interval`), and
closes it without a snapshot, as a crash would. Then recovers it into fresh engines, alternating
--reps times: replay in batches (what `Store.open` does where the engine found its backend
batch-invariant) and one append at a time (the same engine with `batch_invariant` off, which is
what the torch backend gets). Checks that both recover every series' forecast bit for bit as it
was before the "crash". Prints records per second for each and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from bench.common import cpu_name, write_json
from bench.http import git_state
from service.engine import Engine, Op
from service.store import Store

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights" / "rimer-general-d128"


def build_log(directory: Path, series: int, rounds: int) -> dict[str, tuple]:
    """Write the log; the forecasts of a sample of series before the 'crash'."""
    engine = Engine.load(str(WEIGHTS), "cpu", series + 1, "auto")
    store = Store(directory, engine, snapshot_interval_s=0, fsync="interval")
    store.open()
    rng = np.random.default_rng(0)
    ids = [f"s{i:05d}" for i in range(series)]
    engine.apply_batch([[Op(sid, [float(v) for v in rng.normal(50, 1, 40 + i % 32)])
                         for i, sid in enumerate(ids)]])
    for _ in range(rounds):
        engine.apply_batch([[Op(sid, [float(v)]) for sid, v in zip(ids, rng.normal(50, 1, series))]])
    sample = ids[:: max(1, series // 50)]
    before = {i: engine.forecast_series(i, 8) for i in sample}
    store.close(snapshot=False)
    return before


def recover(directory: Path, series: int, batched: bool, before: dict) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rimer-recovery-"))
    try:
        shutil.copytree(directory, work, dirs_exist_ok=True)  # recovery rewrites the directory
        engine = Engine.load(str(WEIGHTS), "cpu", series + 1, "auto")
        engine.batch_invariant = engine.batch_invariant and batched
        store = Store(work, engine, snapshot_interval_s=0)
        t0 = time.perf_counter()
        stats = store.open()
        seconds = time.perf_counter() - t0
        same = {i: engine.forecast_series(i, 8) for i in before} == before
        store.close(snapshot=False)
        return {"seconds": seconds, "records": stats["replayed"], "forecasts_bit_identical": same,
                "backend": engine.backend}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="bench/out/recovery.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    log_dir = Path(tempfile.mkdtemp(prefix="rimer-log-"))
    try:
        before = build_log(log_dir, args.series, args.rounds)
        runs = {"batched": [], "one_at_a_time": []}
        for _ in range(args.reps):
            runs["batched"].append(recover(log_dir, args.series, True, before))
            runs["one_at_a_time"].append(recover(log_dir, args.series, False, before))
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    summary = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    records = runs["batched"][0]["records"]
    print(f"log: {records} records ({args.series} series, {args.rounds} one-point rounds), "
          f"backend {runs['batched'][0]['backend']}")
    print(f"{'replay':16} {'median s':>9} {'records/s':>10}  bit-identical")
    for k, v in runs.items():
        print(f"{k:16} {summary[k]:9.2f} {records / summary[k]:10.0f}  "
              f"{all(r['forecasts_bit_identical'] for r in v)}")
    ratio = summary["one_at_a_time"] / summary["batched"]
    print(f"batched replay is {ratio:.2f}x faster")
    result = {"benchmark": "recovery", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_name(), "python": platform.python_version()},
              "git": git_state(), "settings": vars(args), "records": records, "runs": runs,
              "median_seconds": summary, "speedup": ratio}
    out = Path(args.out)
    write_json(out if out.is_absolute() else ROOT / out, result)
    return result


if __name__ == "__main__":
    main()

"""Soak: resident memory while states spill, for --minutes, and forecasts after spills bit for bit.

    python -m bench.soak [--minutes 30] [--series 640] [--capacity 64] [--host-capacity 128]
                         [--snapshot-s 60] [--out bench/results/soak.json]

One engine in this process (the default weights, the CPU's default backend, one torch thread)
with --series streaming series, ten times its --capacity device slots: the rest spill to host
memory (--host-capacity) and on to files. A data directory (a `Store`, `--fsync interval`) takes
a snapshot every --snapshot-s seconds. The load is round-robin over the series, deterministic
from --seed: mostly one-point appends, every 7th a 33-point one (completing a patch), forecasts
with some appends and forecast-only requests; every access takes a state back from a lower tier
and spills another. RSS (/proc/self/status VmRSS) is sampled every --sample-s seconds; after
--warmup-minutes the samples' min and max must lie within ±10% of their mean (and the slope of a
line through them is reported).

Bit-identity: a second process replays the same requests into an engine that holds every series
on its device (nothing spills) and no data directory; each series' forecasts are hashed in order
on both sides (SHA-256 of their float64 bytes) and must be equal, and so must a last forecast of
every series. Writes JSON (samples, figures, pass/fail) and a PNG plot, and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing as mp
import platform
import random
import shutil
import struct
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.common import cpu_name, write_json
from service.engine import Engine
from service.settings import DEFAULT_WEIGHTS
from service.store import Store

ROOT = Path(__file__).resolve().parent.parent
FIRST_POINTS = 96  # round 0: each series' first append
LAST_HORIZON = 24


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def request(seed: int, series: int, rnd: int) -> tuple[list[float] | None, int | None]:
    """Round `rnd`'s request for series index `series`: (values or None, horizon or None)."""
    rng = random.Random((seed * 1_000_003 + series) * 1_000_003 + rnd)
    if rnd == 0:
        n = FIRST_POINTS
    elif (rnd + 2 * series) % 11 == 0:
        return None, 16  # a forecast only
    else:
        n = 33 if (rnd + series) % 7 == 0 else 1
    base = rnd * 33 + series
    values = [10 * math.sin(0.2 * (base + j)) + (series % 13) + rng.gauss(0, 0.5) for j in range(n)]
    horizon = 24 if rnd > 0 and (3 * rnd + series) % 5 == 0 else None
    return values, horizon


def run_one(engine: Engine, sid: str, values, horizon):
    if values is None:
        return engine.forecast_series(sid, horizon)[1]
    return engine.append(sid, values, horizon)[1]


def digest_update(digests: list, k: int, mean) -> None:
    if mean is not None:
        digests[k].update(struct.pack(f"<{len(mean)}d", *mean))


def reference(conn, weights: str, series: int, seed: int) -> None:
    """The child: the same requests into an engine that holds every series on its device, up to
    the count the parent announces; sends back each series' forecast digest and last forecast."""
    torch.set_num_threads(1)
    engine = Engine.load(weights, "cpu", max_series=series, capacity=series)
    ids = [f"soak-{k:05d}" for k in range(series)]
    digests = [hashlib.sha256() for _ in range(series)]
    done, target, final = 0, 0, False
    while True:
        if done >= target:
            if final:
                break
            msg = conn.recv()
            target, final = msg["ops"], msg["final"]
            continue
        rnd, k = divmod(done, series)
        values, horizon = request(seed, k, rnd)
        digest_update(digests, k, run_one(engine, ids[k], values, horizon))
        done += 1
    last = {sid: engine.forecast_series(sid, LAST_HORIZON)[1] for sid in ids}
    conn.send({"digests": [d.hexdigest() for d in digests], "last": last,
               "spilled": engine.spill is not None})
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup-minutes", type=float, default=3.0)
    ap.add_argument("--series", type=int, default=640)
    ap.add_argument("--capacity", type=int, default=64)
    ap.add_argument("--host-capacity", type=int, default=128)
    ap.add_argument("--snapshot-s", type=float, default=60.0, help="0: no data directory")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak.json")
    ap.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    args = ap.parse_args()
    torch.set_num_threads(1)

    # The reference process first (spawned: a clean interpreter), then this one's engine.
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    ref = ctx.Process(target=reference, args=(child, args.weights, args.series, args.seed), daemon=True)
    ref.start()

    work = Path(tempfile.mkdtemp(prefix="rimer-soak-"))
    engine = Engine.load(args.weights, "cpu", max_series=args.series, capacity=args.capacity,
                         host_capacity=args.host_capacity, spill_dir=str(work / "spill"))
    store = None
    snapshots: list[dict] = []
    t0 = time.monotonic()
    if args.snapshot_s > 0:
        store = Store(work / "data", engine, fsync="interval", snapshot_interval_s=args.snapshot_s)
        store.open()
        take = store.snapshot

        def timed_snapshot(force: bool = False):
            before, start = rss_mb(), time.monotonic()
            path = take(force)
            if path is not None:
                snapshots.append({"t_s": round(start - t0, 1), "seconds": round(time.monotonic() - start, 3),
                                  "rss_before_mb": round(before, 1), "rss_after_mb": round(rss_mb(), 1)})
            return path
        store.snapshot = timed_snapshot  # (what the store's snapshot thread calls)

    ids = [f"soak-{k:05d}" for k in range(args.series)]
    digests = [hashlib.sha256() for _ in range(args.series)]
    samples: list[dict] = []
    ops = forecasts = 0
    stop = threading.Event()

    def sample_loop():
        while True:
            sizes = engine.cache_sizes
            samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mb": round(rss_mb(), 2),
                            "ops": ops, **{f"tier_{k}": v for k, v in sizes.items()}})
            if stop.wait(args.sample_s):
                break

    sampler = threading.Thread(target=sample_loop, daemon=True)
    sampler.start()
    deadline = t0 + args.minutes * 60
    last_sent = 0.0
    while time.monotonic() < deadline:
        rnd, k = divmod(ops, args.series)
        values, horizon = request(args.seed, k, rnd)
        digest_update(digests, k, run_one(engine, ids[k], values, horizon))
        ops, forecasts = ops + 1, forecasts + (horizon is not None)
        if time.monotonic() - last_sent > 5:
            parent.send({"ops": ops, "final": False})
            last_sent = time.monotonic()
    stop.set()
    sampler.join()
    elapsed = time.monotonic() - t0
    parent.send({"ops": ops, "final": True})

    last = {sid: engine.forecast_series(sid, LAST_HORIZON)[1] for sid in ids}
    stats = dict(engine.cache_stats)
    spill_counts = {"spills": dict(engine.spill.spills), "loads": dict(engine.spill.loads)}
    if store is not None:
        store.close(snapshot=False)
    engine.close()
    shutil.rmtree(work, ignore_errors=True)
    got = parent.recv()
    ref.join(timeout=60)
    mismatched = [sid for sid, a, b in zip(ids, (d.hexdigest() for d in digests), got["digests"]) if a != b]
    last_mismatched = [sid for sid in ids if last[sid] != got["last"][sid]]

    warm = [s for s in samples if s["t_s"] >= args.warmup_minutes * 60]
    rss = [s["rss_mb"] for s in warm]
    mean = sum(rss) / len(rss) if rss else float("nan")
    lo, hi = (min(rss) / mean - 1, max(rss) / mean - 1) if rss else (float("nan"),) * 2
    slope = _slope([s["t_s"] / 60 for s in warm], rss)
    flat = bool(rss) and -0.10 <= lo and hi <= 0.10
    identical = not mismatched and not last_mismatched and not got["spilled"]
    result = {
        "benchmark": "soak", "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpu": cpu_name(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "backend": engine.backend, "state_bytes": engine.state_bytes},
        "minutes": round(elapsed / 60, 2), "ops": ops, "rounds": round(ops / args.series, 1),
        "cache_stats": stats, **spill_counts,
        "rss_after_warmup": {"samples": len(rss), "mean_mb": round(mean, 1), "min_mb": min(rss, default=None),
                             "max_mb": max(rss, default=None), "min_vs_mean": round(lo, 4),
                             "max_vs_mean": round(hi, 4), "slope_mb_per_min": round(slope, 3),
                             "within_10pct": flat},
        "bit_identical": {"series": len(ids), "forecasts_during": forecasts,
                          "series_with_differing_forecasts": len(mismatched),
                          "last_forecasts_differing": len(last_mismatched), "pass": identical},
        "pass": flat and identical,
        "snapshots": snapshots, "samples": samples,
    }
    write_json(args.out, result)
    plot = args.plot or args.out.with_suffix(".png")
    _plot(plot, samples, snapshots, args, mean, result)
    print(f"\nsoak: {result['minutes']} min, {args.series} series over {args.capacity} device slots "
          f"(+{args.host_capacity} host), {engine.backend}, {ops:,} requests ({result['rounds']} rounds)")
    print("| figure | value |\n| --- | ---: |")
    r = result["rss_after_warmup"]
    print(f"| RSS mean after {args.warmup_minutes:g} min warm-up | {r['mean_mb']} MB |")
    print(f"| RSS min / max vs mean | {100 * lo:+.1f}% / {100 * hi:+.1f}% |")
    print(f"| RSS slope after warm-up | {r['slope_mb_per_min']:+.2f} MB/min |")
    print(f"| snapshots | {len(snapshots)} |")
    loads = spill_counts["loads"]
    print(f"| disk loads / host loads | {loads['disk']:,} / {loads['host']:,} |")
    print(f"| forecasts compared (+ a last one per series) | {forecasts:,} |")
    print(f"| bit-identical to the unspilled reference | {'yes' if identical else 'NO'} |")
    print(f"| pass (±10% and bit-identical) | {'yes' if result['pass'] else 'NO'} |")


def _slope(x: list[float], y: list[float]) -> float:
    if len(x) < 2:
        return float("nan")
    mx, my = sum(x) / len(x), sum(y) / len(y)
    den = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / den if den else float("nan")


def _plot(path: Path, samples, snapshots, args, mean: float, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [s["rss_mb"] for s in samples], lw=1.2, label="RSS")
    ax.axvspan(0, args.warmup_minutes, color="0.9", label="warm-up")
    if not math.isnan(mean):
        ax.axhline(mean, color="k", lw=0.8, ls="--", label=f"mean after warm-up ({mean:.0f} MB)")
        ax.axhspan(0.9 * mean, 1.1 * mean, color="tab:green", alpha=0.08, label="±10%")
    for k, s in enumerate(snapshots):
        ax.axvline(s["t_s"] / 60, color="tab:orange", lw=0.5, alpha=0.6,
                   label="snapshot" if k == 0 else None)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"soak: {args.series} series, {args.capacity} device slots, {args.host_capacity} host; "
                 f"{'pass' if result['pass'] else 'FAIL'}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

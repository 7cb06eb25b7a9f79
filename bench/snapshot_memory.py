"""Peak resident memory of a snapshot: how much RSS rises while `Store.snapshot` runs, and what it
leaves behind.

    python -m bench.snapshot_memory [--series 2005] [--capacity 64] [--host-capacity 256]
                                    [--tree <checkout>] [--out bench/out/snapshot_memory.json]

An engine (default weights, the CPU's default backend, one thread) with --series series of 96
points, --capacity of them on the device, --host-capacity in host memory and the rest in spill
files, and a data directory; then --reps forced snapshots, each with the RSS before, its peak
(VmHWM reset through /proc/self/clear_refs before it; a 1 ms sampler where that is refused) and
after. --tree runs another checkout's service (the code before a change) with this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=2005)
    ap.add_argument("--capacity", type=int, default=64)
    ap.add_argument("--host-capacity", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tree", type=Path, default=None, help="the checkout whose service/ to run")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "snapshot_memory.json")
    args = ap.parse_args()
    if args.tree is not None:
        sys.path.insert(0, str(args.tree.resolve()))
    import torch

    from service.engine import Engine, Op
    from service.settings import DEFAULT_WEIGHTS
    from service.store import Store

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="rimer-snapmem-"))
    weights = ROOT / "weights" / Path(DEFAULT_WEIGHTS).name  # (this checkout's, whatever --tree)
    engine = Engine.load(str(weights), "cpu", max_series=args.series, capacity=args.capacity,
                         host_capacity=args.host_capacity, spill_dir=str(work / "spill"))
    store = Store(work / "data", engine, fsync="interval", snapshot_interval_s=0)
    store.open()
    gen = torch.Generator().manual_seed(0)
    ids = [f"s{k:05d}" for k in range(args.series)]
    for a in range(0, len(ids), 64):
        engine.apply_batch([[Op(i, (torch.randn(96, generator=gen) * 3 + 10).tolist())
                             for i in ids[a:a + 64]]])
    state_mb = engine.state_bytes * args.series / 2**20
    peak, stop = [0.0], threading.Event()

    def sampler():
        while not stop.wait(0.001):
            peak[0] = max(peak[0], status("VmRSS"))

    reps = []
    for _ in range(args.reps):
        engine.append(ids[0], [1.0], None)  # a change since the last snapshot
        time.sleep(0.5)
        before = status("VmRSS")
        hwm = reset_peak()
        peak[0], stop = before, threading.Event()
        t = threading.Thread(target=sampler, daemon=True)
        t.start()
        start = time.perf_counter()
        store.snapshot(force=True)
        seconds = time.perf_counter() - start
        stop.set()
        t.join()
        time.sleep(0.5)
        top = max(peak[0], status("VmHWM")) if hwm else peak[0]
        reps.append({"rss_before_mb": round(before, 1), "peak_mb": round(top, 1),
                     "rise_mb": round(top - before, 1), "rss_after_mb": round(status("VmRSS"), 1),
                     "left_mb": round(status("VmRSS") - before, 1), "seconds": round(seconds, 3),
                     "peak_from": "VmHWM" if hwm else "1 ms sampler"})
    store.close(snapshot=False)
    engine.close()
    result = {"benchmark": "snapshot_memory", "label": args.label, "tree": str(args.tree or ROOT),
              "series": args.series, "capacity": args.capacity, "host_capacity": args.host_capacity,
              "state_mb": round(state_mb, 1), "backend": engine.backend, "reps": reps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.label or 'snapshot'}: {args.series} series ({state_mb:.0f} MB of state), {engine.backend}")
    print("| rep | RSS before | peak | rise | left after | seconds |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for k, r in enumerate(reps, 1):
        print(f"| {k} | {r['rss_before_mb']} MB | {r['peak_mb']} MB | +{r['rise_mb']} MB | "
              f"{r['left_mb']:+} MB | {r['seconds']} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

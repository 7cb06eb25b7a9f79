"""What a forecast from inside a patch costs: a streaming series' forecast from a patch boundary
(its own state) against one from inside a patch (a fresh state over its last 16 whole patches,
`Rimer.realigned_windows`), side by side on one engine.

    python -m bench.realign_cost [--weights W] [--backend auto] [--reps 50]
                                 [--out bench/out/realign_cost.json]

Two series of the same walk, 3,200 points and 3,205 (5 in the unfinished patch), forecast
alternately at horizons 24 and 96 (`Engine.forecast_series`, one series per call, one torch
thread). Prints a table of medians and writes JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import cpu_name, write_json


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="default: the service's default weights")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default="bench/out/realign_cost.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from service.engine.facade import Engine
    from service.settings import DEFAULT_WEIGHTS

    weights = str(args.weights or DEFAULT_WEIGHTS)
    engine = Engine.load(weights, "cpu", 4, backend=args.backend)
    walk = np.cumsum(np.random.default_rng(0).standard_normal(3205)).tolist()
    engine.append("boundary", walk[:3200], None)
    engine.append("inside", walk, None)
    rows = []
    for horizon in (24, 96):
        times: dict[str, list[float]] = {"boundary": [], "inside": []}
        for sid in times:
            engine.forecast_series(sid, horizon)  # (warm-up)
        for _ in range(args.reps):
            for sid, kept in times.items():
                t0 = time.perf_counter()
                engine.forecast_series(sid, horizon)
                kept.append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        rows.append({"horizon": horizon, "boundary_ms": med["boundary"], "inside_ms": med["inside"],
                     "inside_over_boundary": med["inside"] / med["boundary"]})
    print(f"{'horizon':>7} {'from a boundary ms':>19} {'from inside ms':>15} {'ratio':>6}")
    for r in rows:
        print(f"{r['horizon']:7d} {r['boundary_ms']:19.2f} {r['inside_ms']:15.2f} "
              f"{r['inside_over_boundary']:6.1f}")
    result = {"bench": "realign_cost", "cpu": cpu_name(), "weights": weights,
              "backend": engine.backend, "reps": args.reps, "rows": rows,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()

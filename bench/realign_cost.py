"""What a forecast from inside a patch costs: forecasts from a patch boundary (each series' own
state), from inside a patch with `--realign-forecasts` (a fresh state over the last 16 whole
patches, `Rimer.realigned_windows`) and without it (the last complete patch's state), side by
side on one engine.

    python -m bench.realign_cost [--weights W] [--backend auto] [--reps 20]
                                 [--out bench/out/realign_cost.json]

N series of the same walks, 2,048 points (a patch boundary) or 2,053 (5 points in the
unfinished patch), forecast together in one engine call (`Engine.apply_batch` of N forecast
ops, as the batcher makes one for concurrent forecasts or a bulk append with a horizon), N = 1
and 256, horizons 24 and 96, one torch thread; the three cases alternate. Prints a table of
medians and writes JSON.
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
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="bench/out/realign_cost.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from service.engine import Op
    from service.engine.facade import Engine
    from service.settings import DEFAULT_WEIGHTS

    weights = str(args.weights or DEFAULT_WEIGHTS)
    most = 256
    engine = Engine.load(weights, "cpu", 2 * most, backend=args.backend)
    rng = np.random.default_rng(0)
    for i in range(most):
        walk = np.cumsum(rng.standard_normal(2053)).tolist()
        engine.append(f"b{i}", walk[:2048], None)
        engine.append(f"i{i}", walk, None)
    cases = {"boundary": ("b", True), "inside, realigned": ("i", True), "inside, not realigned": ("i", False)}
    rows = []
    for n in (1, most):
        for horizon in (24, 96):
            times: dict[str, list[float]] = {c: [] for c in cases}
            for rep in range(args.reps + 1):
                for case, (prefix, realign) in cases.items():
                    engine.model.realign = realign
                    ops = [Op(f"{prefix}{i}", None, horizon) for i in range(n)]
                    t0 = time.perf_counter()
                    [out] = engine.apply_batch([ops])
                    if rep:  # (the first round warms up)
                        times[case].append(time.perf_counter() - t0)
                    assert not isinstance(out, Exception), out
            med = {c: float(np.median(v)) * 1e3 for c, v in times.items()}
            rows.append({"series": n, "horizon": horizon, **{f"{c} ms": v for c, v in med.items()},
                         "realigned_over_boundary": med["inside, realigned"] / med["boundary"]})
    engine.model.realign = True
    print(f"{'series':>6} {'horizon':>7} " + " ".join(f"{c + ' ms':>24}" for c in cases) + f" {'ratio':>6}")
    for r in rows:
        print(f"{r['series']:6d} {r['horizon']:7d} " + " ".join(f"{r[c + ' ms']:24.2f}" for c in cases)
              + f" {r['realigned_over_boundary']:6.1f}")
    result = {"bench": "realign_cost", "cpu": cpu_name(), "weights": weights,
              "backend": engine.backend, "reps": args.reps, "rows": rows,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()

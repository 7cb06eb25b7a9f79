"""Cost of one append against history length, next to recomputing the whole history.

    python -m bench.append_cost [--lengths 1000 10000 100000 1000000] [--out bench/out/append_cost.json]

For each history length a streaming series is built in the engine, then timed: appends of one
point (the common case: the point joins the open patch) and of one whole patch (runs the
network once), the median of many; and, side by side, recomputing the whole history from
scratch (what a stateless API must do per new point). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from service.engine import Engine
from service.settings import DEFAULT_WEIGHTS


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--out", default="bench/out/append_cost.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    engine = Engine.load(args.weights, "cpu", max_series=len(args.lengths) + 1)
    p = engine.patch_len
    rng = np.random.default_rng(0)
    rows = []
    for n in args.lengths:
        history = (np.cumsum(rng.normal(size=n)) + 50).tolist()
        sid = f"h{n}"
        t0 = time.perf_counter()
        engine.append(sid, history, None)
        build = time.perf_counter() - t0
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        one_point = median_time(lambda s=sid: engine.append(s, [1.0], None), args.reps)
        # Top the open patch up so that each timed patch-sized append completes one patch.
        engine.append(sid, [1.0] * (p - int(engine.describe(sid)["tail_points"])), None)
        one_patch = median_time(lambda s=sid: engine.append(s, [1.0] * p, None), args.reps)
        forecast = median_time(lambda s=sid: engine.forecast_series(s, 96),
                               max(10, args.reps // 10))
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
        recompute = median_time(lambda h=history: engine.forecast_histories([h], 96),
                                1 if n >= 100_000 else 3)
        info = engine.describe(sid)
        rows.append({"history": n, "append_1_point_us": one_point * 1e6,
                     "append_1_patch_us": one_patch * 1e6, "forecast_96_us": forecast * 1e6,
                     "recompute_whole_ms": recompute * 1e3, "build_s": build,
                     "state_bytes": info["state_bytes"], "rss_growth_kib_during_appends": rss_growth})
        engine.delete(sid)
    base = rows[0]
    for r in rows:
        r["append_1_patch_ratio_to_first"] = r["append_1_patch_us"] / base["append_1_patch_us"]
        r["append_1_point_ratio_to_first"] = r["append_1_point_us"] / base["append_1_point_us"]
        r["recompute_over_append_patch"] = r["recompute_whole_ms"] * 1e3 / r["append_1_patch_us"]
    result = {"benchmark": "append_cost", "model": engine.name, "config": engine.model.cfg.to_dict(),
              "machine": f"{platform.machine()} CPU, {platform.processor() or 'unknown'}, "
                         f"torch threads 1", "torch": torch.__version__, "rows": rows}
    print(f"{'history':>9} {'1 point us':>11} {'1 patch us':>11} {'ratio':>6} {'fcst96 us':>10} "
          f"{'recompute ms':>13} {'state B':>8}")
    for r in rows:
        print(f"{r['history']:>9} {r['append_1_point_us']:>11.0f} {r['append_1_patch_us']:>11.0f} "
              f"{r['append_1_patch_ratio_to_first']:>6.2f} {r['forecast_96_us']:>10.0f} "
              f"{r['recompute_whole_ms']:>13.1f} {r['state_bytes']:>8}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

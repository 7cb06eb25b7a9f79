"""Cost of one append against history length, next to recomputing the whole history.

    python -m bench.append_cost [--lengths 1000 10000 100000 1000000] [--backend auto|torch|onnx]
                                [--out bench/out/append_cost.json]

For each history length a streaming series is built in the engine, then timed, round-robin over the
lengths so that load on the machine hits each alike: appends of one point (the common case: it
joins the open patch) and of one whole patch (runs the network once), the median of many;
then recomputing the whole history from scratch (what a stateless API must do per new point).
Prints a table and writes JSON.
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

from bench.common import cpu_name, median_time
from service.engine import Engine
from service.settings import DEFAULT_WEIGHTS


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--backend", default="auto", help="the engine's backend (auto: the service's "
                    "CPU default)")
    ap.add_argument("--out", default="bench/out/append_cost.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    engine = Engine.load(args.weights, "cpu", max_series=len(args.lengths) + 1,
                         backend=args.backend)
    p = engine.patch_len
    rng = np.random.default_rng(0)
    histories, build = {}, {}
    for n in args.lengths:  # build every series first ...
        histories[n] = (np.cumsum(rng.normal(size=n)) + 50).tolist()
        t0 = time.perf_counter()
        engine.append(f"h{n}", histories[n], None)
        build[n] = time.perf_counter() - t0
        # top the open patch up so that each timed patch-sized append completes one patch
        engine.append(f"h{n}", [1.0] * (p - int(engine.describe(f"h{n}")["tail_points"])), None)
    # ... then time them round-robin, so that load changes on the machine hit every length alike.
    times = {n: {"point": [], "patch": [], "forecast": []} for n in args.lengths}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for rep in range(args.reps):
        for n in args.lengths:
            sid = f"h{n}"
            t0 = time.perf_counter()
            engine.append(sid, [1.0] * p, None)  # completes one patch: runs the network
            t1 = time.perf_counter()
            times[n]["patch"].append(t1 - t0)
            if rep % 2 == 0:
                t0 = time.perf_counter()
                engine.append(sid, [1.0], None)  # joins the open patch
                engine_time = time.perf_counter() - t0
                engine.append(sid, [1.0] * (p - 1), None)  # close that patch again, untimed
                times[n]["point"].append(engine_time)
            if rep % 10 == 0:
                t0 = time.perf_counter()
                engine.forecast_series(sid, 96)
                times[n]["forecast"].append(time.perf_counter() - t0)
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    rows = []
    for n in args.lengths:
        recompute = median_time(lambda h=histories[n]: engine.forecast_histories([h], 96),
                                1 if n >= 100_000 else 3)
        info = engine.describe(f"h{n}")
        rows.append({"history": n,
                     "append_1_point_us": statistics.median(times[n]["point"]) * 1e6,
                     "append_1_patch_us": statistics.median(times[n]["patch"]) * 1e6,
                     "forecast_96_us": statistics.median(times[n]["forecast"]) * 1e6,
                     "recompute_whole_ms": recompute * 1e3, "build_s": build[n],
                     "state_bytes": info["state_bytes"],
                     "rss_growth_kib_during_timed_appends": rss_growth})
    base = rows[0]
    for r in rows:
        r["append_1_patch_ratio_to_first"] = r["append_1_patch_us"] / base["append_1_patch_us"]
        r["append_1_point_ratio_to_first"] = r["append_1_point_us"] / base["append_1_point_us"]
        r["recompute_over_append_patch"] = r["recompute_whole_ms"] * 1e3 / r["append_1_patch_us"]
    result = {"benchmark": "append_cost", "model": engine.name, "backend": engine.backend,
              "config": engine.model.cfg.to_dict(),
              "machine": f"{platform.machine()} CPU ({cpu_name()}), "
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

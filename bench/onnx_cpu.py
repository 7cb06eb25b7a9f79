"""The CPU backends side by side: torch (PyTorch modules) against onnx (the network in ONNX Runtime).

    python -m bench.onnx_cpu [--weights weights/rimer-general-d128] [--reps 30] [--threads 1]
                             [--out bench/out/onnx_cpu.json]

Both engines load the same weights in one process (`--threads` for torch's kernels and ONNX
Runtime's alike; the service's default is 1) and are timed round-robin, case by case, so load
changes on a shared machine hit both alike. Cases, through `service.engine.Engine` (what a request
runs, without HTTP): an append of one patch (32 points) to a series with history; a forecast of 96
points of that series; a batch of 64 series appending one patch each (`apply_batch`, as the
micro-batcher calls it); forecasts of 96 points of 256 series in one batch; stateless forecasts
of 96 points after 512 and after 4,096 points of history. Prints
median milliseconds and the torch / onnx ratio, and the largest relative difference between the
two backends' forecasts, and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import onnxruntime
import torch

from bench.common import cpu_name, write_json
from service.engine import Engine, Op
from service.settings import DEFAULT_WEIGHTS


def walk(n: int, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g).cumsum(0) + 10.0).tolist()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/out/onnx_cpu.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    engines = {b: Engine.load(args.weights, "cpu", 1000, b) for b in ("torch", "onnx")}
    p = engines["torch"].patch_len
    history = walk(4096, 1)
    new = walk(32 * (args.reps + 10), 2)
    batch_ids = [f"b{i}" for i in range(64)]
    wide_ids = [f"w{i}" for i in range(256)]
    for e in engines.values():
        e.append("s", history, None)
        e.apply_batch([[Op(i, walk(512, 3 + k)) for k, i in enumerate(batch_ids)]])
        e.apply_batch([[Op(i, walk(500 + k % 32, 400 + k)) for k, i in enumerate(wide_ids)]])
    cases = {
        "append 1 patch, B = 1": lambda e, r: e.append("s", new[r * p:(r + 1) * p], None),
        "forecast 96, B = 1": lambda e, r: e.forecast_series("s", 96),
        "append 1 patch each, B = 64": lambda e, r: e.apply_batch(
            [[Op(i, new[r * p:(r + 1) * p]) for i in batch_ids]]),
        "forecast 96 each, B = 256": lambda e, r: e.apply_batch(
            [[Op(i, None, 96) for i in wide_ids]]),
        "stateless forecast 96 after 512": lambda e, r: e.forecast_histories([history[:512]], 96),
        "stateless forecast 96 after 4096": lambda e, r: e.forecast_histories([history], 96),
    }
    times: dict[str, dict[str, list[float]]] = {c: {b: [] for b in engines} for c in cases}
    for case, fn in cases.items():
        for r in range(args.reps + 3):
            for backend, e in engines.items():  # round-robin: the same load for both
                t0 = time.perf_counter()
                fn(e, r)
                if r >= 3:  # warm-up
                    times[case][backend].append(time.perf_counter() - t0)
    a = torch.tensor(engines["torch"].forecast_series("s", 96)[1])
    b = torch.tensor(engines["onnx"].forecast_series("s", 96)[1])
    diff = float((a - b).abs().max() / a.abs().max())
    rows = {}
    print(f"{'case':<34} {'torch ms':>9} {'onnx ms':>9} {'torch/onnx':>11}")
    for case in cases:
        t = {k: 1e3 * statistics.median(v) for k, v in times[case].items()}
        rows[case] = {"torch_ms": t["torch"], "onnx_ms": t["onnx"], "ratio": t["torch"] / t["onnx"]}
        print(f"{case:<34} {t['torch']:>9.2f} {t['onnx']:>9.2f} {t['torch'] / t['onnx']:>10.2f}x")
    print(f"forecasts differ by {diff:.1e} (max relative)")
    result = {"benchmark": "onnx_cpu", "weights": args.weights, "cpu": cpu_name(),
              "cpus": os.cpu_count(), "threads": args.threads, "reps": args.reps,
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
              "max_rel_diff_forecast": diff, "cases": rows}
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()

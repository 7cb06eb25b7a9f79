"""The onnx backend's engine cases in two checkouts, side by side: a change measured against the
code before it on a noisy shared machine.

    python -m bench.ab_cpu --before /path/to/other/checkout [--rounds 12] [--reps 5]
                           [--backend onnx] [--out bench/results/ab_cpu.json]

One worker process per checkout (this file run with that checkout first on `sys.path`, in its
directory, so each loads its own `service`, `model` and shipped graphs, one thread each); the
driver asks them in turn, round after round, for `--reps` timed calls of each case, so load
changes hit both alike. Reports per case the median over rounds of each side's per-round median,
and after / before. The cases are bench.onnx_cpu's and wider ones, through `Engine` (no HTTP).
Both sides' forecasts are compared too (largest relative difference).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
CASES = ["append 1 patch, B = 1", "forecast 96, B = 1", "append 1 patch each, B = 64",
         "forecast 96 each, B = 256", "stateless forecast 96 after 512",
         "stateless forecast 96 after 4096", "stateless forecast 96 of 64 after 512"]


def worker(backend: str, weights: str) -> None:
    """Reads {"case", "reps", "round"} lines; answers with the seconds of each rep."""
    import torch

    from service.engine import Engine, Op

    torch.set_num_threads(1)

    def walk(n: int, seed: int) -> list[float]:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(n, generator=g).cumsum(0) + 10.0).tolist()

    e = Engine.load(weights, "cpu", 1000, backend)
    p = e.patch_len
    history = walk(4096, 1)
    new = walk(32 * 4000, 2)
    batch_ids = [f"b{i}" for i in range(64)]
    wide_ids = [f"w{i}" for i in range(256)]
    e.append("s", history, None)
    e.apply_batch([[Op(i, walk(512, 3 + k)) for k, i in enumerate(batch_ids)]])
    e.apply_batch([[Op(i, walk(500 + k % 32, 400 + k)) for k, i in enumerate(wide_ids)]])
    many = [walk(512, 900 + k) for k in range(64)]
    counter = iter(range(10 ** 9))

    def nxt() -> list[float]:
        r = next(counter) % 3900
        return new[r * p:(r + 1) * p]

    cases = {
        CASES[0]: lambda: e.append("s", nxt(), None),
        CASES[1]: lambda: e.forecast_series("s", 96),
        CASES[2]: lambda: e.apply_batch([[Op(i, nxt()) for i in batch_ids]]),
        CASES[3]: lambda: e.apply_batch([[Op(i, None, 96) for i in wide_ids]]),
        CASES[4]: lambda: e.forecast_histories([history[:512]], 96),
        CASES[5]: lambda: e.forecast_histories([history], 96),
        CASES[6]: lambda: e.forecast_histories(many, 96),
    }
    print(json.dumps({"ready": e.backend}), flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        if ask.get("forecast"):
            print(json.dumps({"mean": e.forecast_histories(many[:4], 96)}), flush=True)
            continue
        fn, times = cases[ask["case"]], []
        for _ in range(ask["reps"]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"times": times}), flush=True)


class Side:
    def __init__(self, name: str, tree: Path, backend: str, weights: str):
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
        self.name = name
        # (-P: not bench/ first on the path, where http.py would hide the standard library's)
        self.proc = subprocess.Popen([sys.executable, "-P", str(HERE), "--worker", "--backend", backend,
                                      "--weights", weights], cwd=tree, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline())
        self.backend = ready["ready"]

    def ask(self, **kw) -> dict:
        self.proc.stdin.write(json.dumps(kw) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", help="the other checkout (the code before); required")
    ap.add_argument("--after", default=str(ROOT), help="default: this checkout")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--weights", default="weights/rimer-general-d128",
                    help="relative to each checkout")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench/out/ab_cpu.json")
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.backend, args.weights)
        return {}
    if not args.before:
        ap.error("--before is required: the checkout to compare with")
    sides = [Side("before", Path(args.before), args.backend, args.weights),
             Side("after", Path(args.after), args.backend, args.weights)]
    try:
        rounds: dict[str, dict[str, list[float]]] = {c: {"before": [], "after": []} for c in CASES}
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for case in CASES:
                for side in order:
                    t = side.ask(case=case, reps=args.reps)["times"]
                    rounds[case][side.name].append(statistics.median(t))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        a, b = (side.ask(forecast=True)["mean"] for side in sides)
    finally:
        for side in sides:
            side.close()
    diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) / max(
        abs(x) for ra in a for x in ra)
    rows = {}
    print(f"{'case':<40} {'before ms':>10} {'after ms':>9} {'before/after':>13}")
    for case in CASES:
        t = {k: 1e3 * statistics.median(v) for k, v in rounds[case].items()}
        rows[case] = {"before_ms": t["before"], "after_ms": t["after"],
                      "speedup": t["before"] / t["after"],
                      "rounds_ms": {k: [1e3 * x for x in v] for k, v in rounds[case].items()}}
        print(f"{case:<40} {t['before']:>10.2f} {t['after']:>9.2f} {t['before'] / t['after']:>12.2f}x")
    print(f"forecasts of the two sides differ by {diff:.1e} (max relative)")
    sys.path.insert(0, str(ROOT))
    from bench.common import cpu_name, write_json
    result = {"benchmark": "ab_cpu", "before": args.before, "after": args.after,
              "backend": [s.backend for s in sides], "weights": args.weights, "cpu": cpu_name(),
              "cpus": os.cpu_count(), "rounds": args.rounds, "reps": args.reps,
              "max_rel_diff_forecast": diff, "cases": rows}
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()

"""The same benchmark in two checkouts, alternating, for a before/after comparison of a change.

    python -m bench.ab_checkouts --before /path/to/old/checkout [--rounds 4]
        [--out bench/results/ab_append_cost.json] -- <bench module and its arguments>

Runs `python -m <module> ... --out F` in the old checkout and in this one, alternately for
`--rounds` rounds (so load on the machine hits both alike), and reports for every number in
the results the median over rounds, after over before. The order within a round alternates
too (before first in even rounds, after first in odd ones): on this machine the first run of
a pair was often the faster (bench/RESULTS.md, stop 43), so a fixed order favours one side.
Use an even number of rounds. Every round's numbers are kept in the JSON (`runs`). For
example, after a refactoring: `-- bench.append_cost --lengths 1000 100000 --reps 200 --backend torch`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def numbers(obj, prefix: str = "", label: tuple[str, ...] = ()) -> dict[str, float]:
    """Every number in a JSON document, by its path (`rows[0].append_1_point_us`); an entry of
    a list that has every field of `label` is named by them (`cases[case=bulk,concurrency=1]`),
    so that two versions whose lists differ in length or order still pair up."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(numbers(v, f"{prefix}.{k}" if prefix else k, label))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            name = (",".join(f"{f}={v[f]}" for f in label)
                    if label and isinstance(v, dict) and all(f in v for f in label) else i)
            out.update(numbers(v, f"{prefix}[{name}]", label))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = float(obj)
    return out


def run(checkout: Path, command: list[str], out: Path, label: tuple[str, ...]) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", *command, "--out", str(out)], cwd=checkout, check=True,
                   env=dict(os.environ, PYTHONPATH=str(checkout)), stdout=subprocess.DEVNULL)
    return numbers(json.loads(out.read_text()), label=label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="the old checkout")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--keys", default="_us", help="report the numbers whose path contains this")
    ap.add_argument("--label", default="", help="comma-separated fields that name the entries "
                    "of lists (bench.http: case,concurrency,batch_window_ms)")
    ap.add_argument("--out", default="bench/results/ab_checkouts.json")
    ap.add_argument("command", nargs="+", help="the benchmark module and its arguments (after --)")
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        pair = [("before", args.before.resolve()), ("after", ROOT)]
        for r in range(args.rounds):
            for name, checkout in (pair if r % 2 == 0 else pair[::-1]):  # (ABBA: see above)
                runs[name].append(run(checkout, args.command, Path(tmp) / f"{name}{r}.json",
                                      tuple(f for f in args.label.split(",") if f)))
    keys = [k for k in runs["after"][0] if args.keys in k and all(k in x for x in runs["before"])]
    rows = []
    width = max([44] + [len(k) for k in keys])
    print(f"{'number':<{width}} {'before':>10} {'after':>10} {'after/before':>12}")
    for k in keys:
        b = statistics.median(x[k] for x in runs["before"])
        a = statistics.median(x[k] for x in runs["after"])
        rows.append({"number": k, "before": b, "after": a, "ratio": a / b if b else None})
        print(f"{k:<{width}} {b:>10.1f} {a:>10.1f} {a / b if b else float('nan'):>12.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": args.command, "before": str(args.before), "rounds": args.rounds,
        "order": "ABBA (before first in even rounds)", "rows": rows,
        "runs": {name: [{k: x[k] for k in keys} for x in got] for name, got in runs.items()},
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()

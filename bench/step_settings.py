"""Side-by-side table of the whole-step runs bench/gpu_check.sh makes with one setting changed each.

    python -m bench.step_settings bench/out

Reads every `model_step*.json` in the folder (bench.model_step's output) and prints, per run: its
settings, kernels per one-patch step, the single-append GPU time (graph replay, CUDA events) and, at
B = 4096 and 32768, the step time and its fraction of the state-traffic bound, plus whether every
case was bit-identical alone vs batched. Writes the same as JSON (`step_settings.json` there), so
that choosing the pins is one look at one table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def row(name: str, result: dict) -> dict:
    """One run's settings and headline figures (NaN where the run did not produce them)."""
    cases = {c["B"]: c for c in result.get("cases", []) if "B" in c}
    single = result.get("single_append", {})
    launches = result.get("launches_per_one_patch_step", {})
    out = {"run": name, "model": result.get("model"), "pdl": result.get("pdl"),
           "linear_block_m": result.get("linear_block_m"), "fuse_ln": result.get("fuse_ln"),
           "fuse_out": result.get("fuse_out"), "wkv_warps": result.get("wkv_warps"),
           "launches": launches.get("total", math.nan) if isinstance(launches, dict) else math.nan,
           "single_append_us": single.get("events_us_per_replay", math.nan),
           "alone_equals_batched": all(c.get("alone_equals_batched", False) for c in cases.values())
           if cases else None}
    for bsz in (4096, 32768):
        case = cases.get(bsz, {})
        out[f"step_us_{bsz}"] = case.get("triton_graph_us", math.nan)
        out[f"of_bound_{bsz}"] = case.get("fraction_of_state_bound", math.nan)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", nargs="?", default="bench/out")
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    rows = []
    for path in sorted(folder.glob("model_step*.json")):
        try:
            rows.append(row(path.stem, json.loads(path.read_text())))
        except (OSError, ValueError) as e:  # a run cut off mid-write: say so, go on
            print(f"{path.name}: unreadable ({e})")
    if not rows:
        print(f"no model_step*.json in {folder}")
        return 1
    print(f"{'run':<34} {'model':<22} {'tile':>4} {'ln':>5} {'out':>5} {'wkv w':>5} {'pdl':>5} "
          f"{'kern':>4} {'1 append us':>11} {'4096 us':>8} {'bound':>6} {'32768 us':>9} {'bound':>6} "
          f"{'alone=batch':>11}")
    for r in rows:
        print(f"{r['run']:<34} {str(r['model'])[:22]:<22} {str(r['linear_block_m']):>4} "
              f"{str(r['fuse_ln']):>5} {str(r['fuse_out']):>5} {str(r['wkv_warps']):>5} {str(r['pdl']):>5} "
              f"{r['launches']:>4} {r['single_append_us']:>11.1f} {r['step_us_4096']:>8.1f} "
              f"{r['of_bound_4096']:>6.1%} {r['step_us_32768']:>9.1f} {r['of_bound_32768']:>6.1%} "
              f"{str(r['alone_equals_batched']):>11}")
    (folder / "step_settings.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does a stream's whole history help? Forecasts from the state over every point before each
origin (what the streaming API forecasts from at a patch boundary) against from a fresh state
over the last 512 and 2,048 points, on the same windows.

    python -m training.whole_history --weights weights/rimer-general-v8 [--windows 24]
        [--out weights/rimer-general-v8/whole-history.json]

Series: the zero-shot benchmark's (training/corpus.py role "bench") and the OT column of ETTh1
and ETTm1; the protocol's train-split scaling and horizons (training/protocol.py). Origins: up to
`--windows` spread through each series' test rows, rounded down to whole patches from the
series' first point (so that the whole-history state ends on a patch, and the windows end where
the state does), from 2,048 points on (so that 2,048 points exist before each). Score: per
series, the mean over horizons of MSE averaged over windows; each ratio to the 512-point one,
and their geometric mean. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from model import checkpoint, cli
from model.rimer import Rimer
from training import corpus, data, protocol

CONTEXTS = (512, 2048)  # the fresh states' lookbacks


def origins_of(n: int, patch: int, windows: int, h_max: int, first: int = 2048) -> np.ndarray:
    """Patch-aligned origins through the test rows (the last 20%), each with `first` points
    before it and `h_max` after."""
    lo, hi = max(int(0.8 * n), first), n - h_max
    if hi < lo:
        return np.array([], dtype=int)
    return np.unique((np.linspace(lo, hi, windows) // patch * patch).astype(int))


def score(model: Rimer, values: np.ndarray, freq: str, windows: int) -> dict | None:
    """{method: mean over horizons of the windows' MSE} for one series, or None if too short."""
    x = corpus.fill_missing(values)
    n = len(x)
    xs = protocol.train_scaled(x, int(0.7 * n)).astype(np.float32)
    horizons = protocol.HORIZONS.get(freq, protocol.OTHER_HORIZONS)
    h = max(horizons)
    origins = origins_of(n, model.cfg.patch_len, windows, h)
    if len(origins) < 2:
        return None

    def task(lookback: int) -> protocol.Task:
        return protocol.Task(f"last{lookback}", [xs[o - lookback:o] for o in origins],
                             np.stack([xs[o:o + h] for o in origins]).astype(np.float64),
                             tuple(horizons), None, (), xs, tuple(int(o) for o in origins))

    def mse(t: protocol.Task, pred: np.ndarray) -> float:
        return protocol.average(protocol.mse_by_horizon(t, pred))

    out = {"whole": mse(task(CONTEXTS[0]), protocol.stream_forecasts(model, task(CONTEXTS[0])))}
    for c in CONTEXTS:  # (one window at a time, as the API forecasts one series)
        t = task(c)
        out[f"last{c}"] = mse(t, protocol.model_forecast(model, t, batch=1))
    return out | {"windows": len(origins), "length": n}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--windows", type=cli.positive, default=24)
    ap.add_argument("--threads", type=cli.non_negative, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, manifest = checkpoint.load(args.weights)
    model.eval()
    series = [(s.key, s.values, s.freq) for s in corpus.by_role(corpus.load(), "bench")]
    for name, freq in (("ETTh1", "1h"), ("ETTm1", "15min")):
        series.append((f"{name}/OT", data.load(name).values[:, -1], freq))
    rows = {}
    print(f"{'series':44} {'windows':>7} {'whole/last512':>14} {'last2048/last512':>17}")
    for key, values, freq in series:
        got = score(model, np.asarray(values, dtype=np.float64), freq, args.windows)
        if got is None:
            continue
        got["whole_over_last512"] = got["whole"] / got["last512"]
        got["last2048_over_last512"] = got["last2048"] / got["last512"]
        rows[key] = got
        print(f"{key[:44]:44} {got['windows']:7d} {got['whole_over_last512']:14.3f} "
              f"{got['last2048_over_last512']:17.3f}", flush=True)
    geo = {k: math.exp(np.mean([math.log(r[k]) for r in rows.values()]))
           for k in ("whole_over_last512", "last2048_over_last512")}
    print(f"{'geometric mean':44} {'':7} {geo['whole_over_last512']:14.3f} "
          f"{geo['last2048_over_last512']:17.3f}")
    result = {"weights": args.weights, "model": manifest.get("name"),
              "command": "python -m training.whole_history " + " ".join(argv),
              "series": rows, "geomean": geo}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    cli.run(main, "python -m training.whole_history")

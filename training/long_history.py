"""Forecast error against history length: does quality hold when the history is far longer
than the training windows?

    python -m training.long_history --weights weights/rimer-small --out weights/rimer-small/long_history.json

The same forecast targets are predicted from the last N points before each window, for N from
1k to 100k, so only the history length changes. Real data: ETTm1's test windows (all rows before
them are available, about 46k). Synthetic: long series from training/synthetic.py (scaled by their
first 10k points). Reports MSE at H = 96 per N and the spread relative to N = 1k.

N is rounded down to whole patches (1k -> 992 points with patch 32), so every N ends on a patch
boundary at the forecast origin. Otherwise the comparison mixes in the patch phase: the points of
an incomplete last patch (N mod 32 of them) only inform the forecast from the second forecast
patch on, and that alone moved the error by up to 10% between N values (measured on ETTm1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model import checkpoint, cli
from model.rimer import Rimer
from training import data, synthetic
from training.evaluate import scaled

HISTORIES = (1_000, 3_000, 10_000, 30_000, 100_000)


def mse_by_history(model: Rimer, series: list[np.ndarray], ends: list[np.ndarray],
                   histories: list[int], horizon: int) -> dict[int, float]:
    out, p = {}, model.cfg.patch_len
    for n in histories:
        errs, used = [], n - n % p
        for x, es in zip(series, ends):
            hist = [torch.tensor(x[e - used: e], dtype=torch.float32) for e in es if e >= used]
            if len(hist) < len(es):
                break
            pred = model.forecast(model.append(model.init_state(hist), hist), horizon).numpy()
            true = np.stack([x[e: e + horizon] for e in es])
            errs.append(((pred - true) ** 2).mean())
        if len(errs) == len(series):
            out[n] = float(np.mean(errs))
        sys.stderr.write(f"  history {n}: {out.get(n, 'n/a')}\n")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--horizon", type=cli.positive, default=96)
    ap.add_argument("--windows", type=cli.positive, default=24, help="forecast windows per series")
    ap.add_argument("--synthetic", type=cli.positive, default=8, help="synthetic series")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, manifest = checkpoint.load(args.weights)
    t0 = time.time()
    result = {"weights": args.weights, "model": manifest.get("name"), "horizon": args.horizon,
              "history_points": "each N rounded down to whole patches of "
                                f"{model.cfg.patch_len} (N - N mod {model.cfg.patch_len})"}
    ds = data.load("ETTm1")
    x = scaled(ds)
    lo, hi = ds.borders["test"]
    es = np.linspace(lo, hi - args.horizon, args.windows).astype(int)
    real = [x[:, v] for v in range(x.shape[1])]
    result["ETTm1"] = mse_by_history(model, real, [es] * len(real),
                                     [n for n in HISTORIES if n <= lo], args.horizon)
    length = max(HISTORIES) + 20_000
    synth, synth_ends = [], []
    for s in range(args.synthetic):
        y = synthetic.series(length, 1000 + s)
        y = (y - y[:10_000].mean()) / y[:10_000].std()
        synth.append(y)
        synth_ends.append(np.linspace(max(HISTORIES), length - args.horizon, args.windows).astype(int))
    result["synthetic"] = mse_by_history(model, synth, synth_ends, list(HISTORIES), args.horizon)
    for key in ("ETTm1", "synthetic"):
        base = result[key][min(result[key])]
        result[key + "_ratio_to_shortest"] = {n: v / base for n, v in result[key].items()}
    result["seconds"] = round(time.time() - t0, 1)
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    print(f"{'history':>8} {'ETTm1 MSE':>10} {'ratio':>6} {'synthetic MSE':>14} {'ratio':>6}")
    for n in HISTORIES:
        print(f"{n:>8} {fmt(result['ETTm1'].get(n), '.4f'):>10} "
              f"{fmt(result['ETTm1_ratio_to_shortest'].get(n), '.3f'):>6} "
              f"{fmt(result['synthetic'].get(n), '.4f'):>14} "
              f"{fmt(result['synthetic_ratio_to_shortest'].get(n), '.3f'):>6}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    cli.run(main, "python -m training.long_history")

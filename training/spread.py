"""Fit a quantile model's horizon spread on the corpus's validation series, and save it.

    python -m training.spread --weights weights/<name>

The quantile head predicts the next patch from what the network is fed; in a rollout, patches
after the first are fed the model's own forecasts, so their quantiles come out too narrow (the
uncertainty of the forecasts fed in is not in them). The model therefore draws the k-th forecast
patch's quantiles `horizon_spread[k]` times as far from its mean as predicted (model/rimer.py).
Here each k's factor is the one that gives the validation series' static 80% and 95% intervals
their nominal coverage on average: (1 + k) ** beta, one exponent fitted by bisection over every
patch after the first; the first patch's stays 1 (the head's own horizon, which the online
calibration also scores). Validation series only: the
benchmark's are never read.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from model import calibration, checkpoint, cli
from model.rimer import Rimer
from training import corpus, protocol
from training.pretrain import parse_and_load, validation_tasks

LEVELS = (80.0, 95.0)


def coverage_gap(model: Rimer, mean: torch.Tensor, q: torch.Tensor, truth: torch.Tensor,
                 scale: torch.Tensor) -> float:
    """Mean of each level's coverage minus its nominal, with quantiles `scale` [N] times as wide.
    mean, truth [N]; q [N, Q]."""
    mean, q, truth, scale = mean[:, None], q[:, :, None], truth[:, None], scale[:, None, None]
    wide = mean[:, None] + scale * (q - mean[:, None])
    gap = 0.0
    for lv in LEVELS:
        b = calibration.at_levels(wide, model.cfg.quantiles,
                                  calibration.interval_levels(torch.tensor([1 - lv / 100])))
        gap += float(((truth >= b[:, 0]) & (truth <= b[:, 1])).double().mean()) - lv / 100
    return gap / len(LEVELS)


def fit(model: Rimer, tasks: list[protocol.Task]) -> list[float]:
    p = model.cfg.patch_len
    model.horizon_spread.fill_(1.0)
    pieces: dict[int, list] = {}
    for task in tasks:
        h = task.truth.shape[1]
        hist = [torch.tensor(x, dtype=torch.float32) for x in task.histories]
        state = model.append(model.init_state(hist), hist)
        mean, q = model.forecast(state, h, quantiles=True)
        truth = torch.tensor(task.truth, dtype=torch.float32)
        step = (state.tail_len[:, None] + torch.arange(h)[None]) // p  # each point's rollout patch
        for k in range(int(step.max()) + 1):
            rows, cols = torch.nonzero(step == k, as_tuple=True)
            if len(rows):
                pieces.setdefault(k, []).append((mean[rows, cols], q[rows, :, cols], truth[rows, cols]))
    # One exponent for every patch after the first: spread_k = (1 + k) ** beta, the growth of a
    # forecast's uncertainty with its distance (beta = 1/2 for a random walk); a factor per patch
    # fitted alone follows whichever series happen to have that many patches of horizon.
    ks = [k for k in sorted(pieces) if k >= 1]
    m = torch.cat([a for k in ks for a, _, _ in pieces[k]])
    q = torch.cat([b for k in ks for _, b, _ in pieces[k]])
    y = torch.cat([c for k in ks for _, _, c in pieces[k]])
    k_of = torch.cat([torch.full((len(a),), float(k)) for k in ks for a, _, _ in pieces[k]])
    lo, hi = 0.0, 2.0
    for _ in range(30):
        beta = (lo + hi) / 2
        gap = coverage_gap(model, m, q, y, (1 + k_of) ** beta)
        lo, hi = (beta, hi) if gap < 0 else (lo, beta)
    beta = (lo + hi) / 2
    print(f"  {len(y)} points after the first patch: beta {beta:.3f}", file=sys.stderr)
    spread = [1.0] + [(1 + k) ** beta for k in range(1, len(model.horizon_spread))]
    return spread


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    args, model, manifest = parse_and_load(ap, argv)
    if not model.cfg.quantiles:
        ap.error(f"{args.weights} has no quantile head")
    tasks = [t for _, t in validation_tasks(corpus.load(), args.windows)]
    with torch.no_grad():
        spread = fit(model, tasks)
        model.horizon_spread.copy_(torch.tensor(spread))
    manifest = {**manifest, "horizon_spread": {
        "values": [round(v, 4) for v in spread[:8]] + ["..."],
        "fitted_by": "python -m training.spread " + " ".join(argv or sys.argv[1:]),
        "on": f"{len(tasks)} validation series of the corpus (never the benchmark's)"}}
    manifest.pop("sha256", None)
    checkpoint.save(model, args.weights, manifest)
    print(json.dumps(manifest["horizon_spread"]))
    return spread


if __name__ == "__main__":
    cli.run(main, "python -m training.spread")

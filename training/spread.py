"""Fit a quantile model's horizon spread and carry on the corpus's validation series, and save.

    python -m training.spread --weights weights/<name>

The quantile head predicts the next patch from what the network is fed; in a rollout, patches
after the first are fed the model's own forecasts, so their quantiles come out too narrow (the
uncertainty of the forecasts fed in is not in them), and each restarts from one step's
uncertainty at its first point. The model therefore draws the k-th forecast patch's quantiles
`horizon_spread[k]` times as far from its mean as predicted, joined in quadrature with weight
`horizon_carry` to the offsets the previous patch reached at its end
(model/calibration.py `widen_by_horizon`). Here, for each carry of a grid, the spread is
(1 + k) ** beta with the one exponent that gives the validation series' static 80% and 95%
intervals their nominal coverage on average over every point after the first patch (bisection);
the carry kept is the one whose intervals, so calibrated, score best (the geometric mean over series
of the mean interval score at 80% and 95%, every point after the first patch). The first patch
stays as predicted (the head's own horizon, which the online calibration also scores).
Validation series only: the benchmark's are never read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass

import torch

from model import calibration, checkpoint, cli
from model.rimer import Rimer
from training import corpus, protocol
from training.pretrain import parse_and_load, validation_tasks

LEVELS = (80.0, 95.0)


CARRIES = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0)


def bounds(model: Rimer, wide: torch.Tensor, level: float) -> torch.Tensor:
    """[N, 2, L] lo/hi of the `level` interval from quantiles [N, Q, L]."""
    alpha = torch.tensor([1 - level / 100])
    return calibration.at_levels(wide, model.cfg.quantiles, calibration.interval_levels(alpha))


@dataclass
class Rollouts:
    """Every validation task's forecasts as predicted (spread 1, carry 0), in the rollout layout
    `widen_by_horizon` takes: [N, L] (L a multiple of the patch length), each window's first
    forecast point at its column `r` (the forecast's offset into its first patch)."""

    mean: torch.Tensor  # [N, L]
    quantiles: torch.Tensor  # [N, Q, L]
    truth: torch.Tensor  # [N, L], NaN where no point is scored
    task: torch.Tensor  # [N] which task each window is of


def rollouts(model: Rimer, tasks: list[protocol.Task]) -> Rollouts:
    p = model.cfg.patch_len
    model.horizon_spread.fill_(1.0)
    model.horizon_carry.fill_(0.0)
    width = p * ((p - 1 + max(t.truth.shape[1] for t in tasks)) // p + 1)
    means, qs, truths, which = [], [], [], []
    for i, task in enumerate(tasks):
        h = task.truth.shape[1]
        hist = [torch.tensor(x, dtype=torch.float32) for x in task.histories]
        state = model.append(model.init_state(hist), hist)
        mean, q = model.forecast(state, h, quantiles=True)
        # The first patch whole, as the rollout has it: a row forecast from inside a patch has
        # its seen points' quantiles in front (a row started afresh at its newest point has none)
        r = state.tail_len.clone()
        flat_mean = torch.zeros(len(hist), width)
        flat_q = torch.zeros(len(hist), q.shape[1], width)
        if bool((r > 0).any()):
            flat_mean[:, :p] = state.next_patch
            flat_q[..., :p] = model.next_quantiles(state)
            if model.realigns:
                r[model.realign_mask(state)] = 0
        cols = r[:, None] + torch.arange(h)[None]
        flat_mean.scatter_(1, cols, mean)
        flat_q.scatter_(2, cols[:, None].expand(-1, q.shape[1], -1), q)
        flat_truth = torch.full((len(hist), width), math.nan).scatter(
            1, cols, torch.tensor(task.truth, dtype=torch.float32))
        means.append(flat_mean)
        qs.append(flat_q)
        truths.append(flat_truth)
        which.append(torch.full((len(hist),), i))
    return Rollouts(torch.cat(means), torch.cat(qs), torch.cat(truths), torch.cat(which))


def scores(model: Rimer, runs: Rollouts, spread: torch.Tensor, carry: float
           ) -> tuple[float, float]:
    """(mean coverage minus nominal over `LEVELS`, the geometric mean over tasks of the mean
    interval score) of every scored point after the first patch, with `spread` and `carry`."""
    p = model.cfg.patch_len
    wide = calibration.widen_by_horizon(runs.mean, runs.quantiles, p, spread, carry)
    later = torch.isfinite(runs.truth) & (torch.arange(runs.truth.shape[1]) >= p)[None]
    y = runs.truth
    gap, score = 0.0, torch.zeros_like(y, dtype=torch.float64)
    for lv in LEVELS:
        b = bounds(model, wide, lv).double()
        lo, hi = b[:, 0], b[:, 1]
        inside = (y >= lo) & (y <= hi)
        gap += float(inside[later].double().mean()) - lv / 100
        score += calibration.interval_score(lo, hi, y, lv) / len(LEVELS)
    score = torch.where(later, score, 0.0)
    per_task = torch.zeros(int(runs.task.max()) + 1, dtype=torch.float64)
    count = torch.zeros_like(per_task)
    per_task.index_add_(0, runs.task, score.sum(1))
    count.index_add_(0, runs.task, later.sum(1).double())
    keep = count > 0
    return gap / len(LEVELS), float(torch.exp(torch.log(per_task[keep] / count[keep]).mean()))


def spread_of(beta: float, n: int) -> torch.Tensor:
    """(1 + k) ** beta for every patch after the first, 1 for the first."""
    k = torch.arange(n, dtype=torch.float64)
    return torch.where(k == 0, 1.0, (1 + k) ** beta)


def fit(model: Rimer, tasks: list[protocol.Task]) -> tuple[list[float], float, list[dict]]:
    """(the spread table, the carry, every carry's beta and scores) fitted as the module says.
    One exponent for every patch after the first: a factor per patch fitted alone would follow
    whichever series happen to have that many patches of horizon."""
    runs = rollouts(model, tasks)
    n = len(model.horizon_spread)
    grid = []
    for carry in CARRIES:
        lo, hi = -1.0, 2.0  # (below 0 with a carry: later patches narrower than predicted)
        for _ in range(30):
            beta = (lo + hi) / 2
            lo, hi = (beta, hi) if scores(model, runs, spread_of(beta, n), carry)[0] < 0 else (lo, beta)
        beta = (lo + hi) / 2
        gap, score = scores(model, runs, spread_of(beta, n), carry)
        grid.append({"carry": carry, "beta": round(beta, 4), "coverage_gap": round(gap, 4),
                     "interval_score": round(score, 4)})
        print(json.dumps(grid[-1]), file=sys.stderr, flush=True)
    best = min(grid, key=lambda g: g["interval_score"])
    return spread_of(best["beta"], n).tolist(), best["carry"], grid


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    args, model, manifest = parse_and_load(ap, argv)
    if not model.cfg.quantiles:
        ap.error(f"{args.weights} has no quantile head")
    tasks = [t for _, t in validation_tasks(corpus.load(), args.windows)]
    with torch.no_grad():
        spread, carry, grid = fit(model, tasks)
        model.horizon_spread.copy_(torch.tensor(spread))
        model.horizon_carry.fill_(carry)
    manifest = {**manifest, "horizon_spread": {
        "values": [round(v, 4) for v in spread[:8]] + ["..."], "carry": carry, "grid": grid,
        "fitted_by": "python -m training.spread " + " ".join(argv or sys.argv[1:]),
        "on": f"{len(tasks)} validation series of the corpus (never the benchmark's)"}}
    manifest.pop("sha256", None)
    checkpoint.save(model, args.weights, manifest)
    print(json.dumps(manifest["horizon_spread"]))
    return spread


if __name__ == "__main__":
    cli.run(main, "python -m training.spread")

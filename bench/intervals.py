"""Prediction intervals: coverage, width and interval score, static (the network's quantiles)
against online-calibrated (model/calibration.py), beside statsforecast's AutoETS intervals.

    python -m bench.intervals [--weights weights/<default>] [--out bench/out/intervals.json]
                              [--sections streams noise walks zero-shot]

1. Streams: each variable of ETTh1, ETTh2, ETTm1 and weather is streamed from 2,000 points before
   its test split (the calibration's warm-up) to the split's end; every point is scored against
   the interval the series' forecast gave for it before it arrived (the one-patch-ahead interval,
   the horizon the calibration sees). Coverage of the 80% and 95% intervals over the test split,
   per dataset, static and calibrated. AutoETS is fitted on 512 points before some patch starts
   (`--ets-windows` per variable) and scored on the same patches beside ours.
2. A stream whose noise doubles halfway: rolling coverage of the calibrated intervals, and how
   many points after the change coverage is back within 3 points of nominal. Then 300 random
   walks: static 80% coverage and width by forecast step (do the intervals keep widening across
   the forecast's patch boundaries?).
3. The zero-shot benchmark's series (training/protocol.py windows, lookback 512, all horizons):
   coverage and the interval score (Winkler; scaled values) of our static and calibrated intervals
   and of AutoETS's, on the same windows; geometric mean of the score over series.
Writes JSON and a plot of a stream with its intervals and anomaly flags.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from model import calibration, checkpoint
from model.rimer import Rimer
from service.settings import DEFAULT_WEIGHTS
from training import data

LEVELS = (80.0, 95.0)
WARMUP = 2000
SECTIONS = ("streams", "noise", "walks", "zero-shot")


def bands(model: Rimer, q: torch.Tensor, calib: torch.Tensor | None, level: float) -> torch.Tensor:
    """[B, 2, H] lo/hi from quantiles [B, Q, H] at the calibrated (or, calib None, nominal) level."""
    alpha = calibration.alpha_for(calib, level).expand(q.shape[0])
    return calibration.at_levels(q, model.cfg.quantiles, calibration.interval_levels(alpha))


def stream(model: Rimer, x: np.ndarray, start: int) -> dict:
    """Stream the columns of x [T, V] patch by patch from row 0; from row `start` on, score every
    point against its one-patch-ahead intervals (static and calibrated). Returns hits and widths."""
    p = model.cfg.patch_len
    cols = torch.tensor(np.ascontiguousarray(x.T), dtype=torch.float32)
    v, t = cols.shape
    state = model.init_state([cols[i, :0] for i in range(v)])
    out = {f"{kind}{int(lv)}": {"hit": [], "width": []} for kind in ("static", "calib") for lv in LEVELS}
    for lo in range(0, t - p + 1, p):
        patch = cols[:, lo: lo + p]
        if lo >= start and int(state.n_patches[0]) >= 1:
            q = model.next_quantiles(state)
            for lv in LEVELS:
                for kind, c in (("static", None), ("calib", state.calib)):
                    b = bands(model, q, c, lv)
                    hit = ((patch >= b[:, 0]) & (patch <= b[:, 1])).numpy()
                    out[f"{kind}{int(lv)}"]["hit"].append(hit)
                    out[f"{kind}{int(lv)}"]["width"].append((b[:, 1] - b[:, 0]).numpy())
        state = model.append(state, [patch[i] for i in range(v)])
    return {k: {"coverage": float(np.mean(vv["hit"])), "width": float(np.mean(vv["width"])),
                "hits": np.concatenate(vv["hit"], axis=1)} for k, vv in out.items()}


def ets_on_patches(model: Rimer, x: np.ndarray, starts: list[int], season: int) -> dict:
    """Ours (static, calibrated) and AutoETS's intervals for the patch starting at each of
    `starts`, from the 512 points before it (ours: its state after streaming from 2,000 points
    before; calibration from there). Returns mean coverage and interval score per method/level."""
    warnings.filterwarnings("ignore")
    from statsforecast.models import AutoETS

    p = model.cfg.patch_len
    rows = {f"{m}{int(lv)}": {"hit": [], "score": []} for m in ("static", "calib", "ets") for lv in LEVELS}
    for s in starts:
        for j in range(x.shape[1]):
            y = x[s: s + p, j]
            hist = x[s - WARMUP - (WARMUP % p): s, j]
            h = torch.tensor(hist, dtype=torch.float32)
            state = model.append(model.init_state([h]), [h])
            q = model.next_quantiles(state)
            fit = AutoETS(season_length=season if 2 * season <= 512 else 1)
            fc = fit.forecast(y=x[s - 512: s, j], h=p, level=[int(lv) for lv in LEVELS])
            for lv in LEVELS:
                for m, lo_hi in (("static", bands(model, q, None, lv)[0].numpy()),
                                 ("calib", bands(model, q, state.calib, lv)[0].numpy()),
                                 ("ets", np.stack([fc[f"lo-{int(lv)}"], fc[f"hi-{int(lv)}"]]))):
                    rows[f"{m}{int(lv)}"]["hit"].append(((y >= lo_hi[0]) & (y <= lo_hi[1])).mean())
                    score = calibration.interval_score(lo_hi[0], lo_hi[1], y, lv)
                    rows[f"{m}{int(lv)}"]["score"].append(score.mean())
    return {k: {"coverage": float(np.mean(v["hit"])), "interval_score": float(np.mean(v["score"]))}
            for k, v in rows.items()}


def noise_doubling(model: Rimer, seed: int = 0, length: int = 24_000) -> dict:
    """A daily-cycle series whose noise doubles halfway: rolling coverage (1,000 points) of the
    calibrated intervals, and the points after the change until it is back within 3 points."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    noise = rng.normal(0, 1, length) * np.where(t >= length // 2, 2.0, 1.0)
    x = (10 + 5 * np.sin(2 * np.pi * t / 24) + noise)[:, None]
    res = stream(model, x, start=WARMUP)
    out = {}
    for lv in LEVELS:
        hits = res[f"calib{int(lv)}"]["hits"][0]  # one series: [points scored]
        offset = WARMUP - WARMUP % model.cfg.patch_len
        change = length // 2 - offset
        roll = np.convolve(hits, np.ones(1000) / 1000, mode="valid")  # coverage of points [i, i+1000)
        after = roll[change:]
        back = next((i for i in range(len(after)) if abs(after[i] - lv / 100) <= 0.03
                     and all(abs(a - lv / 100) <= 0.03 for a in after[i: i + 2000: 100])), None)
        out[f"calib{int(lv)}"] = {"coverage_before": float(hits[:change].mean()),
                                  "coverage_after_change": float(hits[change:].mean()),
                                  "coverage_1000_to_3000_after":
                                      float(hits[change + 1000: change + 3000].mean()),
                                  "points_until_within_3": back,
                                  "rolling": roll[::100].round(4).tolist()}
        static = res[f"static{int(lv)}"]["hits"][0]
        out[f"static{int(lv)}"] = {"coverage_before": float(static[:change].mean()),
                                   "coverage_after_change": float(static[change:].mean())}
    return out


def zero_shot(model: Rimer, windows: int) -> dict:
    """Coverage and interval score over the zero-shot benchmark's windows and horizons."""
    warnings.filterwarnings("ignore")
    from statsforecast.models import AutoETS

    from training import corpus, protocol

    per_series = {}
    for s in corpus.by_role(corpus.load(), "bench"):
        task = protocol.make_task(s.key, corpus.fill_missing(s.values), s.freq, s.periods, "test",
                                  max_windows=windows)
        h = task.truth.shape[1]
        hist = [torch.tensor(x, dtype=torch.float32) for x in task.histories]
        state = model.append(model.init_state(hist), hist)
        _, q = model.forecast(state, h, quantiles=True)
        fits = [p for p in task.periods if p >= 2 and 2 * p <= min(len(x) for x in task.histories)]
        row = {}
        for lv in LEVELS:
            ours = {"static": bands(model, q, None, lv).numpy(),
                    "calib": bands(model, q, state.calib, lv).numpy()}
            ets = []
            for x in task.histories:
                fc = AutoETS(season_length=fits[0] if fits else 1).forecast(y=x, h=h, level=[int(lv)])
                ets.append([fc[f"lo-{int(lv)}"], fc[f"hi-{int(lv)}"]])
            ours["ets"] = np.array(ets)
            for m, b in ours.items():
                hit = (task.truth >= b[:, 0]) & (task.truth <= b[:, 1])
                score = calibration.interval_score(b[:, 0], b[:, 1], task.truth, lv)
                row[f"{m}{int(lv)}"] = {"coverage": float(hit.mean()), "interval_score": float(score.mean())}
        per_series[s.key] = row
        print(f"  {s.key}: " + "  ".join(f"{k} {v['coverage']:.2f}/{v['interval_score']:.2f}"
                                         for k, v in row.items()), file=sys.stderr)
    keys = next(iter(per_series.values())).keys()
    summary = {k: {"mean_coverage": float(np.mean([r[k]["coverage"] for r in per_series.values()])),
                   "geomean_interval_score": float(math.exp(np.mean([math.log(r[k]["interval_score"])
                                                                     for r in per_series.values()])))}
               for k in keys}
    return {"series": per_series, "summary": summary}


def random_walks(model: Rimer, n: int = 300, length: int = 512, horizon: int = 128) -> dict:
    """Static 80% coverage and mean width by forecast step on `n` seeded Gaussian random walks:
    whether the intervals keep widening across patch boundaries (a walk's uncertainty grows with
    every step; where a later patch restarted narrow, its first points were covered ~52%)."""
    rng = np.random.default_rng(0)
    walks = np.cumsum(rng.standard_normal((n, length + horizon)), 1).astype(np.float32)
    hist = [torch.tensor(w[:length]) for w in walks]
    state = model.append(model.init_state(hist), hist)
    _, q = model.forecast(state, horizon, quantiles=True)
    b = bands(model, q, None, 80.0).numpy()
    truth = walks[:, length:]
    cover = ((truth >= b[:, 0]) & (truth <= b[:, 1])).mean(0)
    width = (b[:, 1] - b[:, 0]).mean(0)
    p = model.cfg.patch_len
    spans = {f"{lo + 1}-{hi}": (lo, hi) for lo, hi in ((0, p), (p, p + 8), (p + 8, 2 * p), (2 * p, horizon))}
    at = (p - 1, p, 2 * p - 1, 2 * p, horizon - 1)
    return {"walks": n, "history": length,
            "coverage80_by_steps": {k: round(float(cover[lo:hi].mean()), 4) for k, (lo, hi) in spans.items()},
            "width80_at_step": {str(i + 1): round(float(width[i]), 3) for i in at},
            "coverage80": [round(float(c), 4) for c in cover], "width80": [round(float(w), 3) for w in width]}


def plot(model: Rimer, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = data.load("ETTh2")
    x = ((ds.values - ds.mean) / ds.std)[:, -1]
    lo = ds.borders["test"][0] - WARMUP
    p = model.cfg.patch_len
    cols = torch.tensor(x[lo: lo + WARMUP + 20 * p], dtype=torch.float32)
    state = model.init_state([cols[:0]])
    t_all, y_all, b80, b95 = [], [], [], []
    for s in range(0, len(cols) - p + 1, p):
        patch = cols[s: s + p]
        if s >= WARMUP:
            q = model.next_quantiles(state)
            b80.append(bands(model, q, state.calib, 80)[0].numpy())
            b95.append(bands(model, q, state.calib, 95)[0].numpy())
            t_all += list(range(s, s + p))
            y_all += patch.tolist()
        state = model.append(state, [patch])
    b80, b95 = np.concatenate(b80, axis=1), np.concatenate(b95, axis=1)
    y = np.array(y_all)
    out = (y < b95[0]) | (y > b95[1])
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.fill_between(t_all, b95[0], b95[1], color="tab:blue", alpha=0.15, label="95% (calibrated)")
    ax.fill_between(t_all, b80[0], b80[1], color="tab:blue", alpha=0.3, label="80% (calibrated)")
    ax.plot(t_all, y, color="black", lw=0.8, label="ETTh2 OT (scaled)")
    ax.scatter(np.array(t_all)[out], y[out], color="tab:red", s=12, zorder=3, label="outside 95%")
    ax.set_title("one-patch-ahead intervals of a streamed series, and the points flagged", fontsize=9)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--out", default="bench/out/intervals.json")
    ap.add_argument("--datasets", nargs="+", default=list(data.DATASETS))
    ap.add_argument("--ets-windows", type=int, default=6, help="patches per variable scored with AutoETS")
    ap.add_argument("--zero-shot-windows", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="which parts to run (all by default)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, manifest = checkpoint.load(args.weights)
    if not model.cfg.quantiles:
        ap.error(f"{args.weights} has no quantile head")
    t0 = time.time()
    result = {"model": manifest.get("name"), "weights": args.weights, "levels": LEVELS,
              "gamma": calibration.GAMMA, "warmup_points": WARMUP, "streams": {}}
    seasons = {"ETTh1": 24, "ETTh2": 24, "ETTm1": 96, "weather": 144}
    for name in args.datasets if "streams" in args.sections else ():
        ds = data.load(name)
        x = (ds.values - ds.mean) / ds.std
        lo, hi = ds.borders["test"]
        part = x[lo - WARMUP: hi]
        res = stream(model, part, start=WARMUP)
        p = model.cfg.patch_len
        rng = np.random.default_rng(0)
        starts = sorted(rng.choice(np.arange(lo, hi - p, p), size=args.ets_windows, replace=False).tolist())
        res_ets = ets_on_patches(model, x, starts, seasons[name])
        result["streams"][name] = {"streamed": {k: {kk: vv for kk, vv in v.items() if kk != "hits"}
                                                for k, v in res.items()},
                                   "patches_with_autoets": res_ets}
        print(f"{name}: " + "  ".join(f"{k} {v['coverage']:.3f}" for k, v in res.items())
              + " | ETS windows: " + "  ".join(f"{k} {v['coverage']:.2f}/{v['interval_score']:.2f}"
                                                for k, v in res_ets.items()), file=sys.stderr)
    if "noise" in args.sections:
        result["noise_doubling"] = noise_doubling(model)
        print("noise doubling:", json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "rolling"}
                                             for k, v in result["noise_doubling"].items()}), file=sys.stderr)
    if "walks" in args.sections:
        result["random_walks"] = random_walks(model)
    if "zero-shot" in args.sections:
        result["zero_shot"] = zero_shot(model, args.zero_shot_windows)
    result["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(model, out.with_suffix(".png"))
    print_table(result)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


def print_table(result: dict) -> None:
    print(f"{'stream (test split)':24} {'static 80':>10} {'calib 80':>10} {'static 95':>10} {'calib 95':>10}")
    for name, r in result["streams"].items():
        s = r["streamed"]
        print(f"{name:24} " + " ".join(f"{s[k]['coverage']:10.3f}" for k in ("static80", "calib80",
                                                                             "static95", "calib95")))
    if "random_walks" in result:
        rw = result["random_walks"]
        print("\nrandom walks, static 80% coverage by step: "
              + "  ".join(f"{k} {v:.3f}" for k, v in rw["coverage80_by_steps"].items())
              + " | width at step " + "  ".join(f"{k} {v:.2f}" for k, v in rw["width80_at_step"].items()))
    if "zero_shot" in result:
        print(f"\n{'zero-shot (all horizons)':24} {'coverage':>9} {'geomean IS':>11}")
        for k, v in result["zero_shot"]["summary"].items():
            print(f"{k:24} {v['mean_coverage']:9.3f} {v['geomean_interval_score']:11.3f}")


if __name__ == "__main__":
    main()

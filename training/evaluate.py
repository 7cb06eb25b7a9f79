"""The standard long-term forecasting protocol, our model next to simple baselines.

    python -m training.evaluate --weights weights/rimer-small --datasets ETTh1 --out weights/rimer-small

Test windows slide by one step (`--stride` > 1 only for quick looks; the report says which);
horizons 96, 192, 336, 720; MSE and MAE on train-scaled values, averaged over windows, steps and
variables. Side by side in the same run: repeat-last-value, seasonal naive (one day), and a
linear model fitted on the train split (NLinear-style ridge: last value subtracted, one L -> H
map shared by the variables). Each window's H = 720 rollout also gives its shorter horizons (the
rollout is autoregressive, so a shorter forecast is a prefix of a longer one).

`--lookback N` gives every method N points; `--lookback full` gives our model every point
before the window, less the oldest (window start mod 32) so that the history is whole patches
(it is recurrent: its state summarises any history), and the baselines 512.
Writes report.md (a table; published figures are quoted, marked as such), metrics.json and
forecast.png (sample forecasts against actuals).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from model import checkpoint, cli
from model.rimer import Rimer
from model.state import RimerState
from training import data

HORIZONS = (96, 192, 336, 720)
SEASON = {"ETTh1": 24, "ETTh2": 24, "ETTm1": 96, "weather": 144}
QUOTED_ETTH1 = [  # (method, H=96 MSE, average MSE over the four H), ../shared/data/README.md
    ("PatchTST/64, L=512 (quoted)", 0.370, 0.413),
    ("DLinear, L=336 (quoted)", 0.375, 0.423),
    ("Timer-XL trained on ETTh1 (quoted)", None, 0.409),
    ("Time-MoE-base zero-shot (quoted)", 0.357, 0.400),
    ("TimesFM zero-shot (quoted)", 0.414, 0.473),
    ("Chronos-large zero-shot (quoted)", None, 0.588),
]


def window_ends(ds: data.Dataset, h_min: int, stride: int) -> np.ndarray:
    """Absolute row index where each test window's forecast starts."""
    lo, hi = ds.borders["test"]
    return np.arange(lo, hi - h_min + 1, stride)


def scaled(ds: data.Dataset) -> np.ndarray:
    return (ds.values - ds.mean) / ds.std


def model_forecasts(model: Rimer, series: np.ndarray, ends: np.ndarray, lookback: int,
                    horizon: int, batch: int, progress) -> np.ndarray:
    """[len(ends), horizon] forecasts of one variable from the last `lookback` points."""
    out = np.empty((len(ends), horizon), dtype=np.float32)
    x = torch.tensor(series, dtype=torch.float32)
    for i in range(0, len(ends), batch):
        hist = [x[e - lookback: e] for e in ends[i: i + batch]]
        state = model.append(model.init_state(hist), hist)
        out[i: i + len(hist)] = model.forecast(state, horizon).numpy()
        progress(len(hist))
    return out


def full_history_forecasts(model: Rimer, x: np.ndarray, ends: np.ndarray, horizon: int,
                           batch: int, progress) -> np.ndarray:
    """[len(ends), horizon, vars] forecasts, each from every point before its window that
    fits whole patches ending at the window (the oldest e mod P points are dropped).

    A recurrent model's state summarises any history, so one pass per patch phase serves all
    windows of that phase: the phase's rows (one per variable) start at row e mod P, are
    streamed a patch at a time through the test split, and their state is forecast from at each
    window end. Whole patches matter: the points of an incomplete last patch would only inform
    the forecast from its second patch on (see training/long_history.py).
    """
    p = model.cfg.patch_len
    n_vars = x.shape[1]
    cols = torch.tensor(np.ascontiguousarray(x.T), dtype=torch.float32)  # [vars, T]
    where = {int(e): i for i, e in enumerate(ends)}
    first = {}
    for e in ends:
        first.setdefault(int(e) % p, int(e))
    rows = [(ph, v) for ph in sorted(first) for v in range(n_vars)]
    at = np.array([first[ph] for ph, _ in rows])  # each row's current history end
    var = np.array([v for _, v in rows])
    hist = [cols[v, ph: first[ph]] for ph, v in rows]
    state = model.append(model.init_state(hist), hist)
    out = np.empty((len(ends), horizon, n_vars), dtype=np.float32)
    pending, targets, last = [], [], int(ends.max())

    def flush():
        pred = model.forecast(RimerState.cat(pending), horizon).numpy()
        for (w, v), f in zip(targets, pred):
            out[w, :, v] = f
        progress(len(targets))
        pending.clear()
        targets.clear()

    while True:
        take = [i for i, e in enumerate(at) if int(e) in where]
        if take:
            pending.append(state.select(take))
            targets.extend((where[int(at[i])], int(var[i])) for i in take)
        if len(targets) >= batch:
            flush()
        keep = np.flatnonzero(at + p <= last)
        if not len(keep):
            break
        if len(keep) < len(at):
            state, at, var = state.select(keep.tolist()), at[keep], var[keep]
        state = model.append(state, [cols[v, e: e + p] for e, v in zip(at, var)])
        at = at + p
    if targets:
        flush()
    return out


def fit_linear(train: np.ndarray, lookback: int, horizon: int, ridge: float = 1.0,
               max_windows: int = 50_000, seed: int = 0) -> np.ndarray:
    """Ridge least squares of (next H - last value) on (last L - last value), all variables pooled."""
    rng = np.random.default_rng(seed)
    starts = [(v, s) for v in range(train.shape[1]) for s in range(len(train) - lookback - horizon + 1)]
    pick = rng.choice(len(starts), size=min(max_windows, len(starts)), replace=False)
    xs = np.stack([train[s: s + lookback, v] for v, s in (starts[i] for i in pick)])
    ys = np.stack([train[s + lookback: s + lookback + horizon, v] for v, s in (starts[i] for i in pick)])
    last = xs[:, -1:]
    xs, ys = xs - last, ys - last
    gram = xs.T @ xs + ridge * np.eye(lookback)
    return np.linalg.solve(gram, xs.T @ ys)


def metrics(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    err = pred - true
    return float(np.mean(err ** 2)), float(np.mean(np.abs(err)))


class Progress:
    def __init__(self, total: int, label: str):
        self.total, self.done, self.label, self.start = total, 0, label, time.time()

    def __call__(self, n: int) -> None:
        self.done += n
        frac = self.done / max(self.total, 1)
        el = time.time() - self.start
        sys.stderr.write(f"\r{self.label}: [{'#' * int(30 * frac):<30}] {self.done}/{self.total} "
                         f"{el:5.0f}s eta {el / max(frac, 1e-9) - el:5.0f}s")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def evaluate_dataset(model: Rimer, ds: data.Dataset, lookback: int | None, base_lookback: int,
                     stride: int, batch: int) -> tuple[dict, dict]:
    x = scaled(ds)
    ends = window_ends(ds, min(HORIZONS), stride)
    h_max = max(HORIZONS)
    train = x[ds.borders["train"][0]: ds.borders["train"][1]]
    n_vars = x.shape[1]
    prog = Progress(len(ends) * n_vars, f"{ds.name} rimer")
    if lookback is None:
        ours = full_history_forecasts(model, x, ends, h_max, batch, prog)
    else:
        ours = np.stack([model_forecasts(model, x[:, v], ends, lookback, h_max, batch, prog)
                         for v in range(n_vars)], axis=-1)  # [windows, H, vars]
    results, sample = {}, {}
    for h in HORIZONS:
        keep = ends + h <= ds.borders["test"][1]
        e = ends[keep]
        true = np.stack([x[i: i + h] for i in e])  # [windows, h, vars]
        hist = np.stack([x[i - base_lookback: i] for i in e])  # [windows, L, vars]
        last = hist[:, -1:, :]
        season = SEASON[ds.name]
        idx = base_lookback - season + (np.arange(h) % season)
        w = fit_linear(train, base_lookback, h)
        linear = np.einsum("wlv,lh->whv", hist - last, w) + last
        row = {"windows": int(keep.sum()),
               "rimer": metrics(ours[keep, :h], true),
               "repeat_last": metrics(np.repeat(last, h, axis=1), true),
               "seasonal_naive": metrics(hist[:, idx, :], true),
               "linear": metrics(linear, true)}
        results[h] = row
        if h == 336:
            j = len(e) // 2
            sample = {"history": hist[j, -2 * season:, -1], "true": true[j, :, -1],
                      "rimer": ours[keep][j, :h, -1], "linear": linear[j, :, -1]}
    return results, sample


def lookback_description(lookback: str) -> str:
    return ("all points before each window, in whole patches" if lookback == "full"
            else f"{lookback} points")


def write_report(out: Path, name: str, all_results: dict, stride: int, base_lookback: int,
                 lookback: str, commands: list[str]) -> None:
    """report.md: our figures beside the baselines', per dataset and horizon, and the
    command(s) that produced them (several when parts were merged, see training/merge_eval.py)."""
    methods = ["rimer", "repeat_last", "seasonal_naive", "linear"]
    ran = " ".join(f"`{c}`" for c in commands)
    ran = (f"Commands (their parts joined by `python -m training.merge_eval`): {ran}."
           if len(commands) > 1 else f"Command: {ran}.")
    lines = [f"# Evaluation of `{name}`", "",
             f"Standard protocol: test windows sliding by {stride} step(s), train-scaled "
             f"values, MSE / MAE averaged over windows, steps and variables. Rimer lookback: "
             f"{lookback_description(lookback)}; baselines: {base_lookback} points. {ran}", "",
             "| dataset | H | windows | " + " | ".join(f"{m} MSE | {m} MAE" for m in methods) + " |",
             "| --- | --- | --- | " + " | ".join("--- | ---" for _ in methods) + " |"]
    for ds_name, res in all_results.items():
        res = {int(h): r for h, r in res.items()}
        for h in HORIZONS:
            r = res[h]
            cells = " | ".join(f"{r[m][0]:.3f} | {r[m][1]:.3f}" for m in methods)
            lines.append(f"| {ds_name} | {h} | {r['windows']} | {cells} |")
        avg = {m: np.mean([res[h][m] for h in HORIZONS], axis=0) for m in methods}
        cells = " | ".join(f"**{avg[m][0]:.3f}** | {avg[m][1]:.3f}" for m in methods)
        lines.append(f"| {ds_name} | avg | | {cells} |")
    lines += ["", "Published ETTh1 figures, quoted from ../shared/data/README.md (not ours; "
              "many second-hand, approximate):", "", "| method | H=96 MSE | avg MSE |",
              "| --- | --- | --- |"]
    for method, h96, avg in QUOTED_ETTH1:
        lines.append(f"| {method} | {'-' if h96 is None else f'{h96:.3f}'} | {avg:.3f} |")
    lines += ["", "![sample forecasts](forecast.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def plot(out: Path, samples: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(samples), 1, figsize=(8, 2.2 * len(samples)), squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], samples.items()):
        n = len(s["history"])
        ax.plot(range(n), s["history"], color="black", lw=1, label="history")
        t = range(n, n + len(s["true"]))
        ax.plot(t, s["true"], color="black", lw=1, ls="--", label="actual")
        ax.plot(t, s["rimer"], color="tab:red", lw=1.2, label="rimer")
        ax.plot(t, s["linear"], color="tab:blue", lw=1, alpha=0.7, label="linear")
        ax.set_title(f"{name}: OT, H = 336 (scaled)", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=80)


def _evaluate_job(weights: str, name: str, data_dir: str, lookback: int | None, base_lookback: int,
                  stride: int, batch: int, threads: int, model: Rimer | None = None):
    """One dataset's evaluation; loads the weights itself when run in a worker process."""
    if model is None:
        if threads:
            torch.set_num_threads(threads)
        model, _ = checkpoint.load(weights)
    return evaluate_dataset(model, data.load(name, data_dir), lookback, base_lookback, stride, batch)


def lookback_arg(text: str) -> str:
    """--lookback: 'full', or a whole number of points (kept as given: it names the run)."""
    if text != "full":
        cli.positive(text)
    return text


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--datasets", nargs="+", default=list(data.DATASETS), choices=list(data.DATASETS))
    ap.add_argument("--data-dir", default=str(data.DEFAULT_DATA_DIR))
    ap.add_argument("--lookback", default="512", type=lookback_arg,
                    help="points of history, or 'full'")
    ap.add_argument("--base-lookback", type=cli.positive, default=512)
    ap.add_argument("--stride", type=cli.positive, default=1)
    ap.add_argument("--batch", type=cli.positive, default=512)
    ap.add_argument("--out", default=None, help="directory for report.md, metrics.json, forecast.png")
    ap.add_argument("--threads", type=cli.non_negative, default=0,
                    help="torch threads (0: torch's default; 1 is much faster on a busy machine)")
    ap.add_argument("--workers", type=cli.positive, default=1,
                    help="datasets evaluated at once, each in its own process (with --threads each)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.argv = argv
    model, manifest = checkpoint.load(args.weights)
    lookback = None if args.lookback == "full" else int(args.lookback)
    if lookback is not None and lookback < model.cfg.patch_len:
        ap.error(f"--lookback must be at least one patch ({model.cfg.patch_len} points)")
    if lookback is None and not model.cfg.streamable:
        ap.error("--lookback full needs a causally normalised model")
    t0 = time.time()
    jobs = [(args.weights, name, args.data_dir, lookback, args.base_lookback, args.stride, args.batch,
             args.threads) for name in args.datasets]
    if args.workers == 1:
        done = [_evaluate_job(*job, model=model) for job in jobs]
    else:
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
        with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            done = list(pool.map(_evaluate_job, *zip(*jobs)))
    all_results = {name: res for name, (res, _) in zip(args.datasets, done)}
    samples = {name: sample for name, (_, sample) in zip(args.datasets, done)}
    result = {"weights": args.weights, "model": manifest.get("name"), "lookback": args.lookback,
              "stride": args.stride, "base_lookback": args.base_lookback,
              "commands": [f"python -m training.evaluate {' '.join(argv)}"],
              "seconds": round(time.time() - t0, 1),
              "results": {d: {str(h): r for h, r in res.items()} for d, res in all_results.items()}}
    for d, res in all_results.items():
        for h in HORIZONS:
            r = res[h]
            print(f"{d:8} H={h:3}  rimer {r['rimer'][0]:.3f}  last {r['repeat_last'][0]:.3f}  "
                  f"seasonal {r['seasonal_naive'][0]:.3f}  linear {r['linear'][0]:.3f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        write_report(out, str(manifest.get("name")), all_results, args.stride, args.base_lookback,
                     args.lookback, result["commands"])
        plot(out, samples)
    return result


if __name__ == "__main__":
    cli.run(main, "python -m training.evaluate")

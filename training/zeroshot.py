"""Zero-shot benchmark: real series the model never trained on, against what users would pick instead.

    python -m training.zeroshot --weights weights/rimer-general-d128 --out weights/<name>/zeroshot

Every series whose role is "bench" in training/corpus.py (and in training/package_series.py),
under training/protocol.py's protocol: 70/10/20 split by time, train-split scaling, up to
`--windows` origins sliding through the test rows, lookback 512, four horizons suited to the
sampling step, MSE on scaled values. In the same run, on the same windows: repeat-last, seasonal
naive with the series' natural period, and statsforecast's AutoETS, AutoTheta and MSTL (fitted on
each window's history; seasonal with the main period where two of them fit in the history, MSTL
with every period that fits, else AutoETS without a season).

Each method's ratio is its MSE (mean of the four horizons) over the best naive forecast's; the
summary is the geometric mean over series. Also a few synthetic checks a user tries first (a ramp,
a ramp plus a season, a long sine, a step, a constant). Writes report.md, metrics.json and
forecast.png to `--out`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from model import checkpoint, cli
from training import corpus, protocol

STAT_METHODS = ("AutoETS", "AutoTheta", "MSTL")


def stat_forecasts(task: protocol.Task) -> dict[str, np.ndarray]:
    """statsforecast's forecasts [windows, max horizon] of each of STAT_METHODS."""
    warnings.filterwarnings("ignore")
    from statsforecast.models import MSTL, AutoETS, AutoTheta

    h = task.truth.shape[1]
    out = {m: np.empty_like(task.truth) for m in STAT_METHODS}
    for i, hist in enumerate(task.histories):
        fits = [p for p in task.periods if p >= 2 and 2 * p <= len(hist)]
        main = fits[0] if fits else 1
        models = {"AutoETS": AutoETS(season_length=main), "AutoTheta": AutoTheta(season_length=main),
                  "MSTL": MSTL(season_length=fits) if fits else AutoETS(season_length=1)}
        for name, model in models.items():
            try:
                out[name][i] = model.forecast(y=hist, h=h)["mean"]
            except Exception:  # a fit that fails counts as repeat-last (reported in metrics)
                out[name][i] = hist[-1]
    return out


def synthetic_checks() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[int, ...]]]:
    """{name: (history, truth, periods)}: 512 points of history, 96 (or one period) to forecast."""
    t = np.arange(512 + 200, dtype=np.float64)
    ramp = t + 1.0
    season = 30 * np.sin(2 * np.pi * t / 24)
    sine = np.sin(2 * np.pi * t / 200)
    step = np.where(t >= 400, 10.0, 0.0)
    const = np.full_like(t, 5.0)
    checks = {"ramp 1..512": (ramp, ()), "ramp + daily season": (ramp + season, (24,)),
              "sine, period 200": (sine, (200,)), "step at 400": (step, ()), "constant 5": (const, ())}
    out = {}
    for name, (x, periods) in checks.items():
        h = 200 if "200" in name else 96
        out[name] = (x[:512], x[512: 512 + h], periods)
    return out


def check_task(name: str, hist: np.ndarray, truth: np.ndarray, periods) -> protocol.Task:
    return protocol.Task(name, [hist], truth[None], (len(truth),), periods[0] if periods else None,
                         tuple(periods))


def task_digest(task: protocol.Task) -> str:
    """What a task's statistical forecasts depend on: its windows, horizons, periods and the
    statsforecast release."""
    from importlib.metadata import version

    h = hashlib.sha256(f"{version('statsforecast')}|{task.horizons}|{task.periods}".encode())
    for hist in task.histories:
        h.update(np.ascontiguousarray(hist, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(task.truth).tobytes())
    return h.hexdigest()[:24]


def evaluate(model, tasks: list[protocol.Task], workers: int, progress=print,
             cache: Path | None = None, stream: bool = False) -> dict:
    """{task key: {method: {horizon: mse}}} for the model, the naive methods and statsforecast's.
    `cache`: a directory keeping statsforecast's forecasts by task digest (they do not depend on
    the model; for development runs, the published report is made without it). `stream`: also
    `rimer_stream`, the streaming API's forecasts (`protocol.stream_forecasts`), for the tasks
    that hold their series."""
    results = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        stats = []
        for task in tasks:
            path = cache / f"{task_digest(task)}.npz" if cache else None
            stats.append(path if path and path.is_file() else pool.submit(stat_forecasts, task))
        for task, fut in zip(tasks, stats):
            t0 = time.time()
            rimer = protocol.model_forecast(model, task)
            _, naive = protocol.naive_scores(task)
            row = {"rimer": protocol.mse_by_horizon(task, rimer), **naive}
            if stream and task.series is not None:
                row["rimer_stream"] = protocol.mse_by_horizon(
                    task, protocol.stream_forecasts(model, task))
            if isinstance(fut, Path):
                stat = dict(np.load(fut))
            else:
                stat = fut.result()
                if cache:
                    cache.mkdir(parents=True, exist_ok=True)
                    np.savez(cache / f"{task_digest(task)}.npz", **stat)
            forecasts = {"rimer": rimer, **stat}
            for name in STAT_METHODS:
                row[name] = protocol.mse_by_horizon(task, forecasts[name])
            results[task.key] = {"mse": row, "windows": len(task.histories),
                                 "sample": {"history": task.histories[len(task.histories) // 2][-256:],
                                            "truth": task.truth[len(task.histories) // 2],
                                            **{k: v[len(task.histories) // 2] for k, v in forecasts.items()}}}
            progress(f"  {task.key}: {len(task.histories)} windows, rimer {time.time() - t0:.1f}s")
    return results


STREAM_NOTE = ("`rimer_stream`: the same model as the streaming API forecasts at the same "
               "origins, from its state over every point before the origin (the whole history, "
               "not 512 points; at an origin inside a patch the unfinished patch's points inform "
               "the forecast from its second patch on). Not the protocol's lookback of 512, which "
               "every other column keeps.")


def methods_of(results: dict) -> list[str]:
    """The columns: the model, `rimer_stream` where measured, the naive and statistical ones."""
    stream = any("rimer_stream" in r["mse"] for r in results.values())
    return ["rimer", *(["rimer_stream"] if stream else []), "repeat_last", "seasonal_naive",
            *STAT_METHODS]


def summarise(results: dict) -> dict:
    """Per series, each method's average MSE over the best naive's; geometric means."""
    methods = methods_of(results)
    ratios = {}
    for key, res in results.items():
        avg = {m: protocol.average(res["mse"][m]) for m in methods if m in res["mse"]}
        best = min(avg[m] for m in ("repeat_last", "seasonal_naive") if m in avg)
        ratios[key] = {m: (v / best if best > 0 else float("nan")) for m, v in avg.items()}
    geo = {}
    for m in methods:
        vals = [r[m] for r in ratios.values() if m in r]
        if m == "seasonal_naive":  # series without a period: seasonal naive is repeat-last
            vals = [r.get(m, r["repeat_last"]) for r in ratios.values()]
        geo[m] = float(math.exp(np.mean(np.log(vals)))) if vals else float("nan")
    return {"ratio": ratios, "geomean": geo}


def write_report(out: Path, name: str, info: dict, summary: dict, checks: dict, command: str) -> None:
    methods = list(summary["geomean"])
    lines = [f"# Zero-shot benchmark of `{name}`", "",
             "MSE of each method (scaled values, mean of the four horizons) over the best naive "
             "forecast's (the better of repeat-last and seasonal naive at the best of the series' "
             "natural periods, `periods`: the first is the statistical models' season); below 1 "
             "beats it. Series never seen in training (training/corpus.py roles). "
             f"Command: `{command}`.", *(["", STREAM_NOTE] if "rimer_stream" in methods else []), "",
             "| series | freq | domain | periods | windows | horizons | " + " | ".join(methods) + " |",
             "| --- | --- | --- | --- | --- | --- | " + " | ".join("---:" for _ in methods) + " |"]
    for key, r in summary["ratio"].items():
        meta = info[key]
        cells = " | ".join(f"{r[m]:.3f}" if m in r else "-" for m in methods)
        periods = "/".join(map(str, meta.get("periods") or ())) or "-"
        lines.append(f"| {key} | {meta['freq']} | {meta['domain']} | {periods} | "
                     f"{meta['windows']} | {'/'.join(map(str, meta['horizons']))} | {cells} |")
    geo = summary["geomean"]
    cells = " | ".join(f"**{geo[m]:.3f}**" for m in methods)
    lines.append(f"| **geometric mean** | | | | | | {cells} |")
    methods = [m for m in methods if m != "rimer_stream"]  # (a check is its window alone)
    lines += ["", "Synthetic checks (raw units; MSE, and in brackets over repeat-last's):", "",
              "| check | horizon | " + " | ".join(methods) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in methods) + " |"]
    for key, res in checks.items():
        avg = {m: protocol.average(res["mse"][m]) for m in methods if m in res["mse"]}
        base = avg["repeat_last"]
        cells = " | ".join((f"{avg[m]:.4g} ({avg[m] / base:.3f})" if base > 0 else f"{avg[m]:.4g}")
                           if m in avg else "-" for m in methods)
        lines.append(f"| {key} | {next(iter(res['mse']['rimer']))} | {cells} |")
    lines += ["", "![sample forecasts](forecast.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def plot(out: Path, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(results)
    cols = 3
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(5 * cols, 2.3 * -(-n // cols)), squeeze=False)
    colours = {"rimer": "tab:red", "AutoETS": "tab:green", "AutoTheta": "tab:purple", "MSTL": "tab:blue"}
    for ax, (key, res) in zip(axes.flat, results.items()):
        s = res["sample"]
        hist = s["history"]
        ax.plot(range(len(hist)), hist, color="black", lw=0.7)
        t = range(len(hist), len(hist) + len(s["truth"]))
        ax.plot(t, s["truth"], color="black", lw=0.7, ls="--")
        for m, c in colours.items():
            ax.plot(t, s[m], color=c, lw=1.0, label=m)
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6, ncol=4)
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=70)


def bench_tasks(windows: int, lookback: int) -> tuple[list[protocol.Task], dict]:
    tasks, info = [], {}
    for s in corpus.by_role(corpus.load(), "bench"):
        task = protocol.make_task(s.key, corpus.fill_missing(s.values), s.freq, s.periods, "test",
                                  lookback, windows)
        if task is None:
            raise ValueError(f"benchmark series {s.key} is too short for the protocol")
        tasks.append(task)
        info[s.key] = {"freq": s.freq, "domain": s.domain, "period": task.period, "periods": task.periods,
                       "source": s.source,
                       "licence": s.licence, "length": len(s.values), "windows": len(task.histories),
                       "horizons": task.horizons}
    return tasks, info


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", default=None, help="directory for report.md, metrics.json, forecast.png")
    ap.add_argument("--windows", type=cli.positive, default=48, help="forecast origins per series")
    ap.add_argument("--lookback", type=cli.positive, default=protocol.LOOKBACK)
    ap.add_argument("--workers", type=cli.positive, default=2, help="processes fitting statsforecast")
    ap.add_argument("--threads", type=cli.non_negative, default=1, help="torch threads (0: default)")
    ap.add_argument("--stat-cache", default=None,
                    help="directory keeping statsforecast's forecasts between runs (development)")
    ap.add_argument("--stream", action="store_true",
                    help="also the streaming API's forecasts at the same origins, from the state "
                         "over each series' whole history before the origin (rimer_stream)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, manifest = checkpoint.load(args.weights)
    t0 = time.time()
    tasks, info = bench_tasks(args.windows, args.lookback)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    log(f"{len(tasks)} series, {sum(len(t.histories) for t in tasks)} windows")
    cache = Path(args.stat_cache) if args.stat_cache else None
    results = evaluate(model, tasks, args.workers, log, cache, args.stream)
    check_list = [check_task(k, *v) for k, v in synthetic_checks().items()]
    checks = evaluate(model, check_list, args.workers, log, cache)
    summary = summarise(results)
    command = "python -m training.zeroshot " + " ".join(argv)
    name = str(manifest.get("name"))
    methods = methods_of(results)
    print(f"{'series':32}" + "".join(f"{m:>15}" for m in methods))
    for key, r in summary["ratio"].items():
        print(f"{key:32}" + "".join(f"{r[m]:15.3f}" if m in r else f"{'-':>15}" for m in methods))
    print(f"{'geometric mean':32}" + "".join(f"{summary['geomean'][m]:15.3f}" for m in methods))
    for key, res in checks.items():
        print(f"check {key:26}" + "".join(f"{protocol.average(res['mse'][m]):15.4g}"
                                          if m in res["mse"] else f"{'-':>15}" for m in methods))
    metrics = {"weights": args.weights, "model": name, "command": command,
               "statsforecast_cached": cache is not None,
               "seconds": round(time.time() - t0, 1), "series": info,
               "mse": {k: r["mse"] for k, r in results.items()},
               "ratio": summary["ratio"], "geomean": summary["geomean"],
               "checks": {k: r["mse"] for k, r in checks.items()}}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_plain) + "\n")
        write_report(out, name, info, summary, checks, command)
        plot(out, {**results, **checks})
    return metrics


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x))


if __name__ == "__main__":
    cli.run(main, "python -m training.zeroshot")

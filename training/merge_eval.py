"""Join evaluations of the same weights, lookback and stride, run for different datasets.

    python -m training.merge_eval weights/rimer-general/eval-512 /tmp/weather-512

A stride-1 evaluation of all four datasets takes most of an hour on two cores; this lets one
dataset be (re)run on its own and joined to the others without rerunning them. The first
directory is updated in place: metrics.json gets every part's results (a dataset may appear in
one part only), report.md lists every part's command, and forecast.png stacks the parts' plots.
Parts that disagree on weights, lookback, stride or baseline lookback are refused.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from model import cli
from training.evaluate import write_report

AGREE = ("weights", "model", "lookback", "stride", "base_lookback")


def _load(part: Path) -> dict:
    metrics = json.loads((part / "metrics.json").read_text())
    metrics.setdefault("base_lookback", 512)  # evaluations before the field was written
    if "commands" not in metrics:  # older metrics.json: the command is only in the report
        found = re.search(r"Command: `([^`]+)`", (part / "report.md").read_text())
        metrics["commands"] = [found.group(1)] if found else []
    return metrics


def merge(parts: list[Path]) -> dict:
    """The joined metrics (not written); ValueError when the parts cannot be joined."""
    loaded = [_load(p) for p in parts]
    first = loaded[0]
    for part, m in zip(parts[1:], loaded[1:]):
        for key in AGREE:
            if m.get(key) != first.get(key):
                raise ValueError(f"{part}: {key} is {m.get(key)!r}, the first part's is "
                                 f"{first.get(key)!r}")
    results, commands = {}, []
    for part, m in zip(parts, loaded):
        for name, res in m["results"].items():
            if name in results:
                raise ValueError(f"{part}: dataset {name} is in an earlier part too")
            results[name] = res
        commands += m["commands"]
    joined = {k: first[k] for k in AGREE}
    joined.update(seconds=round(sum(m["seconds"] for m in loaded), 1), commands=commands,
                  results=results)
    return joined


def stack_plots(paths: list[Path], out: Path) -> None:
    """One PNG of the parts' PNGs one above another (padded white to the widest)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    images = [plt.imread(p) for p in paths]
    images = [im if im.shape[2] == 4 else np.dstack([im, np.ones(im.shape[:2])]) for im in images]
    width = max(im.shape[1] for im in images)
    padded = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=1.0)
              for im in images]
    plt.imsave(out, np.concatenate(padded, axis=0))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("into", help="evaluation directory that receives the others")
    ap.add_argument("parts", nargs="+", help="evaluation directories to join into it")
    args = ap.parse_args(argv)
    parts = [Path(args.into)] + [Path(p) for p in args.parts]
    try:
        joined = merge(parts)
    except ValueError as err:
        ap.error(str(err))
    into = parts[0]
    pngs = [p / "forecast.png" for p in parts if (p / "forecast.png").exists()]
    if pngs:
        stack_plots(pngs, into / "forecast.png")
    write_report(into, str(joined["model"]), joined["results"], joined["stride"],
                 joined["base_lookback"], joined["lookback"], joined["commands"])
    (into / "metrics.json").write_text(json.dumps(joined, indent=2) + "\n")
    return joined


if __name__ == "__main__":
    cli.run(main, "python -m training.merge_eval")

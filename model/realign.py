"""Which forecasts start afresh at a series' newest point, and over which points.

Series are cut into patches from their first point, so a state whose newest points are an
unfinished patch would inform a forecast with them only from its second patch on (64 points of 10
and 16 of 100 were forecast 10 for 16 steps). And the causal statistics weigh each patch 1/16 for
ever: after a series' scale drops by orders of magnitude they take hundreds of patches to follow
(3,200 points of noise at 1e6 and then 3,200 of 1.0 were forecast in the hundreds). A lag model's
state keeps its last points of complete patches, so `Rimer.forecast` (and the triton pool's
`forecast_slots`) forecasts such rows from a fresh state over their last whole patches ending at
the newest point instead: `mask` picks the rows, `windows` gives their points, `merge_rows` puts
the two groups' results back in order."""

from __future__ import annotations

import torch

from model.config import RimerConfig
from model.state import RimerState

# Patches a forecast starts afresh over: the benchmarks' lookback (512 points at patch_len 32,
# training/protocol.py) and one call of the onnx backend's chunk graph; 19 patches (all a lag
# head keeps) took 4.7 ms against 3.4 for one series on the CPU.
REALIGN_PATCHES = 16
# A state's normalising variance over this many times its recent points' is stale: a standard
# deviation ten times theirs.
STALE_VARIANCE = 100.0


def mask(cfg: RimerConfig, state: RimerState) -> torch.Tensor:
    """[B] bool: the rows to forecast afresh: those inside a patch, and those whose normalising
    variance is over STALE_VARIANCE times that of their recent points (the last up to 16
    patches the state keeps)."""
    inside = state.tail_len > 0
    if state.history is None:
        return inside
    p = cfg.patch_len
    h = state.history.double()
    kept = (state.n_patches.clamp(max=REALIGN_PATCHES) * p).clamp(max=h.shape[1]).to(h.device)
    recent = torch.arange(h.shape[1], device=h.device)[None] >= (h.shape[1] - kept)[:, None]
    count = kept.clamp(min=1).double()
    mean = (h * recent).sum(1) / count
    var = (((h - mean[:, None]) * recent) ** 2).sum(1) / count
    stale = state.norm[:, 1] > STALE_VARIANCE * var + cfg.norm_eps
    return inside | (stale & (state.n_patches >= 1))


def windows(cfg: RimerConfig, state: RimerState) -> list[torch.Tensor]:
    """Per row, the points its fresh state is made of: its last min(complete patches,
    REALIGN_PATCHES) x patch_len points, ending at its newest point (the state keeps them: up to
    history_len points of complete patches, then the tail)."""
    p = cfg.patch_len  # (whole patches: the fresh state ends on a patch)
    out = []
    for b in range(state.batch):
        recent = torch.tensor(state.recent(b), dtype=torch.float32, device=state.tail.device)
        keep = min(len(recent) - int(state.tail_len[b]), REALIGN_PATCHES * p) // p * p
        out.append(recent[len(recent) - keep:])
    return out


def merge_rows(parts: list[tuple[torch.Tensor, object]], batch: int):
    """Results of groups of a batch's rows (`rows`, a tensor [n, ...] or a tuple of them) put
    back in the batch's order."""
    first = parts[0][1]
    if not isinstance(first, tuple):
        return merge_rows([(rows, (out,)) for rows, out in parts], batch)[0]
    outs = tuple(torch.empty(batch, *t.shape[1:], dtype=t.dtype, device=t.device) for t in first)
    for rows, got in parts:
        for out, t in zip(outs, got):
            out[rows] = t
    return outs

"""Prediction intervals from the quantile head, and their online calibration per series.

Quantiles at any level come from the network's quantile levels by linear interpolation in the
standard normal's quantile scale z = Phi^-1(level) (and linear extrapolation past the end
levels), so requested levels between or beyond the network's get sensible values, and order is
kept: a wider interval always contains a narrower one.

Online calibration is adaptive conformal inference (Gibbs and Candes, 2021), one step per
completed patch. For each tracked level l the state keeps alpha_l - (1 - l), the offset of the
miscoverage the intervals are drawn at from the nominal one. When a patch completes, its P points
are compared with the interval the series' previous forecast of that patch gave at its current
alpha_l, and

    alpha_l <- alpha_l + GAMMA * ((1 - l) - fraction of the patch's points outside).

Whatever the data, the long-run fraction of points outside then tends to 1 - l (the deviation
after n patches is at most (max(alpha_1, 1 - alpha_1) + GAMMA) / (GAMMA n)): a guarantee for the
one-patch-ahead intervals, the horizon the updates see. A forecast's longer horizons use the same
alpha, so their intervals widen and narrow with the series, without that guarantee. The update
runs inside the model step, so a series streamed in any pieces, sent whole, or recovered from the
log gets the same numbers.
"""

from __future__ import annotations

import functools

import torch

TRACKED = (50.0, 80.0, 90.0, 95.0, 98.0, 99.0)  # levels (percent) whose alpha a series tracks
GAMMA = 0.05  # step per patch (bench/intervals.py: recovery after the noise doubles, coverage)


def _z(levels: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtri(levels.double())


@functools.lru_cache(maxsize=32)
def _z_of(levels: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """`_z` of a model's levels, made once per device (the model step's calibration asks for it
    at every step; a constant, never written to)."""
    return _z(torch.tensor(levels, device=device))


def at_levels(quantiles: torch.Tensor, levels: tuple[float, ...], targets: torch.Tensor) -> torch.Tensor:
    """Quantiles [B, K, H] at the levels `targets` ([K], or [B, K] per row) in (0, 1), from the
    network's `quantiles` [B, Q, H] at `levels`: linear in z between levels, extrapolated from
    the end segments outside them."""
    zq = _z(torch.tensor(levels, device=quantiles.device))  # [Q]
    q = quantiles.double()
    bsz, _, h = q.shape
    zt = _z(targets.to(quantiles.device)).expand(bsz, -1).contiguous()  # [B, K]
    j = torch.searchsorted(zq, zt).clamp(1, len(levels) - 1)  # the segment [j - 1, j]
    index = j[..., None].expand(bsz, j.shape[1], h)
    lo, hi = q.gather(1, index - 1), q.gather(1, index)
    frac = ((zt - zq[j - 1]) / (zq[j] - zq[j - 1]))[..., None]
    return (lo + frac * (hi - lo)).to(quantiles.dtype)


def abs_scores(values: torch.Tensor, quantiles: torch.Tensor, levels: tuple[float, ...]) -> torch.Tensor:
    """|z| [..., P] of each point `values` [..., P] within its predicted distribution `quantiles`
    [..., Q, P] (the inverse of `at_levels`'s map): y lies inside the interval of half-width c
    in z (levels Phi(-c) .. Phi(c)) exactly when |z| <= c."""
    zq = _z_of(tuple(levels), values.device)
    q, y = quantiles.double(), values.double()
    above = (q <= y[..., None, :]).sum(-2)  # how many quantiles lie at or below y
    j = above.clamp(1, len(levels) - 1)  # the segment [j - 1, j] (end segments outside)
    q0 = q.gather(-2, (j - 1)[..., None, :])[..., 0, :]
    q1 = q.gather(-2, j[..., None, :])[..., 0, :]
    z0, z1 = zq[j - 1], zq[j]
    width = (q1 - q0).clamp(min=1e-12)
    return (z0 + (y - q0) / width * (z1 - z0)).abs()


def nominal(device=None) -> torch.Tensor:
    """The tracked levels' nominal miscoverage [L] (float64)."""
    return _nominal(torch.device(device) if device is not None else torch.device("cpu")).clone()


@functools.lru_cache(maxsize=8)
def _nominal(device: torch.device) -> torch.Tensor:
    return 1.0 - torch.tensor(TRACKED, dtype=torch.float64, device=device) / 100.0


def update(offsets: torch.Tensor, scores: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The calibration state [B, L] (alpha - nominal per tracked level) after one patch whose
    points scored `scores` [B, P] (`abs_scores`), where `step` [B] is true (else unchanged)."""
    base = _nominal(offsets.device)  # (shared: read, never written)
    alpha = base + offsets
    half = torch.special.ndtri((1.0 - alpha / 2.0).clamp(0.0, 1.0))  # alpha <= 0: inf; >= 2: -inf
    outside = (scores.double()[:, None, :] > half[..., None]).double().mean(-1)
    new = offsets + GAMMA * (base - outside)
    return torch.where(step[:, None], new, offsets)


def alpha_for(offsets: torch.Tensor | None, level: float) -> torch.Tensor:
    """Each row's miscoverage [B] to draw a `level` (percent) interval at: nominal plus the
    offset tracked for that level, interpolated between tracked levels (the nearest outside
    them). No offsets (static intervals): nominal."""
    base = 1.0 - level / 100.0
    if offsets is None:
        return torch.tensor([base], dtype=torch.float64)
    tracked = torch.tensor(TRACKED, dtype=torch.float64, device=offsets.device)
    j = int(torch.searchsorted(tracked, torch.tensor(level, dtype=torch.float64)).clamp(1, len(TRACKED) - 1))
    w = float(min(max((level - TRACKED[j - 1]) / (TRACKED[j] - TRACKED[j - 1]), 0.0), 1.0))
    return base + (1 - w) * offsets[:, j - 1] + w * offsets[:, j]


def interval_levels(alpha: torch.Tensor) -> torch.Tensor:
    """Quantile levels [B, 2] (lo, hi) of intervals of miscoverage `alpha` [B], clamped inside
    (0, 1) (an alpha at or below 0 asks for an unbounded interval: the widest finite one)."""
    a = alpha.clamp(1e-6, 1 - 1e-6)
    return torch.stack([a / 2, 1 - a / 2], dim=-1)


def interval_score(lo, hi, y, level: float):
    """Winkler's interval score of [lo, hi] at `level` (percent) for truth y: the width plus
    2 / alpha times how far outside y falls. Tensors or NumPy arrays alike."""
    a = 1 - level / 100
    return (hi - lo) + (2 / a) * ((lo - y).clip(min=0) + (y - hi).clip(min=0))


def widen_by_horizon(mean: torch.Tensor, quantiles: torch.Tensor, p: int, spread: torch.Tensor,
                     carry: float) -> torch.Tensor:
    """A rollout's quantiles [B, Q, L] drawn wider for its later patches, in the rollout's own
    layout (L a multiple of the patch length p; columns k p .. k p + p - 1 are its patch k, the
    first patch whole, its points already seen included). Each point's offset d from the
    forecast `mean` [B, L] becomes spread[k] d (the last entry for every later patch), and from
    the second patch on it is also joined in quadrature to the offset D_prev the same quantile
    reached at the previous patch's last point:

        sign(d) sqrt((spread[k] d)^2 + c D_prev^2),  c = carry (1 - d_1^2 / d_P^2), in [0, carry]

    where d_1, d_P are the quantile's offsets at the first patch's first and last points: the
    share of the first patch's end spread that built up within it, which is ~1 for a random
    walk (its uncertainty grows step by step, so it carries on) and ~0 for noise about a level
    (it does not). Why: the quantile head predicts each patch from what it is fed, so a later
    patch's offsets restart from one step's uncertainty, and the intervals fell at each patch
    boundary (a random walk's 80% interval covered 52% at steps 33-40). `spread` and `carry` are
    fitted on validation series (training/spread.py); carry 0 keeps the spread alone. Sorted
    along Q after, so that the levels stay in order."""
    centre = mean.double()[:, None]
    offsets = quantiles.double() - centre
    pieces = [offsets[..., :p]]  # the first patch: the head's own horizon, as predicted
    weight = None  # [B, Q, 1]: c of the formula, per row and quantile (None: no carry)
    if carry > 0:
        first, last = offsets[..., :1] ** 2, offsets[..., p - 1:p] ** 2
        weight = carry * (1 - first / last.clamp(min=1e-300)).clamp(0, 1)
    for k in range(1, offsets.shape[-1] // p):
        d = spread[min(k, len(spread) - 1)].double() * offsets[..., k * p:(k + 1) * p]  # (no sync)
        if weight is not None:
            prev = pieces[-1][..., -1:]
            side = torch.where(d != 0, torch.sign(d), torch.sign(prev))
            d = side * torch.sqrt(d * d + weight * prev * prev)
        pieces.append(d)
    return (centre + torch.cat(pieces, -1)).sort(dim=1).values.to(quantiles.dtype)

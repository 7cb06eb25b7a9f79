"""The lag head's math: each patch's forecast of the next as a weighted sum of the points one
patch to W points back, the weights from how well each lag's last M points match the series'
last M (a period found by matching, as an analogue forecast finds it). `lag_copy` is what
`Rimer` calls; the two correlations inside it (`lag_match`, `lag_sum`) run through the FFT,
each beside the plain strided form it is tested against (tests/unit/model/test_heads.py)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

LAG_SLICE_ELEMENTS = 1 << 25  # the lag head's largest temporary (a chunk of patches at a time)


def lag_match_direct(windows: torch.Tensor, m: int, n_lags: int) -> torch.Tensor:
    """The lag match plainly, the reference `lag_match` is tested against. windows [B, T, L]:
    the points up to each patch's end. Returns [B, T, n_lags]: entry j is the mean squared
    difference between the last m points and windows[j : j + m]."""
    earlier = windows[..., : m + n_lags - 1].unfold(-1, m, 1)  # [B, T, n_lags, m]
    return ((earlier - windows[..., -m:, None].transpose(-1, -2)) ** 2).mean(-1)


def lag_sum_direct(windows: torch.Tensor, weights: torch.Tensor, m: int, p: int) -> torch.Tensor:
    """The weighted sum of lagged points plainly, the reference `lag_sum` is tested against:
    windows [B, T, L], weights [B, T, n_lags] -> [B, T, p], entry i the sum over j of
    windows[m + i + j] * weights[j]."""
    values = windows[..., m:].unfold(-1, weights.shape[-1], 1)[..., :p, :]  # [B, T, p, n_lags]
    return (values * weights[..., None, :]).sum(-1)


def lag_level_direct(windows: torch.Tensor, m: int, n_lags: int) -> torch.Tensor:
    """Each lag's match level plainly, the reference `lag_level` is tested against: windows
    [B, T, L] -> [B, T, n_lags], entry j the mean of windows[j : j + m] (the points each lag's
    match compares with the last m)."""
    return windows[..., : m + n_lags - 1].unfold(-1, m, 1).mean(-1)


def lag_level(x: torch.Tensor, m: int, n_lags: int) -> torch.Tensor:
    """`lag_level_direct` from one cumulative sum (x: `centred` windows, float64)."""
    total = F.pad(x[..., : m + n_lags - 1].cumsum(-1), (1, 0))
    return (total[..., m:] - total[..., :n_lags]) / m


@functools.lru_cache(maxsize=64)
def fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: an FFT length that is fast and no longer than needed."""
    best, f5 = 1 << (n - 1).bit_length(), 1
    while f5 < best:
        f35 = f5
        while f35 < best:
            size = f35
            while size < n:
                size *= 2
            best, f35 = min(best, size), f35 * 3
        f5 *= 5
    return best


def centred(windows: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows in float64 minus their last m points' mean, and that mean [..., 1]: what
    `lag_match` and `lag_sum` take, so that their FFTs' rounding is relative to the series'
    movement, not to its distance from zero."""
    x = windows.double()
    centre = x[..., -m:].mean(-1, keepdim=True)
    return x - centre, centre


def lag_match(x: torch.Tensor, m: int, n_lags: int, spectrum: torch.Tensor | None = None
              ) -> torch.Tensor:
    """`lag_match_direct` on `centred` windows x, without its [B, T, n_lags, m] temporary: the
    squared difference expanded, sum (a - c)^2 = sum a^2 + sum c^2 - 2 sum a c, the energies from
    a cumulative sum and the cross terms of every lag at once as one correlation through the FFT
    (`spectrum`: rfft(x, fft_size(L)), when the caller has it). No index reaches past L, so the
    FFT's wrap-around never mixes in. Each row's FFT is its own: a row's bits do not depend on
    the batch (the engine's batch-invariance probe checks it on each machine)."""
    size = fft_size(x.shape[-1])
    if spectrum is None:
        spectrum = torch.fft.rfft(x, size)
    cur = x[..., -m:]
    cross = torch.fft.irfft(spectrum * torch.fft.rfft(cur, size).conj(), size)[..., :n_lags]
    seg = x[..., : m + n_lags - 1]
    energy = F.pad((seg * seg).cumsum(-1), (1, 0))
    ssd = energy[..., m:] - energy[..., :n_lags] + (cur * cur).sum(-1, keepdim=True) - 2 * cross
    return ssd.clamp(min=0) / m


def lag_sum(x: torch.Tensor, weights: torch.Tensor, m: int, p: int,
            spectrum: torch.Tensor | None = None) -> torch.Tensor:
    """`lag_sum_direct` as one correlation through the FFT per row (the direct form's strided
    product was most of the lag head's time in a bulk append); `spectrum` as in `lag_match`."""
    size = fft_size(x.shape[-1])
    if spectrum is None:
        spectrum = torch.fft.rfft(x, size)
    out = torch.fft.irfft(spectrum * torch.fft.rfft(weights, size).conj(), size)
    return out[..., m: m + p]


def lag_copy(history: torch.Tensor, patches: torch.Tensor, n_before: torch.Tensor,
             logits: torch.Tensor, sharpness: torch.Tensor, var: torch.Tensor,
             drift: torch.Tensor | None = None, local: bool = False, best: float = 0.0):
    """For each patch n of a chunk, the next patch's points as a weighted sum of earlier points:
    point i (1..P) of patch n + 1 is sum_k a_k x[end_n + i - k] over lags k = P .. W, where end_n
    is the last point of patch n and x runs over `history` (the points before the chunk) and then
    the chunk's patches.

    The weights a = softmax over lags of logits_k + sharpness * match_k, where match_k is minus
    the mean squared difference between the last M points (to end_n) and the M points k before
    them, over patch n's variance `var`: lags where the series repeats itself score high before
    anything is learned (a period found by matching, as an analogue forecast finds it), and the
    learned logits and sharpness choose among them. Lags whose match would reach before the
    series' first point are excluded; a patch with none left gets weight nowhere.

    With `local` (a model with lag_scale "local"), the match is over min(var, the variance of
    the last M points) instead: a trend inflates the normalising variance (a slope of 0.3 a
    step under a weekly season of swing 50: 3,856 against 279 without it), which left the
    match term near zero and the copy to the lags' learned logits, out of phase.

    With `best` k > 0 (a model's `lag_best`), the match is measured against at most k times the
    best reachable lag's mean squared difference: a series that repeats itself closely (M4's
    hourly series, a season on a trend) is matched sharply, one whose best lag matches no better
    than noise keeps the softer match. On rimer-general-v8's weights, without training, k = 12
    took validation from -0.0967 to -0.1269 (M4 hourly +0.012 -> -0.217; k 4 / 8 / 16 / 32 / 64:
    -0.121 / -0.126 / -0.126 / -0.120 / -0.114).

    With `drift` [B, T] (a model with `lag_drift`), each lag's copy is also shifted by drift
    times the difference between the last M points' mean and its match's mean: 1 carries a
    trend on (on a linear ramp every lag then copies exactly), 0 copies the level as it was.

    history [B, W + M - P]; patches [B, T, P]; n_before [B] complete patches before the chunk;
    logits [B, T, W - P + 1] (so W, and M, follow from the shapes); sharpness, var [B, T].
    Returns the copy [B, T, P] in the data's units and [B, T] whether any lag was usable."""
    bsz, t, p = patches.shape
    n_lags = logits.shape[-1]
    m = history.shape[1] - (n_lags + p - 1) + p
    step = max(1, LAG_SLICE_ELEMENTS // max(1, bsz * p * n_lags))
    if t > step:  # in slices of patches (each patch's result depends on its own inputs only)
        outs, used = [], []
        for lo in range(0, t, step):
            hi = min(t, lo + step)
            before = torch.cat([history, patches[:, :lo].reshape(bsz, lo * p).to(history.dtype)], 1)
            out, ok = lag_copy(before[:, before.shape[1] - history.shape[1]:], patches[:, lo:hi],
                               n_before + lo, logits[:, lo:hi], sharpness[:, lo:hi], var[:, lo:hi],
                               None if drift is None else drift[:, lo:hi], local, best)
            outs.append(out)
            used.append(ok)
        return torch.cat(outs, 1), torch.cat(used, 1)
    w = n_lags + p - 1
    ext = torch.cat([history, patches.reshape(bsz, t * p).to(history.dtype)], dim=1).contiguous()
    # Each patch n's window: the W + M points ext[n P : n P + W + M] up to its end. Lags in the
    # window's order, j' = W - lag (the logits, in lag order, are flipped): point i of patch n + 1
    # at lag k is the window's point M + i + j'; the match compares its points j' .. j' + M with
    # its last M; it reaches before the series' first point where j' < W + M - seen.
    if ext.device.type == "cpu" and not torch.is_grad_enabled():
        return _serving_tail(ext, n_before, logits, sharpness, var, t, p, m, drift, local, best)
    s0, off = ext.stride(0), ext.storage_offset()
    x, centre = centred(ext.as_strided((bsz, t, w + m), (s0, p, 1), off), m)
    spectrum = torch.fft.rfft(x, fft_size(w + m))  # (both correlations read it)
    msd = lag_match(x, m, n_lags, spectrum)
    seen = (n_before[:, None] + torch.arange(1, t + 1, device=patches.device)[None]) * p  # [B, T]
    usable = seen >= p + m
    reach = torch.arange(n_lags, device=patches.device) >= (w + m - seen)[..., None]
    scale = var.double()
    if local:  # (x is centred on the last M points' mean)
        scale = torch.minimum(scale, (x[..., -m:] ** 2).mean(-1))
    if best:
        closest = msd.masked_fill(~reach, math.inf).amin(-1)
        scale = torch.minimum(scale, torch.where(torch.isfinite(closest), best * closest, scale))
    coef = sharpness.double() / scale.clamp(min=1e-12)
    score = (logits.flip(-1).double() - coef[..., None] * msd).float().masked_fill(~reach, -math.inf)
    weights = torch.softmax(score, dim=-1).masked_fill(~usable[..., None], 0.0).double()
    copy = lag_sum(x, weights, m, p, spectrum) + centre * weights.sum(-1, keepdim=True)
    if drift is not None:  # (the last M points' mean is 0 in centred units)
        shift = (weights * lag_level(x, m, n_lags)).sum(-1, keepdim=True)
        copy = copy - drift.double()[..., None] * shift
    return copy.to(ext.dtype), usable




def _serving_tail(ext: torch.Tensor, n_before: torch.Tensor, logits: torch.Tensor,
                  sharpness: torch.Tensor, var: torch.Tensor, t: int, p: int, m: int,
                  drift: torch.Tensor | None = None, local: bool = False, best: float = 0.0):
    """`lag_copy`'s arithmetic after `ext` in NumPy, for the CPU without gradients (serving,
    evaluation): the same formulas as the torch code above it, with a fraction of torch's fixed
    cost per operator, which is most of the lag head's time for one series (a single append
    completing a patch, each step of a forecast). Always this form on the CPU without gradients,
    so a row's bits still do not depend on its batch; tested against the torch form."""
    bsz, n_lags = ext.shape[0], logits.shape[-1]
    w = n_lags + p - 1
    e = ext.numpy()
    windows = np.lib.stride_tricks.as_strided(e, (bsz, t, w + m),
                                              (e.strides[0], p * e.itemsize, e.itemsize))
    x = windows.astype(np.float64)
    centre = x[..., -m:].mean(-1, keepdims=True)
    x -= centre
    size = fft_size(w + m)
    spectrum = np.fft.rfft(x, size)
    cur = x[..., -m:]
    cross = np.fft.irfft(spectrum * np.fft.rfft(cur, size).conj(), size)[..., :n_lags]
    energy = np.zeros(x.shape[:-1] + (m + n_lags,))
    np.cumsum(x[..., : m + n_lags - 1] ** 2, -1, out=energy[..., 1:])
    msd = energy[..., m:] - energy[..., :n_lags] + (cur * cur).sum(-1, keepdims=True) - 2 * cross
    msd = np.maximum(msd, 0.0) / m
    seen = (n_before.numpy()[:, None] + np.arange(1, t + 1)) * p  # [B, T]
    usable = seen >= p + m
    whole = bool(seen.min() >= w + m)  # every lag reachable everywhere (a series past W + M points)
    reach = None if whole else np.arange(n_lags) >= (w + m - seen)[..., None]
    scale = var.numpy().astype(np.float64)
    if local:
        scale = np.minimum(scale, (cur * cur).mean(-1))
    if best:
        closest = (msd if whole else np.where(reach, msd, np.inf)).min(-1)
        scale = np.minimum(scale, np.where(np.isfinite(closest), best * closest, scale))
    coef = sharpness.numpy().astype(np.float64) / np.maximum(scale, 1e-12)
    score = (logits.numpy()[..., ::-1] - coef[..., None] * msd).astype(np.float32)
    if not whole:
        score[~reach] = -np.inf
    with np.errstate(invalid="ignore"):  # (a row with no lag: weight nowhere, set below)
        top = score.max(-1, keepdims=True)
        weights = np.exp(score - top)
        weights /= weights.sum(-1, keepdims=True)
    weights = (weights if whole else np.where(usable[..., None], weights, 0.0)).astype(np.float64)
    out = np.fft.irfft(spectrum * np.fft.rfft(weights, size).conj(), size)[..., m: m + p]
    copy = out + centre * weights.sum(-1, keepdims=True)
    if drift is not None:
        total = energy  # (reused: the cumulative sum of the match's points, not their squares)
        np.cumsum(x[..., : m + n_lags - 1], -1, out=total[..., 1:])
        level = (total[..., m:] - total[..., :n_lags]) / m
        copy -= drift.numpy().astype(np.float64)[..., None] * (weights * level).sum(-1, keepdims=True)
    return torch.from_numpy(copy.astype(e.dtype)), torch.from_numpy(usable)

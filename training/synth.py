"""Synthetic training series, generated on the fly on any device (KernelSynth / ForecastPFN style).

A series is a random composition of parts, each present with some probability and drawn per row:

- a trend: linear, piecewise linear (up to 4 kinks), damped (saturating), exponential;
- up to three seasonalities, periods from 2 to 2,000 points (the usual calendar periods at many
  sampling steps, or log-uniform; integer or not), each a Fourier series of 1 to 12 harmonics
  (smooth to blocky shapes), additive or multiplicative (amplitude following the level), with an
  amplitude that may change over time;
- a smooth stationary process (a Gaussian process approximated by random Fourier features: the
  KernelSynth idea without the cubic cost), a random walk with drift;
- noise: white or AR(1), Gaussian or heavy-tailed, of any size relative to the signal, possibly
  heteroscedastic; level shifts, a regime change (the noise or the season changes size), spikes;
- count-like and intermittent series (Poisson draws from a positive intensity), series clipped at
  zero, rounded series, constants; a random scale and offset.

Everything is vectorised over the batch with torch, so a batch of a thousand windows costs a few
milliseconds on a GPU; one `torch.Generator` seeds it all: the same seed, device and shape give
the same batch.
"""

from __future__ import annotations

import math

import torch

# Calendar periods at common sampling steps (hourly: 24, 168; half-hourly 48, 336; 15-min 96, 672;
# 10-min 144, 1008; 5-min 288, 2016; minutely 60, 1440; daily 7, 365.25, 30.4; weekly 52.18;
# monthly 12; quarterly 4).
COMMON_PERIODS = (4.0, 7.0, 12.0, 24.0, 30.44, 48.0, 52.18, 60.0, 96.0, 144.0, 168.0, 288.0, 336.0,
                  365.25, 672.0, 1008.0, 1440.0, 2016.0)
MAX_HARMONICS = 12
SEASON_SLOTS = 3


class _Draw:
    """Random draws of one batch on one device from one generator."""

    def __init__(self, batch: int, gen: torch.Generator, device):
        self.b, self.g, self.dev = batch, gen, device

    def u(self, *shape, lo=0.0, hi=1.0):
        shape = shape or (self.b,)
        return lo + (hi - lo) * torch.rand(*shape, generator=self.g, device=self.dev)

    def n(self, *shape):
        return torch.randn(*(shape or (self.b,)), generator=self.g, device=self.dev)

    def logu(self, lo, hi, *shape):
        return torch.exp(self.u(*shape, lo=math.log(lo), hi=math.log(hi)))

    def coin(self, p, *shape):
        return self.u(*shape) < p

    def choice(self, values: tuple[float, ...], *shape):
        table = torch.tensor(values, device=self.dev)
        idx = torch.randint(len(values), shape or (self.b,), generator=self.g, device=self.dev)
        return table[idx]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit standard deviation (rows that are constant stay zero)."""
    sd = x.std(dim=1, keepdim=True)
    return torch.where(sd > 1e-8, (x - x.mean(dim=1, keepdim=True)) / sd.clamp(min=1e-8), 0.0 * x)


def _trend(d: _Draw, tt: torch.Tensor) -> torch.Tensor:
    """[B, L] unit-scale trend of a random kind (zero for about a quarter of the rows)."""
    b = d.b
    slope = d.n(b, 1)
    trend = slope * (tt - 0.5)
    kinks = 4
    where = d.u(b, kinks)
    delta = d.n(b, kinks) * 1.5 * d.coin(0.3, b, 1)
    active = d.u(b, kinks) < d.u(b, 1)  # a random number of the kinks
    trend = trend + ((delta * active)[:, :, None] * torch.relu(tt[None] - where[:, :, None])).sum(1)
    tau = d.logu(0.03, 1.0, b, 1)
    damped = (1 - torch.exp(-tt / tau)) * d.n(b, 1)
    trend = trend + damped * d.coin(0.15, b, 1)
    rate = d.u(b, 1, lo=-4.0, hi=4.0)
    expo = torch.expm1(rate * tt) / torch.expm1(rate.abs()).clamp(min=1e-3)
    trend = trend + expo * d.coin(0.15, b, 1)
    return trend * ~d.coin(0.25, b, 1)


def _season(d: _Draw, t: torch.Tensor, length: int) -> torch.Tensor:
    """[B, L] sum of up to SEASON_SLOTS periodic parts (unit-scale first part, smaller others)."""
    b = d.b
    out = torch.zeros(b, length, device=d.dev)
    n_active = torch.multinomial(torch.tensor([0.2, 0.4, 0.3, 0.1], device=d.dev), b, replacement=True,
                                 generator=d.g)
    for slot in range(SEASON_SLOTS):
        common = d.choice(COMMON_PERIODS, b) * torch.where(d.coin(0.25), d.u(lo=0.97, hi=1.03), 1.0)
        period = torch.where(d.coin(0.6), common, d.logu(2.0, 2000.0))
        period = torch.where(d.coin(0.3), period.round().clamp(min=2.0), period)[:, None]
        harmonics = torch.randint(1, MAX_HARMONICS + 1, (b, 1), generator=d.g, device=d.dev)
        decay = d.u(b, 1, lo=0.3, hi=2.0)
        shape = torch.zeros(b, length, device=d.dev)
        phase0 = d.u(b, 1) * period
        for k in range(1, MAX_HARMONICS + 1):
            coef = d.n(b, 1) / k ** decay * (k <= harmonics)
            shape = shape + coef * torch.sin(2 * math.pi * k * (t + phase0) / period + d.u(b, 1) * 6.2832)
        shape = _unit(shape)
        amp = d.logu(0.1, 1.0, b, 1) if slot else 1.0
        # an amplitude that changes: a linear drift, or a slow wave
        tt = t / length
        drift = 1 + d.u(b, 1, lo=-0.7, hi=1.5) * tt * d.coin(0.25, b, 1)
        wave = 1 + 0.5 * d.u(b, 1) * torch.sin(2 * math.pi * tt * d.u(b, 1, lo=0.3, hi=3.0)
                                                + d.u(b, 1) * 6.2832) * d.coin(0.15, b, 1)
        out = out + (slot < n_active)[:, None] * amp * drift * wave * shape
    return out


def _smooth_process(d: _Draw, t: torch.Tensor, features: int = 16) -> torch.Tensor:
    """[B, L] a stationary smooth random function: random Fourier features of an RBF kernel of
    length scale 3 to 500 points (a Gaussian process sample, approximately)."""
    b = d.b
    scale = d.logu(3.0, 500.0, b, 1, 1)
    freq = d.n(b, features, 1).abs() / scale / (2 * math.pi)
    phase = d.u(b, features, 1) * 6.2832
    return (torch.cos(2 * math.pi * freq * t[None, None] + phase) * d.n(b, features, 1)).sum(1)


def _ar1(d: _Draw, white: torch.Tensor) -> torch.Tensor:
    """AR(1) filter of `white` [B, L] with a random coefficient per row (0.3 to 0.98), as a
    convolution with the truncated impulse response phi^k (FFT: no loop over time)."""
    b, length = white.shape
    phi = d.u(b, 1, lo=0.3, hi=0.98)
    taps = min(length, 256)
    kernel = phi ** torch.arange(taps, device=d.dev)[None].float()
    n = 1 << (length + taps).bit_length()
    out = torch.fft.irfft(torch.fft.rfft(white, n) * torch.fft.rfft(kernel, n), n)[:, :length]
    return out * torch.sqrt(1 - phi ** 2)


def sample(batch: int, length: int, gen: torch.Generator, device=None,
           pure_walks: float = 0.0, calendar: float = 0.0) -> torch.Tensor:
    """[batch, length] float32 synthetic series on `device` (the generator's device by default).

    `pure_walks`: the share of rows replaced by a driftless random walk (plus a little noise), the
    series where repeating the last value is best: the mixture above nearly always adds a trend or a
    season to its walks, and a model trained on it alone gives exchange rates a trend. At 0 no extra
    draws are made, so the default stream is the one earlier recipes were trained on.

    `calendar`: the share of rows replaced by `_calendar` series (a day's profile that differs by
    day of the week); at 0, as `pure_walks`, no extra draws."""
    dev = torch.device(device) if device is not None else gen.device
    d = _Draw(batch, gen, dev)
    b = batch
    t = torch.arange(length, device=dev, dtype=torch.float32)
    tt = t / max(length - 1, 1)
    # the deterministic signal
    trend = _trend(d, tt) * d.logu(0.05, 3.0, b, 1)
    season = _season(d, t, length) * d.coin(0.8, b, 1)
    multiplicative = d.coin(0.3, b, 1)
    level = 1.0 + 0.6 * torch.tanh(trend)  # a positive curve following the trend
    season = torch.where(multiplicative, season * level, season)
    smooth = _unit(_smooth_process(d, t)) * d.logu(0.05, 1.5, b, 1) * d.coin(0.35, b, 1)
    walk = torch.cumsum(d.n(b, length), dim=1) / math.sqrt(length)
    walk = (walk + d.n(b, 1) * tt * 0.5) * d.logu(0.1, 2.0, b, 1) * d.coin(0.25, b, 1)
    signal = trend + season + smooth + walk
    shifts = torch.zeros(b, length, device=dev)
    for _ in range(3):
        at = d.u(b, 1)
        shifts = shifts + (tt[None] >= at) * d.n(b, 1) * d.coin(0.12, b, 1)
    signal = signal + shifts * signal.std(dim=1, keepdim=True).clamp(min=0.3)
    sd = signal.std(dim=1, keepdim=True)
    # noise, relative to the signal's size (absolute where there is no signal)
    white = d.n(b, length)
    heavy = d.coin(0.3, b, 1)
    white = torch.where(heavy, white * torch.exp(0.7 * d.n(b, length)) / 1.3, white)
    noise = torch.where(d.coin(0.4, b, 1), _ar1(d, white), white)
    hetero = 1 + d.u(b, 1) * 2 * torch.relu(_unit(season)) * d.coin(0.15, b, 1)
    regime = torch.where((tt[None] >= d.u(b, 1)) & d.coin(0.15, b, 1), d.logu(0.3, 3.0, b, 1), 1.0)
    clean = d.coin(0.12, b, 1)
    ratio = torch.where(clean, d.logu(1e-4, 1e-2, b, 1), d.logu(0.02, 1.5, b, 1))
    noise_sd = torch.where(sd > 1e-3, ratio * sd, d.logu(0.01, 1.0, b, 1))
    y = signal + noise * noise_sd * hetero * regime
    spikes = d.coin(0.15, b, 1) & (d.u(b, length) < d.logu(1e-3, 2e-2, b, 1))
    y = y + spikes * d.n(b, length) * 5 * y.std(dim=1, keepdim=True)
    # counts and intermittent demand: Poisson draws from a positive intensity
    counts = d.coin(0.12, b, 1)
    rate = d.logu(0.05, 30.0, b, 1) * torch.exp(d.u(b, 1, lo=0.2, hi=1.2) * _unit(y).clamp(-5, 5))
    y = torch.where(counts, torch.poisson(rate.clamp(max=1e4), generator=d.g), y)
    # clipped at zero, rounded, constant
    clip = d.coin(0.08, b, 1) & ~counts
    y = torch.where(clip, torch.relu(y - y.mean(1, keepdim=True) + d.u(b, 1) * y.std(1, keepdim=True)), y)
    scale = d.logu(0.1, 1000.0, b, 1)
    offset = d.n(b, 1) * d.logu(0.01, 20.0, b, 1) * torch.where(counts | clip, 0.0, 1.0)
    y = (y + offset) * torch.where(counts, 1.0, scale)
    y = torch.where(d.coin(0.05, b, 1) & ~counts, torch.round(y), y)
    y = torch.where(d.coin(0.01, b, 1), d.n(b, 1).expand(b, length) * scale, y)
    if pure_walks > 0:
        y = torch.where(d.coin(pure_walks, b, 1), _pure_walk(d, length), y)
    if calendar > 0:
        y = torch.where(d.coin(calendar, b, 1), _calendar(d, t), y)
    return y.float()


def _pure_walk(d: _Draw, length: int) -> torch.Tensor:
    """[B, L] a random walk without drift (steps Gaussian or heavy-tailed), with observation noise
    of 0 to 30% of a step, at a random scale and level."""
    b = d.b
    steps = d.n(b, length)
    steps = torch.where(d.coin(0.4, b, 1), steps * torch.exp(0.6 * d.n(b, length)) / 1.2, steps)
    walk = torch.cumsum(steps, dim=1) + d.n(b, length) * d.u(b, 1, lo=0.0, hi=0.3)
    scale = d.logu(0.01, 100.0, b, 1)
    return (walk + d.n(b, 1) * d.logu(1.0, 1000.0, b, 1)) * scale


# Points per day at common sampling steps (hourly to 5-minute, and 2-hourly, 90-minute, minutely
# over an hour); other lengths, as business days or shifts make, are drawn log-uniformly beside
# them. (None is taken from the zero-shot benchmark's series.)
DAY_LENGTHS = (24.0, 48.0, 96.0, 144.0, 288.0, 12.0, 16.0, 60.0)


def _calendar(d: _Draw, t: torch.Tensor) -> torch.Tensor:
    """[B, L] series of human activity: a daily profile (smooth or blocky, sometimes a business
    day's with idle hours at zero) whose size depends on the day of a 7-day week, on a
    slow trend, with noise or counts. The parts above only add or multiply seasons of Fourier
    shape, so a week whose weekend repeats the working days' profile at a fraction of its size,
    which a day's lag gets wrong every weekend and a week's lag gets right, is rare among them;
    electricity demand, traffic and call centres are made of it."""
    b, length = d.b, t.shape[0]
    day = torch.where(d.coin(0.7), d.choice(DAY_LENGTHS, b), d.logu(8.0, 300.0).round())[:, None]
    phase = (d.u(b, 1) * day * 7).floor()
    pos = torch.remainder(t[None] + phase, day) / day  # [B, L] place in the day, 0..1
    profile = torch.zeros(b, length, device=d.dev)
    for k in range(1, 9):  # a smooth profile from 8 harmonics
        profile = profile + d.n(b, 1) / k * torch.sin(2 * math.pi * k * pos + d.u(b, 1) * 6.2832)
    profile = _unit(profile)
    opens, hours = d.u(b, 1, lo=0.0, hi=0.4), d.u(b, 1, lo=0.3, hi=0.7)
    open_now = (pos >= opens) & (pos < opens + hours)
    business = d.coin(0.35, b, 1)
    profile = torch.where(business, torch.where(open_now, 1.5 + profile.clamp(min=-1.4), 0.0),
                          profile + 2.5)
    weekday = torch.floor((t[None] + phase) / day).long() % 7  # [B, L] day of a 7-day week
    factors = 1 + 0.25 * d.n(b, 7)  # working days alike, weekends (days 5 and 6) set below
    weekend = d.u(b, 2, lo=0.0, hi=1.1) * d.coin(0.8, b, 1) + (1 + 0.25 * d.n(b, 2)) * ~d.coin(0.8, b, 1)
    factors = torch.cat([factors[:, :5], weekend], 1).clamp(min=0.0)
    y = profile * factors.gather(1, weekday)
    level = 1 + 0.5 * torch.tanh(_trend(d, t / max(length - 1, 1)))
    y = y * level * d.logu(0.5, 2.0, b, 1)
    noise = d.logu(0.02, 0.5, b, 1) * y.std(dim=1, keepdim=True).clamp(min=1e-3)
    y = y + d.n(b, length) * noise * torch.where(business, open_now.float(), 1.0)
    counts = d.coin(0.3, b, 1)
    rate = (y.clamp(min=0) * d.logu(1.0, 100.0, b, 1)).clamp(max=1e4)
    y = torch.where(counts, torch.poisson(rate, generator=d.g), y * d.logu(0.1, 1000.0, b, 1))
    return y


def generator(seed: int, device=None) -> torch.Generator:
    """A seeded generator on `device` (cpu by default)."""
    g = torch.Generator(device=device or "cpu")
    g.manual_seed(seed)
    return g

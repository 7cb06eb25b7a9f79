"""Synthetic series, generated offline with numpy: long test signals and extra training data.

A series is a sum of a few seasonal components (periods drawn from common sampling periods:
daily and weekly cycles at hourly, 15-minute and 10-minute steps, or random), a slowly drifting
level (integrated noise), AR(1) noise, and occasional level shifts. Deterministic given the seed.
"""

from __future__ import annotations

import numpy as np

COMMON_PERIODS = (24, 168, 96, 672, 144, 1008, 12, 7)


def series(length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    out = np.zeros(length)
    for _ in range(rng.integers(1, 4)):
        period = (COMMON_PERIODS[rng.integers(len(COMMON_PERIODS))] if rng.random() < 0.8
                  else rng.uniform(5, 500))
        harmonics = rng.integers(1, 4)
        for h in range(1, harmonics + 1):
            out += rng.normal(0, 1.0 / h) * np.sin(2 * np.pi * h * t / period + rng.uniform(0, 2 * np.pi))
    drift = np.cumsum(rng.normal(0, rng.uniform(0.0, 0.02), length))
    noise = np.empty(length)
    phi, sigma = rng.uniform(0.0, 0.9), rng.uniform(0.05, 0.4)
    noise[0] = rng.normal(0, sigma)
    shocks = rng.normal(0, sigma, length)
    for i in range(1, length):
        noise[i] = phi * noise[i - 1] + shocks[i]
    shifts = np.zeros(length)
    for _ in range(rng.poisson(length / 20_000)):
        shifts[rng.integers(length):] += rng.normal(0, 1.0)
    return out + drift + noise + shifts + rng.normal(0, 3)

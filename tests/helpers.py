"""What many tests share: a tiny random model, series to feed it, and small readers. (Fixtures
live in conftest.py; these are plain functions and constants, imported where used.)"""

from __future__ import annotations

import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from model.config import RimerConfig
from model.rimer import Rimer
from model.state import RimerState

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MANIFEST = {"name": "tiny"}
P = 8  # the tiny model's patch length
TINY = RimerConfig(patch_len=P, d_model=32, n_layers=2, head_size=16, w_rank=8, a_rank=8,
                   v_rank=4, g_rank=8, pos_emb="none", norm="causal", norm_window=4)
LEVELS = (0.1, 0.5, 0.9)
HEADS = {"lag_window": 3 * P, "lag_match": 2 * P, "quantiles": LEVELS}  # a tiny model's heads
TOLERANCE = {32: 1e-4, 256: 1e-4, 2048: 1e-4, 4096: 5e-3}  # parity with the original, by length


def tiny_model(seed: int = 0, **overrides) -> Rimer:
    """A small random model (TINY's config, `overrides` applied), every term randomised so none
    is trivially zero."""
    torch.manual_seed(seed)
    cfg = RimerConfig(**{**TINY.to_dict(), **overrides})
    model = Rimer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def head_model(seed: int = 0, drift: bool = False, scale: str = "norm", best: float = 0.0) -> Rimer:
    """The tiny model with a lag head and a quantile head (and the lag head's drift, and its
    match's `scale` and `best`: config.lag_scale, config.lag_best)."""
    return tiny_model(seed, **HEADS, lag_drift=drift, lag_scale=scale, lag_best=best)


def walk(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(np.cumsum(rng.normal(size=n)) + 5.0, dtype=torch.float32)


def series(n: int, seed: int) -> list[float]:
    """A seasonal random walk with an offset, like the data the model was trained on."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (100 + 3 * np.sin(2 * np.pi * t / 24) + np.cumsum(rng.normal(0, 0.5, n))).tolist()


def as_series(x: torch.Tensor) -> torch.Tensor:
    """[B, L, M] -> [B * M, L], the original's channel independence."""
    b, length, m = x.shape
    return x.permute(0, 2, 1).reshape(b * m, length)


def assert_states_equal(a: RimerState, b: RimerState) -> None:
    for name, t in a.tensors().items():
        assert torch.equal(t, getattr(b, name)), name


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a Prometheus exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))

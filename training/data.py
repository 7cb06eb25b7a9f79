"""The public benchmark CSVs and the standard long-term forecasting protocol's splits.

See ../shared/data/README.md: train / validation / test borders by row, a per-variable
StandardScaler fitted on the train rows only.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATASETS = {"ETTh1": "ETTh1.csv", "ETTh2": "ETTh2.csv", "ETTm1": "ETTm1.csv.gz",
            "weather": "weather.csv.gz"}


@dataclass
class Dataset:
    name: str
    columns: list[str]
    values: np.ndarray  # [rows, variables] float64, raw units
    borders: dict[str, tuple[int, int]]  # split -> (first row, end row) without lookback
    mean: np.ndarray
    std: np.ndarray

    def split(self, name: str, lookback: int = 0) -> np.ndarray:
        """Scaled rows of a split, starting `lookback` rows early (the protocol's L)."""
        lo, hi = self.borders[name]
        lo = max(0, lo - lookback) if name != "train" else lo
        return (self.values[lo:hi] - self.mean) / self.std


def _borders(name: str, rows: int) -> dict[str, tuple[int, int]]:
    if name in ("ETTh1", "ETTh2"):
        a, b, c = 8640, 11520, 14400
    elif name == "ETTm1":
        a, b, c = 34560, 46080, 57600
    else:
        a, c = int(0.7 * rows), rows
        b = rows - int(0.2 * rows)
    return {"train": (0, a), "val": (a, b), "test": (b, c)}


def load(name: str, data_dir: str | Path = DEFAULT_DATA_DIR) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    path = Path(data_dir) / DATASETS[name]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [[float(x) for x in row[1:]] for row in reader]
    values = np.asarray(rows, dtype=np.float64)
    borders = _borders(name, len(values))
    train = values[borders["train"][0]: borders["train"][1]]
    return Dataset(name, header[1:], values, borders, train.mean(0), train.std(0))

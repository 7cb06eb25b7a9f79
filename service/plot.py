"""A series' recent points, forecast and intervals as a PNG (matplotlib, imported on first use)."""

from __future__ import annotations

import io


def forecast_png(series_id: str, recent: list[float], length: int, fc, intervals: list[dict],
                 times: tuple[list, list] | None = None) -> bytes:
    """`recent`: the last points held (they end at `length`); `fc`: the forecast's mean;
    `intervals`: `{level, lo, hi}` dicts, drawn widest first; `times`: the recent points' and
    the forecast's datetimes for a series with timestamps (else the x axis counts points)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), dpi=100)
    ax = fig.add_subplot()
    start = length - len(recent)
    past, future = (range(start, length), range(length, length + len(fc))) if times is None else times
    ax.plot(past, recent, color="black", lw=1, label="history")
    for band in sorted(intervals, key=lambda b: -b["level"]):
        ax.fill_between(future, band["lo"], band["hi"], color="tab:red", alpha=0.15,
                        lw=0, label=f"{band['level']:g}% interval")
    ax.plot(future, list(fc), color="tab:red", lw=1.2, label="forecast")
    ax.set_title(f"{series_id}: {length} points, forecast {len(fc)}", fontsize=9)
    if times is None:
        ax.set_xlabel("point", fontsize=8)
    else:
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=times[0][0].tzinfo))
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()

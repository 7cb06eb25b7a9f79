"""Long-format DataFrames <-> the API's series: grouping, frequencies, future timestamps, and the
forecast frame in Nixtla's shape (`unique_id`, `ds`, `Rimer`, `Rimer-lo-80`, `Rimer-hi-80`, ...).
No I/O here."""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

ALIAS = "Rimer"
SERIES_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # the server's rule for ids


@dataclass
class Series:
    """The rows of one series, sorted by time."""

    uid: object  # the frame's unique_id, as given
    values: np.ndarray  # float64; NaN where missing
    ds: pd.DatetimeIndex | np.ndarray | None  # None: the frame has no time column
    step: object = None  # pandas offset (datetimes) or int (integers); None until inferred


@dataclass
class Prepared:
    series: list[Series]
    kind: str  # "datetime", "int" or "none" (no time column)
    tz: object = None  # the time column's time zone (datetimes)
    uids: np.ndarray = field(default_factory=lambda: np.array([]))

    def __len__(self) -> int:
        return len(self.series)


def _is_number(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def numeric_target(col: pd.Series, name: str) -> np.ndarray:
    """The target column as float64 (NaN where missing). Numbers only: strings ('1.5') and
    booleans were converted without a word, where the server takes no guessed types."""
    how = "convert it first (pd.to_numeric, or .astype(float))"
    if pd.api.types.is_bool_dtype(col) or not (pd.api.types.is_numeric_dtype(col)
                                                or col.dtype == object):
        raise ValueError(f"{name!r} must be numeric, not {col.dtype}; {how}")
    if col.dtype == object:
        ok = np.fromiter(map(_is_number, col), bool, len(col))
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"{name!r} holds {col.iloc[i]!r} (at index {col.index[i]!r}), not a "
                             f"number; {how}")
    return col.to_numpy(dtype=np.float64, na_value=np.nan)


def group(df: pd.DataFrame, id_col: str, time_col: str, target_col: str) -> Prepared:
    """The frame's series in id order, each sorted by time (stable)."""
    for col in (id_col, target_col):
        if col not in df.columns:
            raise ValueError(f"the frame has no {col!r} column (columns: {list(df.columns)})")
    has_time = time_col in df.columns
    if df.empty:
        raise ValueError("the frame has no rows")
    if df[id_col].isna().any():
        raise ValueError(f"{id_col!r} has missing ids")
    y = numeric_target(df[target_col], target_col)
    kind, tz, ds_all = "none", None, None
    if has_time:
        ds_col = df[time_col]
        if pd.api.types.is_datetime64_any_dtype(ds_col):
            kind, tz = "datetime", getattr(ds_col.dt, "tz", None)
        elif pd.api.types.is_integer_dtype(ds_col):
            kind = "int"
        else:
            raise ValueError(f"{time_col!r} must hold datetimes or integers, not "
                             f"{ds_col.dtype} (parse it with pd.to_datetime)")
        if ds_col.isna().any():
            raise ValueError(f"{time_col!r} has missing timestamps")
        ds_all = ds_col.reset_index(drop=True)
    cols = {"id": df[id_col].to_numpy(), "y": y}
    if has_time:
        cols["ds"] = ds_all
    sub = pd.DataFrame(cols).sort_values(["id", "ds"] if has_time else ["id"], kind="stable")
    ids_sorted, y = sub["id"].to_numpy(), sub["y"].to_numpy()
    ds_sorted = None
    if kind == "datetime":
        ds_sorted = pd.DatetimeIndex(sub["ds"])
    elif kind == "int":
        ds_sorted = sub["ds"].to_numpy(dtype=np.int64)
    codes, uniques = pd.factorize(ids_sorted)
    cuts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(codes)]
    out = []
    for uid, a, b in zip(uniques, starts, ends):
        ds = None
        if kind == "datetime":
            ds = ds_sorted[a:b]
            if ds.has_duplicates:
                raise ValueError(f"series {uid!r} has the timestamp {ds[ds.duplicated()][0]} twice")
        elif kind == "int":
            ds = ds_sorted[a:b]
            if len(ds) > 1 and (np.diff(ds) == 0).any():
                raise ValueError(f"series {uid!r} has the time {ds[np.flatnonzero(np.diff(ds) == 0)[0]]} "
                                 "twice")
        out.append(Series(uid, y[a:b], ds))
    return Prepared(out, kind, tz, np.asarray(uniques))


def parse_step(freq, kind: str):
    """`freq` as a step: a pandas offset for datetimes ('h', '15min', 'D', 'MS'), an int for
    integer times."""
    if freq is None:
        return None
    if kind == "int":
        if not isinstance(freq, (int, np.integer)) or freq < 1:
            raise ValueError(f"freq for integer times must be a positive int, not {freq!r}")
        return int(freq)
    return to_offset(freq)


def infer_step(s: Series, kind: str):
    """The series' step: a whole step its times are on (pandas' inference; else business days
    (`is_business_frame`); else the smallest difference, as the server infers it)."""
    if kind == "none":
        return 1
    if len(s.ds) < 2:
        if kind == "int":
            return 1
        raise ValueError(f"series {s.uid!r} has one timestamp: its frequency cannot be inferred "
                         "(pass freq=)")
    if kind == "int":
        diffs = np.diff(s.ds)
        return int(diffs.min())
    diffs = np.diff(s.ds.asi8)
    if is_business_frame(s.ds):
        return pd.offsets.BDay()
    if (diffs == diffs[0]).all():
        return to_offset(pd.Timedelta(int(diffs[0]), unit="ns"))
    if len(s.ds) >= 3:
        inferred = pd.infer_freq(s.ds)
        if inferred is not None:
            return to_offset(inferred)
    return to_offset(pd.Timedelta(int(diffs.min()), unit="ns"))


def is_business_frame(ds: pd.DatetimeIndex) -> bool:
    """Whole days apart, never on a weekend, at least one step a business day apart across a
    weekend (Friday to Monday), none less than a business day: business days, whichever rows are
    missing. (Rows that never cross a weekend cannot be told from days: pass freq='B'.)"""
    day = 86_400 * 10**9
    diffs = np.diff(ds.asi8)
    if not len(diffs) or (diffs % day).any() or (ds.dayofweek >= 5).any():
        return False
    dates = (ds.tz_localize(None) if ds.tz is not None else ds).values.astype("datetime64[D]")
    apart = np.busday_count(dates[:-1], dates[1:])
    return bool(apart.min() == 1 and ((apart == 1) & (diffs > day)).any())


def grid(s: Series, kind: str, step) -> pd.DatetimeIndex | np.ndarray:
    """Every time on the series' grid from its first to its last."""
    if kind == "int":
        return np.arange(s.ds[0], s.ds[-1] + 1, step, dtype=np.int64)
    return pd.date_range(s.ds[0], s.ds[-1], freq=step)


def regularise(prep: Prepared, freq, missing: str) -> None:
    """Give every series its step, and check it has a row at every step. Missing rows (gaps) are
    an error, or with missing='ffill' become missing values (NaN), sent as nulls, which the
    server fills with the last value before them."""
    given = parse_step(freq, prep.kind) if prep.kind != "none" else None
    for s in prep.series:
        s.step = given if given is not None else infer_step(s, prep.kind)
        if prep.kind == "none" or len(s.ds) < 2:
            continue
        if prep.kind == "int":
            regular = bool((np.diff(s.ds) == s.step).all())
        elif isinstance(s.step, pd.offsets.Tick):
            regular = bool((np.diff(s.ds.asi8) == s.step.nanos).all())
        else:
            regular = None  # calendar steps: compare with the grid
        if regular:
            continue
        full = grid(s, prep.kind, s.step)
        if len(full) == len(s.ds) and (np.asarray(full) == np.asarray(s.ds)).all():
            continue  # (a calendar step, or days across a daylight-saving change)
        check_on_grid(s, full, s.step, missing)
        pos = pd.Index(full).get_indexer(s.ds)
        values = np.full(len(full), np.nan)
        values[pos] = s.values
        s.values = values
        s.ds = full if prep.kind == "int" else pd.DatetimeIndex(full)


def is_business_days(step) -> bool:
    """Whether a pandas step is plain business days (Monday to Friday, one at a time): the one
    calendar step the server's streams take (freq '1b')."""
    return type(step) is pd.offsets.BusinessDay and step.n == 1 and not step.offset


def check_stream_steps(s: Series, freq, missing: str) -> str | None:
    """Before an append sends a series' timestamps: the server's streams take fixed steps in
    absolute time, or business days, and fill the points missing between them, so refuse what
    they would take wrongly, each with what to do instead: local times across a daylight-saving
    change (a day of 23 or 25 hours), other calendar steps (months), and, unless
    missing='ffill', rows missing from the frame's grid (as forecast() refuses them). (In the
    CLI: --no-timestamps, --missing ffill, `rimer forecast`.) Returns '1b' for a series of
    business days (the freq to send: the server would infer a daily step and fill every
    weekend), else None."""
    if len(s.ds) < 2:
        return "1b" if freq is not None and is_business_days(parse_step(freq, "datetime")) else None
    diffs = np.diff(s.ds.asi8)
    if s.ds.tz is not None:  # (steps fixed in absolute time are fine across a change: hours)
        local = np.diff(s.ds.tz_localize(None).asi8)
        if (local == local[0]).all() and not (diffs == local[0]).all():
            raise ValueError(f"series {s.uid!r}: its times are steps in {s.ds.tz} that cross "
                             "a daylight-saving change (a day of 23 or 25 hours); a streamed "
                             "series takes fixed steps. Append its local times without the zone "
                             "(ds.dt.tz_localize(None)), or with timestamps=False")
    step = parse_step(freq, "datetime") if freq is not None else infer_step(s, "datetime")
    if is_business_days(step):
        check_on_grid(s, grid(s, "datetime", step), step, missing)
        return "1b"
    if not isinstance(step, pd.offsets.Tick):
        raise ValueError(f"series {s.uid!r}: its times step by {_show_step(step)}, a calendar "
                         "step (months differ in length), not a fixed one; a streamed series "
                         "takes fixed steps or business days only. Append with timestamps=False "
                         "(its values in order), or use forecast()")
    if (diffs % step.nanos).any():
        steps = np.unique(diffs)
        hint = ("; steps an hour apart are local times across a daylight-saving change, read in "
                "UTC: append the local times without their offset, or with timestamps=False"
                if len(steps) == 2 and steps[1] - steps[0] == 3_600_000_000_000 else "")
        raise off_grid(s, s.ds[1 + int(np.flatnonzero(diffs % step.nanos)[0])], step, hint)
    if missing != "ffill" and (diffs != step.nanos).any():
        at = int(np.flatnonzero(diffs != step.nanos)[0])
        raise rows_missing(s, s.ds[at] + step, int(diffs[at] // step.nanos) - 1, step)
    return None


def check_on_grid(s: Series, full, step, missing: str) -> None:
    """Every time of `s` on its grid `full` (its step's times from its first to its last), and,
    unless missing='ffill', a row at each of them (forecast() and append() alike)."""
    on_grid = pd.Index(s.ds).isin(full)
    if not on_grid.all():
        raise off_grid(s, s.ds[np.flatnonzero(~on_grid)[0]], step)
    if missing != "ffill" and len(full) != len(s.ds):
        at = np.flatnonzero(~pd.Index(full).isin(s.ds))[0]
        raise rows_missing(s, full[at], len(full) - len(s.ds), step)


def off_grid(s: Series, bad, step, hint: str = "") -> ValueError:
    """A time of `s` off the grid of its step (forecast() and append() alike)."""
    return ValueError(f"series {s.uid!r}: the time {bad} is not on the grid of its step "
                      f"{_show_step(step)} from {s.ds[0]}; pass freq= if it was inferred wrong{hint}")


def rows_missing(s: Series, first, count: int, step) -> ValueError:
    """Rows missing from `s`'s grid, `first` the earliest (forecast() and append() alike)."""
    return ValueError(f"series {s.uid!r} has no row for {first} ({count} missing at step "
                      f"{_show_step(step)}); fill them, or pass missing='ffill' to send them as "
                      "missing points, which the server fills with the last value before them")


def _show_step(step) -> str:
    return str(step) if isinstance(step, (int, np.integer)) else step.freqstr


def future(s: Series, kind: str, h: int, start_position: int | None = None):
    """The h times after the series' last one, at its step (integers continue integers; without a
    time column, positions in the series: `start_position` + 0..h-1)."""
    if kind == "none":
        base = len(s.values) if start_position is None else start_position
        return np.arange(base, base + h, dtype=np.int64)
    last = s.ds[-1]
    if kind == "int":
        return last + s.step * np.arange(1, h + 1, dtype=np.int64)
    return pd.date_range(last + s.step, periods=h, freq=s.step)


def wire_values(values: np.ndarray, missing: str) -> list:
    """Values for the JSON body: NaN stays NaN (the server refuses it, naming the point) unless
    missing='ffill' (null: a missing point the server fills)."""
    out = values.tolist()
    if missing == "ffill" and np.isnan(values).any():
        out = [None if v != v else v for v in out]
    return out


def wire_id(uid, position: int) -> str:
    """An id for a stateless forecast: the unique_id when the server accepts it, else 's<position>'
    (the answer is matched by position, so any unique_id works)."""
    text = str(uid)
    return text if SERIES_ID.match(text) else f"s{position}"


def iso_timestamps(ds: pd.DatetimeIndex) -> list[str]:
    """ISO 8601 strings for the server: UTC with 'Z' for aware times, naive ones as they are
    (the server reads them as UTC)."""
    if ds.tz is not None:
        ds = ds.tz_convert("UTC")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if (ds.asi8 % 1_000_000_000).any() else "%Y-%m-%dT%H:%M:%S"
    text = ds.strftime(fmt)
    return [t + "Z" for t in text] if ds.tz is not None else list(text)


def parse_timestamps(stamps: list[str], tz) -> pd.DatetimeIndex:
    """The server's forecast timestamps in the frame's time zone (naive UTC for a naive frame)."""
    idx = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True, format="ISO8601"))
    return idx.tz_convert(tz) if tz is not None else idx.tz_convert("UTC").tz_localize(None)


def label(x: float) -> str:
    """80 -> '80', 97.5 -> '97.5', 0.1 -> '0.1'."""
    return f"{x:g}"


def clean_levels(level, name: str = "level") -> list[float] | None:
    """A level (or quantile) or a list of them as sorted floats. A string is refused, not read
    character by character (`level="95"` was taken as the levels 9 and 5), and so are
    booleans and anything else that is not a real number."""
    if level is None:
        return None
    if isinstance(level, numbers.Real) and not isinstance(level, bool):
        level = [level]
    example = "level=95 or level=[80, 95]" if name == "level" else "quantiles=[0.1, 0.9]"
    if isinstance(level, (str, bytes)) or not isinstance(level, Iterable):
        raise TypeError(f"{name} must be a number or a list of numbers, got {level!r}; "
                        f"pass {example}")
    level = list(level)
    for v in level:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a number or a list of numbers, got {v!r} in "
                            f"{level!r}; pass {example}")
    out = sorted({float(v) for v in level})
    return out or None


def columns(level: list[float] | None, quantiles: list[float] | None, alias: str = ALIAS) -> list[str]:
    """The forecast columns: the mean, lo columns from the widest level in, hi columns out,
    then quantiles (statsforecast's order)."""
    cols = [alias]
    if level:
        cols += [f"{alias}-lo-{label(lv)}" for lv in reversed(level)]
        cols += [f"{alias}-hi-{label(lv)}" for lv in level]
    if quantiles:
        cols += [f"{alias}-q-{label(q)}" for q in quantiles]
    return cols


def forecast_columns(item: dict, level, quantiles, alias: str = ALIAS) -> dict[str, list]:
    """One series' answer ({mean, intervals?, quantiles?}) as columns."""
    out = {alias: item["mean"]}
    if level:
        by_level = {round(float(i["level"]), 9): i for i in item.get("intervals") or []}
        for lv in level:
            got = by_level.get(round(lv, 9))
            if got is None:
                raise ValueError(f"the server's answer has no {lv:g}% interval")
            out[f"{alias}-lo-{label(lv)}"] = got["lo"]
            out[f"{alias}-hi-{label(lv)}"] = got["hi"]
    if quantiles:
        by_q = {round(float(q["q"]), 12): q for q in item.get("quantiles") or []}
        for q in quantiles:
            got = by_q.get(round(q, 12))
            if got is None:
                raise ValueError(f"the server's answer has no {q:g} quantile")
            out[f"{alias}-q-{label(q)}"] = got["values"]
    return out


def frame(uids: list, ds_parts: list, items: list[dict], level, quantiles,
          alias: str = ALIAS) -> pd.DataFrame:
    """The forecast frame: `unique_id`, `ds`, then `columns(...)`, one row per series and step."""
    names = columns(level, quantiles, alias)
    if not items:
        return pd.DataFrame({"unique_id": [], "ds": [], **{c: [] for c in names}})
    lengths = [len(it["mean"]) for it in items]
    per = [forecast_columns(it, level, quantiles, alias) for it in items]
    data = {"unique_id": np.repeat(np.asarray(uids, dtype=object), lengths)}
    if all(isinstance(p, pd.DatetimeIndex) for p in ds_parts):
        ds = ds_parts[0].append(list(ds_parts[1:])) if len(ds_parts) > 1 else ds_parts[0]
        data["ds"] = ds
    else:
        data["ds"] = np.concatenate([np.asarray(p) for p in ds_parts])
    for c in names:
        data[c] = np.concatenate([np.asarray(p[c], dtype=np.float64) for p in per])
    out = pd.DataFrame(data)
    # unique_id keeps the frame's dtype where it has one (ints stay ints)
    try:
        out["unique_id"] = out["unique_id"].astype(pd.Series(list(uids)).dtype)
    except (TypeError, ValueError):
        pass
    return out


"""Reading series from CSV: long (unique_id, ds, y) or wide (a time column and one column per
series), detected from the columns or chosen."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def parse_times(col: pd.Series, name: str) -> pd.Series:
    """Integers stay integers; anything else is parsed as datetimes (mixed UTC offsets: to UTC)."""
    if pd.api.types.is_integer_dtype(col) or pd.api.types.is_datetime64_any_dtype(col):
        return col
    try:
        with warnings.catch_warnings():  # (pandas warns of mixed offsets, then gives objects)
            warnings.simplefilter("ignore", FutureWarning)
            parsed = pd.to_datetime(col, format="ISO8601")
        if pd.api.types.is_datetime64_any_dtype(parsed):
            return parsed
    except (ValueError, TypeError):
        pass
    try:  # (mixed offsets: a local zone across a daylight-saving change)
        return pd.to_datetime(col, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"column {name!r} holds neither integers nor datetimes: {exc}") from None


def detect(columns, id_col: str, target_col: str) -> str:
    return "long" if id_col in columns and target_col in columns else "wide"


def wide_to_long(df: pd.DataFrame, time_col: str | None, id_col: str = "unique_id",
                 out_time: str = "ds", target_col: str = "y") -> pd.DataFrame:
    """A wide frame (time column + a column per series) as a long one. Empty cells before a
    series' first value and after its last are dropped (series of different lengths); those
    inside stay missing (NaN)."""
    if time_col is None or time_col not in df.columns:
        time_col = df.columns[0]
    others = [c for c in df.columns if c != time_col]
    if not others:
        raise ValueError("a wide CSV needs a time column and at least one series column")
    bad = [c for c in others if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise ValueError(f"wide CSV: the series columns must be numeric; {bad[:5]} are not "
                         "(is it a long CSV? pass --format long and the column names)")
    times = parse_times(df[time_col], time_col)
    parts = []
    for c in others:
        y = df[c].to_numpy(dtype=np.float64)
        valid = np.flatnonzero(~np.isnan(y))
        if len(valid) == 0:
            continue
        a, b = valid[0], valid[-1] + 1
        parts.append(pd.DataFrame({id_col: str(c), out_time: times.iloc[a:b].reset_index(drop=True),
                                   target_col: y[a:b]}))
    if not parts:
        raise ValueError("the wide CSV holds no values")
    return pd.concat(parts, ignore_index=True)


def read_series(path, fmt: str = "auto", id_col: str = "unique_id", time_col: str = "ds",
                target_col: str = "y") -> tuple[pd.DataFrame, str]:
    """A long frame (columns id_col, time_col (when the CSV has times), target_col) and the
    format read ('long' or 'wide')."""
    df = pd.read_csv(path)
    if fmt == "auto":
        fmt = detect(df.columns, id_col, target_col)
    if fmt == "long":
        missing = [c for c in (id_col, target_col) if c not in df.columns]
        if missing:
            raise ValueError(f"long CSV: no column {missing[0]!r} (columns: {list(df.columns)}); "
                             "name them with --id-col/--time-col/--target-col")
        if time_col in df.columns:
            df[time_col] = parse_times(df[time_col], time_col)
        return df, fmt
    if fmt != "wide":
        raise ValueError(f"format must be auto, long or wide, not {fmt!r}")
    wide_time = time_col if time_col in df.columns else None
    return wide_to_long(df, wide_time, id_col, time_col, target_col), fmt

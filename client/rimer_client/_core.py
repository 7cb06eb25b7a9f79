"""What `Client` and `AsyncClient` share: every operation as a generator that yields the
`Call`s it needs (calls.py: requests as data and the retry rules) and is sent their `Answer`s
(or thrown their errors), so that the sync and async clients differ only in how they send one
request and sleep (client.py)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from urllib.parse import quote

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rimer_client import frames
from rimer_client.calls import (  # noqa: F401 (client.py and the tests take them from here)
    MAX_RETRY_AFTER_S,
    MAYBE_SENT,
    NOT_SENT,
    RETRY_STATUS,
    TIMED_OUT,
    Answer,
    Attempts,
    Call,
    Op,
    RetryPolicy,
    body_of,
    retry_after,
)
from rimer_client.errors import Conflict, PayloadTooLarge
from rimer_client.ring import Ring


def progress_bar(enabled: bool, total: int, desc: str):
    """A bar when `enabled` and standard error is a terminal (tqdm's disable=None): piped into
    a log, a bar is only noise."""
    return tqdm(total=total, desc=desc, unit="series", disable=None if enabled else True, leave=False)


def batches(sizes: list[int], max_series: int, max_points: int) -> list[list[int]]:
    """Consecutive indices packed into requests of at most `max_series` series and `max_points`
    values (a series longer than `max_points` goes alone)."""
    out, current, points = [], [], 0
    for i, n in enumerate(sizes):
        if current and (len(current) >= max_series or points + n > max_points):
            out.append(current)
            current, points = [], 0
        current.append(i)
        points += n
    if current:
        out.append(current)
    return out


def send_batches(make_call: Callable[[list[int]], Call], sizes: list[int], max_series: int,
                 max_points: int, bar) -> Generator[Call, Answer, list]:
    """Send the batches in order; a 413 splits a batch in two (the server's limits may be lower
    than the client's). Returns [(indices, answer), ...] in order."""
    pending = list(reversed(batches(sizes, max_series, max_points)))
    done = []
    while pending:
        idx = pending.pop()
        try:
            answer = yield make_call(idx)
        except PayloadTooLarge:
            if len(idx) == 1:
                raise
            half = len(idx) // 2
            pending += [idx[half:], idx[:half]]
            continue
        done.append((idx, answer))
        bar.update(len(idx))
    return done


SERVER_MAX_ANSWER_VALUES = 4_194_304  # the server's --max-answer-values default


def series_per_answer(cfg, h: int | None, level, quantiles) -> int:
    """Series per request so that an answer's forecast values (series x h x (mean, two bounds
    per level, one per quantile)) stay within the server's default bound."""
    if not h:
        return cfg.max_series_per_request
    each = 1 + 2 * len(level or ()) + len(quantiles or ())
    return max(1, min(cfg.max_series_per_request, SERVER_MAX_ANSWER_VALUES // (h * each)))


def distribution_body(level, quantiles) -> dict:
    out = {}
    if level:
        out["level"] = level
    if quantiles:
        out["quantiles"] = quantiles
    return out


def forecast_op(cfg, df: pd.DataFrame, h: int, level, quantiles, freq, id_col: str,
                time_col: str, target_col: str, missing: str, progress: bool) -> Op:
    """POST /forecast of every series of a long frame, in batches; the Nixtla-shaped frame."""
    check_h(h)
    check_missing(missing)
    level, quantiles = frames.clean_levels(level), frames.clean_levels(quantiles, "quantiles")
    prep = frames.group(df, id_col, time_col, target_col)
    frames.regularise(prep, freq, missing)
    series = prep.series
    extra = distribution_body(level, quantiles)

    def make_call(idx: list[int]) -> Call:
        body = {"series": [{"id": frames.wire_id(series[i].uid, i),
                            "values": frames.wire_values(series[i].values, missing)} for i in idx],
                "horizon": h, **extra}
        return Call("POST", "/forecast", body=body, series_ids=[series[i].uid for i in idx])

    with progress_bar(progress, len(series), "forecast") as bar:
        done = yield from send_batches(make_call, [len(s.values) for s in series],
                                       series_per_answer(cfg, h, level, quantiles),
                                       cfg.max_points_per_request, bar)
    items: list = [None] * len(series)
    for idx, answer in done:
        for i, item in zip(idx, answer.body["forecasts"]):
            items[i] = item
    ds = [frames.future(s, prep.kind, h) for s in series]
    return named(frames.frame([s.uid for s in series], ds, items, level, quantiles), id_col, time_col)


def named(out: pd.DataFrame, id_col: str, time_col: str) -> pd.DataFrame:
    """The answer's id and time columns under the caller's names (`id_col`, `time_col`), as
    Nixtla's libraries answer; `unique_id` and `ds` by default."""
    renames = {k: v for k, v in (("unique_id", id_col), ("ds", time_col)) if k != v and k in out}
    return out.rename(columns=renames) if renames else out


def check_missing(missing) -> None:
    if missing not in ("error", "ffill"):
        raise ValueError(f"missing must be 'error' or 'ffill', not {missing!r}")


def check_h(h) -> None:
    if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
        raise ValueError(f"h must be a positive int, not {h!r}")


def freq_seconds(freq) -> int | str | None:
    """freq for the server: whole seconds, or '1b' for business days (its streams take fixed
    steps and business days only)."""
    if freq is None:
        return None
    if isinstance(freq, (int, np.integer)) and not isinstance(freq, bool):
        return int(freq)
    off = frames.to_offset(freq)
    if frames.is_business_days(off):
        return "1b"
    if not isinstance(off, pd.offsets.Tick) or off.nanos % 1_000_000_000:
        raise ValueError(f"freq {freq!r} is not a whole number of seconds: the server's streams "
                         "take fixed steps and business days only (no months or years)")
    return off.nanos // 1_000_000_000


def late_first_timestamp() -> Callable[[int, str | None], bool]:
    """A 409 naming the first timestamp: of the series (`POST /series/{id}/append`), or of the
    first series of a columnar bulk append (its timestamps are one flat array)."""
    return lambda status, field: status == 409 and field == "timestamps[0]"


def columnar_items(body: dict) -> list[dict]:
    """A columnar bulk append's answer (`ids`, `lengths`, `forecast` of flat arrays) as the
    per-item form's items (`id`, `length`, `forecast`), one per series."""
    fc = body.get("forecast")
    items = [{"id": i, "length": n} for i, n in zip(body["ids"], body["lengths"])]
    if not fc:
        return items
    bounds = [*fc["offsets"], len(fc["mean"])]
    for j, item in enumerate(items):
        a, b = bounds[j], bounds[j + 1]
        one = {"mean": fc["mean"][a:b]}
        if fc.get("intervals"):
            one["intervals"] = [{"level": x["level"], "lo": x["lo"][a:b], "hi": x["hi"][a:b]}
                                for x in fc["intervals"]]
        if fc.get("quantiles"):
            one["quantiles"] = [{"q": x["q"], "values": x["values"][a:b]} for x in fc["quantiles"]]
        if fc.get("timestamps") and fc["timestamps"][a] is not None:
            one["timestamps"] = fc["timestamps"][a:b]
        item["forecast"] = one
    return items


def append_op(cfg, df: pd.DataFrame, h, level, quantiles, freq, id_col: str, time_col: str,
              target_col: str, timestamps, missing: str, progress: bool) -> Op:
    """POST /series/append of a frame of new rows, in batches (see Client.append)."""
    if h is not None:
        check_h(h)
    check_missing(missing)
    level, quantiles = frames.clean_levels(level), frames.clean_levels(quantiles, "quantiles")
    if (level or quantiles) and h is None:
        raise ValueError("level and quantiles need h (they describe the forecast)")
    prep = frames.group(df, id_col, time_col, target_col)
    series = prep.series
    for s in series:
        if not frames.SERIES_ID.match(str(s.uid)):
            raise ValueError(f"{s.uid!r} is not a valid series id for streaming: "
                             "1 to 128 characters of letters, digits, '.', '_', ':', '-', "
                             "starting with a letter or digit")
    send_stamps = prep.kind == "datetime" and timestamps is not False
    if timestamps is True and prep.kind != "datetime":
        raise ValueError(f"timestamps=True needs a datetime {time_col!r} column")
    fsec = freq_seconds(freq) if send_stamps else None
    if send_stamps:
        business = {s.uid for s in series if frames.check_stream_steps(s, freq, missing) == "1b"}
        if business and fsec is None:  # (inferred: say so, or the server would infer days)
            if len(business) < sum(len(s.ds) > 1 for s in series):
                raise ValueError("some series of this frame are business days and others are "
                                 "not; append them in separate calls (or pass freq=)")
            fsec = "1b"
    # one item per series and chunk: a series longer than the points limit is appended in order
    chunk = cfg.max_points_per_request
    items = [(i, a, min(a + chunk, len(s.values))) for i, s in enumerate(series)
             for a in range(0, len(s.values), chunk)]
    extra = distribution_body(level, quantiles)

    def make_call(idx: list[int]) -> Call:
        # the columnar form: the ids, where each one's run starts, and one flat array of values
        ids, offsets, values, stamps = [], [], [], []
        for k in idx:
            i, a, b = items[k]
            s = series[i]
            ids.append(str(s.uid))
            offsets.append(len(values))
            values += frames.wire_values(s.values[a:b], missing)
            if send_stamps:
                stamps += frames.iso_timestamps(s.ds[a:b])
        body = {"ids": ids, "offsets": offsets, "values": values}
        if send_stamps:
            body["timestamps"] = stamps
            if fsec is not None:
                body["freq"] = fsec
            if missing != "ffill":  # (a gap after the series' last point: refused, not filled)
                body["max_gap_points"] = 0
        body.update({"horizon": h} if h is not None else {}, **extra)
        return Call("POST", "/series/append", body=body, resend_safe=send_stamps,
                    landed=late_first_timestamp() if send_stamps else None,
                    series_ids=[series[items[k][0]].uid for k in idx], offsets=offsets)

    results: dict[int, dict] = {}  # series index -> its last answer item
    ring = yield from ring_of(cfg)
    # Behind a cluster's proxy: one bulk per replica (each request holds only series of one
    # owner, and names one of them in X-Rimer-Series, the key the proxy hashes for it). A
    # series' items stay in order within its group.
    groups = ([list(range(len(items)))] if ring is None else
              list(ring.group([str(series[i].uid) for i, _, _ in items]).values()))
    with progress_bar(progress, len(items), "append") as bar:
        done = []
        for members in groups:
            def group_call(local: list[int], members=members) -> Call:
                call = make_call([members[j] for j in local])
                if ring is not None:
                    call.headers = {ROUTE_HEADER: str(series[items[members[local[0]]][0]].uid)}
                return call
            sent = yield from send_batches(group_call, [items[k][2] - items[k][1] for k in members],
                                           series_per_answer(cfg, h, level, quantiles), chunk, bar)
            done += [([members[j] for j in local], answer) for local, answer in sent]
        for idx, answer in done:
            if answer.replayed:  # an earlier try landed: check it, and read what it answered
                for k in idx:
                    results[items[k][0]] = yield from landed_item(series[items[k][0]], h, level,
                                                                  quantiles, prep.tz)
                continue
            for k, item in zip(idx, columnar_items(answer.body)):
                results[items[k][0]] = item
    uids = [s.uid for s in series]
    if h is None:
        return named(pd.DataFrame({"unique_id": uids,
                                   "length": [results[i]["length"] for i in range(len(series))]}),
                     id_col, time_col)
    fc = [results[i]["forecast"] for i in range(len(series))]
    ds = []
    for i, s in enumerate(series):
        if fc[i].get("timestamps"):
            ds.append(frames.parse_timestamps(fc[i]["timestamps"], prep.tz))
        elif prep.kind == "int":
            s.step = frames.parse_step(freq, "int") if freq is not None else frames.infer_step(s, "int")
            ds.append(frames.future(s, "int", h))
        else:  # positions in the stream
            ds.append(frames.future(s, "none", h, start_position=results[i]["length"]))
    return named(frames.frame(uids, ds, fc, level, quantiles), id_col, time_col)


ROUTE_HEADER = "X-Rimer-Series"  # the key a cluster's proxy hashes a bulk append on


def ring_of(cfg) -> Generator[Call, Answer, Ring | None]:
    """The client's ring: None (one server), a Ring given, or ("proxy") the one the cluster's
    proxy publishes at GET /cluster/ring, read once and kept."""
    ring = getattr(cfg, "ring", None)
    if ring == "proxy":
        body = (yield Call("GET", "/cluster/ring")).body
        if not isinstance(body, dict) or body.get("hash") != "nginx-consistent":
            raise ValueError(f"GET /cluster/ring answered {body!r}, not a ring of nginx's "
                             "consistent hash: is base_url a Rimer cluster's proxy?")
        ring = cfg.ring = Ring(body["servers"])
    return ring


def landed_item(s: frames.Series, h, level, quantiles, tz) -> Generator[Call, Answer, dict]:
    """After a resent append got 409 for its first timestamp: confirm the series' last timestamp
    is the append's last one, so the earlier try did land, and read the length (and the
    forecast) it would have answered."""
    info = (yield describe_call(str(s.uid))).body
    ours = s.ds[-1] if s.ds.tz is not None else s.ds[-1].tz_localize("UTC")
    last = info.get("last_timestamp")
    if last is None or pd.Timestamp(last) != ours:
        raise Conflict(409, f"series {s.uid!r}: a resent append was refused as late, but the "
                            f"series ends at {last}, not at the append's last timestamp "
                            f"{s.ds[-1]}, so the earlier try cannot be confirmed to have landed "
                            "(its points were late, or others were appended since)",
                       "timestamps[0]", series_id=s.uid)
    out = {"id": str(s.uid), "length": info["length"]}
    if h is not None:
        answer = yield series_forecast_call(str(s.uid), h, level, quantiles)
        out["forecast"] = answer.body
    return out


def path_id(series_id) -> str:
    return quote(str(series_id), safe="")


def describe_call(series_id) -> Call:
    return Call("GET", f"/series/{path_id(series_id)}", series_id=series_id)


def series_forecast_call(series_id, h: int, level, quantiles) -> Call:
    params: list[tuple[str, object]] = [("horizon", int(h))]
    params += [("level", frames.label(v)) for v in level or ()]
    params += [("quantiles", frames.label(v)) for v in quantiles or ()]
    return Call("GET", f"/series/{path_id(series_id)}/forecast", params=params,
                series_id=series_id)


def forecast_series_op(ids, h: int, level, quantiles, tz, progress: bool) -> Op:
    """GET /series/{id}/forecast for each id; the Nixtla-shaped frame (ds: the forecast's
    timestamps for series with timestamps, else positions in the stream)."""
    check_h(h)
    if isinstance(ids, (str, bytes)):
        ids = [ids]
    ids = list(ids)
    level, quantiles = frames.clean_levels(level), frames.clean_levels(quantiles, "quantiles")
    items, ds = [], []
    with progress_bar(progress, len(ids), "forecast") as bar:
        for uid in ids:
            body = (yield series_forecast_call(uid, h, level, quantiles)).body
            items.append(body)
            if body.get("timestamps"):
                ds.append(frames.parse_timestamps(body["timestamps"], tz))
            else:
                ds.append(np.arange(body["length"], body["length"] + h, dtype=np.int64))
            bar.update(1)
    return frames.frame(ids, ds, items, level, quantiles)


def series_op(page_size: int = 1000) -> Op:
    """Every streaming series, following next_cursor: a frame of unique_id, length."""
    ids, lengths, cursor = [], [], None
    while True:
        params = [("limit", page_size)] + ([("cursor", cursor)] if cursor is not None else [])
        body = (yield Call("GET", "/series", params=params)).body
        for item in body["series"]:
            ids.append(item["id"])
            lengths.append(item["length"])
        cursor = body.get("next_cursor")
        if cursor is None:
            return pd.DataFrame({"unique_id": ids, "length": lengths})


def one(call: Call, key: str | None = None) -> Op:
    """A single request; its JSON body (or one key of it)."""
    body = (yield call).body
    return body[key] if key is not None else body


def delete_op(series_id) -> Op:
    """DELETE /series/{id}; a resend answered 404 after an earlier try may have landed counts as
    deleted."""
    yield Call("DELETE", f"/series/{path_id(series_id)}", series_id=series_id,
               landed=lambda status, field: status == 404 and field == "id")
    return None

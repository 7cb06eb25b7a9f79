"""Timestamps, gaps and nulls of streaming series: pure rules, no HTTP and no model.

A series' metadata (kept by the engine in `Engine.meta[id]`, logged with each append, saved in
snapshots) is a small JSON-able dict:

* `last`: the last value of the series (after filling), the value a null or a gap carries forward;
* for a series with timestamps, also `freq` (seconds, an int >= 1), `t` (the last point's time, in
  microseconds since 1970-01-01T00:00:00Z) and `off` (the UTC offset, in seconds, of the last
  timestamp received: forecast timestamps are written with it; UTC as `Z`).

The rules (README "Timestamps, gaps and nulls"):

* Timestamps are ISO 8601 (`datetime.fromisoformat`: `2024-05-01T13:00:00Z`, `...+02:00`,
  `2024-05-01 13:00`, `2024-05-01`); one per value. Naive timestamps (no offset) are UTC.
* The frequency is fixed when the series is created (its first append): `freq` when given (whole
  seconds, or a string `"10s"`, `"15min"`, `"1h"`, `"1d"`, `"1w"`; 1 s to 366 days; or `"1b"`,
  business days), else inferred from that append's timestamps (at least two): their smallest
  difference, which every difference must be a multiple of. Business days step a day at a time
  from Monday to Friday, from Friday to the next Monday, at the first timestamp's time of day, the
  weekday read in each timestamp's own UTC offset (a series of closing prices, one row per
  trading day: its weekends are neither gaps nor points). Other calendar steps (months, years) are
  not fixed lengths and are not supported.
* The grid is the first timestamp plus whole multiples of the frequency (business days: the
  weekdays among whole days after it); a timestamp off it is 422 naming it (`timestamps[3]`).
* Timestamps in one request must increase strictly: a duplicate or out-of-order one is 422 naming it.
  A first timestamp at or before the series' last one (a duplicate or a late point) is 409 naming
  `timestamps[0]`: the series does not change (a retried append gets 409, not a second copy).
* A gap (a timestamp more than one step after the point before it) is filled: the missing grid
  points are inserted as nulls and filled by the null rule. At most `max_gap_points` points are
  filled per request (422 naming the timestamp whose gap passes it), and they count toward the
  request's point limit.
* `null` is a missing value: it takes the last value of the series (last observation carried
  forward; across appends, from the metadata). A null first point of a series is 422 (`values[0]`):
  there is nothing to carry forward.
* An append without timestamps to a series with a frequency takes the next grid points; an append
  with timestamps (or `freq`) to a series created without them is 409. `freq` on a later append
  must equal the series' frequency (else 409).
* Forecast timestamps continue the grid after the last point: `t + k * freq`, k = 1..horizon (the
  next k business days for `"1b"`). Every
  timestamp, forecast ones included, must fall between the years 1 and 9999 (a day's margin each
  side), else 422.

Requests on one series are serialised by the HTTP layer (service/series_locks.py): the metadata
a request computes from is the one its append replaces, even with concurrent requests on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from service.errors import ServiceError

US = 1_000_000  # microseconds per second
MAX_FREQ_S = 366 * 86_400
MAX_TIMESTAMP_CHARS = 64
MAX_FREQ_CHARS = 32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_S = 86_400
_DAY_US = _DAY_S * US
MIN_US = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1) + _DAY_US
MAX_US = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
UNITS = {"s": 1, "sec": 1, "min": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
BUSINESS_DAYS = "1b"  # the frequency of a series of weekdays (Monday to Friday)
_FREQ = re.compile(r"^\s*([0-9]{1,12})\s*([a-z]*)\s*$")


class TimelineError(ServiceError):
    """A request the rules refuse (a `ServiceError`: 409 or 422, and the `field` it names)."""


@dataclass(frozen=True)
class Stamp:
    """A parsed timestamp: microseconds since the epoch (UTC) and the UTC offset it was given in."""

    us: int
    offset_s: int = 0


@dataclass
class Plan:
    """What an append sends to the engine: the values with gaps and nulls filled, the metadata
    after it, and how many points the gaps added."""

    values: list[float]
    meta: dict
    filled: int = 0


def parse_freq(value: int | str) -> int | str:
    """Seconds of a frequency: an int, or digits with an optional unit (s, sec, min, h, d, w); or
    `BUSINESS_DAYS` for "1b" (or "b")."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("freq must be whole seconds (an integer) or a string like '15min', '1h' "
                         "or '1b' (business days)")
    if isinstance(value, str):
        if len(value) > MAX_FREQ_CHARS:
            raise ValueError(f"freq is longer than {MAX_FREQ_CHARS} characters")
        if value.strip().lower() == "b":
            return BUSINESS_DAYS
        m = _FREQ.match(value.lower())
        if m is not None and m[2] == "b":
            if int(m[1]) != 1:
                raise ValueError(f"freq {value!r}: business days step one at a time ('1b')")
            return BUSINESS_DAYS
        if m is None or m[2] not in ("", *UNITS):
            raise ValueError(f"freq {value!r} is not a number of seconds or a number with a unit "
                             f"({', '.join(UNITS)}; 'min' for minutes), or '1b' (business days)")
        value = int(m[1]) * UNITS.get(m[2], 1)
    if not 1 <= value <= MAX_FREQ_S:
        got = f"; got {value} s" if abs(value) < 10**15 else ""  # (not a 4,000-digit echo)
        raise ValueError(f"freq must be 1 second to 366 days ({MAX_FREQ_S} s){got}")
    return value


def parse_timestamp(text: str) -> Stamp:
    """An ISO 8601 timestamp; naive ones are UTC."""
    if not isinstance(text, str):
        raise ValueError("a timestamp must be an ISO 8601 string")
    if len(text) > MAX_TIMESTAMP_CHARS:
        raise ValueError(f"a timestamp is at most {MAX_TIMESTAMP_CHARS} characters")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp (e.g. 2024-05-01T13:00:00Z)") \
            from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    offset = dt.utcoffset()
    if offset % timedelta(seconds=1):  # (a rounded one can reach 24 h, which no offset may)
        raise ValueError(f"{text!r} has a UTC offset with a fraction of a second; offsets are "
                         "whole seconds (e.g. +02:00)")
    try:
        us = (dt - _EPOCH) // timedelta(microseconds=1)
    except OverflowError:
        us = MIN_US - 1
    if not MIN_US <= us <= MAX_US:
        raise ValueError(f"{text!r} is outside the supported range, 0001-01-02 to "
                         "9999-12-31T00:00:00Z")
    return Stamp(us, offset // timedelta(seconds=1))


def format_timestamp(us: int, offset_s: int = 0) -> str:
    """ISO 8601 in the given UTC offset; UTC ends in `Z`. An offset no timezone can hold (24 h
    and more: a log written before sub-second offsets were refused may hold one) is written as
    UTC, the same instant, rather than failing every read of the series."""
    if offset_s == 0 or not -_DAY_S < offset_s < _DAY_S:
        return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")
    tz = timezone(timedelta(seconds=offset_s))
    return (_EPOCH + timedelta(microseconds=us)).astimezone(tz).isoformat()


def infer_freq(stamps: Sequence[Stamp], field: str = "timestamps") -> int:
    """The smallest difference of strictly increasing timestamps, in seconds; every difference must
    be a multiple of it."""
    if len(stamps) < 2:
        raise TimelineError(422, "the frequency of a new series is inferred from its first "
                                 "append's timestamps, which needs at least two; give `freq` "
                                 "(e.g. \"1h\") with a single point", field)
    diffs = [b.us - a.us for a, b in zip(stamps, stamps[1:])]
    step = min(diffs)
    if step % US:
        raise TimelineError(422, f"the smallest step between timestamps, {step / US:g} s, is not a "
                                 "whole number of seconds; frequencies are whole seconds", field)
    if step // US > MAX_FREQ_S:
        raise TimelineError(422, f"the smallest step between timestamps, {step // US} s, is more "
                                 f"than the largest frequency, 366 days", field)
    calendar = calendar_steps(stamps)
    if calendar:  # (two month starts are 31 days apart, and the next would be off that grid)
        raise TimelineError(422, f"these timestamps are {calendar} (the same day of each, or "
                                 f"each one's last): {CALENDAR_ADVICE}", _join(field, 1))
    for i, d in enumerate(diffs, start=1):
        if d % step:
            raise TimelineError(422, f"timestamps[{i}] is {d / US:g} s after the one before it, "
                                     f"not a multiple of the inferred frequency {step // US} s "
                                     "(the smallest step); give `freq` if that is not the "
                                     "frequency", _join(field, i))
    return step // US


CALENDAR_ADVICE = ("steps of calendar months, quarters or years are not one fixed length, and a "
                   "series' timestamps take fixed steps (or business days, `freq: \"1b\"`); send "
                   "such points without timestamps (each takes the series' next place)")
_CALENDAR_WORDS = "calendar months, quarters or years"


def calendar_steps(stamps: Sequence[Stamp]) -> str | None:
    """'calendar months' ('quarters', 'years') where every timestamp falls at the same time on
    the same day of its month (or on its month's last day) and each is whole months after the
    one before: steps no fixed frequency keeps to (two month starts are 31 days apart, and the
    next is not 31 days on). None otherwise (a fixed 30 days, four weeks, ...)."""
    if len(stamps) < 2:
        return None
    local = [_EPOCH + timedelta(microseconds=s.us + s.offset_s * US) for s in stamps]
    if len({t.time() for t in local}) != 1:
        return None
    if len({t.day for t in local}) != 1 and not all((t + timedelta(days=1)).day == 1
                                                     for t in local):
        return None
    months = [(b.year - a.year) * 12 + b.month - a.month for a, b in zip(local, local[1:])]
    if min(months) < 1:
        return None
    if all(m % 12 == 0 for m in months):
        return "calendar years"
    return "calendar quarters" if all(m % 3 == 0 for m in months) else "calendar months"


def _join(field: str, i: int) -> str:
    return f"{field}[{i}]"


def _weekday(us: int, offset_s: int) -> int:
    """0 (Monday) .. 6 (Sunday) of an instant in a UTC offset (1970-01-01 was a Thursday)."""
    return ((us + offset_s * US) // _DAY_US + 3) % 7


def shift(t: int, k: int, freq: int | str, offset_s: int = 0) -> int:
    """The grid point k steps after t (before it for k < 0): t + k freq, or for business days the
    k-th weekday after (before) t's day, at t's time of day, weekdays read in `offset_s`."""
    if freq != BUSINESS_DAYS:
        return t + k * freq * US
    weeks, rest = divmod(abs(k), 5)
    sign = 1 if k >= 0 else -1
    t += sign * weeks * 7 * _DAY_US
    while rest:
        t += sign * _DAY_US
        if _weekday(t, offset_s) < 5:
            rest -= 1
    return t


def steps_between(a: int, b: int, freq: int | str, offset_s: int = 0) -> int:
    """How many grid steps b (on the grid) is after a (on it too): (b - a) / freq, or for
    business days the weekdays among the whole days after a up to b."""
    if freq != BUSINESS_DAYS:
        return (b - a) // (freq * US)
    weeks, rest = divmod((b - a) // _DAY_US, 7)
    first = _weekday(a, offset_s)
    return weeks * 5 + sum((first + d) % 7 < 5 for d in range(1, rest + 1))


def off_grid(anchor: int, t: int, freq: int | str, offset_s: int) -> bool:
    """Whether t is not on the grid through `anchor` (`offset_s`: t's own UTC offset)."""
    if freq != BUSINESS_DAYS:
        return bool((t - anchor) % (freq * US))
    return bool((t - anchor) % _DAY_US) or _weekday(t, offset_s) >= 5


def _show_offset(offset_s: int) -> str:
    sign, a = "+" if offset_s >= 0 else "-", abs(offset_s)
    return f"{sign}{a // 3600:02d}:{a % 3600 // 60:02d}"


def show_freq(freq: int | str) -> str:
    """A frequency as the messages name it."""
    return "business days ('1b')" if freq == BUSINESS_DAYS else f"{freq} s"


def parse_stamps(stamps: Sequence[Stamp | str], field: str) -> list[Stamp]:
    """Each timestamp parsed (parse_timestamp); a bad one is a 422 naming `field[i]`."""
    out = []
    for i, s in enumerate(stamps):
        try:
            out.append(s if isinstance(s, Stamp) else parse_timestamp(s))
        except ValueError as exc:
            raise TimelineError(422, str(exc), f"{field}[{i}]") from None
    return out


def plain_append_meta(meta: dict | None, values: Sequence[float | None],
                      stamps: Sequence | None = None, freq: int | None = None) -> dict | None:
    """The common case of an append, where the rules of `plan_append` come to nothing to check
    or fill: no timestamps or frequency, no nulls, and `meta` (the series' metadata, None for a
    new series) has no frequency. The metadata after it then; None where the rules apply."""
    if (stamps is None and freq is None and values and None not in values
            and (meta is None or meta.get("freq") is None)):
        return {"last": values[-1]}
    return None


def plan_append(meta: dict | None, exists: bool, values: Sequence[float | None],
                stamps: Sequence[Stamp | str] | None = None, freq: int | None = None,
                gap_budget: int = 10_000, prefix: str = "") -> Plan:
    """Apply the rules to one append. `meta`: the series' metadata now (None if it has none);
    `exists`: the series holds points; `stamps`: Stamps or ISO 8601 strings (parsed here);
    `freq`: seconds or BUSINESS_DAYS (parse_freq), if given; `gap_budget`: how many points gaps
    may still add in this request. Raises TimelineError; changes nothing."""

    plain = plain_append_meta(meta if exists else None, values, stamps, freq)
    if plain is not None:  # (what the rules below come to then, without their checks)
        return Plan(list(values), plain, 0)

    def name(f: str) -> str:
        return f"{prefix}.{f}" if prefix else f

    if stamps is not None:
        stamps = parse_stamps(stamps, name("timestamps"))
    meta = meta or {}
    old_freq = meta.get("freq") if exists else None
    _check_options(exists, old_freq, len(values), stamps, freq, name)
    last = meta.get("last") if exists else None
    if stamps is not None:
        new_meta, gaps, filled = _place_on_grid(meta, old_freq, stamps, freq, gap_budget, name)
    elif old_freq is not None:
        t = shift(meta["t"], len(values), old_freq, meta.get("off", 0))
        if t > MAX_US:
            raise TimelineError(422, "these points' timestamps (the next grid points) would pass "
                                     "the year 9999", name("values"))
        new_meta, gaps, filled = {"freq": old_freq, "t": t, "off": meta.get("off", 0)}, None, 0
    else:
        new_meta, gaps, filled = {}, None, 0

    if not filled and None not in values:  # the common case: nothing to fill
        new_meta["last"] = values[-1] if values else last
        return Plan(list(values), new_meta, 0)
    out, new_meta["last"] = _filled(values, gaps, last, name)
    return Plan(out, new_meta, filled)


def _check_options(exists: bool, old_freq: int | str | None, n_values: int,
                   stamps: list[Stamp] | None, freq: int | str | None,
                   name: Callable[[str], str]) -> None:
    """What an append's timestamps and frequency may be, given the series it goes to."""
    if exists and old_freq is None:
        if stamps is not None:
            raise TimelineError(409, "this series was created without timestamps, so its appends "
                                     "cannot carry them (delete it and create it again with "
                                     "timestamps)", name("timestamps"))
        if freq is not None:
            raise TimelineError(409, "this series was created without timestamps and has no "
                                     "frequency", name("freq"))
    if old_freq is not None and freq is not None and freq != old_freq:
        raise TimelineError(409, f"the series' frequency is {show_freq(old_freq)}, fixed at its "
                                 f"creation; this append says {show_freq(freq)}", name("freq"))
    if not exists and freq is not None and stamps is None:
        raise TimelineError(422, "`freq` needs `timestamps`: the first timestamp anchors the "
                                 "series' grid", name("freq"))
    if stamps is not None and len(stamps) != n_values:
        raise TimelineError(422, f"one timestamp per value: {n_values} values, "
                                 f"{len(stamps)} timestamps", name("timestamps"))


def _place_on_grid(meta: dict, old_freq: int | str | None, stamps: list[Stamp],
                   freq: int | str | None, gap_budget: int, name: Callable[[str], str]
                   ) -> tuple[dict, list[int], int]:
    """Timestamps checked against the series' grid (or one inferred from them, for a new series):
    the metadata after them, the points missing before each, and how many that is in all."""
    for i in range(1, len(stamps)):
        if stamps[i].us <= stamps[i - 1].us:
            what = "the same time as" if stamps[i].us == stamps[i - 1].us else "before"
            raise TimelineError(422, f"timestamps[{i}] is {what} timestamps[{i - 1}]: "
                                     "timestamps must increase strictly (duplicates and "
                                     "out-of-order points are refused)",
                                name(f"timestamps[{i}]"))
    if old_freq is not None:
        step, prev = old_freq, meta["t"]
        if stamps[0].us <= prev:
            late = "the same as" if stamps[0].us == prev else "before"
            given = format_timestamp(stamps[0].us, stamps[0].offset_s)
            last_seen = format_timestamp(prev, meta.get("off", 0))
            raise TimelineError(409, f"timestamps[0] ({given}) is {late} the series' last "
                                     f"timestamp ({last_seen}): points are appended in time "
                                     "order, each once", name("timestamps[0]"))
    else:
        step = freq if freq is not None else infer_freq(stamps, name("timestamps"))
        prev = None
    anchor = prev if prev is not None else stamps[0].us
    anchor_off = meta.get("off", 0) if prev is not None else stamps[0].offset_s
    gaps, filled = [], 0
    for i, s in enumerate(stamps):
        if off_grid(anchor, s.us, step, s.offset_s):
            where = (f"a weekday (Monday to Friday) at the time of day of "
                     f"{format_timestamp(anchor, anchor_off)}" if step == BUSINESS_DAYS else
                     f"{format_timestamp(anchor, anchor_off)} plus a whole number of steps of "
                     f"{step} s")
            if step != BUSINESS_DAYS and 28 * _DAY_S <= step <= 366 * _DAY_S:
                where += f" (if these are {_CALENDAR_WORDS}: {CALENDAR_ADVICE})"
            if s.offset_s != anchor_off and not (s.us - anchor) % (3600 * US):
                where += (f". Its UTC offset ({_show_offset(s.offset_s)}) is not the grid's "
                          f"({_show_offset(anchor_off)}): local times across a daylight-saving "
                          "change are not whole steps apart; send local times without their "
                          "offset (read as UTC, they are)")
            raise TimelineError(422, f"timestamps[{i}] is not on the series' grid: {where}",
                                name(f"timestamps[{i}]"))
        missing = 0 if prev is None else steps_between(prev, s.us, step, s.offset_s) - 1
        if filled + missing > gap_budget:
            raise TimelineError(422, f"filling the gap before timestamps[{i}] ({missing} "
                                     f"missing point{'s' if missing != 1 else ''}) passes the limit on "
                                     "points that gaps "
                                     f"may add to one request ({gap_budget - filled} left of "
                                     "the request's max_gap_points, or of the server's "
                                     "--max-gap-points); send the missing points (null where a "
                                     "value is unknown), or points closer together",
                                name(f"timestamps[{i}]"))
        filled += missing
        gaps.append(missing)
        prev = s.us
    return {"freq": step, "t": stamps[-1].us, "off": stamps[-1].offset_s}, gaps, filled


def _filled(values: Sequence[float | None], gaps: list[int] | None, last: float | None,
            name: Callable[[str], str]) -> tuple[list[float], float | None]:
    """Gaps and nulls filled with the last value before them; the values and the new last."""
    out: list[float] = []
    for i, v in enumerate(values):
        if gaps is not None and gaps[i]:
            out.extend([last] * gaps[i])  # a gap follows a point, so `last` is known
        if v is None:
            if last is None:
                raise TimelineError(422, f"values[{i}] is null and the series has no earlier "
                                         "value to carry forward (a series cannot start with a "
                                         "missing point)", name(f"values[{i}]"))
            v = last
        out.append(v)
        last = v
    return out, last


def forecast_timestamps(meta: dict | None, horizon: int, field: str = "horizon") -> list[str] | None:
    """The timestamps of a forecast of `horizon` points after the series' last point; None for a
    series without a frequency. 422 if they would pass the year 9999."""
    if not meta or meta.get("freq") is None:
        return None
    off = meta.get("off", 0)
    times = _walk(meta["t"], 1, horizon, meta["freq"], off)
    if times and times[-1] > MAX_US:
        raise TimelineError(422, f"a forecast of {horizon} points would run past the year 9999",
                            field)
    return [format_timestamp(t, off) for t in times]


def _walk(t: int, sign: int, n: int, freq: int | str, offset_s: int) -> list[int]:
    """The n grid points after t (sign 1) or before it (sign -1), nearest first."""
    out = []
    for _ in range(n):
        t = shift(t, sign, freq, offset_s)
        out.append(t)
    return out


def plot_times(meta: dict | None, points: int, horizon: int) -> tuple[list, list] | None:
    """The times of a series' last `points` points and of a forecast of `horizon` after them,
    as datetimes in the series' UTC offset (GET /series/{id}/plot's x axis); None for a series
    without a frequency, or one whose times would leave the supported range."""
    if not meta or meta.get("freq") is None:
        return None
    freq, last, off = meta["freq"], meta["t"], meta.get("off", 0)
    before, after = _walk(last, -1, points - 1, freq, off), _walk(last, 1, horizon, freq, off)
    if (before and before[-1] < MIN_US) or (after and after[-1] > MAX_US):
        return None
    tz = timezone(timedelta(seconds=off if -_DAY_S < off < _DAY_S else 0))

    def at(us: int):
        return (_EPOCH + timedelta(microseconds=us)).astimezone(tz)

    return [at(t) for t in (*reversed(before), last)], [at(t) for t in after]


def describe(meta: dict | None) -> dict:
    """The frequency and last timestamp of a series, for GET /series/{id}."""
    if not meta or meta.get("freq") is None:
        return {}
    return {"freq": meta["freq"], "last_timestamp": format_timestamp(meta["t"], meta.get("off", 0))}

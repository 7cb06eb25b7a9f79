"""Timestamps, gaps and nulls (service/timeline.py): the rules as pure functions, then through the
HTTP API (a filled gap or a null forecasts exactly like the explicitly filled values; errors are
4xx naming the field and change nothing), the log and snapshots (the metadata survives), and a
real server killed with kill -9 and restarted."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import torch
from fastapi.testclient import TestClient

from model import checkpoint
from service import timeline
from service import wal as wal_format
from service.app import create_app
from service.engine import Engine
from service.series_locks import SeriesLocks
from service.settings import Settings, parse
from service.store import Store
from service.timeline import Stamp, TimelineError, parse_freq, parse_timestamp, plan_append
from tests.conftest import DEFAULT_WEIGHTS, Server, rel_err
from tests.helpers import series

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def iso(k: int, step: timedelta = timedelta(hours=1), start: datetime = T0) -> str:
    return (start + k * step).isoformat().replace("+00:00", "Z")


def sub_second_offset(utc: str, sign: int = 1) -> str:
    """The instant `utc` (ISO 8601, Z) written in the UTC offset +-23:59:59.5, which rounds to
    24 h."""
    offset = sign * timedelta(hours=23, minutes=59, seconds=59.5)
    local = (datetime.fromisoformat(utc) + offset).replace(tzinfo=None).isoformat()
    return local + ("+" if sign > 0 else "-") + "23:59:59.5"


def stamps(*ks: int, step: timedelta = timedelta(hours=1)) -> list[Stamp]:
    return [parse_timestamp(iso(k, step)) for k in ks]


def refused(status: int, field: str, fn, *args, **kw) -> TimelineError:
    with pytest.raises(TimelineError) as info:
        fn(*args, **kw)
    assert (info.value.status, info.value.field) == (status, field), info.value.message
    return info.value


# ---- the rules -------------------------------------------------------------------------------

def test_parse_freq():
    assert [parse_freq(f) for f in (1, 3600, "10s", "15min", "1h", "1H", " 2d ", "1w", "90")] == \
        [1, 3600, 10, 900, 3600, 3600, 172800, 604800, 90]
    for bad in (0, -5, True, 1.5, "1m", "1y", "h", "", "x" * 40, 367 * 86400, "367d", "2b", "0b"):
        with pytest.raises(ValueError):
            parse_freq(bad)
    assert {parse_freq(f) for f in ("1b", "b", "B", " 1B ")} == {timeline.BUSINESS_DAYS}


def test_parse_timestamp():
    assert parse_timestamp("2024-05-01T00:00:00Z") == Stamp(1714521600 * 10**6, 0)
    assert parse_timestamp("2024-05-01T02:00:00+02:00") == Stamp(1714521600 * 10**6, 7200)
    assert parse_timestamp("2024-05-01 00:00") == parse_timestamp("2024-05-01T00:00:00+00:00")  # naive: UTC
    assert parse_timestamp("2024-05-01").us == 1714521600 * 10**6
    assert timeline.format_timestamp(1714521600 * 10**6, 7200) == "2024-05-01T02:00:00+02:00"
    for bad in ("yesterday", "2024-13-01", "1" * 65, "0001-01-01T00:00:00+05:00",
                "9999-12-31T12:00:00", "2024-05-01T00:00:00+23:59:59.5",
                "2024-05-01T00:00:00+01:00:00.000001"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)
    # Whole-second offsets are kept exactly, up to the largest a timezone holds.
    edge = parse_timestamp("2024-05-01T23:59:59+23:59:59")
    assert edge == Stamp(1714521600 * 10**6, 86399)
    assert timeline.format_timestamp(edge.us, edge.offset_s) == "2024-05-01T23:59:59+23:59:59"
    # A 24-hour offset (a log from before sub-second offsets were refused) reads as UTC.
    assert timeline.format_timestamp(1714521600 * 10**6, 86400) == "2024-05-01T00:00:00Z"


def test_infer_freq():
    assert timeline.infer_freq(stamps(0, 1, 3, 4)) == 3600
    assert timeline.infer_freq(stamps(0, 2, 6)) == 7200  # the smallest step, not the gcd
    refused(422, "timestamps[2]", timeline.infer_freq, stamps(0, 2, 5))
    refused(422, "timestamps", timeline.infer_freq, stamps(0))
    half = [parse_timestamp("2024-05-01T00:00:00"), parse_timestamp("2024-05-01T00:00:00.5")]
    refused(422, "timestamps", timeline.infer_freq, half)
    # Month (and quarter) starts are not one step: the message says so, not "give freq" (no
    # freq is a month); other uneven steps keep the generic one.
    # (two of them already: the next month start would be off a 31-day grid for ever)
    for calendar, texts in (
            ("calendar months", [f"2024-{m:02d}-01" for m in range(1, 7)]),
            ("calendar months", ["2024-01-01", "2024-02-01"]),
            ("calendar months", ["2024-01-31", "2024-02-29", "2024-03-31"]),  # month ends
            ("calendar months", ["2024-01-15T06:00:00+02:00", "2024-02-15T06:00:00+02:00"]),
            ("calendar quarters", ["2024-01-01", "2024-04-01", "2024-07-01"]),
            ("calendar years", ["2023-01-01", "2024-01-01", "2025-01-01"]),
            ("calendar months", ["2024-01-01", "2024-03-01"]),  # every two months
            ("calendar months", ["2024-01-01", "2024-02-01", "2024-04-01"]),  # with a gap
            ("calendar quarters", ["2024-01-01", "2024-07-01"]),
            ("calendar years", ["2023-01-01", "2025-01-01", "2026-01-01"])):
        err = refused(422, "timestamps[1]", timeline.infer_freq, [parse_timestamp(t) for t in texts])
        assert f"are {calendar}" in err.message and "without timestamps" in err.message, err.message
    for fixed in (["2024-01-01", "2024-01-31", "2024-03-01"],  # a fixed 30 days
                  ["2024-01-01", "2024-01-29", "2024-02-26"],  # four weeks
                  ["2024-01-01T00:00:00", "2024-02-01T01:00:00"]):  # (another time of day)
        assert timeline.calendar_steps([parse_timestamp(t) for t in fixed]) is None, fixed
    assert "give `freq`" in refused(422, "timestamps[2]", timeline.infer_freq, stamps(0, 2, 5)).message
    # A series kept at a month's length (its freq given) gets the advice with an off-grid point.
    p = plan_append(None, False, [1.0], [parse_timestamp("2024-01-01")], freq=31 * 86400)
    err = refused(422, "timestamps[0]", plan_append, p.meta, True, [2.0], ["2024-03-01"])
    assert "calendar months, quarters or years" in err.message


def test_new_series_frequency_given_or_inferred():
    p = plan_append(None, False, [1.0, 2.0, 3.0], stamps(0, 1, 2))
    assert p.values == [1.0, 2.0, 3.0] and p.filled == 0
    assert p.meta == {"freq": 3600, "t": stamps(2)[0].us, "off": 0, "last": 3.0}
    one = plan_append(None, False, [1.0], stamps(0), freq=900)
    assert one.meta["freq"] == 900
    refused(422, "timestamps", plan_append, None, False, [1.0], stamps(0))  # nothing to infer from
    refused(422, "freq", plan_append, None, False, [1.0], None, freq=60)  # no anchor
    refused(422, "timestamps[1]", plan_append, None, False, [1.0, 2.0], stamps(0, 1), freq=7200)
    assert plan_append(None, False, [1.0], None).meta == {"last": 1.0}  # no timestamps at all


def test_gaps_are_filled_with_the_last_value():
    p = plan_append(None, False, [1.0, 2.0, 5.0], stamps(0, 1, 4))
    assert p.values == [1.0, 2.0, 2.0, 2.0, 5.0] and p.filled == 2
    # Across appends: the gap after the series' last point, from the stored metadata.
    q = plan_append(p.meta, True, [7.0, None], stamps(6, 8))
    assert q.values == [5.0, 7.0, 7.0, 7.0] and q.filled == 2
    assert q.meta["t"] == stamps(8)[0].us and q.meta["last"] == 7.0
    # The bound: at most gap_budget points, else 422 naming the timestamp after the gap.
    refused(422, "timestamps[1]", plan_append, p.meta, True, [1.0, 2.0], stamps(5, 9),
            gap_budget=2)
    assert plan_append(p.meta, True, [1.0, 2.0], stamps(5, 9), gap_budget=3).filled == 3
    refused(422, "timestamps[0]", plan_append, p.meta, True, [1.0], stamps(10**6), gap_budget=10)
    refused(422, "timestamps[1]", plan_append, None, False, [1.0, 2.0], stamps(0, 2), freq=3600,
            gap_budget=0)


def test_nulls_carry_the_last_value_forward():
    p = plan_append(None, False, [1.0, None, None, 4.0, None], None)
    assert p.values == [1.0, 1.0, 1.0, 4.0, 4.0] and p.meta == {"last": 4.0}
    assert plan_append(p.meta, True, [None, 2.0], None).values == [4.0, 2.0]
    refused(422, "values[0]", plan_append, None, False, [None, 1.0], None)
    refused(422, "series[2].values[0]", plan_append, None, False, [None], stamps(0), freq=60,
            prefix="series[2]")


def test_order_grid_and_kind_of_series():
    meta = plan_append(None, False, [1.0, 2.0, 3.0], stamps(0, 1, 2)).meta
    refused(422, "timestamps[1]", plan_append, meta, True, [1.0, 2.0], stamps(4, 4))  # duplicate
    refused(422, "timestamps[2]", plan_append, meta, True, [1.0] * 3, stamps(4, 6, 5))  # order
    refused(409, "timestamps[0]", plan_append, meta, True, [1.0], stamps(2))  # the last one again
    refused(409, "timestamps[0]", plan_append, meta, True, [1.0, 2.0], stamps(1, 3))  # late
    off_grid = [parse_timestamp("2024-05-01T03:30:00Z")]
    refused(422, "timestamps[0]", plan_append, meta, True, [1.0], off_grid)
    refused(422, "timestamps", plan_append, meta, True, [1.0, 2.0], stamps(3))  # one per value
    refused(409, "freq", plan_append, meta, True, [1.0], stamps(3), freq=60)
    assert plan_append(meta, True, [1.0], stamps(3), freq=3600).meta["freq"] == 3600
    # Without timestamps: the next grid points.
    nxt = plan_append(meta, True, [4.0, 5.0], None)
    assert nxt.meta["t"] == stamps(4)[0].us and nxt.values == [4.0, 5.0]
    # A series created without timestamps takes none later.
    plain = {"last": 1.0}
    refused(409, "timestamps", plan_append, plain, True, [1.0], stamps(0))
    refused(409, "freq", plan_append, plain, True, [1.0], None, freq=60)
    refused(409, "timestamps", plan_append, None, True, [1.0], stamps(0))  # held, no metadata


def test_forecast_timestamps_continue_the_grid_in_the_last_offset():
    meta = plan_append(None, False, [1.0, 2.0],
                       [parse_timestamp("2024-05-01T10:00:00+02:00"),
                        parse_timestamp("2024-05-01T10:15:00+02:00")]).meta
    assert meta["freq"] == 900 and meta["off"] == 7200
    assert timeline.forecast_timestamps(meta, 3) == [
        "2024-05-01T10:30:00+02:00", "2024-05-01T10:45:00+02:00", "2024-05-01T11:00:00+02:00"]
    assert timeline.forecast_timestamps({"last": 1.0}, 3) is None
    assert timeline.describe(meta) == {"freq": 900, "last_timestamp": "2024-05-01T10:15:00+02:00"}
    late = plan_append(None, False, [1.0], [parse_timestamp("9999-12-30T00:00:00")], freq=3600)
    assert len(timeline.forecast_timestamps(late.meta, 23)) == 23
    refused(422, "horizon", timeline.forecast_timestamps, late.meta, 25)
    refused(422, "values", plan_append, late.meta, True, [1.0] * 25, None)


def days(*dates: str, at: str = "T16:00:00-04:00") -> list[Stamp]:
    return [parse_timestamp(d + at) for d in dates]


def test_business_days_skip_weekends_and_fill_only_missing_weekdays():
    """2024-05-02 was a Thursday: Thu, Fri, Mon are consecutive business days; Wed after Mon is
    one missing point (Tue); a Saturday is off the grid. Appends without timestamps, forecasts
    and the plot's times step over weekends too. The weekday is the timestamps' own (New York's
    16:00 is 20:00 UTC, the same day)."""
    p = plan_append(None, False, [1.0, 2.0, 3.0, 5.0],
                    days("2024-05-02", "2024-05-03", "2024-05-06", "2024-05-08"), freq="1b")
    assert p.values == [1.0, 2.0, 3.0, 3.0, 5.0] and p.filled == 1
    assert p.meta["freq"] == "1b" and p.meta["off"] == -4 * 3600
    assert timeline.forecast_timestamps(p.meta, 4) == [
        "2024-05-09T16:00:00-04:00", "2024-05-10T16:00:00-04:00",
        "2024-05-13T16:00:00-04:00", "2024-05-14T16:00:00-04:00"]
    assert timeline.describe(p.meta) == {"freq": "1b", "last_timestamp": "2024-05-08T16:00:00-04:00"}
    refused(422, "timestamps[0]", plan_append, p.meta, True, [1.0], days("2024-05-11"))  # Saturday
    refused(422, "timestamps[0]", plan_append, p.meta, True, [1.0], days("2024-05-09", at="T17:00:00-04:00"))
    refused(422, "timestamps[0]", plan_append, None, False, [1.0], days("2024-05-05"), freq="1b")  # Sunday
    refused(409, "freq", plan_append, p.meta, True, [1.0], days("2024-05-09"), freq=86400)
    # A Monday after a whole week away: the four weekdays between are filled, no weekend.
    q = plan_append(p.meta, True, [9.0], days("2024-05-20"))
    assert q.filled == 7 and q.values == [5.0] * 7 + [9.0]
    nxt = plan_append(p.meta, True, [6.0, 7.0, 8.0], None)  # Thu, Fri, Mon
    assert timeline.format_timestamp(nxt.meta["t"], nxt.meta["off"]) == "2024-05-13T16:00:00-04:00"
    before, after = timeline.plot_times(nxt.meta, 4, 2)
    assert [t.date().isoformat() for t in before + after] == [
        "2024-05-08", "2024-05-09", "2024-05-10", "2024-05-13", "2024-05-14", "2024-05-15"]
    # Local closes across a daylight-saving change: off the grid, and the message says why.
    with pytest.raises(TimelineError, match="daylight-saving") as err:
        plan_append(None, False, [1.0, 2.0], [parse_timestamp("2024-03-08T16:00:00-05:00"),
                                              parse_timestamp("2024-03-11T16:00:00-04:00")], freq="1b")
    assert err.value.field == "timestamps[1]"
    # The same rows as a daily series: every weekend is filled.
    daily = plan_append(None, False, [1.0, 2.0, 3.0, 5.0],
                        days("2024-05-02", "2024-05-03", "2024-05-06", "2024-05-08"), freq=86400)
    assert daily.filled == 3


def test_series_locks_serialise_and_outlive_a_cancelled_caller():
    async def scenario():
        locks, order = SeriesLocks(), []
        release_first = asyncio.Event()

        async def first():
            order.append("first in")
            await release_first.wait()
            order.append("first out")

        async def second():
            order.append("second")

        a = asyncio.ensure_future(locks.run(["b", "a"], first))
        await asyncio.sleep(0)
        b = asyncio.ensure_future(locks.run(["a"], second))
        await asyncio.sleep(0.01)
        assert order == ["first in"] and len(locks) == 2
        a.cancel()  # the caller goes away; its work goes on and keeps the lock
        await asyncio.sleep(0.01)
        assert order == ["first in"]
        release_first.set()
        await b
        assert order == ["first in", "first out", "second"] and len(locks) == 0
        with pytest.raises(asyncio.CancelledError):
            await a

    asyncio.run(scenario())


def test_series_locks_pass_over_cancelled_waiters_in_arrival_order():
    """A waiter that goes away is skipped; the lock goes to the next one, in arrival order. A
    waiter cancelled just after the lock was handed to it passes it on (nothing is leaked)."""
    async def scenario():
        locks, order = SeriesLocks(), []
        held = await locks.acquire(["x"])

        async def waiter(name: str):
            got = await locks.acquire(["x", name])  # x first (id order), then its own id
            order.append(name)
            locks.release(got)

        tasks = {n: asyncio.ensure_future(waiter(n)) for n in ("y1", "y2", "y3", "y4")}
        await asyncio.sleep(0)
        tasks["y2"].cancel()  # gives up while waiting
        await asyncio.sleep(0)
        locks.release(held)  # handed to y1 ...
        tasks["y1"].cancel()  # ... which is cancelled before it resumes: it passes x on
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert order == ["y3", "y4"]
        assert tasks["y1"].cancelled() and tasks["y2"].cancelled()
        assert len(locks) == 0
        assert await locks.acquire(["x"]) == ["x"]  # free again, at once

    asyncio.run(asyncio.wait_for(scenario(), 10))  # (a leaked lock would hang: fail instead)


def test_series_locks_keep_arrival_order_across_ids():
    """A request waiting for one of its ids keeps its place on the others: a later request on
    those waits behind it (the black-box case: a bulk append naming a busy series and `b`, then
    a single append to `b`, must be applied in that order). Given up, it leaves every queue and
    frees what it took, also when its lock is released between its cancellation and its
    resumption."""
    async def scenario():
        locks, order = SeriesLocks(), []
        busy = await locks.acquire(["a"])

        async def request(name: str, ids: list[str]):
            got = await locks.acquire(ids)
            order.append(name)
            locks.release(got)

        y = asyncio.ensure_future(request("y", ["a", "b"]))
        await asyncio.sleep(0)
        z = asyncio.ensure_future(request("z", ["b"]))
        await asyncio.sleep(0.01)
        assert order == []  # z waits behind y, which waits for a
        locks.release(busy)
        await asyncio.gather(y, z)
        assert order == ["y", "z"] and len(locks) == 0

        # Cancelled while waiting for a: b, which it had taken, goes to the next in line.
        order.clear()
        busy = await locks.acquire(["a"])
        y = asyncio.ensure_future(request("y", ["a", "b"]))
        await asyncio.sleep(0)
        z = asyncio.ensure_future(request("z", ["b"]))
        await asyncio.sleep(0)
        y.cancel()
        await asyncio.wait_for(z, 5)
        assert order == ["z"]
        # ... and a's holder releasing after the cancellation but before y resumes leaks nothing.
        y2 = asyncio.ensure_future(request("y2", ["a", "c"]))
        await asyncio.sleep(0)
        y2.cancel()
        locks.release(busy)
        await asyncio.gather(y, y2, return_exceptions=True)
        assert y2.cancelled() and order == ["z"] and len(locks) == 0
        assert await locks.acquire(["a", "b", "c"]) == ["a", "b", "c"]

    asyncio.run(asyncio.wait_for(scenario(), 10))  # (a leaked lock would hang: fail instead)


# ---- through the API -------------------------------------------------------------------------

LIMITS = Settings(max_horizon=500, max_series_per_request=4, max_points_per_request=400,
                  max_series=20, max_gap_points=50)


@pytest.fixture(scope="module")
def loaded():
    return checkpoint.load(DEFAULT_WEIGHTS)


def make_client(loaded, settings: Settings = LIMITS) -> TestClient:
    model, manifest = loaded
    return TestClient(create_app(settings, Engine(model, manifest, settings.max_series,
                                                  backend="torch")))


@pytest.fixture(params=[0.0, 2.0], ids=["unbatched", "batched"])
def client(loaded, request):
    with make_client(loaded, replace(LIMITS, batch_window_ms=request.param)) as c:
        yield c


def assert_error(r, status: int, field: str | None):
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.json()
    assert r.json()["detail"]


def post(c, sid: str, values, ts=None, **extra):
    body = {"values": values, **extra}
    if ts is not None:
        body["timestamps"] = ts
    return c.post(f"/series/{sid}/append", json=body)


def forecast(c, sid: str, horizon: int = 8) -> dict:
    r = c.get(f"/series/{sid}/forecast", params={"horizon": horizon})
    assert r.status_code == 200, r.text
    return r.json()


def test_filled_gap_forecasts_exactly_like_the_filled_values(client):
    x = series(40, 3)
    ks = [k for k in range(44) if k not in (10, 11, 12, 30)]  # four points missing
    have = dict(zip(ks, x))
    filled, last = [], None
    for k in range(44):
        last = have.get(k, last)
        filled.append(last)
    r = post(client, "gappy", [have[k] for k in ks], [iso(k) for k in ks], horizon=6)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["length"] == 44
    assert got["forecast"]["timestamps"] == [iso(k) for k in range(44, 50)]
    assert post(client, "dense", filled, [iso(k) for k in range(44)]).status_code == 200
    assert post(client, "plain", filled).status_code == 200  # no timestamps at all
    g, d, p = (forecast(client, s, 6) for s in ("gappy", "dense", "plain"))
    assert g["mean"] == d["mean"] == p["mean"] == got["forecast"]["mean"]
    assert g["timestamps"] == d["timestamps"] == got["forecast"]["timestamps"]
    assert "timestamps" not in p
    info = client.get("/series/gappy").json()
    assert (info["length"], info["freq"], info["last_timestamp"]) == (44, 3600, iso(43))
    assert "freq" not in client.get("/series/plain").json()


def test_nulls_forecast_exactly_like_carried_forward_values(client):
    x = series(45, 4)
    with_nulls = [None if k % 7 == 3 else v for k, v in enumerate(x)]
    with_nulls[30] = None  # in two appends: the null opening the second takes the first's last
    explicit, last = [], None
    for v in with_nulls:
        last = v if v is not None else last
        explicit.append(last)
    for sid, vals in (("nulls", with_nulls), ("explicit", explicit)):
        assert post(client, sid, vals[:30]).status_code == 200
        r = post(client, sid, vals[30:], horizon=5)
        assert r.status_code == 200 and r.json()["length"] == 45
        assert "timestamps" not in r.json()["forecast"]
    assert forecast(client, "nulls")["mean"] == forecast(client, "explicit")["mean"]
    # With timestamps too: nulls and gaps together, and appends without timestamps.
    ts = [iso(k, timedelta(minutes=15)) for k in range(40)]
    assert post(client, "mixed", with_nulls[:20], ts[:20], freq="15min").status_code == 200
    r = post(client, "mixed", with_nulls[20:40], horizon=3)  # the next 20 grid points
    assert r.json()["forecast"]["timestamps"] == [iso(k, timedelta(minutes=15))
                                                  for k in range(40, 43)]
    assert post(client, "mixed-ref", explicit[:20]).status_code == 200
    assert post(client, "mixed-ref", explicit[20:40]).status_code == 200
    assert forecast(client, "mixed")["mean"] == forecast(client, "mixed-ref")["mean"]


def test_rejected_requests_name_the_field_and_change_nothing(client):
    x = series(40, 5)
    assert post(client, "s", x, [iso(k) for k in range(40)]).status_code == 200
    before = (client.get("/series/s").json(), forecast(client, "s"))
    t = [iso(k) for k in range(40, 44)]
    cases = [
        ({"values": [1.0, 2.0], "timestamps": [t[0], "not a time"]}, 422, "timestamps[1]"),
        ({"values": [1.0, 2.0], "timestamps": [t[0], t[0]]}, 422, "timestamps[1]"),
        ({"values": [1.0, 2.0], "timestamps": [t[1], t[0]]}, 422, "timestamps[1]"),
        ({"values": [1.0], "timestamps": [iso(39)]}, 409, "timestamps[0]"),  # a retry
        ({"values": [1.0], "timestamps": [iso(12)]}, 409, "timestamps[0]"),  # late
        ({"values": [1.0, 2.0], "timestamps": [t[0], "2024-05-02T17:30:00Z"]}, 422,
         "timestamps[1]"),  # off the grid
        ({"values": [1.0, 2.0], "timestamps": [t[0]]}, 422, "timestamps"),
        ({"values": [1.0], "timestamps": [iso(40 + 51)]}, 422, "timestamps[0]"),  # gap of 51
        ({"values": [1.0], "timestamps": [t[0]], "freq": "2h"}, 409, "freq"),
        ({"values": [1.0], "freq": "2 fortnights"}, 422, "freq"),
        ({"values": [1.0, None], "timestamps": [t[0], 5]}, 422, "timestamps[1]"),
        ({"values": [1.0, 2.0], "timestamps": [t[0], t[1]], "horizon": 501}, 422, "horizon"),
        ({"values": [1.0], "timestamps": [t[0]], "extra": 1}, 422, "extra"),
        ({"values": [1.0, 2.0], "timestamps": [t[0], sub_second_offset(t[1])]}, 422,
         "timestamps[1]"),  # on the grid, in an offset that rounds to 24 h
    ]
    for body, status, field in cases:
        assert_error(client.post("/series/s/append", json=body), status, field)
    for token in ("NaN", "Infinity"):
        r = client.post("/series/s/append", content=f'{{"values": [1.0, {token}]}}',
                        headers={"content-type": "application/json"})
        assert_error(r, 422, "values[1]")
    assert (client.get("/series/s").json(), forecast(client, "s")) == before
    # A series created without timestamps refuses them; one may not start with a null.
    assert post(client, "p", [1.0, 2.0]).status_code == 200
    assert_error(post(client, "p", [1.0], [t[0]]), 409, "timestamps")
    assert_error(post(client, "n", [None, 1.0]), 422, "values[0]")
    assert_error(post(client, "n1", [1.0], [t[0]]), 422, "timestamps")  # one point, no freq
    assert_error(post(client, "n2", [1.0], freq="1h"), 422, "freq")  # freq without timestamps
    for sid in ("n", "n1", "n2"):
        assert_error(client.get(f"/series/{sid}"), 404, "id")


def test_filled_points_count_toward_the_point_limit(loaded):
    with make_client(loaded, replace(LIMITS, max_gap_points=1000)) as c:
        assert post(c, "g", [1.0, 2.0], [iso(0), iso(360)], freq="1h").status_code == 200  # 361
        assert_error(post(c, "g", [1.0, 2.0], [iso(361), iso(800)]), 413, "values")  # 440
        assert c.get("/series/g").json()["length"] == 361
        bulk = {"series": [{"id": "g", "values": [1.0], "timestamps": [iso(900)]}]}  # 539
        assert_error(c.post("/series/append", json=bulk), 413, "series")


def test_bulk_append_with_timestamps(client):
    a, b = series(40, 6), series(40, 7)
    ok = {"series": [
        {"id": "a", "values": a[:35], "timestamps": [iso(k) for k in range(35)]},
        {"id": "b", "values": b, "timestamps": [iso(k, timedelta(days=1)) for k in range(40)]},
        {"id": "a", "values": [a[35], None], "timestamps": [iso(37), iso(38)]},  # gap, null
    ], "horizon": 4}
    r = client.post("/series/append", json=ok)
    assert r.status_code == 200, r.text
    items = r.json()["series"]
    assert [(i["id"], i["length"]) for i in items] == [("a", 35), ("b", 40), ("a", 39)]
    assert items[0]["forecast"]["timestamps"] == [iso(k) for k in range(35, 39)]
    assert items[1]["forecast"]["timestamps"] == [iso(k, timedelta(days=1)) for k in range(40, 44)]
    assert items[2]["forecast"]["timestamps"] == [iso(k) for k in range(39, 43)]
    # Bulk ops are computed batched (CPU matrix products round with the batch size): compare
    # with single appends of the filled values to 1e-5.
    assert post(client, "a-ref", a[:35]).status_code == 200
    assert post(client, "a-ref", [a[34], a[34], a[35], a[35]]).status_code == 200
    for other in (forecast(client, "a", 4)["mean"], forecast(client, "a-ref", 4)["mean"]):
        assert rel_err(torch.tensor(other), torch.tensor(items[2]["forecast"]["mean"])) <= 1e-5
    # Checked whole: one bad item refuses all, naming it; nothing changes.
    before = {s: client.get(f"/series/{s}").json() for s in ("a", "b")}
    bad = {"series": [{"id": "b", "values": [1.0], "timestamps": [iso(40, timedelta(days=1))]},
                      {"id": "a", "values": [1.0], "timestamps": [iso(38)]}]}
    assert_error(client.post("/series/append", json=bad), 409, "series[1].timestamps[0]")
    bad["series"][1] = {"id": "c", "values": [None]}
    r = client.post("/series/append", json=bad)
    assert_error(r, 422, "series[1].values[0]")  # the message says which series, too
    assert r.json()["detail"].startswith("series[1] ('c'): values[0] is null"), r.text
    bad["series"][1] = {"id": "a", "values": [1.0, 2.0], "timestamps": [iso(39), "soon"]}
    assert_error(client.post("/series/append", json=bad), 422, "series[1].timestamps[1]")
    gaps = {"series": [{"id": "a", "values": [1.0], "timestamps": [iso(39 + 30)]},
                       {"id": "b", "values": [1.0], "timestamps": [iso(40 + 30, timedelta(days=1))]}]}
    assert_error(client.post("/series/append", json=gaps), 422, "series[1].timestamps[0]")  # 60 > 50
    assert {s: client.get(f"/series/{s}").json() for s in ("a", "b")} == before
    assert_error(client.get("/series/c"), 404, "id")


def test_max_gap_points_lowers_the_limit_per_request_in_every_form(client):
    """`max_gap_points` 0 refuses a gap (in the request, or after the series' last point)
    instead of filling it, naming the timestamp after it, in all three forms, and nothing is
    appended; 1 allows a gap of one point; above the server's --max-gap-points (50) the
    server's limit holds; a bad value is a 422 naming the field. Without it, gaps are filled."""
    assert post(client, "g", [1.0] * 40, [iso(k) for k in range(40)]).status_code == 200
    hours = {"series": [{"id": "g", "values": [5.0], "timestamps": [iso(42)]}]}
    bodies = [  # (one point after a gap of two, in each form)
        ("/series/g/append", {"values": [5.0], "timestamps": [iso(42)]}, "timestamps[0]"),
        ("/series/append", hours, "series[0].timestamps[0]"),
        ("/series/append", {"ids": ["g"], "offsets": [0], "values": [5.0], "timestamps": [iso(42)]},
         "timestamps[0]"),
    ]
    for path, body, field in bodies:
        for limit in (0, 1):
            r = client.post(path, json={**body, "max_gap_points": limit})
            assert_error(r, 422, field)
            assert "max_gap_points" in r.json()["detail"] and "null" in r.json()["detail"]
        assert client.get("/series/g").json()["length"] == 40
        for bad in (-1, 1.5, "0", True):
            r = client.post(path, json={**body, "max_gap_points": bad})
            assert r.status_code == 422 and r.json()["field"].endswith("max_gap_points"), r.text
    r = client.post("/series/g/append", json={"values": [6.0, 7.0], "timestamps": [iso(40), iso(42)],
                                              "max_gap_points": 1})  # a gap of one inside
    assert r.status_code == 200 and r.json()["length"] == 43, r.text
    far = {"values": [1.0], "timestamps": [iso(42 + 60)], "max_gap_points": 10**6}
    assert_error(client.post("/series/g/append", json=far), 422, "timestamps[0]")  # 59 > 50
    r = client.post("/series/append", json={"ids": ["g"], "offsets": [0], "values": [8.0],
                                            "timestamps": [iso(45)]})  # (the default: filled)
    assert r.status_code == 200 and r.json()["lengths"] == [46], r.text


def test_business_day_series_over_http_in_both_bulk_forms(client):
    """A series of weekdays created with freq '1b' keeps one point per row; the same rows as a
    daily series get their weekends filled. Forecast timestamps skip weekends; GET names the
    frequency; the columnar form takes it too."""
    start = datetime(2024, 5, 6, 16, tzinfo=UTC)  # a Monday
    weekdays = [start + timedelta(days=d) for d in range(61) if (start + timedelta(days=d)).weekday() < 5]
    ts = [t.isoformat().replace("+00:00", "Z") for t in weekdays]
    x = series(len(ts), 9)
    r = post(client, "close", x, ts, freq="1b", horizon=3)
    assert r.status_code == 200, r.text
    assert r.json()["length"] == len(ts)
    fc = r.json()["forecast"]["timestamps"]
    assert [datetime.fromisoformat(t).weekday() for t in fc] == [0, 1, 2]  # the last row a Friday
    assert weekdays[-1].weekday() == 4
    assert client.get("/series/close").json()["freq"] == "1b"
    assert post(client, "daily", x, ts, freq="1d").json()["length"] == len(ts) + 2 * 8  # weekends
    assert_error(post(client, "close", [1.0], ["2024-07-06T16:00:00Z"]), 422, "timestamps[0]")
    r = client.post("/series/append", json={"ids": ["c1", "c2"], "offsets": [0, len(ts)],
                                            "values": x + x, "timestamps": ts + ts, "freq": "1b",
                                            "horizon": 2})
    assert r.status_code == 200, r.text
    assert r.json()["lengths"] == [len(ts), len(ts)]
    assert client.get("/series/c2").json()["freq"] == "1b"
    assert_error(post(client, "bad", [1.0], ["2024-07-08T16:00:00Z"], freq="2b"), 422, "freq")
    # A new series' one timestamp, nothing to infer its step from: named as the run's first
    # point of the flat array, the message saying "timestamps" (a review found "ids[1]" in it)
    r = client.post("/series/append", json={"ids": ["one3", "one4"], "offsets": [0, 2],
                                            "values": [1, 2, 3], "timestamps": ts[:2] + ts[:1]})
    assert_error(r, 422, "timestamps[2]")
    assert "first append's timestamps" in r.json()["detail"]


def test_bulk_append_without_timestamps_keeps_each_series_timeline(client):
    """The bulk route plans plain appends without the timeline's rules; a series created with
    timestamps (before, or earlier in the same request) must still get the next grid points when
    an item leaves them out."""
    t, p, day = series(40, 9), series(40, 10), timedelta(days=1)
    assert post(client, "t", t[:36], [iso(k) for k in range(36)]).status_code == 200
    assert post(client, "p", p[:36]).status_code == 200
    body = {"series": [{"id": "t", "values": t[36:38]},  # no timestamps: hours 36 and 37
                       {"id": "p", "values": p[36:37]},
                       {"id": "n", "values": p[:33], "timestamps": [iso(k, day) for k in range(33)]},
                       {"id": "n", "values": p[33:35]}], "horizon": 2}  # days 33, 34
    r = client.post("/series/append", json=body)
    assert r.status_code == 200, r.text
    items = r.json()["series"]
    assert [(i["id"], i["length"]) for i in items] == [("t", 38), ("p", 37), ("n", 33), ("n", 35)]
    assert items[0]["forecast"]["timestamps"] == [iso(38), iso(39)]
    assert "timestamps" not in items[1]["forecast"]
    assert items[3]["forecast"]["timestamps"] == [iso(35, day), iso(36, day)]
    info = client.get("/series/t").json()
    assert (info["freq"], info["last_timestamp"]) == (3600, iso(37))
    info = client.get("/series/n").json()
    assert (info["freq"], info["last_timestamp"]) == (86400, iso(34, day))
    assert "freq" not in client.get("/series/p").json()
    assert post(client, "n-ref", p[:35]).status_code == 200
    assert rel_err(torch.tensor(forecast(client, "n", 4)["mean"]),
                   torch.tensor(forecast(client, "n-ref", 4)["mean"])) <= 1e-5


def test_stateless_forecast_with_timestamps_and_nulls(client):
    x = series(42, 8)
    ts = [iso(k, timedelta(minutes=5)) for k in range(42) if k not in (7, 8)]
    with_gaps = x[:7] + x[9:42]
    body = {"series": [{"id": "t", "values": with_gaps[:5] + [None] + with_gaps[6:],
                        "timestamps": list(ts)},
                       {"id": "u", "values": x}], "horizon": 3}
    r = client.post("/forecast", json=body)
    assert r.status_code == 200, r.text
    t, u = r.json()["forecasts"]
    assert t["timestamps"] == [iso(k, timedelta(minutes=5)) for k in range(42, 45)]
    assert "timestamps" not in u
    filled = with_gaps[:5] + [with_gaps[4]] + with_gaps[6:7] + [with_gaps[6]] * 2 + with_gaps[7:]
    ref = client.post("/forecast", json={"series": [{"id": "r", "values": filled},
                                                    {"id": "u", "values": x}], "horizon": 3})
    assert ref.json()["forecasts"][0]["mean"] == t["mean"]  # the same batch: bit for bit
    body["series"][0]["timestamps"][3] = body["series"][0]["timestamps"][2]
    assert_error(client.post("/forecast", json=body), 422, "series[0].timestamps[3]")
    body["series"][0]["timestamps"][3] = ts[3]
    body["series"][0]["timestamps"][-1] = sub_second_offset(ts[-1], -1)
    assert_error(client.post("/forecast", json=body), 422, "series[0].timestamps[39]")
    assert_error(client.post("/forecast", json={"series": [{"id": "v", "values": [None] * 40}]}),
                 422, "series[0].values[0]")


def test_concurrent_appends_to_one_series_keep_the_grid(loaded):
    """Appends without timestamps take the next grid points; racing ones must not both take the
    same: the HTTP layer serialises requests on a series."""
    with make_client(loaded, replace(LIMITS, batch_window_ms=2.0)) as c:
        assert post(c, "busy", [1.0], [iso(0)], freq=60).status_code == 200
        errors = []

        def work(seed: int) -> None:
            for k in range(6):
                r = post(c, "busy", [float(seed), None, float(k)])
                if r.status_code != 200:
                    errors.append(r.text)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        info = c.get("/series/busy").json()
        assert info["length"] == 1 + 4 * 6 * 3
        assert info["last_timestamp"] == iso(72, timedelta(minutes=1))
        assert len(c.app.state.series_locks) == 0


def test_max_gap_points_flag():
    assert parse([]).max_gap_points == 10_000
    assert parse(["--max-gap-points", "0"]).max_gap_points == 0
    with pytest.raises(SystemExit):
        parse(["--max-gap-points", "-1"])


# ---- the log and snapshots -------------------------------------------------------------------

def test_metadata_is_logged_and_snapshotted(loaded, tmp_path):
    model, manifest = loaded
    engine = Engine(model, manifest, 10, backend="torch")
    store = Store(tmp_path, engine, snapshot_interval_s=0)
    store.open()
    m1 = {"freq": 60, "t": 10**15, "off": 3600, "last": 2.5}
    engine.append("a", [1.0, 2.5], None, meta=m1)
    engine.append("b", [1.0], None, meta={"last": 1.0})
    m3 = {"freq": "1b", "t": 10**15, "off": -14400, "last": 1.0}  # business days
    engine.append("c", [1.0], None, meta=m3)
    engine.append("gone", [1.0], None, meta={"last": 1.0})
    engine.delete("gone")
    store.snapshot()
    m2 = {**m1, "t": 10**15 + 60 * 10**6, "last": 3.0}
    engine.append("a", [3.0], None, meta=m2)
    store.close(snapshot=False)  # the snapshot, and one record after it

    again = Engine(model, manifest, 10, backend="torch")
    stats = Store(tmp_path, again, snapshot_interval_s=0).open()
    assert stats["restored"] == 3 and stats["replayed"] == 1
    assert again.meta == {"a": m2, "b": {"last": 1.0}, "c": m3}
    snap = next(tmp_path.glob("snapshot-*.safetensors"))
    from safetensors import safe_open
    with safe_open(str(snap), "pt") as f:
        metadata = f.metadata()
    assert metadata["format_version"] == "2"
    assert dict(zip(json.loads(metadata["ids"]), json.loads(metadata["meta"]))) == \
        {"a": m1, "b": {"last": 1.0}, "c": m3}


def test_version_1_log_segments_are_still_read(loaded, tmp_path):
    """Segments written before the metadata existed replay; the series have none."""
    header = wal_format.HEADER.pack(wal_format.MAGIC, 1, 1)
    data = header + struct.pack("<I", zlib.crc32(header))
    for seq, (sid, values) in enumerate([("a", [1.0, 2.0]), ("a", [3.0])], start=1):
        sid_b = sid.encode()
        payload = (wal_format.PAYLOAD.pack(wal_format.KIND_APPEND, seq, len(sid_b)) + sid_b
                   + wal_format.APPEND.pack(2 if seq == 1 else 3, len(values))
                   + struct.pack(f"<{len(values)}d", *values))
        head = struct.pack("<I", len(payload))
        data += head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload
    (tmp_path / "wal-0000000000000001.log").write_bytes(data)
    model, manifest = loaded
    engine = Engine(model, manifest, 10, backend="torch")
    store = Store(tmp_path, engine, snapshot_interval_s=0)
    assert store.open()["replayed"] == 2
    assert engine.describe("a")["length"] == 3 and engine.meta == {}
    with TestClient(create_app(Settings(), engine)) as c:
        # No metadata: not a series with timestamps, and no last value to carry forward.
        assert_error(post(c, "a", [1.0], [iso(0)]), 409, "timestamps")
        assert_error(post(c, "a", [None]), 422, "values[0]")
        assert post(c, "a", [4.0, None]).json()["length"] == 5
        assert engine.meta["a"] == {"last": 4.0}
    store.close(snapshot=False)


# ---- a real server, killed -------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_keeps_the_timeline(tmp_path):
    """Timestamps, a gap and nulls; kill -9; the log alone restores the timeline and the last value
    (a gap right after the restart takes it); a clean stop; the snapshot alone restores them."""
    x = series(50, 9)
    ks = [k for k in range(40) if k != 20]
    flags = ("--data-dir", str(tmp_path), "--snapshot-interval-s", "0")
    filled = [x[k] if k != 20 else x[19] for k in range(40)]  # the gap at 20 takes x[19]
    appends = [  # (the body for the series with timestamps, the same points filled by hand)
        ({"values": [x[k] for k in ks], "timestamps": [iso(k) for k in ks]}, filled),
        ({"values": [None]}, [x[39]]),  # the next grid point, iso(40)
        # after the first restart: 41 is a gap, filled with the logged last value
        ({"values": [x[42]], "timestamps": [iso(42)]}, [x[39], x[42]]),
        # after the second: 43 a gap, 44 a null, 45 a gap, all x[42] (from the snapshot)
        ({"values": [None, x[46]], "timestamps": [iso(44), iso(46)]}, [x[42]] * 3 + [x[46]]),
    ]

    def apply(c, k: int, horizon: int = 4) -> dict:
        body, by_hand = appends[k]
        r = c.post("/series/ts/append", json={**body, "horizon": horizon})
        assert r.status_code == 200, r.text
        ref = c.post("/series/ref/append", json={"values": by_hand, "horizon": horizon})
        assert ref.status_code == 200, ref.text
        assert ref.json()["length"] == r.json()["length"]
        assert ref.json()["forecast"]["mean"] == r.json()["forecast"]["mean"]  # bit for bit
        return r.json()

    server = Server(*flags)
    try:
        apply(server.client, 0)
        out = apply(server.client, 1)
        assert out["length"] == 41
        assert out["forecast"]["timestamps"] == [iso(k) for k in range(41, 45)]
        before = server.client.get("/series/ts/forecast", params={"horizon": 4}).json()
        assert before["mean"] == out["forecast"]["mean"]
    finally:
        server.proc.kill()
        server.proc.wait(10)
    assert not list(tmp_path.glob("snapshot-*"))

    server = Server(*flags)  # recovered from the log alone
    try:
        c = server.client
        assert c.get("/series/ts/forecast", params={"horizon": 4}).json() == before
        info = c.get("/series/ts").json()
        assert (info["length"], info["freq"], info["last_timestamp"]) == (41, 3600, iso(40))
        r = c.post("/series/ts/append", json={"values": [1.0], "timestamps": [iso(40)]})
        assert r.status_code == 409 and r.json()["field"] == "timestamps[0]"  # a duplicate
        out = apply(c, 2)
        assert out["length"] == 43
        assert out["forecast"]["timestamps"] == [iso(k) for k in range(43, 47)]
    finally:
        server.stop()  # SIGTERM: a clean shutdown writes a snapshot
    assert list(tmp_path.glob("snapshot-*.safetensors"))

    server = Server(*flags)  # recovered from the snapshot alone
    try:
        c = server.client
        assert c.get("/series/ts").json()["last_timestamp"] == iso(42)
        out = apply(c, 3, horizon=3)
        assert out["length"] == 47
        assert out["forecast"]["timestamps"] == [iso(k) for k in (47, 48, 49)]
        assert c.get("/series/ts").json()["last_timestamp"] == iso(46)
    finally:
        server.proc.kill()
        server.proc.wait(10)

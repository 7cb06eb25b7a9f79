"""The Python client (client/rimer_client) against a real server on loopback (conftest's
`default_server`), and its retry rules against scripted transports."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import numpy as np
import pandas as pd
import pytest
from rimer_client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
    Unavailable,
    ValidationError,
)
from rimer_client.plotting import plot

from tests.conftest import ROOT

REFERENCE_DATA = ROOT.parent / "shared" / "data"
LENGTHS = {"a": 40, "b": 64, "c": 100}  # different lengths, all at least one patch (32)


def wave(n: int, phase: float = 0.0) -> np.ndarray:
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * np.pi * t / 24 + phase) + 0.02 * t


def long_frame(freq: str = "h", lengths=LENGTHS) -> pd.DataFrame:
    parts = []
    for k, (uid, n) in enumerate(lengths.items()):
        ds = pd.date_range(pd.Timestamp("2024-01-01") + pd.Timedelta(days=k), periods=n, freq=freq)
        parts.append(pd.DataFrame({"unique_id": uid, "ds": ds, "y": wave(n, k)}))
    return pd.concat(parts, ignore_index=True).sample(frac=1, random_state=0)  # any row order


class Counting(httpx.BaseTransport):
    """Passes requests to a real transport and keeps them."""

    def __init__(self):
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request):
        self.requests.append(request)
        return self.inner.handle_request(request)

    def paths(self, method: str = "POST") -> list[str]:
        return [r.url.path for r in self.requests if r.method == method]


class LoseFirst(Counting):
    """The first request to `path` fails with a reset connection, after reaching the server
    (`forward=True`: its answer is lost) or before it."""

    def __init__(self, path: str, forward: bool = True):
        super().__init__()
        self.path, self.forward, self.dropped = path, forward, False

    def handle_request(self, request):
        if request.url.path == self.path and not self.dropped:
            self.dropped = True
            self.requests.append(request)
            if self.forward:
                self.inner.handle_request(request).close()
            raise httpx.ReadError("connection reset by peer", request=request)
        return super().handle_request(request)


def scripted(*answers):
    """A MockTransport answering in turn: an int status (JSON error body), a (status, body)
    pair, or an exception class to raise; its `seen` list counts the tries."""
    answers = list(answers)
    seen = []

    def handler(request):
        seen.append(request)
        a = answers.pop(0)
        if isinstance(a, type) and issubclass(a, Exception):
            raise a("scripted", request=request)
        status, body = a if isinstance(a, tuple) else (a, {"detail": f"status {a}", "field": None})
        headers = {"retry-after": "0"} if status == 429 else None
        return httpx.Response(status, json=body, headers=headers)

    transport = httpx.MockTransport(handler)
    transport.seen = seen
    return transport


def mock_client(transport, **kwargs) -> Client:
    return Client("http://rimer.test", transport=transport, backoff=0.0, **kwargs)


OK_FORECAST = (200, {"model": "m", "horizon": 2, "forecasts": [{"id": "a", "mean": [1.0, 2.0]}]})
OK_APPEND = (200, {"ids": ["a"], "lengths": [3]})  # (the client sends the columnar form)
SMALL = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2024-01-01", periods=40, freq="h"),
                      "y": wave(40)})
SMALL_INT = SMALL.assign(ds=np.arange(40))


# ---- forecasts against the real server -------------------------------------------------------

def test_forecast_shape_future_ds_intervals_and_the_raw_api(default_server):
    df = long_frame()
    with Client(default_server.url) as rimer:
        fc = rimer.forecast(df, 6, level=[95, 80], quantiles=[0.1, 0.9])
    assert list(fc.columns) == ["unique_id", "ds", "Rimer", "Rimer-lo-95", "Rimer-lo-80",
                                "Rimer-hi-80", "Rimer-hi-95", "Rimer-q-0.1", "Rimer-q-0.9"]
    assert len(fc) == 3 * 6 and list(pd.unique(fc["unique_id"])) == ["a", "b", "c"]
    for uid, g in fc.groupby("unique_id"):
        last = df.loc[df.unique_id == uid, "ds"].max()
        assert list(g["ds"]) == list(pd.date_range(last, periods=7, freq="h")[1:])
    assert (fc["Rimer-lo-95"] < fc["Rimer-lo-80"]).all()
    assert (fc["Rimer-lo-80"] < fc["Rimer"]).all() and (fc["Rimer"] < fc["Rimer-hi-80"]).all()
    assert (fc["Rimer-hi-80"] < fc["Rimer-hi-95"]).all()
    assert (fc["Rimer-q-0.1"] < fc["Rimer-q-0.9"]).all()

    body = {"series": [{"id": uid, "values": wave(n, k).tolist()}
                       for k, (uid, n) in enumerate(LENGTHS.items())],
            "horizon": 6, "level": [80, 95], "quantiles": [0.1, 0.9]}
    raw = default_server.client.post("/forecast", json=body).json()["forecasts"]
    for item in raw:
        got = fc[fc.unique_id == item["id"]]
        np.testing.assert_allclose(got["Rimer"], item["mean"], rtol=1e-5)
        for interval in item["intervals"]:
            tag = f"{interval['level']:g}"
            np.testing.assert_allclose(got[f"Rimer-lo-{tag}"], interval["lo"], rtol=1e-5)
            np.testing.assert_allclose(got[f"Rimer-hi-{tag}"], interval["hi"], rtol=1e-5)
        np.testing.assert_allclose(got["Rimer-q-0.9"], item["quantiles"][1]["values"], rtol=1e-5)


def test_forecast_of_etth1s_seven_columns_in_long_format(default_server):
    """The issue's check: ETTh1's seven columns as a long frame, `level=[80]`, Nixtla's columns."""
    wide = pd.read_csv(REFERENCE_DATA / "ETTh1.csv", parse_dates=["date"]).iloc[:1000]
    df = wide.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    assert df.unique_id.nunique() == 7
    with Client(default_server.url) as rimer:
        fc = rimer.forecast(df, 24, level=[80])
    assert list(fc.columns) == ["unique_id", "ds", "Rimer", "Rimer-lo-80", "Rimer-hi-80"]
    assert sorted(pd.unique(fc.unique_id)) == sorted(wide.columns[1:]) and len(fc) == 7 * 24
    assert (fc.groupby("unique_id").ds.min() == wide.date.max() + pd.Timedelta(hours=1)).all()
    assert (fc["Rimer-lo-80"] < fc["Rimer"]).all() and (fc["Rimer"] < fc["Rimer-hi-80"]).all()
    # a forecast of OT near where ETTh1's OT is (scaled errors are in the benchmarks)
    ot = fc[fc.unique_id == "OT"]["Rimer"]
    assert abs(ot.mean() - wide.OT.iloc[-48:].mean()) < 3 * wide.OT.iloc[-200:].std()


def test_forecast_continues_integer_and_calendar_times(default_server):
    with Client(default_server.url) as rimer:
        ints = long_frame().assign(ds=lambda d: d.groupby("unique_id").cumcount() * 5 + 100)
        fc = rimer.forecast(ints, 3)
        assert fc["ds"].dtype.kind == "i"
        for uid, n in LENGTHS.items():
            assert list(fc.loc[fc.unique_id == uid, "ds"]) == [100 + 5 * (n - 1 + k) for k in (1, 2, 3)]
        monthly = long_frame("ME", {"m": 36})
        fc = rimer.forecast(monthly, 2)
        assert list(fc["ds"]) == [pd.Timestamp("2027-01-31"), pd.Timestamp("2027-02-28")]
        # days in a time zone, across a daylight-saving change (a 23-hour day): still daily
        days = pd.date_range("2024-03-01", periods=40, freq="D", tz="Europe/Paris")
        fc = rimer.forecast(pd.DataFrame({"unique_id": "d", "ds": days, "y": wave(40)}), 2)
        assert list(fc["ds"]) == list(pd.date_range("2024-04-10", periods=2, freq="D",
                                                    tz="Europe/Paris"))
        # a row missing from the grid: refused, or sent as a missing point with missing='ffill'
        gap = long_frame().drop(index=5)
        with pytest.raises(ValueError, match="has no row for"):
            rimer.forecast(gap, 2)
        assert len(rimer.forecast(gap, 2, missing="ffill")) == 6


def split_sizes(transport: Counting) -> list[int]:
    assert transport.paths() == ["/forecast"] * len(transport.requests)
    return [len(json.loads(r.content)["series"]) for r in transport.requests]


def test_batches_respect_the_limits_and_agree_with_one_request(default_server):
    df = long_frame(lengths={f"s{i}": 40 + 7 * i for i in range(5)})
    one, split, by_points = Counting(), Counting(), Counting()
    with Client(default_server.url, transport=one) as rimer:
        whole = rimer.forecast(df, 4, level=[80])
    with Client(default_server.url, transport=split, max_series_per_request=2) as rimer:
        parts = rimer.forecast(df, 4, level=[80])
    with Client(default_server.url, transport=by_points, max_points_per_request=100) as rimer:
        pointwise = rimer.forecast(df, 4, level=[80], progress=True)
    assert one.paths() == ["/forecast"]
    assert split_sizes(split) == [2, 2, 1]  # 5 series, 2 per request
    assert split_sizes(by_points) == [2, 1, 1, 1]  # 40 + 47 points, then 54, 61, 68: one each
    pd.testing.assert_frame_equal(whole, parts, rtol=1e-5)
    pd.testing.assert_frame_equal(whole, pointwise, rtol=1e-5)


def test_a_413_splits_the_batch():
    seen = []

    def handler(request):
        body = request.read()
        n = body.count(b'"id"')
        seen.append(n)
        if n > 1:
            return httpx.Response(413, json={"detail": "too many series", "field": "series"})
        uid = body.split(b'"id":"')[1].split(b'"')[0].decode()
        return httpx.Response(200, json={"model": "m", "horizon": 2,
                                         "forecasts": [{"id": uid, "mean": [1.0, 2.0]}]})

    df = long_frame(lengths={"a": 40, "b": 40, "c": 40})
    fc = mock_client(httpx.MockTransport(handler)).forecast(df, 2)
    assert seen == [3, 1, 2, 1, 1] and len(fc) == 6


# ---- errors ----------------------------------------------------------------------------------

def test_server_errors_are_typed_and_name_the_field_and_series(default_server):
    df = long_frame()
    df.loc[(df.unique_id == "b") & (df.ds == df[df.unique_id == "b"].ds.min() + pd.Timedelta("10h")),
           "y"] = np.nan
    with Client(default_server.url) as rimer:
        with pytest.raises(ValidationError) as err:
            rimer.forecast(df, 4)
        assert err.value.status == 422 and err.value.field == "series[1].values[10]"
        assert err.value.series_id == "b" and "finite" in err.value.detail
        with pytest.raises(ValidationError) as err:  # in its own request, the same series named
            Client(default_server.url, max_series_per_request=1).forecast(df, 4)
        assert err.value.field == "series[0].values[10]" and err.value.series_id == "b"
        assert len(rimer.forecast(df, 4, missing="ffill")) == 12  # a missing point, filled
        short = long_frame(lengths={"x": 40, "tiny": 10})
        with pytest.raises(ValidationError) as err:
            rimer.forecast(short, 4)
        assert err.value.series_id == "tiny" and "32 points" in err.value.detail
        with pytest.raises(NotFound) as err:
            rimer.describe(nope := f"nope-{uuid.uuid4().hex}")
        assert err.value.status == 404 and err.value.field == "id"
        assert err.value.series_id == nope and repr(nope) in str(err.value)  # (it was None)


# ---- retries ---------------------------------------------------------------------------------

def test_503_and_429_are_retried_other_4xx_are_not():
    t = scripted(503, (429, {"detail": "slow down"}), OK_FORECAST)
    fc = mock_client(t).forecast(SMALL, 2)
    assert len(t.seen) == 3 and list(fc["Rimer"]) == [1.0, 2.0]

    t = scripted((422, {"detail": "bad", "field": "series[0].values[3]"}), OK_FORECAST)
    with pytest.raises(ValidationError) as err:
        mock_client(t).forecast(SMALL, 2)
    assert len(t.seen) == 1 and err.value.field == "series[0].values[3]"
    assert err.value.series_id == "a"

    t = scripted(503, 503, 503, 503, OK_FORECAST)  # retries=3: four tries, then the error
    with pytest.raises(Unavailable):
        mock_client(t).forecast(SMALL, 2)
    assert len(t.seen) == 4

    t = scripted(httpx.ConnectError, httpx.RemoteProtocolError, OK_FORECAST)  # stateless: resent
    assert len(mock_client(t).forecast(SMALL, 2)) == 2 and len(t.seen) == 3

    t = scripted(httpx.ReadTimeout, OK_FORECAST)  # slow, not gone: not sent again
    with pytest.raises(ConnectionFailed, match="still be working"):
        mock_client(t).forecast(SMALL, 2)
    assert len(t.seen) == 1


def test_appends_without_timestamps_are_retried_only_before_sending():
    t = scripted(httpx.ConnectError, OK_APPEND)  # refused: never sent, safe to send again
    out = mock_client(t).append(SMALL_INT.head(3))
    assert len(t.seen) == 2 and out.to_dict("records") == [{"unique_id": "a", "length": 3}]
    for failure in (httpx.ReadError, httpx.RemoteProtocolError, 503):  # it may have landed
        t = scripted(failure, OK_APPEND)
        with pytest.raises((ConnectionFailed, Unavailable)):
            mock_client(t).append(SMALL_INT.head(3))
        assert len(t.seen) == 1
    t = scripted(httpx.ReadError, OK_APPEND)  # with timestamps: safe to resend
    assert len(mock_client(t).append(SMALL.head(3))) == 1 and len(t.seen) == 2


def test_append_refuses_timestamps_a_stream_would_take_wrongly_before_sending():
    """Local days across a daylight-saving change (a 23-hour step), months, a frame mixing
    business days with another step and, unless missing='ffill', rows missing from the frame's
    grid (business days' too) are ValueErrors naming what to do, and nothing is sent; business
    days are sent with freq '1b' (else the server would infer days and fill every weekend);
    without timestamps, or with 'ffill' for the gap, the other frames are sent."""
    days = pd.bdate_range("2024-01-01", periods=40)
    business = pd.DataFrame({"unique_id": "b", "ds": days, "y": wave(40)})
    berlin = business.assign(ds=pd.date_range("2024-03-20", periods=40, freq="D", tz="Europe/Berlin"))
    gap = SMALL.drop(index=[5, 6, 7])
    weeks = pd.DataFrame({"unique_id": "w", "ds": pd.date_range("2024-03-03", periods=40, freq="W-SUN",
                                                              tz="Europe/Berlin"), "y": wave(40)})
    months = pd.DataFrame({"unique_id": "m", "ds": pd.date_range("2020-01-01", periods=40, freq="MS"),
                           "y": wave(40)})
    mixed = pd.concat([business, SMALL.assign(unique_id="h")], ignore_index=True)
    for frame, says in ((business.drop(index=[7]), "1 missing at step B"), (berlin, "daylight-saving"),
                        (gap, "3 missing"), (weeks, "daylight-saving"),
                        (berlin.iloc[11:13], "daylight-saving"), (months, "months differ"),
                        (mixed, "separate calls")):
        t = scripted(OK_APPEND)
        with pytest.raises(ValueError, match=says):
            mock_client(t).append(frame)
        assert t.seen == []
    t = scripted(*[OK_APPEND] * 6)
    client = mock_client(t)
    client.append(business)
    client.append(business.tail(1), freq="B")
    client.append(business.iloc[4:6])  # a Friday and the Monday after: business days too
    client.append(business, timestamps=False)
    client.append(berlin.assign(ds=berlin.ds.dt.tz_localize(None)))
    client.append(gap, missing="ffill")
    assert len(t.seen) == 6
    sent = [json.loads(x.content) for x in t.seen]
    assert sent[0]["freq"] == "1b" and len(sent[0]["timestamps"]) == 40
    assert sent[1]["freq"] == "1b" and len(sent[1]["timestamps"]) == 1
    assert sent[2]["freq"] == "1b" and len(sent[2]["timestamps"]) == 2
    assert "freq" not in sent[3] and "timestamps" not in sent[3]
    assert len(sent[5]["timestamps"]) == 37  # (the server fills the 3)
    # a gap after the series' last point: refused by the server, but with 'ffill'
    assert [b.get("max_gap_points") for b in sent] == [0, 0, 0, None, 0, None]
    with pytest.raises(ValueError, match="missing must be"):
        mock_client(scripted(OK_APPEND)).append(SMALL, missing="bogus")
    # hours (and quarter hours) in a zone across either change are fixed steps in absolute time:
    # sent, in UTC
    for start, freq, n in (("2024-03-30", "h", 60), ("2024-10-26", "15min", 300)):
        local = pd.date_range(start, periods=n, freq=freq, tz="Europe/Berlin")
        t = scripted(OK_APPEND)
        mock_client(t).append(pd.DataFrame({"unique_id": "tz", "ds": local, "y": wave(n)}))
        stamps = json.loads(t.seen[0].content)["timestamps"]
        assert len(stamps) == n and pd.DatetimeIndex(stamps).equals(local.tz_convert("UTC"))


def test_levels_and_quantiles_must_be_numbers_not_strings():
    """`level="95"` was split into the levels 9 and 5 and answered with 9% and 5% intervals:
    a string (or a boolean, or a list holding one) is a TypeError naming the argument, and
    nothing is sent; numbers, NumPy numbers and lists of them are taken."""
    for kwargs, says in (({"level": "95"}, "level must be a number"),
                         ({"level": ["80", 95]}, "level must be"),
                         ({"level": True}, "level must be"),
                         ({"quantiles": "0.5"}, "quantiles must be"),
                         ({"quantiles": [0.1, None]}, "quantiles must be")):
        t = scripted(OK_FORECAST)
        with pytest.raises(TypeError, match=says):
            mock_client(t).forecast(SMALL, 2, **kwargs)
        assert t.seen == []
        t = scripted(OK_APPEND)
        with pytest.raises(TypeError, match=says):
            mock_client(t).append(SMALL, h=2, **kwargs)
        with pytest.raises(TypeError, match=says):
            mock_client(t).forecast_series(["a"], 2, **kwargs)
        assert t.seen == []
    t = scripted((200, {"model": "m", "horizon": 2, "forecasts": [
        {"id": "a", "mean": [1.0, 2.0], "intervals": [
            {"level": 95.0, "lo": [0.0, 1.0], "hi": [2.0, 3.0]}]}]}))
    fc = mock_client(t).forecast(SMALL, 2, level=np.int64(95))
    assert json.loads(t.seen[0].content)["level"] == [95.0]
    assert list(fc.columns[-2:]) == ["Rimer-lo-95", "Rimer-hi-95"]


def test_the_target_must_hold_numbers_not_strings_or_booleans():
    """y of strings ('1.5') or booleans was converted without a word (the server guesses no
    types): a ValueError naming the column and the first such value, nothing sent; numbers of
    any numeric dtype, and an object column of numbers and missing values, are taken."""
    base = SMALL.head(3)
    for y, says in ((["1.5", "2", "3"], "holds '1.5'"), ([True, False, True], "not bool"),
                    ([1.0, "x", None], "holds 'x'"),
                    (pd.Series(["1", "2", "3"], dtype="string"), "not string")):
        t = scripted(OK_APPEND, OK_FORECAST)
        with pytest.raises(ValueError, match=f"'y' (must be numeric, )?{says}"):
            mock_client(t).append(base.assign(y=y))
        with pytest.raises(ValueError, match="'y'"):
            mock_client(t).forecast(base.assign(y=y), 2)
        assert t.seen == []
    t = scripted(OK_APPEND, OK_APPEND)
    mock_client(t).append(base.assign(y=pd.Series([1.0, None, 3], dtype=object)), missing="ffill")
    mock_client(t).append(base.assign(y=np.array([1, 2, 3], dtype=np.int32)))
    assert [json.loads(r.content)["values"] for r in t.seen] == [[1.0, None, 3.0], [1.0, 2.0, 3.0]]


def test_progress_bars_only_on_a_terminal(capsys):
    """A review: `rimer append` piped into a log wrote '0%' bars for a quick success."""
    from rimer_client import _core

    with _core.progress_bar(True, 10, "append") as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""  # (pytest's captured stderr is no terminal)
    assert _core.progress_bar(False, 10, "append").disable


def test_async_client_shares_the_rules():
    t = scripted(503, OK_FORECAST)

    async def go():
        async with AsyncClient("http://rimer.test", transport=t, backoff=0.0) as rimer:
            return await rimer.forecast(SMALL, 2)

    assert list(asyncio.run(go())["Rimer"]) == [1.0, 2.0] and len(t.seen) == 2

    async def no_retry():
        t = scripted((422, {"detail": "bad", "field": "horizon"}))
        async with AsyncClient("http://rimer.test", transport=t, backoff=0.0) as rimer:
            with pytest.raises(ValidationError):
                await rimer.forecast(SMALL, 2)
        return len(t.seen)

    assert asyncio.run(no_retry()) == 1


# ---- streaming series against the real server ------------------------------------------------

def stream(prefix: str, n: int, start: str = "2024-03-01") -> pd.DataFrame:
    ds = pd.date_range(start, periods=n, freq="15min", tz="UTC")
    return pd.concat([pd.DataFrame({"unique_id": f"{prefix}-{k}", "ds": ds, "y": wave(n, k)})
                      for k in range(2)], ignore_index=True)


def test_append_resent_after_it_landed_counts_once(default_server):
    prefix = f"cc-{uuid.uuid4().hex[:8]}"
    rows = stream(prefix, 48)
    cut = rows.ds.min() + pd.Timedelta("10h")  # 40 points of 15 minutes, then 8 more
    first, then = rows[rows.ds < cut], rows[rows.ds >= cut]
    with Client(default_server.url) as rimer:
        assert list(rimer.append(first)["length"]) == [40, 40]
    lose = LoseFirst("/series/append")  # the append lands, its answer is lost, it is resent
    with Client(default_server.url, transport=lose, backoff=0.0) as rimer:
        fc = rimer.append(then, h=3, level=[80])
        assert lose.paths().count("/series/append") == 2  # resent, refused 409, taken as landed
        assert [rimer.describe(f"{prefix}-{k}")["length"] for k in range(2)] == [48, 48]
        assert list(fc.columns) == ["unique_id", "ds", "Rimer", "Rimer-lo-80", "Rimer-hi-80"]
        last = rows.ds.max()
        assert list(fc["ds"][:3]) == [last + pd.Timedelta(minutes=15 * k) for k in (1, 2, 3)]
        direct = rimer.forecast_series([f"{prefix}-0", f"{prefix}-1"], 3, level=[80], tz="UTC")
        pd.testing.assert_frame_equal(fc, direct, rtol=1e-5)
        # a late append is a Conflict when no earlier try may have landed ...
        with pytest.raises(Conflict) as err:
            rimer.append(then)
        assert err.value.field == "timestamps[0]" and err.value.series_id == f"{prefix}-0"
    # ... and when one may have, but the series does not end where the append does
    late = LoseFirst("/series/append", forward=False)
    with Client(default_server.url, transport=late, backoff=0.0) as rimer, \
            pytest.raises(Conflict, match="cannot be confirmed"):
        rimer.append(first)


def test_business_days_stream_one_row_at_a_time_without_weekends(default_server):
    """A series of business days (closing prices) appended whole, then a row at a time: the
    server keeps one point per row (no weekend filled), and forecasts the next weekdays."""
    sid = f"close-{uuid.uuid4().hex[:8]}"
    days = pd.bdate_range("2024-01-01 16:00", periods=45, tz="America/New_York")  # winter: -05:00
    frame = pd.DataFrame({"unique_id": sid, "ds": days, "y": wave(45)})
    with Client(default_server.url) as rimer:
        rimer.append(frame.head(40))
        for k in range(40, 45):
            rimer.append(frame.iloc[k:k + 1])
        info = rimer.describe(sid)
        assert (info["length"], info["freq"]) == (45, "1b")
        fc = rimer.forecast_series([sid], 3, tz="America/New_York")
        assert list(fc["ds"]) == list(pd.bdate_range(days[-1], periods=4, tz="America/New_York")[1:])


def test_append_errors_name_the_series_of_a_flat_field(default_server):
    """The client sends the columnar form: a bad point is `values[k]` of the flat array, and the
    error says whose it is."""
    prefix = f"cf-{uuid.uuid4().hex[:8]}"
    df = pd.concat([pd.DataFrame({"unique_id": f"{prefix}-{k}", "y": wave(40, k)}) for k in range(3)],
                   ignore_index=True)
    df.loc[85, "y"] = np.inf  # series 2's 6th point
    with Client(default_server.url) as rimer:
        with pytest.raises(ValidationError) as err:
            rimer.append(df)
        assert err.value.field == "values[85]" and err.value.series_id == f"{prefix}-2"
        with pytest.raises(NotFound):
            rimer.describe(f"{prefix}-0")  # nothing applied
        out = rimer.append(df.assign(y=df.y.replace(np.inf, 1.0)))
        assert list(out["length"]) == [40, 40, 40]


def test_append_refuses_a_gap_after_the_series_last_point_unless_ffill(default_server):
    """A 15-minute series streamed, then rows at +15, +45 and +75 minutes: the frame's own
    step (30 min) has no hole, but the series' grid has two; they were filled silently. Now
    the server refuses them (the client sends max_gap_points 0), naming the row, and nothing
    is appended; a row alone after a gap likewise; with missing='ffill' they are filled."""
    sid = f"gap-{uuid.uuid4().hex[:8]}"
    start = pd.Timestamp("2024-01-01")
    first = pd.DataFrame({"unique_id": sid, "ds": pd.date_range(start, periods=80, freq="15min"),
                          "y": wave(80)})
    last = first.ds.iloc[-1]
    later = pd.DataFrame({"unique_id": sid, "ds": [last + pd.Timedelta(minutes=m) for m in (15, 45, 75)],
                          "y": [1.0, 2.0, 3.0]})
    with Client(default_server.url) as rimer:
        assert rimer.append(first).length.tolist() == [80]
        with pytest.raises(ValidationError) as info:
            rimer.append(later)
        assert info.value.series_id == sid and "timestamps[1]" in str(info.value)
        with pytest.raises(ValidationError):
            rimer.append(later.iloc[1:2])  # one row, 30 minutes after the last point
        assert rimer.describe(sid)["length"] == 80
        assert rimer.append(later, missing="ffill").length.tolist() == [85]


def test_append_without_timestamps_is_not_resent(default_server):
    uid = f"cc-{uuid.uuid4().hex[:8]}"
    lose = LoseFirst("/series/append")
    with Client(default_server.url, transport=lose, backoff=0.0) as rimer:
        with pytest.raises(ConnectionFailed, match="not retried"):
            rimer.append(pd.DataFrame({"unique_id": uid, "y": wave(40)}))
        assert lose.paths() == ["/series/append"]
        assert rimer.describe(uid)["length"] == 40  # it landed, once
        fc = rimer.append(pd.DataFrame({"unique_id": uid, "y": wave(8)}), h=4)
        assert list(fc["ds"]) == [48, 49, 50, 51]  # positions in the stream


def test_series_pages_describe_delete(default_server):
    prefix = f"cc-{uuid.uuid4().hex[:8]}"
    counting = Counting()
    with Client(default_server.url, transport=counting, backoff=0.0) as rimer:
        rimer.append(pd.concat([pd.DataFrame({"unique_id": f"{prefix}-{k}", "y": wave(33)})
                                for k in range(5)]))
        listed = rimer.series(page_size=2)
        mine = listed[listed.unique_id.str.startswith(prefix)]
        assert list(mine["unique_id"]) == [f"{prefix}-{k}" for k in range(5)]
        assert (mine["length"] == 33).all()
        assert counting.paths("GET").count("/series") >= 3
        assert rimer.describe(f"{prefix}-0")["length"] == 33
        assert rimer.health()["status"] == "ready"
        assert rimer.models()[0]["streamable"] is True
        rimer.delete(f"{prefix}-0")
        with pytest.raises(NotFound):
            rimer.delete(f"{prefix}-0")
    lose = LoseFirst(f"/series/{prefix}-1")  # the delete lands, its answer is lost: 404 is done
    with Client(default_server.url, transport=lose, backoff=0.0) as rimer:
        rimer.delete(f"{prefix}-1")
        with pytest.raises(NotFound):
            rimer.describe(f"{prefix}-1")


def test_plot_writes_a_png(tmp_path):
    df = long_frame()
    fc = pd.concat([pd.DataFrame({"unique_id": uid, "ds": pd.date_range(df[df.unique_id == uid].ds.max(),
                                                                         periods=5, freq="h")[1:],
                                  "Rimer": 1.0, "Rimer-lo-80": 0.0, "Rimer-hi-80": 2.0})
                    for uid in LENGTHS])
    path = tmp_path / "fc.png"
    fig = plot(df, fc, ids=["a", "c"], path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(fig.axes) == 2
    # the README's example, eight days of hours: its ten full dates (100 characters) overlapped
    ds = pd.date_range("2024-01-01", periods=200, freq="h")
    one = pd.DataFrame({"unique_id": "a", "ds": ds, "y": wave(200)})
    fig = plot(one, pd.DataFrame({"unique_id": "a", "ds": pd.date_range(ds[-1], periods=25, freq="h")[1:],
                                  "Rimer": 1.0}), path=tmp_path / "one.png")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert 2 <= len(labels) and sum(map(len, labels)) <= 50, labels
    # a forecast under the caller's column names (forecast(..., id_col=, time_col=)) plots too
    names = {"unique_id": "id", "ds": "t", "y": "v"}
    fig = plot(df.rename(columns=names), fc.rename(columns=names), ids=["a"], id_col="id",
               time_col="t", target_col="v")
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2  # (history and forecast)


def test_forecast_requests_stay_within_the_servers_answer_bound():
    """The client packs at most as many series per request as keep an answer within the
    server's default --max-answer-values: 1,024 series x h 2,048 with two levels would be a 413."""
    from types import SimpleNamespace

    from rimer_client import _core

    from service.settings import Settings

    assert _core.SERVER_MAX_ANSWER_VALUES == Settings().max_answer_values
    cfg = SimpleNamespace(max_series_per_request=1024)
    assert _core.series_per_answer(cfg, None, None, None) == 1024
    assert _core.series_per_answer(cfg, 96, [80, 95], None) == 1024
    n = _core.series_per_answer(cfg, 2048, [80, 95], [0.5])
    assert n * 2048 * 6 <= Settings().max_answer_values < (n + 1) * 2048 * 6
    assert _core.series_per_answer(cfg, 10**9, None, None) == 1  # (one series: the server says why)


def test_the_answer_keeps_the_callers_column_names():
    """forecast() and append() answer with the id and time columns under `id_col` and
    `time_col`, as Nixtla's libraries do (they were always `unique_id` and `ds`)."""
    custom = SMALL.rename(columns={"unique_id": "id", "ds": "t", "y": "v"})
    names = {"id_col": "id", "time_col": "t", "target_col": "v"}
    fc = mock_client(scripted(OK_FORECAST)).forecast(custom, 2, **names)
    assert list(fc.columns) == ["id", "t", "Rimer"] and list(fc["id"]) == ["a", "a"]
    lengths = mock_client(scripted(OK_APPEND)).append(custom, **names)
    assert list(lengths.columns) == ["id", "length"] and lengths["length"].tolist() == [3]
    assert list(mock_client(scripted(OK_FORECAST)).forecast(SMALL, 2).columns) == [
        "unique_id", "ds", "Rimer"]

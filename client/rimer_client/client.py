"""`Client` (httpx.Client) and `AsyncClient` (httpx.AsyncClient): the same methods, the same
requests and retry rules (rimer_client._core); they differ only in how one request is sent and
how a retry waits."""

from __future__ import annotations

import asyncio
import time

import httpx
import pandas as pd

from rimer_client import _core
from rimer_client.errors import RimerError
from rimer_client.ring import Ring

DEFAULT_MAX_SERIES_PER_REQUEST = 1024  # the server's --max-series-per-request default
# Half of the server's --max-points-per-request default (2,000,000): keeps a body with a
# timestamp per value under its 64 MiB --max-body-bytes. A 413 splits a batch anyway.
DEFAULT_MAX_POINTS_PER_REQUEST = 1_000_000


class _Base:
    """Configuration and the methods' documentation; see Client."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = 3, *, backoff: float = 0.5, max_backoff: float = 8.0,
                 max_series_per_request: int = DEFAULT_MAX_SERIES_PER_REQUEST,
                 max_points_per_request: int = DEFAULT_MAX_POINTS_PER_REQUEST,
                 headers: dict | None = None, ring=None):
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        if max_series_per_request < 1 or max_points_per_request < 1:
            raise ValueError("max_series_per_request and max_points_per_request must be at least 1")
        self.base_url = base_url
        self.policy = _core.RetryPolicy(retries, backoff, max_backoff)
        self.max_series_per_request = max_series_per_request
        self.max_points_per_request = max_points_per_request
        self.headers = dict(headers or {})
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        if not (ring is None or ring == "proxy" or isinstance(ring, Ring)):
            ring = Ring(list(ring))
        self.ring = ring

    # The operations, as generators (shared); each public method runs one.
    def _forecast(self, df, h, level=None, quantiles=None, freq=None, id_col="unique_id",
                  time_col="ds", target_col="y", missing="error", progress=False):
        return _core.forecast_op(self, df, h, level, quantiles, freq, id_col, time_col,
                                 target_col, missing, progress)

    def _append(self, df, h=None, level=None, quantiles=None, freq=None, id_col="unique_id",
                time_col="ds", target_col="y", timestamps="auto", missing="error", progress=False):
        return _core.append_op(self, df, h, level, quantiles, freq, id_col, time_col, target_col,
                               timestamps, missing, progress)

    def _forecast_series(self, ids, h, level=None, quantiles=None, tz=None, progress=False):
        return _core.forecast_series_op(ids, h, level, quantiles, tz, progress)


class Client(_Base):
    """A synchronous client of a Rimer server.

    >>> with Client("http://127.0.0.1:8000") as rimer:
    ...     fc = rimer.forecast(df, h=24, level=[80, 95])

    `api_key`: sent as `Authorization: Bearer <key>`. `timeout`: seconds per request.
    `retries`: how many times a request is retried (so `retries + 1` tries at most), with
    exponential backoff (`backoff` s doubled per retry, jittered, at most `max_backoff`; a
    Retry-After header wins, up to 60 s). `max_series_per_request` and `max_points_per_request`:
    how frames are split into requests (keep them at or below the server's
    --max-series-per-request and --max-points-per-request; a 413 also splits a batch).
    `ring`: behind a cluster's proxy (deploy/local.sh, deploy/k8s), how bulk appends are split:
    "proxy" (the ring the proxy publishes at GET /cluster/ring), a `Ring`, or a list of the
    proxy's upstream addresses; each request then holds the series of one replica and names
    one of them in X-Rimer-Series, which the proxy routes on. None: one server.
    `http_client`: an httpx.Client to use instead of one made here (fastapi's TestClient for an
    in-process server, say); `transport`: an httpx transport for the client made here.

    Retry rules (the same for AsyncClient):

    - Retried: connection errors before the request was sent (refused, connect timeout), for
      every request; connection errors after it may have been sent (reset, closed) and
      429/503 answers, for requests that are safe to send twice: reads, stateless forecasts,
      deletes, and appends whose frame has datetime timestamps.
    - Never retried: any other 4xx (raised at once as a typed error); no answer within
      `timeout` (ConnectionFailed: the server may still be working on it); and an append without
      timestamps once it may have reached the server: appending its values twice would
      lengthen the series twice, so only a connection error before sending is retried. (A 503
      is not retried for it either: the server answers 503 when its log write failed, and a
      record that was written is replayed at its next start.)
    - An append with timestamps that is resent after an error that may have followed its
      delivery, and is then refused with 409 for a late first timestamp, had landed the first
      time: that counts as success (once the series' last timestamp is checked to be the
      append's own), and its lengths and forecast are read back from the server.
    - A resent delete answered 404 likewise counts as done.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = 30.0, retries: int = 3, *, http_client: httpx.Client | None = None,
                 transport: httpx.BaseTransport | None = None, **kwargs):
        super().__init__(base_url, api_key, timeout, retries, **kwargs)
        self._own = http_client is None
        self.http = http_client or httpx.Client(base_url=base_url, timeout=timeout,
                                                transport=transport)
        self.http.headers.update(self.headers)

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, call: _core.Call) -> _core.Answer:
        attempts = _core.Attempts(call, self.policy)
        while True:
            try:
                response = self.http.request(**attempts.request())
            except httpx.TransportError as exc:
                wait = attempts.on_error(exc)
            else:
                out = attempts.on_response(response)
                if isinstance(out, _core.Answer):
                    return out
                wait = out
            time.sleep(wait)

    def _run(self, op: _core.Op):
        answer, error = None, None
        while True:
            try:
                call = op.throw(error) if error is not None else op.send(answer)
            except StopIteration as stop:
                return stop.value
            answer, error = None, None
            try:
                answer = self._send(call)
            except RimerError as exc:
                error = exc

    def forecast(self, df: pd.DataFrame, h: int, level=None, quantiles=None, freq=None,
                 id_col: str = "unique_id", time_col: str = "ds", target_col: str = "y", *,
                 missing: str = "error", progress: bool = False) -> pd.DataFrame:
        """Forecast every series of a long frame (one row per series and time) `h` steps ahead.

        Returns a frame in Nixtla's shape, one row per series and future step: `unique_id`,
        `ds` (under the names `id_col` and `time_col` give; the next `h` times of each series
        at its frequency: `freq` when given, else inferred by pandas, else its smallest step;
        integer times continue as integers),
        `Rimer` (the mean), `Rimer-lo-<level>` / `Rimer-hi-<level>` per `level` (percent, e.g.
        `[80, 95]`) and `Rimer-q-<q>` per quantile (e.g. `[0.1, 0.9]`).

        Each series needs 32 points or more. Series are sent in batches within the request
        limits (a tqdm bar with `progress=True`). A series with rows missing from its grid is a
        ValueError; NaN values are refused by the server (ValidationError naming the point and
        `series_id`); `missing='ffill'` sends both as missing points, which the server fills
        with the last value before them.
        """
        return self._run(self._forecast(df, h, level, quantiles, freq, id_col, time_col,
                                        target_col, missing, progress))

    def append(self, df: pd.DataFrame, h: int | None = None, level=None, quantiles=None,
               freq=None, id_col: str = "unique_id", time_col: str = "ds", target_col: str = "y",
               *, timestamps="auto", missing: str = "error", progress: bool = False) -> pd.DataFrame:
        """Append a frame of new rows to streaming series (created on their first append), with
        POST /series/append in batches (each batch all or nothing; a series longer than
        `max_points_per_request` goes in consecutive requests, in order).

        With a datetime `ds` column, timestamps are sent (`timestamps=False` to leave them
        out): the server refuses a late point with 409 (Conflict), and a resent append is
        recognised (see the class's retry rules); `freq` (a fixed step: '15min', 'h', or
        seconds) fixes a new series' frequency, else the server infers it. Sent timestamps
        must be fixed steps: a calendar step ('B') or days across a daylight-saving change is
        a ValueError, and so are rows missing from the frame's grid unless missing='ffill'
        (the server then fills them); so is a gap between a series' last point on the server
        and its first row here, which the server refuses (`max_gap_points: 0`: a
        ValidationError naming the row) unless missing='ffill'. Without
        timestamps the values take the series' next points, and the append is not retried once
        it may have reached the server.

        Returns a frame of `unique_id` (named `id_col`), `length` (each series' length after
        the append), or
        with `h` the forecast after it in forecast()'s shape (`ds`: the server's forecast
        timestamps; for integer times, integers continuing the frame's; without a time column,
        positions in the stream).
        """
        return self._run(self._append(df, h, level, quantiles, freq, id_col, time_col,
                                      target_col, timestamps, missing, progress))

    def forecast_series(self, ids, h: int, level=None, quantiles=None, *, tz=None,
                        progress: bool = False) -> pd.DataFrame:
        """Forecast streaming series held by the server (GET /series/{id}/forecast each);
        forecast()'s shape, `ds` from the server's timestamps (in `tz`; naive UTC by default)
        or, for series without timestamps, positions in the stream (length .. length+h-1)."""
        return self._run(self._forecast_series(ids, h, level, quantiles, tz, progress))

    def series(self, page_size: int = 1000) -> pd.DataFrame:
        """Every streaming series held (all pages of `page_size`, following next_cursor): a
        frame of `unique_id`, `length`, in id order."""
        return self._run(_core.series_op(page_size))

    def describe(self, series_id) -> dict:
        """GET /series/{id}: length, model, state_bytes, patches, tail_points, freq,
        last_timestamp."""
        return self._run(_core.one(_core.describe_call(series_id)))

    def delete(self, series_id) -> None:
        """DELETE /series/{id} (NotFound if there is none)."""
        return self._run(_core.delete_op(series_id))

    def models(self) -> list[dict]:
        """GET /models: name, config, manifest, streamable, device of each model served."""
        return self._run(_core.one(_core.Call("GET", "/models"), "models"))

    def health(self) -> dict:
        """GET /readyz: {"status": "ready", "model", "backend", "device"} (Unavailable while
        the model is loading, after the retries)."""
        return self._run(_core.one(_core.Call("GET", "/readyz")))

    @staticmethod
    def plot(df, fc, ids=None, path=None, **kwargs):
        """See rimer_client.plot."""
        from rimer_client.plotting import plot
        return plot(df, fc, ids=ids, path=path, **kwargs)


class AsyncClient(_Base):
    """The asynchronous client: Client's methods as coroutines (same arguments, results, errors
    and retry rules; see Client). Batches are sent one after another."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = 30.0, retries: int = 3, *,
                 http_client: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, **kwargs):
        super().__init__(base_url, api_key, timeout, retries, **kwargs)
        self._own = http_client is None
        self.http = http_client or httpx.AsyncClient(base_url=base_url, timeout=timeout,
                                                     transport=transport)
        self.http.headers.update(self.headers)

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _send(self, call: _core.Call) -> _core.Answer:
        attempts = _core.Attempts(call, self.policy)
        while True:
            try:
                response = await self.http.request(**attempts.request())
            except httpx.TransportError as exc:
                wait = attempts.on_error(exc)
            else:
                out = attempts.on_response(response)
                if isinstance(out, _core.Answer):
                    return out
                wait = out
            await asyncio.sleep(wait)

    async def _run(self, op: _core.Op):
        answer, error = None, None
        while True:
            try:
                call = op.throw(error) if error is not None else op.send(answer)
            except StopIteration as stop:
                return stop.value
            answer, error = None, None
            try:
                answer = await self._send(call)
            except RimerError as exc:
                error = exc

    async def forecast(self, df, h, level=None, quantiles=None, freq=None, id_col="unique_id",
                       time_col="ds", target_col="y", *, missing="error", progress=False):
        """See Client.forecast."""
        return await self._run(self._forecast(df, h, level, quantiles, freq, id_col, time_col,
                                              target_col, missing, progress))

    async def append(self, df, h=None, level=None, quantiles=None, freq=None, id_col="unique_id",
                     time_col="ds", target_col="y", *, timestamps="auto", missing="error",
                     progress=False):
        """See Client.append (and its retry rules)."""
        return await self._run(self._append(df, h, level, quantiles, freq, id_col, time_col,
                                            target_col, timestamps, missing, progress))

    async def forecast_series(self, ids, h, level=None, quantiles=None, *, tz=None, progress=False):
        """See Client.forecast_series."""
        return await self._run(self._forecast_series(ids, h, level, quantiles, tz, progress))

    async def series(self, page_size: int = 1000) -> pd.DataFrame:
        """See Client.series."""
        return await self._run(_core.series_op(page_size))

    async def describe(self, series_id) -> dict:
        """See Client.describe."""
        return await self._run(_core.one(_core.describe_call(series_id)))

    async def delete(self, series_id) -> None:
        """See Client.delete."""
        return await self._run(_core.delete_op(series_id))

    async def models(self) -> list[dict]:
        """See Client.models."""
        return await self._run(_core.one(_core.Call("GET", "/models"), "models"))

    async def health(self) -> dict:
        """See Client.health."""
        return await self._run(_core.one(_core.Call("GET", "/readyz")))

    plot = staticmethod(Client.plot)

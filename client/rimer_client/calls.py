"""Requests as data (`Call`), their answers (`Answer`), and the retry rules (`Attempts`,
`RetryPolicy`): the client's wire, without sending anything. An operation (_core.py) is a
generator of `Op` that yields `Call`s and is sent their `Answer`s; client.py sends them."""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import httpx

from rimer_client.errors import ConnectionFailed, error_for

# Transport errors raised before any byte of the request left: always safe to resend.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Transport errors after the request may have reached the server: resent only when resending
# is harmless (reads, stateless forecasts, appends with timestamps, deletes).
MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
# No answer in `timeout` seconds: the server is slow, not unreachable, and may still be working
# on the request; never resent (a large forecast would be computed again and again).
TIMED_OUT = (httpx.ReadTimeout, httpx.WriteTimeout)
RETRY_STATUS = (429, 503)
MAX_RETRY_AFTER_S = 60.0


@dataclass
class Call:
    """One HTTP request, and what may be done if it has to be sent again."""

    method: str
    path: str
    params: list[tuple[str, object]] | None = None
    body: object = None  # JSON-able; encoded with NaN allowed (the server names the point)
    resend_safe: bool = True  # may be resent after it may have reached the server
    # (status, field) of an answer to a resend that means an earlier try landed
    landed: Callable[[int, str | None], bool] | None = None
    series_ids: list | None = None  # the frame's ids of `series[i]`, for errors
    headers: dict | None = None  # extra headers (X-Rimer-Series: a cluster proxy's routing key)
    offsets: list[int] | None = None  # a columnar body's offsets: `values[k]` -> its series
    series_id: object = None  # the one series a call is about (GET/DELETE /series/{id}), for errors

    def encoded(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, allow_nan=True, separators=(",", ":")).encode()


@dataclass
class Answer:
    status: int
    body: object  # parsed JSON, or None (204, or a replayed call)
    replayed: bool = False  # a resend was refused because an earlier try had landed


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff: float = 0.5  # first wait, doubled each retry (with jitter), at most max_backoff
    max_backoff: float = 8.0

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        base = min(self.max_backoff, self.backoff * 2 ** attempt)
        return base * random.uniform(0.5, 1.0)


def retry_after(headers: httpx.Headers) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def body_of(response: httpx.Response):
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


class Attempts:
    """The retry rules for one call, fed each try's outcome by a driver:

    - connection errors before the request was sent (refused, connect timeout, no pool slot):
      retried, whatever the call;
    - errors after it may have been sent (connection reset or closed): retried only for calls
      that are safe to resend (`Call.resend_safe`);
    - timeouts waiting for the answer: never retried (the server may still be working on it);
    - 429 and 503: retried for calls safe to resend (Retry-After honoured, at most 60 s);
      never for an append without timestamps (the server's 503 for a failed log write may
      leave a record that a restart replays);
    - any other answer: never retried; 4xx/5xx raise the typed error;
    - a resent call whose answer `Call.landed` recognises (409 naming `timestamps[0]` for an
      append with timestamps, 404 for a delete) after an earlier try may have been sent: that
      try landed, and the answer is `Answer(replayed=True)`.
    """

    def __init__(self, call: Call, policy: RetryPolicy):
        self.call, self.policy = call, policy
        self.attempt = 0
        self.maybe_sent = False  # an earlier try may have reached the server

    def request(self) -> dict:
        headers = {"content-type": "application/json"} if self.call.body is not None else None
        if self.call.headers:
            headers = {**(headers or {}), **self.call.headers}
        return {"method": self.call.method, "url": self.call.path, "params": self.call.params,
                "content": self.call.encoded(), "headers": headers}

    def on_error(self, exc: Exception) -> float:
        """The wait before the next try after a transport error, or raise."""
        sent = not isinstance(exc, NOT_SENT)
        retriable = isinstance(exc, NOT_SENT) or (isinstance(exc, MAYBE_SENT) and self.call.resend_safe)
        self.maybe_sent = self.maybe_sent or sent
        if not retriable or self.attempt >= self.policy.retries:
            why = ""
            if isinstance(exc, TIMED_OUT):
                why = (" (not retried: the server may still be working on it; a larger timeout= "
                       "or smaller batches help)")
            elif not retriable and isinstance(exc, MAYBE_SENT):
                why = (" (not retried: the request may have reached the server and resending it "
                       "could apply it twice)")
            raise ConnectionFailed(None, f"{self.call.method} {self.call.path}: "
                                         f"{type(exc).__name__}: {exc}{why}") from exc
        wait = self.policy.wait(self.attempt)
        self.attempt += 1
        return wait

    def on_response(self, response: httpx.Response) -> Answer | float:
        """The answer, or the wait before the next try, or raise the typed error."""
        status = response.status_code
        body = body_of(response)
        if status < 400:
            return Answer(status, body)
        field = body.get("field") if isinstance(body, dict) else None
        if self.maybe_sent and self.call.landed is not None and self.call.landed(status, field):
            return Answer(status, None, replayed=True)
        if (status in RETRY_STATUS and self.call.resend_safe
                and self.attempt < self.policy.retries):
            wait = self.policy.wait(self.attempt, retry_after(response.headers))
            self.attempt += 1
            return wait
        raise error_for(status, body, self.call.series_ids, self.call.offsets, self.call.series_id)


Op = Generator[Call, Answer, object]

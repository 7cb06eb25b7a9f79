"""uvicorn's HTTP protocol with a deadline on a request's line and headers, and probes that
pass the connection cap.

uvicorn times out idle keep-alive connections and we time out slow bodies (service/limits.py),
but nothing bounded the headers themselves: 100 clients sending one header line every 10 s held
their connections for ever, and 20,600 half-sent requests used up the file descriptors. Here
every connection must deliver each request's line and headers within `header_timeout_s` of
its opening (or of the previous response); past it, it is answered 408 and closed.

Past `--max-connections` (uvicorn's `limit_concurrency`: open connections plus requests in
flight) uvicorn answers 503 in plain text to every request; 2,100 silent connections then made
/healthz and /readyz fail too, and a liveness probe would restart a server that was only busy.
Here the probes are answered as always (they are cheap and touch no series), and every other
request past the cap gets the API's JSON error with a Retry-After."""

from __future__ import annotations

import json
import logging

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PROBES = (b"/healthz", b"/readyz")  # answered past the connection cap
BUSY = json.dumps({"detail": "the server holds as many connections and requests as it is "
                             "allowed (--max-connections); retry shortly", "field": None}).encode()
log = logging.getLogger("rimer.http")


async def busy(scope, receive, send) -> None:
    """The answer past the connection cap (uvicorn's own is plain text)."""
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                            (b"content-length", str(len(BUSY)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": BUSY, "more_body": False})

TOO_SLOW = json.dumps({"detail": "the request's headers did not arrive in time", "field": None}).encode()
RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(TOO_SLOW)).encode() + b"\r\n\r\n" + TOO_SLOW)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0  # set per server by `with_header_timeout`

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def on_headers_complete(self) -> None:
        self._disarm()
        limit = self.limit_concurrency
        if limit is None or (len(self.connections) < limit and len(self.tasks) < limit):
            super().on_headers_complete()
            return
        app = self.app  # past the cap: uvicorn's check is bypassed and the app chosen here
        if httptools.parse_url(self.url).path not in PROBES:
            log.warning("past --max-connections (%d): answered 503", limit)
            self.app = busy
        self.limit_concurrency = None
        try:
            super().on_headers_complete()
        finally:
            self.limit_concurrency, self.app = limit, app

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers, on a kept-alive connection

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.write(RESPONSE)
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's `http=`, with this deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": seconds})

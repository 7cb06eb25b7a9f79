"""uvicorn's HTTP protocol with a deadline on a request's line and headers, and probes that
pass the connection cap.

uvicorn times out idle keep-alive connections and we time out slow bodies (service/limits.py),
but nothing bounded the headers themselves: 100 clients sending one header line every 10 s held
their connections for ever, and 20,600 half-sent requests used up the file descriptors. Here
every connection must deliver each request's line and headers within `header_timeout_s` of
its opening (or of the previous response); past it, it is answered 408 and closed.

Nor were the headers bounded in size: 200 kB of one header line was read whole (and 50 MB
would have been). Here a request's line and headers past `MAX_HEADER_BYTES` are answered 431
and the connection closed, and a request that is not HTTP at all gets the API's JSON error
(uvicorn's own 400 is plain text), and one with a method no server knows a JSON 501.

Past `--max-connections` (uvicorn's `limit_concurrency`: open connections plus requests in
flight) uvicorn answers 503 in plain text to every request; 2,100 silent connections then made
/healthz and /readyz fail too, and a liveness probe would restart a server that was only busy.
Here the probes are answered as always (they are cheap and touch no series), and every other
request past the cap gets the API's JSON error with a Retry-After."""

from __future__ import annotations

import json
import logging
import re

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

MAX_HEADER_BYTES = 64 * 1024  # a request's line and headers (nginx's default is 8-32 kB)


def _closing_answer(status: bytes, detail: str) -> bytes:
    """A whole response (JSON error, connection closed) written before any app runs."""
    body = json.dumps({"detail": detail, "field": None}).encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


RESPONSE = _closing_answer(b"408 Request Timeout", "the request's headers did not arrive in time")
TOO_LARGE = _closing_answer(b"431 Request Header Fields Too Large",
                            f"the request's line and headers are over {MAX_HEADER_BYTES} bytes")
NOT_HTTP = _closing_answer(b"400 Bad Request", "the request is not HTTP/1.1 that can be read (its "
                           "request line or headers do not parse)")
UNKNOWN_METHOD = _closing_answer(b"501 Not Implemented", "the request's method is not one this "
                                 "server implements (the API's are GET, HEAD, POST, PUT and "
                                 "DELETE)")


REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32} [^ \r\n]+ HTTP/1\.[01]\r?\n")


class _Parser(httptools.HttpRequestParser):
    """httptools' parser, noting an unknown method: uvicorn answers every parse error alike, but
    a method the server does not know is a 501, not a malformed request (RFC 9110, 9.1)."""

    unknown_method = False

    def feed_data(self, data: bytes) -> None:
        try:
            super().feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            # (only where the rest is a request line: "BLAH BLAH" is no HTTP at all)
            self.unknown_method = REQUEST_LINE.match(data) is not None
            raise


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0  # set per server by `with_header_timeout`

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.parser = _Parser(self)  # (as uvicorn makes its own, with the same leniency)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = None
        self._header_bytes = 0
        self._arm()

    # The bound is kept two ways: the parsed line and headers are counted as the parser hands
    # them over (whatever chunks they came in: counting chunks alone let a chunk that also
    # completed the headers through unseen, up to ~128 kB), and so are the chunks of headers
    # still arriving (a header line that never ends is never handed over).
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_bytes, self._too_large = 0, False

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # (": " and the line's end)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._parsed_bytes += size
        if self._parsed_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise ValueError("headers too large")  # (the parser stops: send_400_response)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still waiting for the headers after this chunk (the deadline is armed exactly then):
        # all of it was request line and headers.
        if self._deadline is None:
            self._header_bytes = 0
            return
        self._header_bytes += len(data)
        if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self._refuse_large()

    def _refuse_large(self) -> None:
        log.warning("a request's headers passed %d bytes: answered 431", MAX_HEADER_BYTES)
        self._disarm()
        self.transport.write(TOO_LARGE)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that do not parse as HTTP (or whose headers `_count`
        stopped), as the API's JSON error."""
        if getattr(self, "_too_large", False):
            self._refuse_large()
            return
        self.transport.write(UNKNOWN_METHOD if self.parser.unknown_method else NOT_HTTP)
        self.transport.close()

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

"""uvicorn's HTTP protocol with a deadline on a request's line and headers.

uvicorn times out idle keep-alive connections and we time out slow bodies (service/limits.py),
but nothing bounded the headers themselves: 100 clients sending one header line every 10 s held
their connections for ever, and 20,600 half-sent requests used up the file descriptors. Here
every connection must deliver each request's line and headers within `header_timeout_s` of
its opening (or of the previous response); past it, it is answered 408 and closed."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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
        super().on_headers_complete()

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

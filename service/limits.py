"""A request-body size limit enforced while the body streams in (no Content-Length trust)."""

from __future__ import annotations

import json


class BodySizeLimit:
    """Pure ASGI middleware: answers 413 once a body exceeds `max_bytes`."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen = 0
        started = rejected = False

        async def limited_receive():
            nonlocal seen, rejected
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Answered here: FastAPI's body reader turns any exception into a 400
                    # ("error parsing the body"), whose response tracking_send then drops.
                    if not started and not rejected:
                        rejected = True
                        await self._reject(send)
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            pass  # answered 413 in limited_receive

    async def _reject(self, send):
        body = json.dumps({"detail": f"request body is larger than {self.max_bytes} bytes",
                           "field": "body"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass

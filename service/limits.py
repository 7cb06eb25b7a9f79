"""Request-body limits enforced while the body streams in (no Content-Length trust): its size,
and the time it may take to arrive."""

from __future__ import annotations

import asyncio
import json


class BodySizeLimit:
    """Pure ASGI middleware: answers 413 once a body exceeds `max_bytes`, and 408 when the whole
    body has not arrived `timeout_s` seconds after the app first asks for it (a client trickling
    a byte at a time would otherwise hold a connection and its buffer without end)."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 60.0):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self._too_large = f"request body is larger than {max_bytes} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send, 413, self._too_large)
        seen = 0
        deadline = None  # set at the first read of the body
        body_done = started = rejected = False

        async def refuse(status: int, detail: str):
            nonlocal rejected
            # Answered here: FastAPI's body reader turns any exception into a 400 ("error
            # parsing the body"), whose response tracking_send then drops.
            if not started and not rejected:
                rejected = True
                await self._reject(send, status, detail)
            raise _Refused

        async def limited_receive():
            nonlocal seen, deadline, body_done
            if body_done:  # (a wait for the client's disconnect: no deadline)
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):  # (no task per read, as wait_for has)
                    message = await receive()
            except TimeoutError:
                await refuse(408, f"the request body did not arrive within {self.timeout_s:g} s")
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    await refuse(413, self._too_large)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
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
        except _Refused:
            pass  # answered in limited_receive

    @staticmethod
    async def _reject(send, status: int, detail: str):
        body = json.dumps({"detail": detail, "field": "body"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _Refused(Exception):
    pass

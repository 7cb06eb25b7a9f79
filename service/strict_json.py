"""Request bodies parsed as strict JSON: a key given twice in one object is a 422 naming it.

The standard parser keeps the last of two equal keys, so `{"values": [1], "values": [2, 3]}`
appended two points without a word. The check is a hook per JSON object (not per value), so a
bulk body's cost grows with its items, not its points."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.routing import APIRoute

from service.errors import ServiceError, shown


class DuplicateKeyError(ServiceError):
    def __init__(self, key: str):
        super().__init__(422, f"key {shown(key)!r} is given more than once in a JSON object",
                         shown(key))
        self.key = key


def _unique(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return out


class StrictJsonRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=_unique)
        return self._json


class StrictJsonRoute(APIRoute):
    """Routes whose handlers read the body with `StrictJsonRequest`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            strict_request = StrictJsonRequest(request.scope, request.receive)
            if strict_request.method in ("POST", "PUT", "PATCH"):
                try:  # (parsed once: the handler reads the same parse)
                    await strict_request.json()
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    pass  # not JSON: the handler answers it as before
            return await handler(strict_request)

        return strict

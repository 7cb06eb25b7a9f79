"""Request bodies parsed as strict JSON: a key given twice in one object is a 422 naming it.

The standard parser keeps the last of two equal keys, so `{"values": [1], "values": [2, 3]}`
appended two points without a word. The check is a hook per JSON object (not per value), so a
bulk body's cost grows with its items, not its points."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute

from service.errors import ServiceError, shown


class DuplicateKeyError(ServiceError):
    def __init__(self, key: str):
        super().__init__(422, f"key {shown(key)!r} is given more than once in a JSON object",
                         shown(key))
        self.key = key


MAX_KEYS = 64  # keys in one JSON object: every object of the API has under 10
LARGE_BODY = 1 << 20  # bytes: a body this large is parsed in the thread pool, off the event loop
# Keys in one body: a bulk append of the most series a request may name has about 5,000. Counted
# on the bytes before parsing: the parser would build every key (a million unknown ones took
# 220 MB and held the interpreter for 0.7 s) before the per-object check could refuse them.
# (`"k"\n:` escapes the count, not the per-object cap: it is refused, only more slowly.)
MAX_BODY_KEYS = 100_000


class TooManyKeysError(ServiceError):
    def __init__(self, count: int):
        super().__init__(422, f"a JSON object with {count} keys; the API's objects have at most "
                              f"{MAX_KEYS} (unknown keys are refused)", "body")


def _unique(pairs: list[tuple[str, object]]) -> dict:
    if len(pairs) > MAX_KEYS:  # (before a million unknown keys become a million error objects)
        raise TooManyKeysError(len(pairs))
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
            body = await self.body()
            if len(body) > LARGE_BODY and body.count(b'":') + body.count(b'" :') > MAX_BODY_KEYS:
                raise ServiceError(422, f"the body holds more than {MAX_BODY_KEYS:,} JSON keys; "
                                        "the API's requests hold far fewer", "body")
            if len(body) > LARGE_BODY:  # tens of ms per MB: other clients' requests go on meanwhile
                self._json = await run_in_threadpool(json.loads, body, object_pairs_hook=_unique)
            else:
                self._json = json.loads(body, object_pairs_hook=_unique)
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

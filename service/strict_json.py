"""Request bodies parsed as strict JSON: a key given twice in one object is a 422 naming it.

The standard parser keeps the last of two equal keys, so `{"values": [1], "values": [2, 3]}`
appended two points without a word. The check is a hook per JSON object (not per value), so a
bulk body's cost grows with its items, not its points."""

from __future__ import annotations

import json
import logging

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from service.errors import ServiceError, shown


class DuplicateKeyError(ServiceError):
    def __init__(self, key: str):
        super().__init__(422, f"key {shown(key)!r} is given more than once in a JSON object",
                         shown(key))
        self.key = key


log = logging.getLogger("rimer.http")
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
        raise DuplicateKeyError(_first_repeat(pairs))
    return out


def _first_repeat(pairs: list[tuple[str, object]]) -> str:
    """The first key of `pairs` given a second time (there is one)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    raise ValueError("no key is repeated")


# Objects and arrays in one body: a bulk request has a few per series (at most 1,024 series).
# Counted on the bytes before parsing, like the keys: 15 million `[]` in 60 MB took 1.6 GB to
# parse before any check could refuse them.
MAX_BODY_CONTAINERS = 100_000
# A key's colon follows its closing quote, or whitespace after it: every key is counted by one
# of these (a string holding one of them counts too: only ever more, never fewer).
_KEY_ENDS = (b'":', b' :', b"\n:", b"\r:", b"\t:")


def _count_keys(body: bytes) -> int:
    """The keys in `body`, or more: every key is followed by a colon, so a body with few colons
    is counted in one pass (8 ms for 12 MB here, against 62 for the five endings); one with
    many (timestamps hold two each) by the key endings."""
    colons = body.count(b":")
    if colons <= MAX_BODY_KEYS:
        return colons
    return sum(map(body.count, _KEY_ENDS))


def check_counts(body: bytes) -> None:
    """Refuse a large body whose keys or containers are more than any request of the API has,
    before parsing builds them (bytes.count: a few ms for the largest body allowed)."""
    if len(body) <= LARGE_BODY:
        return
    if _count_keys(body) > MAX_BODY_KEYS:
        raise ServiceError(422, f"the body holds more than {MAX_BODY_KEYS:,} JSON keys; "
                                "the API's requests hold far fewer", "body")
    if body.count(b"[") + body.count(b"{") > MAX_BODY_CONTAINERS:
        raise ServiceError(422, f"the body holds more than {MAX_BODY_CONTAINERS:,} JSON arrays and "
                                "objects; the API's requests hold far fewer", "body")


def parse(body: bytes):
    """The body parsed strictly, or the ServiceError (422, `body`) for what no JSON parser reads
    as a request: a number of more than 4,300 digits (Python's limit on reading integers),
    nesting deeper than the parser goes, bytes that are not UTF-8. Not JSON at all: the
    `json.JSONDecodeError` itself (FastAPI's answer to it names the place)."""
    try:
        return json.loads(body, object_pairs_hook=_unique)
    except DuplicateKeyError as exc:  # (named by its place: `series[0].id`, not `id`)
        exc.field = duplicate_path(body) or exc.field
        raise
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError as exc:
        raise ServiceError(422, f"the body is not UTF-8 text (byte {exc.start} cannot be read); "
                                "send JSON as UTF-8", "body") from None
    except RecursionError:
        raise ServiceError(422, "the body's JSON nests arrays and objects too deeply; the API's "
                                "requests nest a few levels", "body") from None
    except ValueError as exc:  # (Python refuses to read integers of over 4,300 digits; its
        # message names an interpreter setting, nothing a client can change)
        what = ("a number of more than 4,300 digits; the API's numbers fit in a float64"
                if "digits" in str(exc) else "a value that cannot be read")
        raise ServiceError(422, f"the body holds {what}", "body") from None


class _Repeated(dict):
    """An object of the second parse in which `key` is given twice (`duplicate_path`)."""

    key = ""


def _marked(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    marked = _Repeated(out)
    marked.key = _first_repeat(pairs)
    return marked


def duplicate_path(body: bytes) -> str | None:
    """Where the first key given twice sits (`series[0].id`), from a second parse that marks
    such objects instead of refusing them: only after the first parse refused the body."""
    stack = [(json.loads(body, object_pairs_hook=_marked), "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Repeated):
            return f"{path}.{node.key}" if path else node.key
        if isinstance(node, dict):
            stack += [(v, f"{path}.{k}" if path else k) for k, v in reversed(node.items())]
        elif isinstance(node, list):
            stack += [(v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node)))]
    return None


class StrictJsonRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            check_counts(body)
            if len(body) > LARGE_BODY:  # tens of ms per MB: other clients' requests go on meanwhile
                self._json = await run_in_threadpool(parse, body)
            else:
                self._json = parse(body)
        return self._json


class StrictJsonRoute(APIRoute):
    """Routes whose handlers read the body with `StrictJsonRequest`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            strict_request = StrictJsonRequest(request.scope, request.receive)
            if strict_request.method in ("POST", "PUT", "PATCH"):
                coding = strict_request.headers.get("content-encoding", "identity").strip().lower()
                if coding != "identity":
                    raise ServiceError(415, f"content-encoding {shown(coding)!r} is not accepted; "
                                            "send the body uncompressed", "content-encoding")
                try:  # (parsed once: the handler reads the same parse)
                    await strict_request.json()
                except json.JSONDecodeError:
                    pass  # not JSON: the handler answers it as before (naming the place)
                except ClientDisconnect:  # (gone mid-body: nobody to answer, nothing failed;
                    # a traceback and a 500 in the metrics before)
                    log.info("%s %s: the client closed the connection before its body arrived",
                             strict_request.method, strict_request.url.path)
                    return JSONResponse({"detail": "the client closed the connection before "
                                         "its body arrived", "field": "body"}, status_code=400)
            return await handler(strict_request)

        return strict

"""Optional API keys: when any are configured, requests must carry one.

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. It is compared with every
configured key by `hmac.compare_digest` on SHA-256 digests (equal lengths, so neither the key's
length nor which key matched shows in the timing). Keys are never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def split_keys(text: str) -> list[str]:
    """Keys from a comma-separated list (blank entries dropped)."""
    return [k.strip() for k in text.split(",") if k.strip()]


def read_keys_file(path: str) -> list[str]:
    """One key per line; blank lines and lines starting with `#` are ignored."""
    lines = Path(path).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def load_keys(api_keys: str, api_keys_file: str) -> list[str]:
    """All configured keys; a keys file that holds none is an error (not silently open)."""
    keys = split_keys(api_keys)
    if api_keys_file:
        from_file = read_keys_file(api_keys_file)
        if not from_file:
            raise ValueError(f"--api-keys-file {api_keys_file} holds no keys")
        keys += from_file
    return keys


class ApiKeyAuth:
    """Pure ASGI middleware: 401 unless the request carries a configured key; `open_paths` are
    served without one."""

    def __init__(self, app, keys: list[str], open_paths: frozenset[str]):
        if not keys:
            raise ValueError("ApiKeyAuth needs at least one key")
        self.app = app
        self.digests = [_digest(k) for k in keys]
        self.open_paths = open_paths

    def _allowed(self, presented: list[bytes]) -> bool:
        ok = False
        for candidate in presented:
            d = _digest(candidate)
            for known in self.digests:  # no early exit: every key is compared
                ok |= hmac.compare_digest(d, known)
        return ok

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        presented = []
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer" and token.strip():
                    presented.append(token.strip())
            elif name == b"x-api-key" and value.strip():
                presented.append(value.strip())
        if presented and self._allowed(presented[:4]):
            return await self.app(scope, receive, send)
        detail = ("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                  if not presented else "the API key is not valid")
        body = json.dumps({"detail": detail, "field": "authorization"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})

"""Which replica of a cluster owns a series: nginx's `hash $series_id consistent` in Python.

nginx's consistent hash (ngx_http_upstream_hash_module, the ketama layout of
Cache::Memcached::Fast) puts 160 points per unit of weight on a 32-bit circle for each upstream
server: the server's address as written in the `server` directive ("127.0.0.1:8101",
"rimer-0.rimer.rimer.svc.cluster.local:8000") is split at its last ':' into host and port, and
point j is CRC32(host, NUL, port, point j-1 as 4 little-endian bytes) (point -1 is 0). The points
are sorted (equal hashes kept once). A key's owner is the server of the first point at or after
CRC32(key), wrapping to the first point. An empty key is not hashed (nginx sends it round robin).

The cluster tests check this against a real nginx (tests/integration/test_cluster.py: every id
of a thousand lands on the replica this says), so the client's split of a bulk append and
deploy/rebalance.py's moves cannot silently disagree with the proxy. Weights other than 1 and
servers marked down are not modelled (the cluster's upstreams use neither)."""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable, Sequence

POINTS_PER_SERVER = 160  # nginx: 160 * weight


def _host_port(server: str) -> tuple[bytes, bytes]:
    data = server.encode()
    if data[:5].lower() == b"unix:":
        return data[5:], b""
    for j in range(len(data)):  # trailing digits after a ':' are the port
        c = data[len(data) - j - 1]
        if c == ord(":"):
            return data[:len(data) - j - 1], data[len(data) - j:]
        if not ord("0") <= c <= ord("9"):
            break
    return data, b""


class Ring:
    """The owner of each series id among `servers` (nginx upstream addresses), as nginx's
    `hash ... consistent` picks it."""

    def __init__(self, servers: Sequence[str]):
        if not servers:
            raise ValueError("a ring needs at least one server")
        if len(set(servers)) != len(servers):
            raise ValueError(f"servers repeat: {list(servers)}")
        self.servers = list(servers)
        points: dict[int, str] = {}
        for server in self.servers:
            host, port = _host_port(server)
            base, prev = host + b"\0" + port, 0
            for _ in range(POINTS_PER_SERVER):
                prev = zlib.crc32(base + prev.to_bytes(4, "little"))
                points.setdefault(prev, server)  # (a collision: nginx keeps one, unspecified which)
        self._hashes = sorted(points)
        self._owners = [points[h] for h in self._hashes]

    def owner(self, series_id: str) -> str:
        """The server that owns `series_id`."""
        if len(self.servers) == 1:
            return self.servers[0]
        if not series_id:
            raise ValueError("an empty key has no owner (nginx sends it round robin)")
        at = bisect.bisect_left(self._hashes, zlib.crc32(series_id.encode()))
        return self._owners[at % len(self._hashes)]

    def group(self, ids: Iterable[str]) -> dict[str, list[int]]:
        """The positions of `ids` by owner (each list in the order given); owners in ring order."""
        out: dict[str, list[int]] = {s: [] for s in self.servers}
        for k, series_id in enumerate(ids):
            out[self.owner(series_id)].append(k)
        return {s: idx for s, idx in out.items() if idx}

    def __repr__(self) -> str:
        return f"Ring({self.servers!r})"

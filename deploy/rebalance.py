"""Move the series whose owner changes when a cluster's replicas change (scale-out or in).

    python -m deploy.rebalance --from URL,URL,URL --to URL,URL,URL,URL [--api-key KEY]

`--from` and `--to` are the replicas' base URLs before and after; a replica's name on the ring
is its URL's host:port, which must be the address its proxy's upstream lists (deploy/local.sh:
http://127.0.0.1:8101 is `server 127.0.0.1:8101`; in Kubernetes, run it where the pods' names
resolve: http://rimer-0.rimer.rimer.svc.cluster.local:8000). The owner of a series under the new
ring is nginx's consistent hash (rimer_client.Ring), so exactly the series whose owner changed
move: about 1/N of them when a replica is added.

Every series of every replica named (both lists: a series left on a new replica by an
interrupted run is found too) that is not on its new owner is moved, one at a time:

1. `GET /series/{id}/export` on the replica holding it: its checked record and sha256;
2. `PUT /series/{id}/import` on the new owner: logged there before it answers; 200 if it holds
   exactly this state already (an earlier run got this far); a 409 (it holds another state) stops
   this series' move, reported, the old copy kept;
3. `GET /series/{id}/export` on the new owner: the same sha256, or stop;
4. the old copy's sha256 again (it must not have changed: changes must be paused), then
   `DELETE /series/{id}` on the old replica (a 404 counts as done).

So an interruption anywhere (a crash, a kill, a network error) leaves every series whole on its
old replica, on its new one, or on both with the same state; a rerun finishes the job, and
nothing is applied twice (an import is of a whole state, never of points). Changes must not reach
the series while they move: pause the proxy's changes first (`deploy/local.sh pause`; in
Kubernetes, stop the writers or switch the proxy to its maintenance config), and switch the proxy
to the new ring only after this has finished (docs/operations.md, "Scale-out").

Exit status 0 when every series is on its owner, 1 when some could not be moved (listed)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import httpx

try:
    from rimer_client.ring import Ring
except ImportError:  # a checkout without the client installed: use its source
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "client"))
    from rimer_client.ring import Ring

CRASH_ENV = "RIMER_REBALANCE_CRASH_AT"  # tests: exit at this step (os._exit, like a kill -9)


def name_of(url: str) -> str:
    """A replica's name on the ring: its URL's host:port."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname or parts.port is None:
        raise ValueError(f"{url!r}: a replica's URL needs a scheme, host and port "
                         "(http://127.0.0.1:8101)")
    return parts.netloc


class Mover:
    def __init__(self, old: list[str], new: list[str], api_key: str | None = None,
                 timeout: float = 60.0, log: Callable[[str], None] = print):
        self.urls = {name_of(u): u.rstrip("/") for u in [*old, *new]}
        self.old_ring, self.ring = Ring([name_of(u) for u in old]), Ring([name_of(u) for u in new])
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout, headers=headers)
        self.log = log
        self.steps = 0
        crash = os.environ.get(CRASH_ENV)
        self.crash_at = int(crash) if crash else None

    def step(self) -> None:
        self.steps += 1
        if self.crash_at is not None and self.steps >= self.crash_at:
            sys.stdout.flush()
            os._exit(3)  # interrupted, as by a kill: nothing cleaned up

    def url(self, replica: str, series_id: str, tail: str = "") -> str:
        return f"{self.urls[replica]}/series/{quote(series_id, safe='')}{tail}"

    def check_ready(self) -> None:
        for name, url in self.urls.items():
            r = self.http.get(url + "/readyz")
            if r.status_code != 200:
                raise RuntimeError(f"replica {name} ({url}) is not ready: {r.status_code} {r.text}")

    def series_of(self, replica: str) -> list[str]:
        ids, cursor = [], None
        while True:
            params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            r = self.http.get(self.urls[replica] + "/series", params=params)
            r.raise_for_status()
            body = r.json()
            ids += [s["id"] for s in body["series"]]
            cursor = body.get("next_cursor")
            if cursor is None:
                return ids

    def plan(self) -> list[tuple[str, str, str]]:
        """(series, from, to) for every series held by a replica that is not its new owner."""
        moves = []
        for replica in self.urls:
            for series_id in self.series_of(replica):
                owner = self.ring.owner(series_id)
                if owner != replica:
                    moves.append((series_id, replica, owner))
        return moves

    def digest(self, replica: str, series_id: str) -> str | None:
        r = self.http.get(self.url(replica, series_id, "/export"))
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.headers["x-rimer-sha256"]

    def move(self, series_id: str, source: str, target: str) -> str | None:
        """Move one series; None when done, else why it was not (the old copy kept)."""
        exported = self.http.get(self.url(source, series_id, "/export"))
        if exported.status_code == 404:
            return None  # gone meanwhile (deleted): nothing to move
        exported.raise_for_status()
        digest = exported.headers["x-rimer-sha256"]
        self.step()
        put = self.http.put(self.url(target, series_id, "/import"), content=exported.content,
                            headers={"content-type": exported.headers["content-type"]})
        if put.status_code == 409:
            return f"{target} refused the import: {put.json().get('detail')}"
        put.raise_for_status()
        self.step()
        if self.digest(target, series_id) != digest:
            return f"{target} holds another state after the import"
        self.step()
        if self.digest(source, series_id) != digest:
            return (f"it changed on {source} while it moved (changes were not paused); the copy "
                    f"on {target} is stale: delete it there and rerun with changes paused")
        r = self.http.delete(self.url(source, series_id))
        if r.status_code not in (204, 404):
            r.raise_for_status()
        self.step()
        return None

    def run(self) -> dict:
        start = time.perf_counter()
        self.check_ready()
        moves = self.plan()
        held = sum(len(self.series_of(r)) for r in self.urls)
        self.log(f"{len(moves)} series to move (of {held} held on {len(self.urls)} replicas)")
        failed, pairs = {}, Counter()
        for k, (series_id, source, target) in enumerate(moves):
            why = self.move(series_id, source, target)
            if why is None:
                pairs[f"{source} -> {target}"] += 1
            else:
                failed[series_id] = why
                self.log(f"series {series_id!r}: not moved: {why}")
            if (k + 1) % 100 == 0:
                self.log(f"moved {k + 1} of {len(moves)}")
        return {"moved": sum(pairs.values()), "held": held, "failed": failed,
                "pairs": dict(pairs), "seconds": round(time.perf_counter() - start, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.rebalance", description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="old", required=True,
                    help="the replicas' base URLs before, comma-separated (the proxy's ring now)")
    ap.add_argument("--to", dest="new", required=True,
                    help="the replicas' base URLs after, comma-separated (the proxy's next ring)")
    ap.add_argument("--api-key", default=os.environ.get("RIMER_API_KEY"),
                    help="an API key of the replicas (env RIMER_API_KEY)")
    ap.add_argument("--dry-run", action="store_true", help="list the moves, move nothing")
    args = ap.parse_args(argv)
    split = lambda text: [u.strip() for u in text.split(",") if u.strip()]  # noqa: E731
    try:
        mover = Mover(split(args.old), split(args.new), args.api_key,
                      log=lambda line: print(line, file=sys.stderr))
        if args.dry_run:
            mover.check_ready()
            moves = mover.plan()
            print(json.dumps({"to_move": len(moves),
                              "pairs": dict(Counter(f"{s} -> {t}" for _, s, t in moves))}))
            return 0
        report = mover.run()
    except (ValueError, RuntimeError, httpx.HTTPError) as exc:
        print(f"rebalance: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

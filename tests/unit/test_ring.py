"""rimer_client.Ring, nginx's `hash $key consistent` in Python, without nginx: owners recorded
from a real nginx 1.22 (Debian bookworm) routing to four loopback upstreams, the ~1/N movement
when a server is added, and the grouping the client's bulk split uses. The cluster test
(tests/integration/test_cluster.py) checks it against a running nginx on 1,000 ids."""

from __future__ import annotations

import pytest
from rimer_client import Ring

FOUR = ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103", "127.0.0.1:9104"]
# nginx -c (upstream: hash $series_id consistent; server 127.0.0.1:9101 .. 9104), GET
# /series/{id}/forecast, each upstream answering its own port
SEEN_FROM_NGINX = {"a": "9103", "b": "9103", "plant-7.load": "9102", "meter-0001.kw": "9103",
                   "x:y_z": "9101", "Z9": "9102", "s-1": "9102", "s-2": "9102", "s-3": "9102",
                   "s-4": "9104", "s-5": "9104", "s-6": "9103", "s-7": "9103", "s-8": "9104",
                   "s-9": "9104", "s-10": "9102"}


def test_owners_are_the_ones_nginx_chose():
    ring = Ring(FOUR)
    assert {i: ring.owner(i).rsplit(":", 1)[1] for i in SEEN_FROM_NGINX} == SEEN_FROM_NGINX


def test_adding_a_server_moves_about_a_quarter_and_only_onto_it():
    ids = [f"series-{k}" for k in range(5000)]
    three, four = Ring(FOUR[:3]), Ring(FOUR)
    moved = [i for i in ids if three.owner(i) != four.owner(i)]
    assert 0.15 < len(moved) / len(ids) < 0.35
    assert {four.owner(i) for i in moved} == {FOUR[3]}
    shares = [sum(four.owner(i) == s for i in ids) / len(ids) for s in FOUR]
    assert all(0.12 < x < 0.4 for x in shares), shares


def test_group_keeps_order_and_covers_every_position():
    ring = Ring(FOUR)
    ids = ["a", "b", "a", "s-4", "x:y_z", "s-1"]
    groups = ring.group(ids)
    assert sorted(k for idx in groups.values() for k in idx) == list(range(len(ids)))
    for server, idx in groups.items():
        assert idx == sorted(idx) and all(ring.owner(ids[k]) == server for k in idx)


def test_one_server_and_bad_rings():
    assert Ring(["h:1"]).owner("anything") == "h:1"
    with pytest.raises(ValueError):
        Ring([])
    with pytest.raises(ValueError):
        Ring(["h:1", "h:1"])
    with pytest.raises(ValueError):
        Ring(FOUR).owner("")

"""Hostile bodies against a real server: a 12 MB body of invalid values and a body of a million
unknown keys are refused with a 422 in memory proportional to their size, while /healthz keeps
answering (issue 26's first case)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import Server

BODIES = {
    "a million invalid values": b'{"values": [' + b",".join([b'"x"'] * 3_000_000) + b"]}",
    "a million unknown keys": b"{" + b",".join(b'"k%d": 1' % i for i in range(1_200_000)) + b"}",
    # (a newline before each colon escaped the count of keys: 1.35 GB at 62 MB)
    "keys with a newline before the colon": b"{" + b",".join(
        b'"k%d"\n:1' % i for i in range(1_200_000)) + b"}",
    # (4 million empty arrays: each a list object once parsed; 1.6 GB at 60 MB)
    "four million empty arrays": b'{"values": [' + b",".join([b"[]"] * 4_000_000) + b"]}",
}


def rss_mb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server():
    server = Server()
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BODIES))
def test_a_large_invalid_body_is_refused_in_bounded_memory_and_time(server, kind):
    body, pid = BODIES[kind], server.proc.pid
    assert len(body) >= 12_000_000
    base, peak, latencies, done = rss_mb(pid), [0], [], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.005)

    def health():
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while not done.is_set():
                t = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - t)
                time.sleep(0.01)

    threads = [threading.Thread(target=watch), threading.Thread(target=health)]
    for t in threads:
        t.start()
    try:
        r = httpx.post(server.url + "/series/hostile/append", content=body, timeout=60,
                       headers={"content-type": "application/json"})
        time.sleep(0.2)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert r.status_code == 422 and r.json()["field"] in ("values[0]", "body"), r.text[:300]
    assert len(r.json().get("errors") or []) <= 20  # the first problems, not one per element
    # Measured here: +63 MB and +18 MB at the peak (before: 1.0-3.3 GB for such bodies).
    assert peak[0] - base < 100, f"peak RSS +{peak[0] - base} MB"
    # Measured here: 62 and 42 ms at worst; the bar is 100 ms, with room for a busy CI machine.
    assert latencies and max(latencies) < 0.2, f"/healthz took {max(latencies) * 1000:.0f} ms"
    assert server.client.get("/series/hostile").status_code == 404  # nothing appended


@pytest.mark.slow
def test_slow_headers_are_cut_off_and_do_not_stop_healthz():
    """1,000 connections that send a request line and then one header line a second: /healthz
    answers meanwhile, and each is answered 408 and closed after --header-timeout-s."""
    import socket

    slow = Server("--header-timeout-s", "2", "--weights", "weights/rimer-small")
    socks = []
    try:
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", slow.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        start = time.monotonic()
        closed, latencies = set(), []
        while time.monotonic() - start < 6 and len(closed) < len(socks):
            t = time.perf_counter()
            assert slow.client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - t)
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                s.setblocking(False)
                try:
                    if time.monotonic() - start < 1.5:
                        s.sendall(b"X-Trickle: 1\r\n")  # one more header line, never the end
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    closed.add(i)
                    continue
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed.add(i)
            time.sleep(0.2)
        assert max(latencies) < 0.5, f"/healthz took {max(latencies) * 1000:.0f} ms"
        assert len(closed) == len(socks), f"{len(socks) - len(closed)} slow connections still open"
        assert time.monotonic() - start < 6
    finally:
        for s in socks:
            s.close()
        slow.stop()


@pytest.mark.slow
def test_past_the_connection_cap_probes_answer_and_requests_get_json_503():
    """Idle connections fill --max-connections: /healthz and /readyz still answer 200 (a
    liveness probe must not restart a busy server), any other request gets the API's JSON 503
    with a Retry-After, and once the connections go the server answers as before."""
    import socket

    capped = Server("--max-connections", "20", "--weights", "weights/rimer-small")
    socks = []
    try:
        for _ in range(25):
            socks.append(socket.create_connection(("127.0.0.1", capped.port)))
        time.sleep(0.3)  # (the server has accepted them)
        with httpx.Client(base_url=capped.url, timeout=10) as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
        with httpx.Client(base_url=capped.url, timeout=10) as c:
            r = c.post("/forecast", json={"series": [{"id": "a", "values": [1.0] * 40}]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["field"] is None and "--max-connections" in r.json()["detail"]
    finally:
        for s in socks:
            s.close()
    try:
        time.sleep(0.3)
        r = capped.client.post("/forecast", json={"series": [{"id": "a", "values": [1.0] * 40}]})
        assert r.status_code == 200, r.text
    finally:
        capped.stop()


def _exchange(port: int, data: bytes, wait: float = 10.0) -> bytes:
    """Send `data` on a new connection and read until the server closes it (or `wait`)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b'"field"' in out:
                    break
        except OSError:
            pass
        return out


def _exchange_in(port: int, data: bytes, pieces: int) -> bytes:
    """`_exchange`, the bytes sent in `pieces` writes 20 ms apart."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        step = -(-len(data) // pieces)
        try:
            for at in range(0, len(data), step):
                s.sendall(data[at:at + step])
                time.sleep(0.02)
        except OSError:
            pass  # (refused while sending)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def test_oversized_headers_431_unparsable_requests_json_400_unknown_methods_501(server):
    """A request's line and headers are bounded (64 kB: 200 kB of one header line was read
    whole), answered 431 in the API's JSON and closed, even while still arriving; bytes that are
    not HTTP get a JSON 400, not uvicorn's plain text; headers near the bound, and a large body
    arriving in the same packets as its headers, are served as before."""
    from service.http_protocol import MAX_HEADER_BYTES

    big = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"v" * (MAX_HEADER_BYTES + 100)
    out = _exchange(server.port, big)  # (no end of headers: refused while they arrive)
    assert out.startswith(b"HTTP/1.1 431") and b"application/json" in out and b"65536 bytes" in out
    for size, pieces in ((70_000, 1), (120_000, 1), (70_000, 9)):  # complete headers too
        whole = (b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"v" * size + b"\r\n\r\n")
        out = _exchange_in(server.port, whole, pieces)
        assert out.startswith(b"HTTP/1.1 431") and b"65536 bytes" in out, (size, pieces, out[:80])
    many = b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + b"".join(
        b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)) + b"\r\n"
    assert _exchange(server.port, many).startswith(b"HTTP/1.1 431")
    out = _exchange(server.port, b"BLAH BLAH\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b'"field": null' in out and b"not HTTP" in out
    # A method no server knows is a 501 (RFC 9110, 9.1), not a malformed request; one HTTP
    # defines but the route does not serve, a 405 naming what it does.
    out = _exchange(server.port, b"FROB /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 501") and b"application/json" in out and b"method" in out, out
    out = _exchange(server.port, b"PATCH /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405") and b"allow: get, head" in out.lower(), out
    near = (b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-pad: "
            + b"v" * (MAX_HEADER_BYTES - 200) + b"\r\n\r\n")
    assert _exchange(server.port, near).startswith(b"HTTP/1.1 200")
    body = b'{"values": [1.0, 2.0]}' + b" " * 2_000_000  # (JSON may end in whitespace)
    post = (b"POST /series/hdr-body/append HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    out = _exchange(server.port, post)
    assert out.startswith(b"HTTP/1.1 200") and b'"length":2' in out.replace(b" ", b""), out[:300]
    assert server.client.get("/healthz").status_code == 200


def test_a_client_gone_mid_body_is_no_server_error(server):
    """A client that sends part of its body and closes the connection was logged as an ASGI
    exception with a traceback and counted as a 500 (alerts on 5xx fired): now a 400 in the
    metrics and one line of log, and the server goes on."""
    import socket

    from tests.helpers import value

    def fives() -> float:
        text = server.client.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("rimer_http_requests_total{") and 'status="500"' in line)

    before = fives()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /series/gone/append HTTP/1.1\r\nhost: x\r\ncontent-type: "
                  b"application/json\r\ncontent-length: 100\r\n\r\n{\"values\": [1.0,")
        time.sleep(0.3)
    time.sleep(0.5)
    assert fives() == before
    text = server.client.get("/metrics").text
    assert value(text, "rimer_http_requests_total", method="POST",
                 route="/series/{series_id}/append", status="400") >= 1
    assert server.client.get("/healthz").status_code == 200
    assert server.client.get("/series/gone").status_code == 404

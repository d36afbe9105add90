"""The shipped balancer config protects the nodes: a real HAProxy rendered by
cluster.devtools.haproxy_config with its defaults, a real node behind it, and
raw clients from two loopback addresses (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import csv
import io
import re
import socket
import time
from typing import Any

import requests

from cluster.devtools.haproxy_config import (
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_MAX_REQUESTS_PER_SOURCE,
)

POLL = "/socket.io/?EIO=4&transport=polling"
#: the shipped ``timeout http-request``
REQUEST_TIMEOUT = 10.0


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _get(port: int, path: str, source: str = "127.0.0.1") -> bytes:
    """The status line of ``GET path`` sent as is (no client-side normalising)."""
    with _connect(port, source) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.split(b"\r\n", 1)[0]


def _refused_connection(port: int, timeout: float) -> bytes | None:
    """``None`` when the balancer closes a new connection from 127.0.0.1
    without an HTTP answer (the reset may even reach ``connect``), else what
    it answered (``b"timeout"``: nothing, but the connection stays)."""
    try:
        with _connect(port) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET {POLL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return sock.recv(4096) or None
    except ConnectionError:
        return None
    except TimeoutError:
        return b"timeout"


def _frontend_sessions(proxy: Any) -> int:
    """The balancer's open client connections (its stats page, ``scur``)."""
    with requests.get(f"http://127.0.0.1:{proxy.stats_port}/;csv", timeout=5) as response:
        text = response.text
    rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
    return next(int(r["scur"]) for r in rows
                if r["pxname"] == "socketio_in" and r["svname"] == "FRONTEND")


def _closed_within(sock: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before closing ``sock`` (``None``: still open)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return data


def test_private_paths_are_refused_however_they_are_spelled(
        node_factory: Any, haproxy_factory: Any) -> None:
    """The finding: ``GET //metrics`` through the shipped config gave 200 and
    the full Prometheus output (HAProxy matched the raw path)."""
    (node,) = node_factory(message_queue=None)
    proxy = haproxy_factory([node])
    # the node itself serves the doubled slash: only the balancer can refuse it
    assert _get(node.port, "//metrics").startswith(b"HTTP/1.1 200")
    for path in ("//metrics", "/./metrics", "/%6Detrics", "/foo/../metrics", "//healthz",
                 "/READYZ?", "///readyz/", "/metrics;x=1", "/%2Fmetrics", "/.%2E/metrics",
                 "/a/b/%2E%2E/../Metrics", "/healthz/."):
        assert _get(proxy.port, path).startswith(b"HTTP/1.1 404"), path
    assert _get(proxy.port, POLL).startswith(b"HTTP/1.1 200")


def test_one_source_cannot_take_every_connection_or_hold_slow_bodies(
        node_factory: Any, haproxy_factory: Any) -> None:
    """The finding: one client holding 4,150 slow POSTs (maxconn 4096, no
    per-source limit, no body deadline) left every other client unanswered."""
    (node,) = node_factory(message_queue=None)
    proxy = haproxy_factory([node])
    limit = DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    held: list[socket.socket] = []
    head = (f"POST {POLL} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            "Content-Length: 1000\r\n\r\nx").encode()
    started = time.monotonic()
    try:
        for _ in range(limit):
            sock = _connect(proxy.port)
            sock.sendall(head)  # a complete head, 1 of 1000 body bytes
            held.append(sock)
        # HAProxy's threads accept in parallel: wait until it holds them all
        deadline = time.monotonic() + 10
        while _frontend_sessions(proxy) < limit:
            assert time.monotonic() < deadline, _frontend_sessions(proxy)
            time.sleep(0.05)
        # one more from the same address is closed unanswered...
        served = _refused_connection(proxy.port, 5)
        assert served is None, f"connection over the per-source limit was served: {served!r}"
        # ...while another address is answered at once
        began = time.monotonic()
        assert _get(proxy.port, POLL, source="127.0.0.2").startswith(b"HTTP/1.1 200")
        assert time.monotonic() - began < 2
        # the slow bodies are cut at the request deadline, however they
        # dribble (one of them sends a byte every half second)
        dribbler, stalled = held[0], held[1:]
        cut: bytes | None = None
        while cut is None and time.monotonic() - started < REQUEST_TIMEOUT + 4:
            try:
                dribbler.sendall(b"x")
            except OSError:
                cut = b""
                break
            cut = _closed_within(dribbler, 0.5)
        assert cut is not None, "a dribbling body outlived the request timeout"
        assert cut == b"" or cut.startswith(b"HTTP/1.1 408"), cut
        for sock in stalled:
            left = max(0.1, REQUEST_TIMEOUT + 5 - (time.monotonic() - started))
            answer = _closed_within(sock, left)
            assert answer is not None, "a stalled body outlived the request timeout"
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
        # and the source is welcome again once its connections are gone
        assert _get(proxy.port, POLL).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


def test_one_source_past_the_request_rate_gets_429(
        node_factory: Any, haproxy_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    proxy = haproxy_factory([node])
    limit = DEFAULT_MAX_REQUESTS_PER_SOURCE
    # pipelined in batches (a batch fits HAProxy's buffer), each request one
    # the balancer answers itself (404): only the rate matters
    count, batch = limit + 20, 50
    answers = b""
    with _connect(proxy.port) as sock:
        sock.settimeout(5)
        deadline = time.monotonic() + 30
        for sent in range(0, count, batch):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * min(batch, count - sent))
            while (answers.count(b"HTTP/1.1 ") < min(sent + batch, count)
                   and time.monotonic() < deadline):
                chunk = sock.recv(65536)
                assert chunk, f"closed after {answers.count(b'HTTP/1.1 ')} answers"
                answers += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
    assert len(statuses) == count
    # HAProxy's rate is a sliding estimate: the cut comes at about the limit,
    # never after it, and everything past it is refused
    served = statuses.count(b"404")
    assert limit * 0.95 <= served <= limit, served
    assert set(statuses[:served]) == {b"404"} and set(statuses[served:]) == {b"429"}
    # the source stays refused for now; another address does not
    assert _get(proxy.port, POLL).startswith(b"HTTP/1.1 429")
    assert _get(proxy.port, POLL, source="127.0.0.2").startswith(b"HTTP/1.1 200")
    assert requests.get(node.url + "/healthz", timeout=5).status_code == 200


def test_the_limits_can_be_raised_or_switched_off(
        node_factory: Any, haproxy_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    proxy = haproxy_factory([node], max_connections_per_source=None,
                            max_requests_per_source=5, request_timeout="2s")
    assert "conn_cur gt" not in proxy.config_text
    statuses = [_get(proxy.port, "/healthz").split()[1] for _ in range(8)]
    served = statuses.count(b"404")  # about 5: the rate is a sliding estimate
    assert 4 <= served <= 5 and statuses == [b"404"] * served + [b"429"] * (8 - served)
    with _connect(proxy.port, "127.0.0.2") as sock:
        sock.sendall(f"POST {POLL} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n".encode())
        began = time.monotonic()
        answer = _closed_within(sock, 6)
        assert answer is not None and time.monotonic() - began < 4
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer

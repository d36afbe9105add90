"""cluster.devtools.haproxy_process: a real HAProxy in front of stand-in nodes."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import time
from collections.abc import Callable

import pytest
import requests

from cluster.devtools.haproxy_config import cookie_value
from cluster.devtools.haproxy_process import HAProxyProcess
from cluster.devtools.processes import NodeProcess, ProcessStartError
from tests.devtools.fake_node import served_by


def test_haproxy_keeps_a_session_on_its_node_and_balances_new_ones(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(2)
    proxy = haproxy_factory(nodes)
    ports = {n.port for n in nodes}

    fresh = {served_by(requests.Session(), proxy.url) for _ in range(4)}
    assert fresh == ports  # round robin without a cookie

    session = requests.Session()
    first = served_by(session, proxy.url)
    sticky_name = next(n.name for n in nodes if n.port == first)
    # opaque: the cookie names no backend, but pins this one
    assert session.cookies.get("SERVERID") == cookie_value(sticky_name) != sticky_name
    assert {served_by(session, proxy.url) for _ in range(6)} == {first}
    # `indirect`: the node never sees the balancer's cookie.
    assert "SERVERID" not in (session.get(f"{proxy.url}/info", timeout=5).json()["cookie"] or "")


def test_haproxy_fails_over_when_the_sticky_node_is_killed(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(2)
    proxy = haproxy_factory(nodes)
    session = requests.Session()
    first = served_by(session, proxy.url)
    victim = next(n for n in nodes if n.port == first)
    survivor = next(n for n in nodes if n is not victim)

    victim.kill(signal.SIGKILL)
    # Redispatch: served by the survivor at once, before the checks notice.
    assert served_by(session, proxy.url) == survivor.port
    assert session.cookies.get("SERVERID") == cookie_value(survivor.name)
    proxy.wait_for_state(victim.name, "DOWN", timeout=5)

    victim.start()
    proxy.wait_for_state(victim.name, "UP", timeout=5)
    assert {served_by(requests.Session(), proxy.url) for _ in range(4)} == {
        victim.port,
        survivor.port,
    }
    assert served_by(session, proxy.url) == survivor.port  # stays where it went


def test_haproxy_stops_routing_to_a_draining_node(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(2)
    proxy = haproxy_factory(nodes)
    session = requests.Session()
    first = served_by(session, proxy.url)
    draining = next(n for n in nodes if n.port == first)

    assert requests.post(f"{draining.url}/drain", timeout=5).status_code == 200
    proxy.wait_for_state(draining.name, "DOWN", timeout=5)
    assert served_by(session, proxy.url) != draining.port
    assert {served_by(requests.Session(), proxy.url) for _ in range(4)} == {
        n.port for n in nodes if n is not draining
    }


def test_haproxy_factory_waits_for_every_node_to_pass_a_check(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(2)
    requests.post(f"{nodes[1].url}/drain", timeout=5)  # /readyz now 503
    proxy = haproxy_factory(nodes, wait_ready=False)
    with pytest.raises(ProcessStartError, match=r"within 1\.5 s: node2: DOWN"):
        proxy.wait_all_up(timeout=1.5)
    assert proxy.server_states()["node1"] == "UP"


def test_haproxy_passes_websocket_upgrades_through(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(1)
    # Short HTTP timeouts: the upgraded connection must outlive them.
    proxy = haproxy_factory(nodes, client_timeout="1s", server_timeout="1s", tunnel_timeout="30s")
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            (
                "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed before the 101: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        accept = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        assert base64.b64encode(accept) in head
        for message in (b"hello", b"after the http timeouts"):
            sock.sendall(message)
            assert sock.recv(4096) == message
            time.sleep(1.5)

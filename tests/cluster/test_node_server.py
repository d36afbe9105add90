"""The node runner with real node processes: probes, limits, handshake defaults."""

from __future__ import annotations

import base64
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import requests


def _websocket_handshake(port: int, extensions: str | None) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                break
            response += chunk
    return response.decode("latin-1")


def test_help_explains_every_option() -> None:
    result = subprocess.run([sys.executable, "-m", "cluster", "node", "--help"],
                            capture_output=True, text=True, timeout=30, check=True)
    for option in ("--app", "--host", "--port", "--message-queue", "--channel",
                   "--signing-secret", "--max-connections", "--tcp-nodelay",
                   "--no-tcp-nodelay", "--websocket-compression", "--drain-seconds",
                   "--access-log", "--log-level", "MESSAGE_QUEUE_URL", "REDIS_URL"):
        assert option in result.stdout


def test_bad_app_spec_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cluster", "node", "--app", "no_such_module:socketio"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "cannot import module 'no_such_module'" in result.stderr


def test_probes_and_app_routes_share_one_port(node_factory: Any) -> None:
    (node,) = node_factory(message_queue=None, env={"NODE_NAME": "solo"})
    assert requests.get(node.url + "/healthz", timeout=5).text == "ok\n"
    assert requests.get(node.url + "/readyz", timeout=5).status_code == 200
    assert requests.get(node.url + "/node", timeout=5).json() == {"node": "solo"}
    metrics = requests.get(node.url + "/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "socketio_connections" in metrics.text
    polling = requests.get(node.url + "/socket.io/?EIO=4&transport=polling", timeout=5)
    assert polling.status_code == 200 and polling.text.startswith("0{")


def test_permessage_deflate_is_declined_by_default(node_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    response = _websocket_handshake(node.port, "permessage-deflate; client_max_window_bits")
    assert response.startswith("HTTP/1.1 101")
    assert "permessage-deflate" not in response.lower()


def test_permessage_deflate_accepted_when_configured(node_factory: Any) -> None:
    (node,) = node_factory(message_queue=None, extra_args=["--websocket-compression"])
    response = _websocket_handshake(node.port, "permessage-deflate")
    assert response.startswith("HTTP/1.1 101")
    assert "sec-websocket-extensions: permessage-deflate" in response.lower()


def test_more_than_1024_connections_are_served(node_factory: Any) -> None:
    """eventlet's default pool would leave connection 1,025 hanging."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if soft < wanted + 100:
        if hard != resource.RLIM_INFINITY and hard < wanted + 100:
            pytest.skip(f"open-file hard limit {hard} is too low for this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted + 200, hard))
    (node,) = node_factory(message_queue=None)
    held: list[socket.socket] = []
    try:
        for _ in range(wanted):
            sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            # an unfinished request keeps the server's green thread busy
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        time.sleep(0.5)
        response = requests.get(node.url + "/healthz", timeout=10)
        assert response.status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_sigterm_stops_the_node_cleanly(node_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    code = node.stop(grace=10)
    assert code == 0
    assert "Traceback" not in node.log_text()

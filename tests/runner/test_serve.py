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

from cluster.runner.serve import DEFAULT_HTTP_HEADER_TIMEOUT, DEFAULT_HTTP_IDLE_TIMEOUT
from cluster.runtime.eventlet_server import http_protocol


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
    started = time.monotonic()
    try:
        for _ in range(wanted):
            sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            # an unfinished request keeps the server's green thread busy
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        # every held connection accepted: the node holds a descriptor for each
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{node.pid}/fd")) < wanted:
            assert time.monotonic() < deadline, "the node did not accept them all"
            time.sleep(0.05)
        response = requests.get(node.url + "/healthz", timeout=10)
        assert response.status_code == 200
        # the held requests must still be open: the header timeout (10 s)
        # would otherwise have freed their slots
        assert time.monotonic() - started < DEFAULT_HTTP_HEADER_TIMEOUT
    finally:
        for sock in held:
            sock.close()


def test_sigterm_stops_the_node_cleanly(node_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    code = node.stop(grace=10)
    assert code == 0
    assert "Traceback" not in node.log_text()


# -- header and idle timeouts -------------------------------------------------

TIMEOUTS_APP = """
from flask import Flask
from cluster import SocketIO

app = Flask(__name__)
app.config["SECRET_KEY"] = "timeouts-test"
socketio = SocketIO(app, http_header_timeout=HEADER, http_idle_timeout=IDLE)


@socketio.on("echo")
def echo(data):
    return data
"""
HEADER, IDLE = 1.0, 2.0


@pytest.fixture
def timeouts_node(node_factory: Any, tmp_path: Any) -> Any:
    """A node with a 1 s header timeout and a 2 s idle timeout."""
    source = TIMEOUTS_APP.replace("HEADER", str(HEADER)).replace("IDLE", str(IDLE))
    (tmp_path / "timeouts_app.py").write_text(source)
    (node,) = node_factory(app="timeouts_app:socketio", message_queue=None,
                           env={"PYTHONPATH": str(tmp_path)})
    return node


def _closed_within(sock: socket.socket, timeout: float) -> bool:
    """True once the server closed ``sock`` (EOF or reset), within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass  # a response (e.g. 408) may come first
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def _healthz_on(sock: socket.socket) -> bytes:
    """Send one keep-alive request for /healthz on ``sock``; its whole response."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    response = b""
    while not response.endswith(b"\r\n\r\nok\n"):
        chunk = sock.recv(4096)
        assert chunk, f"closed after {response!r}"
        response += chunk
    return response


def test_defaults_and_switches() -> None:
    assert (DEFAULT_HTTP_HEADER_TIMEOUT, DEFAULT_HTTP_IDLE_TIMEOUT) == (10.0, 60.0)
    from cluster.config import NodeConfig
    from cluster.exceptions import ConfigurationError

    def transport(**options: Any) -> Any:
        return NodeConfig.from_options(options).transport

    assert transport().http_header_timeout == 10.0
    assert transport(http_header_timeout=0).http_header_timeout is None
    assert transport(http_idle_timeout=None).http_idle_timeout is None
    with pytest.raises(ConfigurationError, match="number of seconds"):
        transport(http_idle_timeout="soon")
    assert http_protocol(None, None).rbufsize == 2048


def test_half_sent_requests_are_closed_by_the_header_deadline(timeouts_node: Any) -> None:
    """The finding: 0 of 50 half-sent requests were closed after 20 s."""
    port = timeouts_node.port
    started = time.monotonic()
    half_sent = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line
        half_sent.append(sock)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
    # a byte every 0.2 s: a per-read socket timeout would never fire
    dribbler = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    cut_after = None
    for i in range(len(head)):
        if time.monotonic() - started > HEADER + 3:
            break
        try:
            dribbler.sendall(head[i:i + 1])
        except OSError:
            cut_after = time.monotonic() - started
            break
        if _closed_within(dribbler, 0.2):
            cut_after = time.monotonic() - started
            break
    try:
        assert cut_after is not None and cut_after < HEADER + 3, cut_after
        for sock in half_sent + silent:
            assert _closed_within(sock, max(0.1, HEADER + 5 - (time.monotonic() - started)))
        assert time.monotonic() - started < HEADER + 5
        # the node is fine and serves complete requests as before
        assert requests.get(timeouts_node.url + "/healthz", timeout=5).status_code == 200
    finally:
        for sock in half_sent + silent + [dribbler]:
            sock.close()


def test_idle_keepalive_closed_but_websockets_and_long_polls_stay(
        timeouts_node: Any, sio_client_factory: Any) -> None:
    websocket = sio_client_factory(reconnection=False)
    polling = sio_client_factory(reconnection=False)
    drops: list[str] = []
    websocket.on("disconnect", lambda *a: drops.append("websocket"))
    polling.on("disconnect", lambda *a: drops.append("polling"))
    websocket.connect(timeouts_node.url, transports=["websocket"], wait_timeout=10)
    polling.connect(timeouts_node.url, transports=["polling"], wait_timeout=10)

    with socket.create_connection(("127.0.0.1", timeouts_node.port), timeout=5) as sock:
        assert _healthz_on(sock).startswith(b"HTTP/1.1 200")
        # longer than the header timeout, shorter than the idle timeout: a
        # kept-alive connection waiting for its next request is not cut
        time.sleep(HEADER + 0.5)
        assert _healthz_on(sock).startswith(b"HTTP/1.1 200")
        idle_from = time.monotonic()
        assert _closed_within(sock, IDLE + 5)
        idle_for = time.monotonic() - idle_from
    assert IDLE - 0.5 < idle_for < IDLE + 3, idle_for
    # by now the polling client's pending GET has waited longer than both
    # timeouts (it is answered after ping_interval, 25 s) and the websocket
    # has been silent as long: neither was cut
    assert time.monotonic() - idle_from > IDLE
    assert websocket.call("echo", "ws", timeout=5) == "ws"
    assert polling.call("echo", "poll", timeout=5) == "poll"
    assert drops == [] and websocket.connected and polling.connected


# -- body deadline --------------------------------------------------------------

BODY_APP = """
from flask import Flask, request
from cluster import SocketIO

app = Flask(__name__)
app.config["SECRET_KEY"] = "body-deadline-test"
socketio = SocketIO(app, http_header_timeout=2, http_idle_timeout=3)


@app.route("/upload", methods=["POST"])
def upload():
    return str(len(request.get_data()))


@socketio.on("echo")
def echo(data):
    return data
"""
#: the node's body deadline in the test (the flag's environment variable)
BODY = 3.0


def _slow_request(port: int, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(head.encode())
    return sock


def test_slow_bodies_are_cut_by_the_body_deadline(
        node_factory: Any, sio_client_factory: Any, tmp_path: Any) -> None:
    """The finding: bodies sent at 1 byte every 2 s straight to a node (polling
    POST, a Flask route, /healthz with a body) were all still open after 30 s
    with a 2 s header timeout and a 3 s idle timeout."""
    (tmp_path / "body_app.py").write_text(BODY_APP)
    (node,) = node_factory(app="body_app:socketio", message_queue=None,
                           env={"PYTHONPATH": str(tmp_path),
                                "CLUSTER_HTTP_BODY_TIMEOUT": str(BODY)})
    handshake = requests.get(node.url + "/socket.io/?EIO=4&transport=polling", timeout=5)
    sid = handshake.text.split('"sid":"', 1)[1].split('"', 1)[0]
    body_head = "Host: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"
    slow = {
        "polling": _slow_request(
            node.port, f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
            + body_head),
        "flask": _slow_request(node.port, "POST /upload HTTP/1.1\r\n" + body_head),
        "healthz": _slow_request(node.port, "POST /healthz HTTP/1.1\r\n" + body_head),
    }
    started = time.monotonic()
    answers: dict[str, bytes] = {}
    try:
        # one byte a second each: under the idle timeout, so only the body
        # deadline can end them
        while len(answers) < len(slow) and time.monotonic() - started < BODY + 6:
            for name, sock in slow.items():
                if name in answers:
                    continue
                try:
                    sock.sendall(b"4")
                except OSError:
                    pass  # closed: read what it said below
            time.sleep(1.0)
            for name, sock in slow.items():
                if name not in answers:
                    answer = _answer_if_closed(sock)
                    if answer is not None:
                        answers[name] = answer
        took = time.monotonic() - started
        assert set(answers) == set(slow), f"still open after {took:.1f} s: " + ", ".join(
            sorted(set(slow) - set(answers)))
        assert took < BODY + 6
        # nobody answered yet: 408; /healthz had answered before its body came
        assert answers["polling"].startswith(b"HTTP/1.1 408"), answers["polling"]
        assert answers["flask"].startswith(b"HTTP/1.1 408"), answers["flask"]
        assert answers["healthz"] in (b"",) or answers["healthz"].startswith(b"HTTP/1.1 200")
    finally:
        for sock in slow.values():
            sock.close()
    # complete bodies are served as before, through every path that reads one
    assert requests.post(node.url + "/upload", data=b"x" * 5000, timeout=5).text == "5000"
    client = sio_client_factory(reconnection=False)
    client.connect(node.url, transports=["polling"], wait_timeout=10)
    assert client.call("echo", "after", timeout=5) == "after"
    assert "Traceback" not in node.log_text()


def _answer_if_closed(sock: socket.socket) -> bytes | None:
    """All the server sent if it has closed ``sock`` (``None``: still open)."""
    sock.settimeout(0.05)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
            sock.settimeout(0.5)
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return data


def test_body_timeout_option() -> None:
    from cluster.config import DEFAULT_HTTP_BODY_TIMEOUT, NodeConfig
    from cluster.runner.cli import build_parser, node_config

    assert DEFAULT_HTTP_BODY_TIMEOUT == 30.0
    assert NodeConfig.from_options({}).transport.http_body_timeout == 30.0
    assert NodeConfig.from_options({"http_body_timeout": 0}).transport.http_body_timeout is None
    args = build_parser().parse_args(["node", "--app", "x:y", "--http-body-timeout", "7"])
    assert node_config(NodeConfig.from_options({}), args).transport.http_body_timeout == 7.0

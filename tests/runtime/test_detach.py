"""Detached connections on both runtimes' servers (cluster.runtime.UPGRADE_DETACH):
the request's green thread ends, the socket stays open and keeps its
max_connections slot until released. Run in a child process per runtime,
since each monkey-patches its process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import runtime
from cluster.devtools.processes import free_port
from tests.harness.runtimes import require_runtime

ROOT = Path(__file__).resolve().parents[2]
MAX_CONNECTIONS = 20

# a WSGI app whose upgrades detach and echo upper-cased in the hub; GET
# /stats counts the process's green threads
SERVER = textwrap.dedent("""
    import gc, json, sys
    from cluster import runtime as rt
    green = rt.select(sys.argv[1])
    import greenlet
    from cluster.runtime import UPGRADE_DETACH, UPGRADE_SOCKET, ServerOptions

    held = []

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/stats":
            gc.collect()
            count = sum(isinstance(o, greenlet.greenlet) and not o.dead
                        for o in gc.get_objects())
            body = json.dumps({"green_threads": count, "held": len(held)}).encode()
            start_response("200 OK", [("Content-Length", str(len(body))),
                                      ("Connection", "close")])
            return [body]
        sock = environ[UPGRADE_SOCKET]()
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\n"
                     b"Connection: Upgrade\\r\\n\\r\\n")
        release = environ[UPGRADE_DETACH]()
        raw = green.raw_socket(sock)
        watch = green.watch_readable(raw.fileno())
        entry = (sock, release)
        held.append(entry)

        def readable():
            try:
                data = raw.recv(100)
            except BlockingIOError:
                watch.arm(readable)
                return
            if data:
                raw.send(data.upper())
                watch.arm(readable)
            else:
                watch.cancel()
                held.remove(entry)
                release()

        watch.arm(readable)
        return ()

    green.serve(app, "127.0.0.1", int(sys.argv[2]),
                ServerOptions(max_connections=int(sys.argv[3]), detach_websockets=True))
    print("ready", flush=True)
    green.sleep(120)
""")


@pytest.fixture(params=runtime.MODES)
def echo_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    require_runtime(request.param)
    script = tmp_path / "detach_server.py"
    script.write_text(SERVER)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(script), request.param, str(port), str(MAX_CONNECTIONS)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "ready", line + process.stdout.read()
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


def _upgraded(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1024)
        assert chunk, "closed during the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def _echo(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text)
    return sock.recv(100)


def _stats_request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return sock


def _response_body(sock: socket.socket) -> dict[str, int]:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    sock.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


def test_detached_connections_hold_no_green_thread_and_keep_their_slot(
        echo_server: int) -> None:
    port = echo_server
    before = _response_body(_stats_request(port))
    clients = [_upgraded(port) for _ in range(MAX_CONNECTIONS - 5)]
    for n, client in enumerate(clients):
        assert _echo(client, b"ping%d" % n) == b"PING%d" % n
    during = _response_body(_stats_request(port))
    assert during["held"] == len(clients)
    # 15 open connections, and no more green threads than with none
    assert during["green_threads"] - before["green_threads"] < 3, (before, during)

    clients += [_upgraded(port) for _ in range(5)]  # every slot taken now
    waiting = _stats_request(port)
    waiting.settimeout(1.0)
    with pytest.raises(TimeoutError):
        waiting.recv(1)  # not served: it waits in the accept queue
    clients.pop().close()  # a detached connection released gives its slot back
    waiting.settimeout(5)
    assert _response_body(waiting)["held"] == MAX_CONNECTIONS - 1
    for client in clients:
        assert _echo(client, b"still") == b"STILL"  # the others stay served
        client.close()
    deadline = time.monotonic() + 5
    while (held := _response_body(_stats_request(port))["held"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held == 0

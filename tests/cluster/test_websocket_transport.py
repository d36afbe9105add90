"""The node's websocket transport on real node processes: coalesced writes,
pings, the upgrade from polling, and a client that stops reading."""

from __future__ import annotations

import base64
import os
import socket
import time
from typing import Any

import requests
import socketio

from tests.harness.peers import Peer

MAX_BACKLOG = 64 * 1024


def _metric(node: Any, name: str, kind: str) -> float:
    text = requests.get(f"{node.url}/metrics", timeout=5).text
    prefix = f'{name}{{kind="{kind}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    raise AssertionError(f"{prefix!r} not in /metrics")


def _read_frame(sock: socket.socket) -> str:
    """One unmasked text frame from the server (small frames only)."""
    head = _read_exactly(sock, 2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(_read_exactly(sock, 2), "big")
    elif length == 127:
        length = int.from_bytes(_read_exactly(sock, 8), "big")
    return _read_exactly(sock, length).decode()


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


def _send_text(sock: socket.socket, text: str) -> None:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


def _stalled_member(node: Any, room: str) -> socket.socket:
    """A raw websocket client that joins ``room`` and then never reads."""
    sock = socket.socket()
    # a small receive window: the node's writes back up quickly
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((node.host, node.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                  f"Host: {node.host}:{node.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n", 1)[0]
    assert _read_frame(sock).startswith("0{")  # Engine.IO open
    _send_text(sock, "40")
    while not _read_frame(sock).startswith("40"):
        pass
    _send_text(sock, f'421["join","{room}"]')
    while not _read_frame(sock).startswith("431"):
        pass
    return sock


def test_a_client_that_stops_reading_is_cut_at_the_backlog_limit(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(message_queue=None, extra_args=["--max-backlog", str(MAX_BACKLOG)])
    stalled = _stalled_member(node, "feed")
    listener = Peer(sio_client_factory, node.url, cls=socketio.Client)
    texts: list[str] = []
    listener.client.on("room_message", lambda message: texts.append(message["text"]))
    listener.call("join", "feed")
    sender = Peer(sio_client_factory, node.url, cls=socketio.Client)
    padding = "x" * 1000
    count = 6000  # ~6 MB: more than the kernel buffers (~3 MB here) absorb
    for n in range(count):
        # acked one by one: a pace the reading listener keeps up with, so
        # only the stalled member falls behind
        sender.call("to_room", {"room": "feed", "text": f"{n:05d}{padding}"})
    deadline = time.monotonic() + 30
    while len(texts) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    # everyone else got everything, in order
    assert [text[:5] for text in texts] == [f"{n:05d}" for n in range(count)]
    assert _metric(node, "socketio_server_events_total", "slow_consumers") == 1
    # the stalled client was cut: reading now ends in EOF after what the
    # kernel had buffered, well before the ~6 MB it was sent
    received = 0
    stalled.settimeout(10)
    try:
        while chunk := stalled.recv(65536):
            received += len(chunk)
    except ConnectionResetError:
        pass
    stalled.close()
    assert received < count * len(padding) * 3 // 4
    # and the node still serves its clients
    assert listener.call("context")["result"]["sid"] == listener.sid


def test_frames_share_writes_and_the_upgrade_from_polling_works(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    polling_first = Peer(sio_client_factory, node.url, cls=socketio.Client,
                         transports=["polling", "websocket"])
    deadline = time.monotonic() + 10
    while polling_first.client.transport() != "websocket" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert polling_first.client.transport() == "websocket"
    polling_first.call("join", "feed")
    before = _metric(node, "socketio_websocket_total", "frames")
    sender = Peer(sio_client_factory, node.url, cls=socketio.Client)
    for n in range(200):
        sender.client.emit("to_room", {"room": "feed", "text": f"{n:03d}"})
    texts = []
    while len(texts) < 200:
        event, data = polling_first.events.get(timeout=10)
        if event == "room_message":
            texts.append(data["text"])
    assert texts == [f"{n:03d}" for n in range(200)]
    frames = _metric(node, "socketio_websocket_total", "frames") - before
    assert frames >= 200
    assert _metric(node, "socketio_websocket_total", "writes") <= _metric(
        node, "socketio_websocket_total", "frames")
    polling_only = Peer(sio_client_factory, node.url, cls=socketio.Client,
                        transports=["polling"])
    assert polling_only.call("context")["result"]["sid"] == polling_only.sid

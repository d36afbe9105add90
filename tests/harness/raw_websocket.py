"""A websocket client speaking Engine.IO and Socket.IO by hand, for tests
that must behave as no library would (never CONNECT, never read, send what
a parser should refuse), and the node's counters from /metrics."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from typing import Any

import requests

from cluster.node.websocket_reader import unmask


def metric(node: Any, name: str, kind: str) -> float:
    """A labelled sample of the node's /metrics, e.g. ``socketio_server_events_total``."""
    text = requests.get(f"{node.url}/metrics", timeout=5).text
    prefix = f'{name}{{kind="{kind}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    raise AssertionError(f"{prefix!r} not in /metrics")


def masked_text_frame(text: str) -> bytes:
    """A client's text frame (masked, as RFC 6455 requires), any length."""
    payload = text.encode()
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x81, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    mask = os.urandom(4)
    return head + mask + unmask(payload, mask)


class RawWebSocket:
    """A websocket client speaking Engine.IO by hand: it sends a Socket.IO
    CONNECT only when told to, as a stranger probing the node would."""

    def __init__(self, node: Any, receive_buffer: int | None = None,
                 sid: str | None = None) -> None:
        """Open a websocket to ``node``: a new Engine.IO session, or with
        ``sid`` the upgrade of that polling session (whose probe and
        UPGRADE packet are then the caller's to send)."""
        self.sock = socket.socket()
        if receive_buffer is not None:
            # before connect: a small window makes the node's writes back up
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect((node.host, node.port))
        key = base64.b64encode(os.urandom(16)).decode()
        session = f"&sid={sid}" if sid else ""
        self.sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket{session} HTTP/1.1\r\n"
                           f"Host: {node.host}:{node.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "closed during the handshake"
            head += chunk
        assert b" 101 " in head.split(b"\r\n", 1)[0]
        if sid:
            return
        opened = self.read()
        assert opened is not None and opened.startswith("0{")

    def send(self, text: str) -> None:
        self.sock.sendall(masked_text_frame(text))

    def _exactly(self, count: int) -> bytes | None:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def read(self) -> str | None:
        """The next text frame; ``None`` once the node closed the connection."""
        while True:
            head = self._exactly(2)
            if head is None:
                return None
            length = head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(self._exactly(2) or b"\0\0", "big")
            elif length == 127:
                length = int.from_bytes(self._exactly(8) or bytes(8), "big")
            body = self._exactly(length)
            if body is None or head[0] & 0x0F == 0x8:
                return None
            text = body.decode()
            if text == "2":  # Engine.IO ping
                self.send("3")
                continue
            if text == "1":  # Engine.IO close
                return None
            return text

    def read_until(self, prefix: str) -> str:
        while True:
            text = self.read()
            assert text is not None, f"closed before a frame starting with {prefix!r}"
            if text.startswith(prefix):
                return text

    def closed_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                if self.read() is None:
                    return True
        except TimeoutError:
            return False
        except OSError:  # reset by the node: closed too
            return True
        return False

    def close(self) -> None:
        self.sock.close()

    def connect_and_join(self, room: str) -> None:
        """Socket.IO CONNECT, then ``join`` ``room`` and wait for its ack."""
        self.send("40")
        self.read_until("40")
        self.send(f'421["join","{room}"]')
        self.read_until("431")

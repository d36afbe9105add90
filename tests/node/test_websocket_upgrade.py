"""The node's own websocket handshake on real nodes, on each runtime:
permessage-deflate end to end (``--websocket-compression``: frames
compressed with the connection's context, both ways), and a refused upgrade
from polling answered with its own status."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import zlib
from typing import Any

import pytest
import requests

from cluster import runtime
from cluster.node.websocket_reader import unmask
from tests.harness.runtimes import require_runtime


class DeflateClient:
    """A websocket client that offers permessage-deflate and speaks it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            "\r\n").encode())
        self.head = b""
        while b"\r\n\r\n" not in self.head:
            chunk = self.sock.recv(1)
            assert chunk, f"closed during the handshake: {self.head!r}"
            self.head += chunk
        self.inflater = zlib.decompressobj(-15)
        self.deflater = zlib.compressobj(-1, zlib.DEFLATED, -15)
        self.compressed_frames = 0

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            assert chunk, "closed by the node"
            data += chunk
        return data

    def read(self) -> str:
        first, second = self._exactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._exactly(8))[0]
        payload = self._exactly(length)
        if first & 0x40:  # RSV1: compressed, with the context of the frames before
            self.compressed_frames += 1
            payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
        return payload.decode()

    def send(self, text: str) -> None:
        data = self.deflater.compress(text.encode()) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        data = data[:-4]  # the empty block's tail is left out (RFC 7692, 7.2.1)
        mask = os.urandom(4)
        head = struct.pack("!BB", 0xC1, 0x80 | len(data)) if len(data) < 126 else \
            struct.pack("!BBH", 0xC1, 0x80 | 126, len(data))
        self.sock.sendall(head + mask + unmask(data, mask))


@pytest.mark.parametrize("mode", runtime.MODES)
def test_compressed_frames_both_ways(node_factory: Any, mode: str) -> None:
    require_runtime(mode)
    (node,) = node_factory(message_queue=None, extra_args=["--websocket-compression"],
                           env={"CLUSTER_ASYNC_MODE": mode})
    assert f"({mode})" in node.log_text()
    client = DeflateClient(node.port)
    try:
        assert b" 101 " in client.head.split(b"\r\n", 1)[0]
        assert b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n" in client.head
        assert client.read().startswith("0{")  # Engine.IO OPEN
        client.send("40")  # Socket.IO CONNECT, compressed
        connected = client.read()
        assert connected.startswith("40{") and '"sid"' in connected
        for n in range(3):  # the same reply again: context takeover shrinks it
            client.send(f'42{n}["context"]')
            reply = client.read()
            while not reply.startswith(f"43{n}"):
                reply = client.read()
            assert json.loads(reply[len(f"43{n}"):])[0]["node"] == node.name
        assert client.compressed_frames >= 5
    finally:
        client.sock.close()


@pytest.mark.parametrize("mode", runtime.MODES)
def test_a_refused_upgrade_from_polling_gets_its_status(node_factory: Any, mode: str) -> None:
    # python-engineio answers what an upgrade returns as a list with 200 OK
    require_runtime(mode)
    (node,) = node_factory(message_queue=None, env={"CLUSTER_ASYNC_MODE": mode})
    opened = requests.get(f"{node.url}/socket.io/?EIO=4&transport=polling", timeout=5).text
    sid = json.loads(opened[1:])["sid"]
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        sock.sendall((
            f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{node.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 8\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            assert chunk, response
            response += chunk
    assert response.startswith(b"HTTP/1.1 426 "), response
    assert b"\r\nsec-websocket-version: 13\r\n" in response.lower()  # any case

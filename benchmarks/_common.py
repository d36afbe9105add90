"""What the benchmarks share: a minimal Socket.IO-over-websocket client, /proc readers.

The client speaks just enough of RFC 6455 (handshake, masked text frames out,
unmasked frames in, ping/close control frames) and of Engine.IO v4 /
Socket.IO v5 (open ``0``, ping ``2`` / pong ``3``, CONNECT ``40``, EVENT
``42``, ACK ``43``) to drive a node without any client library in between:
what is measured is the node, not a client's threads or queues.

Everything connects to 127.0.0.1 only; every read has a timeout.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import struct
from typing import Any, Self

SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class BenchmarkError(RuntimeError):
    """The node did not answer as the protocol says it should."""


# -- websocket framing ----------------------------------------------------------

def handshake_request(host: str, port: int, path: str = SOCKETIO_PATH) -> bytes:
    """The HTTP/1.1 upgrade request of a websocket client (no extensions offered)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def check_handshake_response(head: bytes) -> None:
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise BenchmarkError(f"websocket upgrade refused: {status.decode(errors='replace')}")


def encode_frame(text: str, opcode: int = OP_TEXT) -> bytes:
    """One FIN frame from client to server: masked, as RFC 6455 requires."""
    payload = text.encode() if isinstance(text, str) else text
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    # XOR with the repeated mask, done on one big integer (fast enough for small frames)
    repeated = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big")
              ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
    return header + mask + masked


def parse_frame_header(first: bytes) -> tuple[int, bool, int, int]:
    """(opcode, masked, length or 126/127 marker, fin) from the first two bytes."""
    b0, b1 = first[0], first[1]
    return b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F, b0 & 0x80


# -- a blocking Socket.IO client on a raw socket ------------------------------------

class RawSocketIOClient:
    """One Socket.IO connection over a plain blocking TCP socket.

    ``connect()`` does the websocket upgrade, reads the Engine.IO open packet,
    sends CONNECT for ``/`` and waits for the CONNECT reply; ``sid`` is then
    the Socket.IO sid. ``recv()`` returns the next Engine.IO text message,
    answering Engine.IO pings and websocket pings on the way. The client
    socket always has TCP_NODELAY so that only the server's setting varies.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self._buffer = bytearray()
        self.sid: str | None = None
        self.connect_reply: dict[str, Any] = {}
        self.ack_id = 0

    def connect(self) -> Self:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        sock.sendall(handshake_request(self.host, self.port))
        head = self._read_until(b"\r\n\r\n")
        check_handshake_response(head)
        opened = self.recv()
        if not opened.startswith("0"):
            raise BenchmarkError(f"expected the Engine.IO open packet, got {opened[:80]!r}")
        self.send("40")
        while True:
            message = self.recv()
            if message.startswith("40"):
                self.connect_reply = json.loads(message[2:] or "{}")
                self.sid = self.connect_reply.get("sid")
                return self
            if message.startswith("44"):
                raise BenchmarkError(f"CONNECT refused: {message}")
            # anything else (the app's welcome event) is skipped

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.sendall(encode_frame("41"))
                self.sock.sendall(encode_frame("", OP_CLOSE))
            except OSError:
                pass
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire --

    def send(self, text: str) -> None:
        assert self.sock is not None
        self.sock.sendall(encode_frame(text))

    def emit(self, event: str, *args: Any, ack: bool = True) -> int | None:
        """Send an EVENT; returns the ack id when ``ack``."""
        body = json.dumps([event, *args], separators=(",", ":"))
        if not ack:
            self.send("42" + body)
            return None
        self.ack_id += 1
        self.send(f"42{self.ack_id}{body}")
        return self.ack_id

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise BenchmarkError("the node closed the connection")
        self._buffer += chunk

    def _read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _read_until(self, marker: bytes) -> bytes:
        while (index := self._buffer.find(marker)) < 0:
            self._fill()
        data = bytes(self._buffer[: index + len(marker)])
        del self._buffer[: index + len(marker)]
        return data

    def recv(self) -> str:
        """The next text message; Engine.IO pings are answered and skipped."""
        while True:
            opcode, masked, length, _fin = parse_frame_header(self._read_exact(2))
            if length == 126:
                length = struct.unpack("!H", self._read_exact(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read_exact(8))[0]
            mask = self._read_exact(4) if masked else b""
            payload = self._read_exact(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == OP_PING:
                assert self.sock is not None
                self.sock.sendall(encode_frame(payload.decode(errors="replace"), OP_PONG))
                continue
            if opcode == OP_CLOSE:
                raise BenchmarkError("the node sent a websocket close frame")
            if opcode in (OP_PONG, OP_BINARY):
                continue
            text = payload.decode()
            if text == "2":
                self.send("3")
                continue
            return text


_ACK_RE = re.compile(r"^43(\d+)")


def parse_message(text: str) -> tuple[str, Any, Any]:
    """Classify a Socket.IO message: ``("event", name, args)``,
    ``("ack", id, args)``, else other."""
    if text.startswith("42"):
        body = text[2:]
        start = body.index("[")
        data = json.loads(body[start:])
        return "event", data[0], data[1:]
    if text.startswith("43"):
        match = _ACK_RE.match(text)
        if match:
            return "ack", int(match.group(1)), json.loads(text[match.end():])
    return "other", text[:2], None


# -- /proc and the node's probes ----------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # after the command: state is fields[0]; utime, stime are stat fields 14, 15
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def metrics_gauge(host: str, port: int, name: str, timeout: float = 5.0) -> float | None:
    """The value of an unlabelled gauge on the node's ``/metrics``; None if no answer."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    for line in body.splitlines():
        if line.startswith((name + " ", name + "{}")):
            return float(line.rsplit(" ", 1)[1])
    return None


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.3f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


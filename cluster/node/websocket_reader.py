"""Reading websocket messages from a client (RFC 6455), at native speed.

eventlet's own websocket unmasked every incoming byte in a Python generator
(~0.28 s per MB): one client uploading large frames held the hub for
seconds and froze every other connection of the node. Here a payload is
unmasked with one integer XOR over the whole frame (C speed: ~1 ms per MB),
and :class:`WebSocketReader` bounds what one message may cost:

- a frame or message larger than ``max_message`` bytes (python-engineio's
  ``max_http_buffer_size``, 1 MB by default) closes the connection with
  1009 before its payload is read;
- a compressed message (permessage-deflate) may not inflate past
  ``max_message`` either (no decompression bombs);
- text must be valid UTF-8 (1007 otherwise); client frames must be masked
  (1002 otherwise), as the RFC requires.

Control frames are answered here: a ping gets its pong, a close frame its
close reply, through the connection's writer so they queue behind pending
frames instead of interleaving with them.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

from cluster.node.frames import OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PONG, OPCODE_TEXT, frame

OPCODE_CONTINUATION = 0x0
OPCODE_PING = 0x9
_RECV_SIZE = 65536
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


class ProtocolViolation(Exception):
    """The client broke RFC 6455; ``status`` is the close code to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def unmask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated, in one big-int op."""
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little")


class WebSocketReader:
    """Messages from one client socket.

    :param sock: the connection's (green) socket, already past the HTTP
        upgrade; its timeout bounds how long a read may wait.
    :param write: queues a frame to the client (pongs, the close reply).
    :param max_message: largest message in bytes, after inflation.
    :param deflate: the negotiated permessage-deflate parameters (see
        :func:`.websocket_handshake.negotiate_deflate`), or ``None``.
    """

    def __init__(self, sock: Any, write: Callable[[bytes], None], *, max_message: int,
                 deflate: dict[str, Any] | None = None) -> None:
        self._sock = sock
        self._write = write
        self.max_message = int(max_message)
        self._buffer = bytearray()
        self._deflate = deflate
        # zlib._Decompress: typeshed's name for what zlib.decompressobj() returns
        self._inflater: zlib._Decompress | None = None
        self.closed = False

    def read_message(self) -> str | bytes | None:
        """The next text (``str``) or binary (``bytes``) message; ``None``
        once the client closed (or broke the protocol, which is answered
        with the matching close frame)."""
        try:
            return self._read_message()
        except ProtocolViolation as violation:
            self._close(violation.status)
            return None
        except (ConnectionError, OSError, EOFError):
            self.closed = True
            return None

    def _read_message(self) -> str | bytes | None:
        parts: list[bytes] = []
        size = 0
        opcode = None
        compressed = False
        while not self.closed:
            fin, rsv1, frame_opcode, payload = self._read_frame(self.max_message - size)
            if frame_opcode >= 0x8:
                self._control(frame_opcode, payload)
                continue
            if opcode is None:
                if frame_opcode == OPCODE_CONTINUATION:
                    raise ProtocolViolation(1002, "continuation without a message")
                opcode, compressed = frame_opcode, rsv1
            elif frame_opcode != OPCODE_CONTINUATION:
                raise ProtocolViolation(1002, "new message inside a fragmented one")
            parts.append(payload)
            size += len(payload)
            if fin:
                data = b"".join(parts)
                if compressed:
                    data = self._inflate(data)
                if opcode == OPCODE_TEXT:
                    try:
                        return data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolViolation(1007, "text is not UTF-8") from None
                return data
        return None

    def _read_frame(self, room: int) -> tuple[bool, bool, int, bytes]:
        head = self._take(2)
        first, second = head[0], head[1]
        fin, rsv1, opcode = bool(first & 0x80), bool(first & 0x40), first & 0x0F
        if first & 0x30 or (rsv1 and self._deflate is None):
            raise ProtocolViolation(1002, "reserved bits set")
        if opcode not in (OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE,
                          OPCODE_PING, OPCODE_PONG):
            raise ProtocolViolation(1002, f"unknown opcode {opcode}")
        if not second & 0x80:
            raise ProtocolViolation(1002, "client frames must be masked")
        length = second & 0x7F
        if opcode >= 0x8:
            if not fin or length > 125:
                raise ProtocolViolation(1002, "bad control frame")
        elif length == 126:
            length = struct.unpack("!H", self._take(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._take(8))[0]
        if opcode < 0x8 and length > room:
            raise ProtocolViolation(1009, "message too large")
        mask = self._take(4)
        return fin, rsv1, opcode, unmask(self._take(length), mask)

    def _take(self, count: int) -> bytes:
        buffer = self._buffer
        while len(buffer) < count:
            chunk = self._sock.recv(max(_RECV_SIZE, count - len(buffer)))
            if not chunk:
                raise EOFError("closed by the client")
            buffer += chunk
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    def _inflate(self, data: bytes) -> bytes:
        options = self._deflate or {}
        inflater = self._inflater
        if inflater is None or options.get("client_no_context_takeover"):
            bits = int(options.get("client_max_window_bits") or zlib.MAX_WBITS)
            inflater = zlib.decompressobj(-bits)
            if not options.get("client_no_context_takeover"):
                self._inflater = inflater
        try:
            out = inflater.decompress(data + _DEFLATE_TAIL, self.max_message + 1)
        except zlib.error:
            raise ProtocolViolation(1007, "bad compressed data") from None
        if len(out) > self.max_message or inflater.unconsumed_tail:
            raise ProtocolViolation(1009, "message too large once inflated")
        return out

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OPCODE_PING:
            self._write(frame(payload, OPCODE_PONG))
        elif opcode == OPCODE_CLOSE:
            self._close(1000)

    def _close(self, status: int) -> None:
        if not self.closed:
            self.closed = True
            self._write(frame(struct.pack("!H", status), OPCODE_CLOSE))

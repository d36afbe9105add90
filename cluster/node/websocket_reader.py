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

    Bytes go in with :meth:`feed` (or are read by :meth:`read_message`,
    which blocks), messages come out of :meth:`next_message` as soon as they
    are complete: a frame's payload is taken only once all of it is
    buffered, so a connection that waits for more holds only its unparsed
    bytes, and no green thread (see :mod:`.websocket_reads`).

    :param sock: the connection's (green) socket, already past the HTTP
        upgrade; used by :meth:`read_message` only, whose waits its timeout
        bounds.
    :param write: queues a frame to the client (pongs, the close reply).
    :param max_message: largest message in bytes, after inflation.
    :param deflate: the negotiated permessage-deflate parameters (see
        :func:`.websocket_handshake.negotiate_deflate`), or ``None``.
    """

    __slots__ = ("_sock", "_write", "max_message", "_buffer", "_deflate", "_inflater",
                 "closed", "_parts", "_size", "_opcode", "_compressed")

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
        # the message being assembled from its frames
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode: int | None = None
        self._compressed = False

    @property
    def buffered(self) -> int:
        """Bytes received and not parsed yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add bytes read from the client (``b""``: the client closed)."""
        if not data:
            self.closed = True
        else:
            self._buffer += data

    def read_message(self) -> str | bytes | None:
        """The next text (``str``) or binary (``bytes``) message, waiting
        for it; ``None`` once the client closed (or broke the protocol,
        which is answered with the matching close frame)."""
        while True:
            message = self.next_message()
            if message is not None or self.closed:
                return message
            try:
                chunk = self._sock.recv(_RECV_SIZE)
            except (ConnectionError, OSError, EOFError):
                self.closed = True
                return None
            self.feed(chunk)

    def next_message(self) -> str | bytes | None:
        """The next message if all of it is buffered, else ``None`` (and
        :attr:`closed` tells whether more may come)."""
        try:
            return self._next_message()
        except ProtocolViolation as violation:
            self._close(violation.status)
            return None

    def _next_message(self) -> str | bytes | None:
        while not self.closed:
            parsed = self._next_frame(self.max_message - self._size)
            if parsed is None:
                return None
            fin, rsv1, frame_opcode, payload = parsed
            if frame_opcode >= 0x8:
                self._control(frame_opcode, payload)
                continue
            if self._opcode is None:
                if frame_opcode == OPCODE_CONTINUATION:
                    raise ProtocolViolation(1002, "continuation without a message")
                self._opcode, self._compressed = frame_opcode, rsv1
            elif frame_opcode != OPCODE_CONTINUATION:
                raise ProtocolViolation(1002, "new message inside a fragmented one")
            self._parts.append(payload)
            self._size += len(payload)
            if fin:
                return self._assemble()
        return None

    def _assemble(self) -> str | bytes:
        parts, opcode, compressed = self._parts, self._opcode, self._compressed
        self._parts, self._size, self._opcode, self._compressed = [], 0, None, False
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if compressed:
            data = self._inflate(data)
        if opcode == OPCODE_TEXT:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolViolation(1007, "text is not UTF-8") from None
        return data

    def _next_frame(self, room: int) -> tuple[bool, bool, int, bytes] | None:
        """The next whole frame, taken from the buffer; ``None`` (nothing
        taken) while part of it is still to come. The head is checked as
        soon as it is in, so an oversized frame is refused before its
        payload is waited for."""
        buffer = self._buffer
        available = len(buffer)
        if available < 2:
            return None
        first, second = buffer[0], buffer[1]
        fin, rsv1, opcode = bool(first & 0x80), bool(first & 0x40), first & 0x0F
        if first & 0x30 or (rsv1 and self._deflate is None):
            raise ProtocolViolation(1002, "reserved bits set")
        if opcode not in (OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE,
                          OPCODE_PING, OPCODE_PONG):
            raise ProtocolViolation(1002, f"unknown opcode {opcode}")
        if not second & 0x80:
            raise ProtocolViolation(1002, "client frames must be masked")
        length = second & 0x7F
        head = 2
        if opcode >= 0x8:
            if not fin or length > 125:
                raise ProtocolViolation(1002, "bad control frame")
        elif length == 126:
            if available < 4:
                return None
            length = struct.unpack_from("!H", buffer, 2)[0]
            head = 4
        elif length == 127:
            if available < 10:
                return None
            length = struct.unpack_from("!Q", buffer, 2)[0]
            head = 10
        if opcode < 0x8 and length > room:
            raise ProtocolViolation(1009, "message too large")
        end = head + 4 + length
        if available < end:
            return None
        payload = unmask(buffer[head + 4:end], bytes(buffer[head:head + 4]))
        if end < available:
            del buffer[:end]
        else:
            # a fresh buffer once everything is parsed: an idle connection
            # keeps none of the room its last burst needed
            self._buffer = bytearray()
        return fin, rsv1, opcode, payload

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

"""WebSocket frames from the server to a client (RFC 6455, section 5.2).

Server frames are never masked, so without compression the frame of an
Engine.IO packet is the same bytes for every recipient: a broadcast to a
room of 1,000 is framed once (:func:`frame_of` caches the frame on the
packet, as python-engineio caches the packet's encoding) and the same
``bytes`` object is queued on every socket.
"""

from __future__ import annotations

import struct
from typing import Any

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PONG = 0xA
_FIN = 0x80

#: the attribute a packet's frame is cached under
FRAME_ATTRIBUTE = "cluster_ws_frame"


def frame(payload: bytes, opcode: int = OPCODE_TEXT) -> bytes:
    """One final, unmasked frame carrying ``payload``."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN | opcode, length)
    elif length < 65536:
        header = struct.pack("!BBH", _FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, length)
    return header + payload


def encoded_payload(pkt: Any) -> tuple[bytes, int]:
    """``(payload, opcode)`` of an Engine.IO packet on a websocket.

    Text packets travel as text frames of their encoding (``"4..."`` for a
    message); binary messages as binary frames of the raw bytes.
    """
    encoded = pkt.encode()
    if isinstance(encoded, str):
        return encoded.encode("utf-8"), OPCODE_TEXT
    return bytes(encoded), OPCODE_BINARY


def frame_of(pkt: Any) -> bytes:
    """The uncompressed frame of an Engine.IO packet, built once per packet."""
    cached = getattr(pkt, FRAME_ATTRIBUTE, None)
    if cached is None:
        payload, opcode = encoded_payload(pkt)
        cached = frame(payload, opcode)
        setattr(pkt, FRAME_ATTRIBUTE, cached)
    return cached


def close_frame(status: int = 1000) -> bytes:
    """A close frame with ``status`` (1000: normal closure)."""
    return frame(struct.pack("!H", status), OPCODE_CLOSE)

"""Reading client websocket frames: unmasking, fragments, control frames,
limits, permessage-deflate; on real socket pairs."""

from __future__ import annotations

import os
import socket
import struct
import zlib

import pytest

from cluster.node.websocket_reader import WebSocketReader, unmask


def client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True, rsv1: bool = False,
                 masked: bool = True) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, (0x80 if masked else 0) | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, length)
    else:
        head = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    server.settimeout(5)
    yield server, client
    server.close()
    client.close()


def reader_for(server: socket.socket, written: list[bytes], **kwargs):
    kwargs.setdefault("max_message", 1_000_000)
    return WebSocketReader(server, written.append, **kwargs)


def test_unmask_matches_the_byte_by_byte_definition() -> None:
    payload, mask = os.urandom(1001), os.urandom(4)
    assert unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(b"", mask) == b""


def test_text_binary_and_fragmented_messages(pair) -> None:
    server, client = pair
    written: list[bytes] = []
    reader = reader_for(server, written)
    big = os.urandom(200_000)
    client.sendall(client_frame("héllo".encode()) + client_frame(big, opcode=0x2)
                   + client_frame(b"par", fin=False) + client_frame(b"ts", opcode=0x0))
    assert reader.read_message() == "héllo"
    assert reader.read_message() == big
    assert reader.read_message() == "parts"
    assert written == []


def test_pings_are_answered_and_close_ends_the_stream(pair) -> None:
    server, client = pair
    written: list[bytes] = []
    reader = reader_for(server, written)
    client.sendall(client_frame(b"p1", opcode=0x9) + client_frame(b"after")
                   + client_frame(struct.pack("!H", 1000), opcode=0x8))
    assert reader.read_message() == "after"
    assert written == [b"\x8a\x02p1"]  # the pong carries the ping's data
    assert reader.read_message() is None
    assert written[-1] == b"\x88\x02\x03\xe8" and reader.closed


@pytest.mark.parametrize("data, status", [
    (client_frame(b"x", masked=False), 1002),            # clients must mask
    (client_frame(b"\xff\xfe"), 1007),                    # not UTF-8
    (client_frame(b"x", opcode=0x0), 1002),               # continuation first
    (client_frame(b"x", rsv1=True), 1002),                # no extension negotiated
    (client_frame(b"x", opcode=0x3), 1002),               # unknown opcode
])
def test_protocol_violations_close_with_their_status(pair, data: bytes, status: int) -> None:
    server, client = pair
    written: list[bytes] = []
    reader = reader_for(server, written)
    client.sendall(data)
    assert reader.read_message() is None
    assert written == [b"\x88\x02" + struct.pack("!H", status)]


def test_too_large_is_refused_before_its_payload_is_read(pair) -> None:
    server, client = pair
    written: list[bytes] = []
    reader = reader_for(server, written, max_message=1000)
    # the header announces 10 MB; nothing of the payload is ever sent
    client.sendall(struct.pack("!BBQ", 0x82, 0x80 | 127, 10_000_000) + os.urandom(4))
    assert reader.read_message() is None
    assert written == [b"\x88\x02" + struct.pack("!H", 1009)]
    # fragments count together
    server2, client2 = socket.socketpair()
    server2.settimeout(5)
    reader2 = reader_for(server2, written, max_message=1000)
    client2.sendall(client_frame(b"x" * 600, fin=False) + client_frame(b"y" * 600, opcode=0))
    assert reader2.read_message() is None
    server2.close()
    client2.close()


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def test_compressed_messages_inflate_within_the_limit(pair) -> None:
    server, client = pair
    written: list[bytes] = []
    reader = reader_for(server, written, max_message=10_000, deflate={})
    client.sendall(client_frame(deflate(b"hello " * 100), rsv1=True))
    assert reader.read_message() == "hello " * 100
    # a small frame that inflates to 1 MB is refused
    client.sendall(client_frame(deflate(b"\x00" * 1_000_000), opcode=0x2, rsv1=True))
    assert reader.read_message() is None
    assert written[-1] == b"\x88\x02" + struct.pack("!H", 1009)


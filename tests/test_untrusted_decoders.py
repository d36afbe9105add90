"""Property-based fuzzing of every decoder that reads untrusted bytes.

What a client sends (websocket frames, Engine.IO and Socket.IO packets),
what arrives from the bus, and what is read back from Redis (session
values) must either decode or fail with the one error type its caller
handles: nothing else may escape into the node. Each test reports how many
cases it tried (``-s`` shows the line; CI logs keep it).
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from typing import Any

import pytest
from engineio import packet as eio_packet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.bus.codec import Codec
from cluster.bus.errors import Dropped
from cluster.node.engine_socket import DECODE_ERRORS, decode_payload
from cluster.node.packets import ClusterPacket
from cluster.node.websocket_reader import WebSocketReader, unmask
from cluster.recovery.stream import split_published
from session_store.codec import decode_value
from session_store.exceptions import SessionDataError

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
#: what the server catches around packet decoding (cluster/node/server.py)
PACKET_ERRORS = (ValueError, TypeError, KeyError, IndexError, RecursionError)
cases: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_cases() -> Any:
    yield
    print("\nfuzz cases tried: " + ", ".join(f"{k} {v}" for k, v in sorted(cases.items())))


def _read_all(data: bytes, deflate: dict[str, Any] | None) -> list[Any]:
    server, client = socket.socketpair()
    server.settimeout(2)
    written: list[bytes] = []
    try:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)  # EOF after the fuzzed bytes
        reader = WebSocketReader(server, written.append, max_message=4096, deflate=deflate)
        messages = []
        for _ in range(1000):
            message = reader.read_message()
            if message is None:
                break
            messages.append(message)
        assert reader.closed or messages
        return messages
    finally:
        server.close()
        client.close()


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from([None, {}]))
def test_websocket_reader_survives_any_bytes(data: bytes, deflate: Any) -> None:
    cases["websocket bytes"] += 1
    for message in _read_all(data, deflate):
        assert isinstance(message, (str, bytes))


frames = st.tuples(st.integers(0, 15), st.booleans(), st.booleans(), st.booleans(),
                   st.binary(max_size=300))


@FUZZ
@given(st.lists(frames, max_size=6), st.sampled_from([None, {}]))
def test_websocket_reader_survives_any_frame_sequence(sequence: list[Any], deflate: Any) -> None:
    cases["websocket frames"] += 1
    data = b""
    for opcode, fin, rsv1, masked, payload in sequence:
        first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        length = len(payload)
        head = struct.pack("!BB", first, (0x80 if masked else 0) | min(length, 126))
        if length >= 126:
            head += struct.pack("!H", length)
        mask = b"\x01\x02\x03\x04"
        data += head + (mask + unmask(payload, mask) if masked else payload)
    for message in _read_all(data, deflate):
        assert isinstance(message, (str, bytes)) and len(message) <= 4096 * 4


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_engineio_packets_decode_or_raise_what_the_server_handles(data: Any) -> None:
    cases["engine.io packets"] += 1
    try:
        eio_packet.Packet(encoded_packet=data)
    except PACKET_ERRORS:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.lists(st.text(max_size=20), max_size=30).map(
    lambda ps: "\x1e".join(ps).encode())))
def test_polling_payloads_decode_or_raise_what_the_socket_refuses(body: bytes) -> None:
    cases["polling payloads"] += 1
    try:
        packets = decode_payload(body)
    except DECODE_ERRORS:
        return
    assert body and 1 <= len(packets) <= 16


socketio_text = st.one_of(
    st.text(max_size=300),
    st.builds(lambda t, n, rest: f"{t}{n}-{rest}", st.integers(0, 9),
              st.integers(0, 10**12), st.text(max_size=100)),
    st.builds(lambda t, ns, ack, body: f"{t}{ns}{ack}{body}", st.integers(0, 6),
              st.sampled_from(["", "/", "/chat,", "/x?y=1,"]),
              st.sampled_from(["", "1", "99999"]), st.text(max_size=100)),
)


@FUZZ
@given(socketio_text)
def test_socketio_packets_decode_or_raise_what_the_server_handles(text: str) -> None:
    cases["socket.io packets"] += 1
    try:
        pkt = ClusterPacket(encoded_packet=text)
    except PACKET_ERRORS:
        return
    assert 0 <= pkt.attachment_count <= 10


def test_deeply_nested_json_from_a_client_is_an_error_the_server_handles() -> None:
    with pytest.raises(PACKET_ERRORS):
        ClusterPacket(encoded_packet="2" + "[" * 100_000 + "]" * 100_000)


@FUZZ
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode)),
       st.sampled_from([None, "s" * 32]))
def test_bus_messages_open_or_are_dropped(raw: bytes, secret: Any) -> None:
    cases["bus messages"] += 1
    codec = Codec(secret)
    offset, payload = split_published(raw)
    assert offset is None or isinstance(offset, str)
    try:
        message, _ = codec.open(payload)
    except Dropped:
        return
    assert isinstance(message, dict) and isinstance(message.get("method"), str)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_session_values_decode_or_raise_session_data_error(raw: Any) -> None:
    cases["session values"] += 1
    try:
        decode_value("k", raw)
    except SessionDataError:
        pass

"""Fuzzing a real node with what clients may send (issue 24): polling
payloads of 0 to 50 packets of any content, and every Socket.IO packet type
with fuzzed namespace, id and data from a connected websocket client.

Whatever arrives, the node answers (200 or 400, never a 500 or a hang),
counts what it refuses in ``malformed_packets``, keeps serving other
clients and writes no traceback to its log. One node serves the whole
module; each case opens its own Engine.IO session."""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.devtools.processes import NodeProcess, stop_all
from cluster.node.engine_socket import DECODE_ERRORS, decode_payload
from cluster.node.websocket_reader import unmask
from tests.harness.fixtures import DEFAULT_APP, NODE_START_TIMEOUT
from tests.harness.raw_websocket import RawWebSocket, metric
from tests.node.test_engine import open_polling, post

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
#: the Engine.IO packet types a client may send: CLOSE, PONG, MESSAGE, UPGRADE
CLIENT_EIO_TYPES = {1, 3, 4, 5}
#: events of tests.apps.chat_app a client may name (its error handlers take
#: what they raise); ``kick_me`` and ``slow_set`` left out: they end or
#: stall the connection by design
EVENTS = ["join", "leave", "whoami", "context", "session_get", "session_set", "message",
          "boom", "to_room", "broadcast", "ask", "nope", "connect", "disconnect",
          "connect_error", "disconnecting", "newListener", "removeListener"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node without a bus for the module; a rate limit far above what
    the fuzz sends, so every packet reaches the decoders."""
    process = NodeProcess(DEFAULT_APP, name="fuzz-node",
                          log_path=tmp_path_factory.mktemp("fuzz") / "node.log",
                          extra_args=["--max-events-per-second", "100000"],
                          start_timeout=NODE_START_TIMEOUT)
    process.spawn()
    try:
        process.wait_ready()
        yield process
    finally:
        stop_all([process], grace=5.0)


def _malformed(node: Any) -> float:
    return metric(node, "socketio_server_events_total", "malformed_packets")


def _assert_healthy(node: Any) -> None:
    """Another client still connects and gets its ack, and nothing the
    fuzz sent left a traceback in the log."""
    client = RawWebSocket(node)
    try:
        client.connect_and_join("after-fuzz")
    finally:
        client.close()
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


# -- (a) polling payloads ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10)
socketio_messages = st.one_of(
    st.text(max_size=40),
    st.builds(lambda kind, ns, ack, data: f"{kind}{ns}{ack}{data}",
              st.sampled_from("0123456789x"),
              st.sampled_from(["", "/", "/chat,", "/errors,", "/x?y=1,"]),
              st.sampled_from(["", "1", "99999", "9" * 30]),
              st.one_of(json_values.map(json.dumps), st.text(max_size=30))),
    st.builds(lambda name, args: json.dumps([name, *args]),
              st.sampled_from(EVENTS), st.lists(json_values, max_size=3)).map(lambda d: "2" + d),
)
engineio_packets = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["3", "1", "5", "6", "0", "2", "2probe", "9", "40", "41", "b", "bA"]),
    socketio_messages.map(lambda m: "4" + m),
    st.binary(max_size=30).map(lambda b: "b" + base64.b64encode(b).decode()),
)
bodies = st.one_of(
    st.lists(engineio_packets, max_size=50).map(lambda ps: "\x1e".join(ps).encode()),
    st.lists(st.just("3"), min_size=10, max_size=50).map(lambda ps: "\x1e".join(ps).encode()),
    st.binary(max_size=200),
)


def _must_refuse(body: bytes) -> bool:
    try:
        packets = decode_payload(body)
    except DECODE_ERRORS:
        return True
    return any(pkt.packet_type not in CLIENT_EIO_TYPES for pkt in packets)


@FUZZ
@given(bodies)
def test_any_polling_payload_gets_200_or_400_and_refusals_are_counted(
        node: Any, body: bytes) -> None:
    sid = open_polling(node)
    before = _malformed(node)
    status = post(node, sid, body)
    assert status in (200, 400)
    if _must_refuse(body):
        assert status == 400
    if status == 400:
        assert _malformed(node) > before


def test_the_node_serves_after_the_polling_fuzz(node: Any) -> None:
    _assert_healthy(node)


# -- (b) every Socket.IO packet type from a connected websocket client ----------

def _ping_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return struct.pack("!BB", 0x89, 0x80 | len(payload)) + mask + unmask(payload, mask)


def _still_open(client: RawWebSocket, token: str) -> bool:
    """Whether the node still reads this connection: a websocket ping sent
    after the fuzzed packet is answered (the node reads in order), or the
    connection closes."""
    client.sock.sendall(_ping_frame(token.encode()))
    for _ in range(1000):
        text = client.read()
        if text is None:
            return False
        if text == token:  # the pong's payload
            return True
    raise AssertionError("no pong and no close after 1000 frames")


namespaces = st.one_of(st.sampled_from(["", "/", "/chat", "/errors", "/x?y=1"]),
                       st.text(max_size=10).map(lambda t: "/" + t))
packet_ids = st.one_of(st.just(""), st.integers(0, 10**6).map(str), st.just("9" * 120))
datas = st.one_of(
    st.just(""),
    json_values.map(json.dumps),
    st.builds(lambda name, args: json.dumps([name, *args]), st.sampled_from(EVENTS),
              st.lists(json_values, max_size=3)),
    st.builds(lambda name, args: json.dumps([name, *args]), st.text(max_size=10),
              st.lists(json_values, max_size=3)),
    st.text(max_size=30),
)
#: CONNECT .. BINARY_ACK (0-6), then digits no packet has, and a non-digit
kinds = st.sampled_from(["0", "1", "2", "3", "4", "5", "6", "51-", "61-", "510-", "7", "8",
                         "9", "x", ""])


@FUZZ
@given(kinds, namespaces, packet_ids, datas)
def test_any_socketio_packet_is_handled_or_refused_and_counted(
        node: Any, kind: str, namespace: str, packet_id: str, data: str) -> None:
    sep = "," if namespace and (packet_id or data) else ""
    packet = f"4{kind}{namespace}{sep}{packet_id}{data}"
    client = RawWebSocket(node)
    try:
        client.send("40")
        client.read_until("40")
        before = _malformed(node)
        client.send(packet)
        if not _still_open(client, "fuzz-probe"):
            assert _malformed(node) > before, f"{packet!r} closed the client uncounted"
    finally:
        client.close()


@FUZZ
@given(st.one_of(st.text(max_size=60), engineio_packets))
def test_any_engineio_message_on_the_websocket_is_handled_or_refused_and_counted(
        node: Any, message: str) -> None:
    client = RawWebSocket(node)
    try:
        client.send("40")
        client.read_until("40")
        before = _malformed(node)
        client.send(message)
        if not _still_open(client, "fuzz-probe"):
            assert _malformed(node) > before or message.startswith("1"), (
                f"{message!r} closed the client uncounted")
    finally:
        client.close()


def test_the_node_serves_after_the_packet_fuzz(node: Any) -> None:
    _assert_healthy(node)

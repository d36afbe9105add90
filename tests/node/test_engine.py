"""What a client sends at the Engine.IO level that does not decode (issue 24,
finding 2), on a real node: a polling POST over the packet limit, or any
other undecodable body, gets 400, ends that session, is counted in
``malformed_packets`` and costs at most one log line per window, never a
traceback. The same on the websocket and during the upgrade. The
python-engineio behaviour the node relies on is pinned last."""

from __future__ import annotations

import inspect
import json
from typing import Any

import engineio
import pytest
import requests

from tests.harness.raw_websocket import RawWebSocket, masked_text_frame, metric
from tests.harness.waiting import wait_for

#: python-engineio's payload decoder refuses more packets than this
MAX_DECODE_PACKETS = 16


def _malformed(node: Any) -> float:
    return metric(node, "socketio_server_events_total", "malformed_packets")


def _log(node: Any) -> str:
    text: str = node.log_path.read_text(errors="replace")
    return text


def open_polling(node: Any) -> str:
    """A new long-polling Engine.IO session (no Socket.IO CONNECT); its sid."""
    reply = requests.get(f"{node.url}/socket.io/?EIO=4&transport=polling", timeout=5)
    assert reply.status_code == 200 and reply.text.startswith("0{"), reply.text
    sid: str = json.loads(reply.text[1:])["sid"]
    return sid


def post(node: Any, sid: str, body: bytes) -> int:
    reply = requests.post(f"{node.url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                          data=body, headers={"Content-Type": "text/plain;charset=UTF-8"},
                          timeout=10)
    return reply.status_code


def session_closed(node: Any, sid: str) -> bool:
    """Whether the node forgot ``sid``: a poll on it gets 400 at once (an
    open session would hold the poll until it has something to send)."""
    try:
        reply = requests.get(f"{node.url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                             timeout=2)
    except requests.ReadTimeout:
        return False
    return reply.status_code == 400


def _still_serves(node: Any) -> None:
    """Another client connects, and its events are answered."""
    client = RawWebSocket(node)
    try:
        client.connect_and_join("after-malformed")
    finally:
        client.close()


OVER_THE_LIMIT = "\x1e".join(["3"] * (MAX_DECODE_PACKETS + 1)).encode()

#: undecodable polling bodies, by what is wrong with them
BAD_BODIES = {
    "over the packet limit": OVER_THE_LIMIT,
    "Engine.IO 3 length prefixes": b"2:40",
    "a packet type that is not a digit": b"x40",
    "a packet type past 6": b"9hello",
    "a server-only packet type": b"0{}",
    "an empty packet": b"3\x1e\x1e3",
    "invalid UTF-8": b"4\xff\xfe",
    "binary garbage": bytes(range(256)),
    "bad base64": b"bA",
    "a JSONP body without d": b"d=",
    "empty": b"",
}


def test_a_polling_post_over_the_packet_limit_is_refused_quietly(node_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    before = len(_log(node).splitlines())
    sids = [open_polling(node) for _ in range(30)]
    # a valid payload of exactly the limit is still accepted
    accepted = open_polling(node)
    assert post(node, accepted, "\x1e".join(["3"] * MAX_DECODE_PACKETS).encode()) == 200
    for sid in sids:
        assert post(node, sid, OVER_THE_LIMIT) == 400
    assert _malformed(node) == 30
    for sid in sids[:3]:
        assert session_closed(node, sid)
    assert not session_closed(node, accepted)
    _still_serves(node)
    new_lines = _log(node).splitlines()[before:]
    assert not [line for line in new_lines if "Traceback" in line], "\n".join(new_lines)
    refused = [line for line in new_lines if "malformed Engine.IO payload" in line]
    assert len(refused) == 1, "\n".join(new_lines)  # one line per 10 s window
    assert "Too many packets" in refused[0]


@pytest.mark.parametrize("what", sorted(BAD_BODIES))
def test_an_undecodable_polling_body_gets_400_and_ends_the_session(
        node_factory: Any, what: str) -> None:
    (node,) = node_factory(message_queue=None)
    sid = open_polling(node)
    assert post(node, sid, BAD_BODIES[what]) == 400
    assert _malformed(node) == 1
    assert session_closed(node, sid)
    assert "Traceback" not in _log(node)


def test_a_malformed_socketio_packet_over_polling_closes_without_hanging_the_post(
        node_factory: Any) -> None:
    # the Engine.IO payload decodes (200); the Socket.IO packet in it does not
    (node,) = node_factory(message_queue=None)
    sid = open_polling(node)
    assert post(node, sid, b"40") == 200
    assert post(node, sid, b'42{"not":"a list"}') == 200
    assert _malformed(node) == 1
    assert session_closed(node, sid)
    _still_serves(node)


def test_an_undecodable_websocket_message_closes_quietly(node_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    for bad in ["", "x", "b=", "9"]:
        client = RawWebSocket(node)
        client.connect_and_join("lobby")
        client.send(bad)
        assert client.closed_within(10), f"still open after {bad!r}"
        client.close()
    assert _malformed(node) == 4
    _still_serves(node)
    log = _log(node)
    assert "Traceback" not in log and "Unknown receive error" not in log


def test_an_undecodable_upgrade_probe_closes_the_session_quietly(node_factory: Any) -> None:
    import base64
    import os
    import socket

    (node,) = node_factory(message_queue=None)
    sid = open_polling(node)
    sock = socket.create_connection((node.host, node.port), timeout=10)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\n"
                      f"Host: {node.host}:{node.port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, "closed during the handshake"
            head += chunk
        assert b" 101 " in head.split(b"\r\n", 1)[0]
        sock.sendall(masked_text_frame(""))  # an empty packet where "2probe" belongs
        wait_for(lambda: _malformed(node) == 1, what="the bad probe counted")
        assert session_closed(node, sid)
    finally:
        sock.close()
    _still_serves(node)
    assert "Traceback" not in _log(node)


# -- python-engineio behaviour the node relies on -------------------------------

def test_engineio_answers_an_engineio_error_of_a_post_with_400_and_a_disconnect() -> None:
    # cluster.node.engine_socket.MalformedPayload is an EngineIOError for this
    source = inspect.getsource(engineio.Server.handle_request)
    post_branch = source[source.index("socket.handle_post_request(environ)"):]
    handler = post_branch[:post_branch.index("except:")]
    assert "except exceptions.EngineIOError:" in handler
    assert "self.disconnect(sid)" in handler and "self._bad_request()" in handler
    from engineio import payload

    assert payload.Payload.max_decode_packets == MAX_DECODE_PACKETS


def test_the_strict_socket_refuses_before_receiving_anything() -> None:
    import io

    from cluster.node.engine_socket import MalformedPayload, StrictSocket

    reports: list[tuple[str, str, str]] = []
    server = engineio.Server(async_mode="threading")
    server.malformed_payload = lambda *args: reports.append(args)
    received: list[Any] = []
    sock = StrictSocket(server, "s1")
    sock.receive = received.append
    body = OVER_THE_LIMIT.replace(b"3", b"4a", 1)
    with pytest.raises(MalformedPayload):
        sock.handle_post_request({"CONTENT_LENGTH": str(len(body)),
                                  "wsgi.input": io.BytesIO(body)})
    assert received == [] and reports == [("s1", "polling", "Too many packets in payload")]

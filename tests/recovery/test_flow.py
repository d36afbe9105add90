"""A recovering connection's replay goes at the pace its client reads (a real
node and Redis, a raw websocket client with a small receive window)."""

from __future__ import annotations

import json
import time
from typing import Any

import requests
import socketio

from tests.harness.peers import Peer
from tests.harness.raw_websocket import RawWebSocket, metric

RECOVERY = {"RECOVERY_WINDOW": "60"}
MISSED = 100
# 100 x 60 KB: more than the kernel's socket buffers take (up to 4 MB on
# loopback) plus max_backlog, so without pacing the client would be cut
TEXT = "x" * 60_000


def _connections(node: Any) -> float:
    for line in requests.get(f"{node.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("socketio_connections "):
            return float(line.split()[1])
    raise AssertionError("socketio_connections not in /metrics")


def _event(frame: str) -> tuple[str, list[Any]]:
    body = json.loads(frame[2:])
    return body[0], body[1:]


def test_a_replay_larger_than_the_backlog_limit_waits_for_a_slow_reader(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(env=RECOVERY, extra_args=[
        "--max-backlog", "65536", "--max-events-per-second", "0",
        "--max-replay-bytes", str(16 << 20)])
    sender = Peer(sio_client_factory, node.url, cls=socketio.Client)
    first = RawWebSocket(node)
    first.send("40")
    reply = json.loads(first.read_until("40")[2:])
    first.send('421["join","feed"]')
    first.read_until("431")
    sender.call("to_room", {"room": "feed", "text": "seen"})
    frame = first.read_until('42["room_message"')
    _, (message, offset) = _event(frame)
    assert message["text"] == "seen"
    first.close()
    deadline = time.monotonic() + 10
    while _connections(node) != 1:  # the sender only
        assert time.monotonic() < deadline, "the first connection never ended"
        time.sleep(0.05)
    for n in range(MISSED):
        sender.call("to_room", {"room": "feed", "text": f"{n:02d}{TEXT}"})

    back = RawWebSocket(node, receive_buffer=4096)
    back.send("40" + json.dumps({"pid": reply["pid"], "offset": offset}))
    again = json.loads(back.read_until("40")[2:])
    assert again["sid"] == reply["sid"]  # recovered: its old sid back
    texts = []
    while len(texts) < MISSED:
        frame = back.read()
        assert frame is not None, f"cut after {len(texts)} of {MISSED} replayed packets"
        if frame.startswith('42["room_message"'):
            texts.append(_event(frame)[1][0]["text"][:2])
        time.sleep(0.002)  # a slow reader
    assert texts == [f"{n:02d}" for n in range(MISSED)]
    deadline = time.monotonic() + 10
    while metric(node, "socketio_server_events_total", "recoveries") != 1:
        assert time.monotonic() < deadline, "the recovery was never counted"
        time.sleep(0.05)
    assert metric(node, "socketio_server_events_total", "slow_consumers") == 0
    assert not back.closed_within(0.5)
    back.close()

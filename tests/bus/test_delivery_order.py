"""Logged emits reach each client in the order of their offsets (real nodes
and Redis): a client's last offset then says exactly what it has, so a
recovering reconnect replays nothing twice."""

from __future__ import annotations

import threading
import time
from typing import Any

import socketio

from tests.harness.peers import Peer

RECOVERY = {"RECOVERY_WINDOW": "60"}
UNLIMITED = ["--max-events-per-second", "0"]
PER_SENDER = 400


def _offset_parts(offset: str) -> tuple[int, int]:
    ms, seq = offset.split("-")
    return int(ms), int(seq)


def test_local_and_remote_emits_arrive_in_offset_order(
        node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(count=2, env=RECOVERY, extra_args=UNLIMITED)
    received: list[tuple[str, str]] = []
    listener = Peer(sio_client_factory, first.url, cls=socketio.Client)

    @listener.client.on("room_message")
    def on_room_message(message: dict[str, Any], offset: str) -> None:
        received.append((message["text"], offset))

    listener.call("join", "feed")
    # one sender on the listener's own node (its emits are local there) and
    # one on the other node (its emits arrive through the bus): both at once
    senders = [Peer(sio_client_factory, node.url, cls=socketio.Client)
               for node in (first, second)]

    def send(peer: Peer, tag: str) -> None:
        for i in range(PER_SENDER):
            peer.client.emit("to_room", {"room": "feed", "text": f"{tag}{i}"})

    threads = [threading.Thread(target=send, args=(peer, tag))
               for peer, tag in zip(senders, ("local", "remote"), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    deadline = time.monotonic() + 20
    while len(received) < 2 * PER_SENDER and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(received) == 2 * PER_SENDER
    tags = {text.rstrip("0123456789") for text, _ in received}
    assert tags == {"local", "remote"}
    offsets = [_offset_parts(offset) for _, offset in received]
    out_of_order = sum(1 for a, b in zip(offsets, offsets[1:], strict=False) if b <= a)
    assert out_of_order == 0, f"{out_of_order} of {len(offsets)} packets arrived out of order"


def test_an_emit_from_an_ack_callback_run_by_the_listener_keeps_its_offset(
        node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(count=2, env=RECOVERY)
    announced: list[tuple[Any, ...]] = []
    listener = Peer(sio_client_factory, first.url, cls=socketio.Client)
    listener.client.on("room_message", lambda *args: announced.append(args))
    listener.call("join", "feed")
    answerer = Peer(sio_client_factory, second.url, cls=socketio.Client)
    asker = Peer(sio_client_factory, first.url, cls=socketio.Client)
    # the answer comes back through the bus, so the callback runs inside
    # node1's listener, which must not wait for its own emit to come back
    asker.call("ask_then_announce", {"sid": answerer.sid, "question": "q1", "room": "feed"})
    deadline = time.monotonic() + 10
    while not announced and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(announced) == 1
    message, offset = announced[0]
    assert message["text"] == "answer to q1"
    assert isinstance(offset, str) and len(offset.split("-")) == 2

"""Real nodes and Redis: a node's own bus messages coming back are handled
by their header (counted on the emitting node), and with recovery on its
clients still get every emit exactly once, in offset order."""
from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
import requests
import socketio

from tests.harness.peers import Peer, feed_listener_and_sender, wait_for_texts

RECOVERY = {"RECOVERY_WINDOW": "60"}
UNLIMITED = ["--max-events-per-second", "0"]
PER_SENDER = 200
DROPS = ("dropped_malformed", "dropped_unsigned", "dropped_bad_signature",
         "dropped_replayed", "dropped_bad_offset", "handler_errors")


def bus_figures(node: Any) -> dict[str, float]:
    figures = {}
    for line in requests.get(f"{node.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("socketio_bus{kind="):
            kind, value = line[len('socketio_bus{kind="'):].split('"} ')
            figures[kind] = float(value)
    return figures


def _offset_parts(offset: str) -> tuple[int, int]:
    ms, seq = offset.split("-")
    return int(ms), int(seq)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("signing", ["signed", "unsigned"])
def test_with_recovery_own_emits_return_by_header_exactly_once_and_in_order(
        node_factory: Any, sio_client_factory: Any, signing: str) -> None:
    # signed: the harness's secret; unsigned: the header is the message's first field
    args = UNLIMITED + (["--allow-unsigned-bus"] if signing == "unsigned" else [])
    first, second = node_factory(count=2, env=RECOVERY, extra_args=args)
    listeners = [Peer(sio_client_factory, first.url, cls=socketio.Client) for _ in range(3)]
    received: list[list[tuple[str, str]]] = [[] for _ in listeners]
    for peer, got in zip(listeners, received, strict=True):
        peer.client.on("room_message",
                       lambda message, offset, got=got: got.append((message["text"], offset)))
        peer.call("join", "feed")
    before = bus_figures(first)
    # one sender on the listeners' node (its emits come back to it, and are
    # delivered there on their return) and one on the other node, at once
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
    _wait(lambda: all(len(got) >= 2 * PER_SENDER for got in received), 30,
          "every listener to get every emit")
    time.sleep(0.5)  # a duplicate would arrive right behind
    after = bus_figures(first)
    for got in received:
        texts = [text for text, _ in got]
        assert len(texts) == 2 * PER_SENDER and len(set(texts)) == 2 * PER_SENDER
        offsets = [_offset_parts(offset) for _, offset in got]
        out_of_order = sum(1 for a, b in zip(offsets, offsets[1:], strict=False) if b <= a)
        assert out_of_order == 0, f"{out_of_order} of {len(offsets)} out of order"
    # the emitting node took its own emits back by their header, not decoded
    assert after["own_returned"] - before["own_returned"] >= PER_SENDER
    assert after["own_dropped"] > before["own_dropped"]  # its heartbeats, at least
    assert after["delivered_unlogged"] == before["delivered_unlogged"]
    assert all(after[name] == 0 for name in DROPS), {name: after[name] for name in DROPS}


def test_without_recovery_own_emits_are_dropped_by_header_and_counted(
        node_factory: Any, sio_client_factory: Any) -> None:
    [node] = node_factory(count=1, extra_args=UNLIMITED)
    listener = Peer(sio_client_factory, node.url, cls=socketio.Client)
    got: list[str] = []
    listener.client.on("room_message", lambda message: got.append(message["text"]))
    listener.call("join", "feed")
    sender = Peer(sio_client_factory, node.url, cls=socketio.Client)
    before = bus_figures(node)
    for i in range(PER_SENDER):
        sender.call("to_room", {"room": "feed", "text": f"m{i}"})
    # every emit comes back on the room's channel, and is dropped unread
    _wait(lambda: bus_figures(node)["own_dropped"] - before["own_dropped"] >= PER_SENDER,
          15, "the node's own emits to come back")
    after = bus_figures(node)
    assert got == [f"m{i}" for i in range(PER_SENDER)]  # delivered here once, in order
    assert after["own_returned"] == before["own_returned"] == 0
    assert all(after[name] == 0 for name in DROPS), {name: after[name] for name in DROPS}


def test_an_emit_made_where_the_room_had_no_member_reaches_one_who_recovers_there_first(
        node_factory: Any, redis_server: Any, sio_client_factory: Any) -> None:
    # the CI flake behind this: a Redis restart made the sender's outbox hold
    # an emit for seconds, its listener recovered there meanwhile (the stream
    # had nothing yet), and the emit then came back to a node that had
    # delivered it to nobody, and was dropped by its header
    listener_node, sender_node = node_factory(count=2, env=RECOVERY)
    listener, got, sender = feed_listener_and_sender(
        sio_client_factory, listener_node.url, sender_node.url)
    old_sid = listener.client.get_sid()
    listener_node.kill(signal.SIGKILL)
    assert listener.disconnected.wait(10)
    # the sender's node finds its publishing connection closed at its next
    # emit: that emit waits in the outage buffer, which then waits for the
    # killed node to resubscribe (resume_wait, 3 s) before it publishes
    before = bus_figures(sender_node)  # a heartbeat may be the first to fail
    client = redis_server.client()
    try:
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1
    finally:
        client.close()
    assert sender.call("to_room", {"room": "feed", "text": "while away"}) == sender_node.name
    listener.client.connect(sender_node.url, transports=["websocket"], wait_timeout=10)
    welcome = listener.next("welcome", timeout=20)
    assert welcome["recovered"] is True and listener.client.get_sid() == old_sid
    # it was held, so the replay could not have it...
    assert bus_figures(sender_node)["publish_errors"] > before["publish_errors"]
    # ...and it arrives when it comes back, once
    _wait(lambda: len(got) >= 2, 20, "the emit made while it was away")
    assert wait_for_texts(got, 3, timeout=2) == ["before", "while away"]
    assert all(bus_figures(sender_node)[name] == 0 for name in DROPS)

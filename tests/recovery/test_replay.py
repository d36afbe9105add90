"""Connection state recovery across nodes with python clients (real nodes, Redis, HAProxy)."""

from __future__ import annotations

import signal
import time
from typing import Any

import socketio

from tests.bus.loopback import wait_for
from tests.harness.peers import (
    Peer,
    Stream,
    feed_listener_and_sender,
    record_room_messages,
    wait_for_texts,
    wait_reconnected,
)

RECOVERY = {"RECOVERY_WINDOW": "60"}


def test_sigkilled_node_client_recovers_everything_in_order(
        node_factory: Any, haproxy_factory: Any, sio_client_factory: Any) -> None:
    nodes = node_factory(count=2, env=RECOVERY)
    proxy = haproxy_factory(nodes)
    listener = Peer(sio_client_factory, proxy.url)
    received = record_room_messages(listener)
    listener.call("join", "feed")
    listener.call("session_set", {"kept": "yes"})
    doomed = next(n for n in nodes if n.name == listener.welcome["node"])
    survivor = next(n for n in nodes if n is not doomed)
    sender = Peer(sio_client_factory, survivor.url, cls=socketio.Client)
    stream = Stream(sender, "feed")
    wait_for(lambda: len(received) >= 10, timeout=15)  # the stream reaches the listener
    old_sid = listener.client.get_sid()
    doomed.kill(signal.SIGKILL)
    welcome = wait_reconnected(listener, old_sid)
    resumed_at = stream.sent
    wait_for(lambda: stream.sent >= resumed_at + 10, timeout=15)  # and goes on after
    sent = stream.stop()
    assert welcome["recovered"] is True and welcome["node"] == survivor.name
    assert listener.client.recovered is True
    assert listener.client.get_sid() == old_sid
    assert listener.get("kept") == "yes"
    texts = wait_for_texts(received, sent)
    assert texts == [f"m{i:04d}" for i in range(sent)]


def test_drained_node_rolling_restart_misses_nothing(
        node_factory: Any, haproxy_factory: Any, sio_client_factory: Any) -> None:
    nodes = node_factory(count=2, env=RECOVERY)
    proxy = haproxy_factory(nodes)
    listeners = [Peer(sio_client_factory, proxy.url) for _ in range(3)]
    records = [record_room_messages(listener) for listener in listeners]
    for listener in listeners:
        listener.call("join", "feed")
    sender = Peer(sio_client_factory, proxy.url, cls=socketio.Client,
                  reconnection_delay=0.2, reconnection_delay_max=0.5)
    stream = Stream(sender, "feed")
    for node in nodes:
        before = stream.sent
        wait_for(lambda before=before: stream.sent >= before + 10,  # type: ignore[misc]
                 timeout=15)  # running before each
        node.stop(grace=10)
        node.start()
        proxy.wait_all_up(timeout=20)
    after = stream.sent
    wait_for(lambda: stream.sent >= after + 20, timeout=15)  # and after the last one
    sent = stream.stop()
    assert sent > 50  # the stream ran through both restarts
    expected = {f"m{i:04d}" for i in range(sent)}
    received = [wait_for_texts(record, sent) for record in records]
    for texts in received:
        missing = sorted(expected - set(texts) - stream.uncertain)
        assert not missing, f"missing {missing[:10]}"
        assert texts == sorted(texts)
        assert len(texts) == len(set(texts))
    for text in stream.uncertain:
        # an emit whose ack was lost reached every listener or none
        assert len({text in texts for texts in received}) == 1


def test_recovery_disabled_behaves_as_plain_socketio(
        node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(count=2)
    peer = Peer(sio_client_factory, first.url)
    peer.call("join", "plain")
    old_sid = peer.client.get_sid()
    pid = peer.client.pid()
    first.kill(signal.SIGKILL)
    again = Peer(sio_client_factory, second.url, cls=socketio.Client, auth={"pid": pid})
    assert again.welcome["recovered"] is False
    assert again.client.get_sid() != old_sid
    # no offsets: events carry exactly what the handler emitted
    again.call("to_room", {"room": "plain", "text": "x"})
    assert again.next("room_message") == {"from": again.sid, "node": second.name, "text": "x"}


def test_unknown_offset_gives_a_resumed_but_unrecovered_connection(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(env=RECOVERY)
    peer = Peer(sio_client_factory, node.url)
    peer.call("session_set", {"k": 1})
    pid = peer.client.pid()
    old_sid = peer.client.get_sid()
    peer.client.disconnect()
    raw = Peer(sio_client_factory, node.url, auth={"pid": pid, "offset": "1-0"})
    assert raw.welcome["resumed"] is True
    assert raw.welcome["recovered"] is False
    assert raw.client.get_sid() != old_sid


def test_a_live_connections_pid_cannot_be_taken_over(
        node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(count=2, env=RECOVERY)
    owner = Peer(sio_client_factory, first.url)
    owner.call("session_set", {"secret": "owner"})
    thief = Peer(sio_client_factory, second.url, auth={"pid": owner.client.pid()})
    assert thief.welcome["resumed"] is False
    assert thief.get("secret") is None
    assert owner.get("secret") == "owner"


def test_options_parse_like_socketio_and_reject_typos() -> None:
    import pytest

    from cluster.recovery.replay import RecoveryOptions

    assert RecoveryOptions.from_option(None) is None
    assert RecoveryOptions.from_option(True) == RecoveryOptions(120.0, False)
    assert RecoveryOptions.from_option(
        {"max_disconnection_duration": 30, "skip_connect_handler": True}
    ) == RecoveryOptions(30.0, True)
    with pytest.raises(TypeError, match="maxDisconnectionDuration|unknown"):
        RecoveryOptions.from_option({"maxDisconnectionDuration": 30})
    with pytest.raises(ValueError, match="positive"):
        RecoveryOptions.from_option({"max_disconnection_duration": 0})


def test_replay_filter_follows_rooms_skip_sid_and_namespace() -> None:
    from cluster.recovery.replay import message_reaches

    def emit(**fields: Any) -> dict[str, Any]:
        return {"method": "emit", "namespace": "/", "room": None, "skip_sid": None, **fields}

    rooms = ["feed", "sid1"]
    assert message_reaches(emit(), "sid1", "/", rooms)
    assert message_reaches(emit(room="feed"), "sid1", "/", rooms)
    assert message_reaches(emit(room="sid1"), "sid1", "/", rooms)
    assert message_reaches(emit(room=["x", "feed"]), "sid1", "/", rooms)
    assert not message_reaches(emit(room="other"), "sid1", "/", rooms)
    assert not message_reaches(emit(skip_sid="sid1"), "sid1", "/", rooms)
    assert not message_reaches(emit(skip_sid=["a", "sid1"]), "sid1", "/", rooms)
    assert not message_reaches(emit(namespace="/chat"), "sid1", "/", rooms)
    assert not message_reaches({"method": "close_room", "room": "feed"}, "sid1", "/", rooms)


def test_an_emit_made_during_a_redis_outage_is_replayed_to_a_recovering_client(
        node_factory: Any, redis_server: Any, sio_client_factory: Any) -> None:
    # the emit goes through the one publisher while Redis is frozen: it is
    # buffered, logged in the recovery stream when Redis is back, and a
    # client that recovers afterwards is replayed it
    sender_node, listener_node = node_factory(count=2, env=RECOVERY)
    listener, received, sender = feed_listener_and_sender(
        sio_client_factory, listener_node.url, sender_node.url)
    old_sid = listener.client.get_sid()
    listener_node.kill(signal.SIGKILL)
    assert listener.disconnected.wait(10)
    redis_server.kill(signal.SIGSTOP)  # an outage that keeps Redis's data
    try:
        assert sender.call("to_room", {"room": "feed", "text": "during the outage"}) \
            == sender_node.name
    finally:
        redis_server.kill(signal.SIGCONT)
    client = redis_server.client(socket_timeout=5)
    try:
        deadline = time.monotonic() + 20
        while not any(b"during the outage" in fields[b"p"] for _, fields
                      in client.xrange("{flask-socketio}:recovery")):
            assert time.monotonic() < deadline, "the outage emit was never logged"
            time.sleep(0.1)
    finally:
        client.close()
    listener.client.connect(sender_node.url, transports=["websocket"], wait_timeout=10)
    welcome = listener.next("welcome", timeout=20)
    assert welcome["recovered"] is True
    assert listener.client.recovered is True and listener.client.get_sid() == old_sid
    assert wait_for_texts(received, 2) == ["before", "during the outage"]


def test_after_a_replay_live_packets_it_already_sent_are_dropped() -> None:
    from cluster.recovery.replay import PacketHold

    # a packet is (offset, namespace) here: what locate() reads off a real one
    counters: dict[str, int] = {}
    hold = PacketHold(lambda kind, item: item, counters)
    hold.start("e1")
    assert hold.holding("e1") and hold.hold("e1", "pkt", ("5-0", "/"))
    assert hold.release("e1", floor=("/", "7-0")) == [("pkt", ("5-0", "/"))]
    # the listener lags the stream: 6-0 and 7-0 were replayed already
    assert hold.hold("e1", "eio", ("6-0", "/")) is True
    assert hold.hold("e1", "eio", ("7-0", "/")) is True
    assert hold.hold("e1", "eio", (None, "/")) is False  # not logged: delivered
    assert hold.hold("e1", "eio", ("6-5", "/chat")) is False  # another namespace
    assert counters["recovery_duplicates_dropped"] == 2
    assert hold.hold("e1", "eio", ("8-0", "/")) is False  # past the replay
    assert not hold.holding("e1")  # the floor is done: the hot path is free again
    hold.release("e2", floor=("/", "7-0"))
    hold.forget("e2")
    assert not hold.holding("e2")

"""The manager's logic over the loopback transport (no network)."""
from __future__ import annotations

import json
import pickle
import time
from unittest import mock

import pytest

from cluster.bus import (
    BusConfigurationError,
    BusPublishError,
    BusSerializationError,
    create_manager,
    with_timeout,
)
from cluster.bus.errors import BusMessageTooLarge
from cluster.bus.redis_manager import RedisManager
from tests.bus.loopback import LoopbackHub, make_node, wait_for


@pytest.fixture
def hub():
    hub = LoopbackHub()
    yield hub
    for manager in list(hub.managers):
        manager.close(timeout=0.5)


def published(publish: mock.Mock) -> list[dict]:
    """The messages a mocked Publisher.publish was given."""
    return [c.args[0] if c.args else json.loads(c.kwargs["body"])
            for c in publish.call_args_list]


def events(server):
    return [data for _, data in server.sent]


def test_emit_delivers_locally_and_publishes_exactly_once(hub) -> None:
    server, manager = make_node(hub)
    sid = manager.connect("eio1", "/")
    manager.enter_room(sid, "/", "lobby")
    with mock.patch.object(manager.publisher, "publish", return_value=True) as publish:
        server.emit("chat", {"n": 1}, to="lobby")
    assert events(server) == ['2["chat",{"n":1}]']  # delivered, no round trip
    publish.assert_called_once()
    message = published(publish)[0]
    assert message["room"] == "lobby" and message["data"] == [{"n": 1}]


def test_unserializable_payload_raises_before_anything_happens(hub) -> None:
    server, manager = make_node(hub)
    sid = manager.connect("eio1", "/")
    with mock.patch.object(manager.publisher, "publish", return_value=True) as publish:
        with pytest.raises(BusSerializationError, match="'chat'"):
            server.emit("chat", {"when": object()}, to=sid,
                        callback=lambda *a: None)
    publish.assert_not_called()
    assert server.sent == [] and manager.stats()["pending_acks"] == 0


def test_oversized_emit_raises_at_the_caller_before_anything_happens(hub) -> None:
    server, manager = make_node(hub, max_message_bytes=10_000)
    sid = manager.connect("eio1", "/")
    with mock.patch.object(manager.publisher, "publish", return_value=True) as publish:
        with pytest.raises(BusMessageTooLarge, match="max_message_bytes") as info:
            server.emit("chat", "x" * 20_000, to=sid, callback=lambda *a: None)
        with pytest.raises(BusSerializationError):  # what workers map to PayloadError
            server.emit("chat", b"\x00" * 9_000, to=sid)  # base64 on the bus: 12 KB
        server.emit("chat", "x" * 9_000, to=sid)  # under the limit: sent
    assert info.value.limit == 10_000 and info.value.size > 20_000
    assert "out of band" in str(info.value)
    emits = [m for m in published(publish) if m["method"] == "emit"]
    assert len(emits) == 1  # (heartbeats may pass the mock too)
    assert [d for _, d in server.sent] == ['2["chat","' + "x" * 9_000 + '"]']
    assert manager.stats()["pending_acks"] == 0


def test_oversized_write_only_publish_raises_and_sends_nothing() -> None:
    manager = RedisManager("redis://127.0.0.1:1/0", write_only=True,
                           max_message_bytes=1_000, publish_timeout=0.3)
    with pytest.raises(BusMessageTooLarge):
        manager.emit("x", "y" * 2_000, to="room")
    # refused before any connection attempt (there is no Redis on port 1)
    assert manager.stats()["publish_errors"] == 0


def test_bus_limits_given_with_the_driver_options() -> None:
    # message_queue_options reach create_manager as driver options: the
    # limits stay with the manager instead of reaching redis.Redis()
    manager = create_manager("redis://127.0.0.1:1/0", write_only=True, options={
        "buffer_size": 7, "buffer_bytes": 5_000, "max_message_bytes": 2_000,
        "socket_timeout": 1.0})
    settings = manager.settings
    assert (settings.buffer_size, settings.buffer_bytes, settings.max_message_bytes) == (
        7, 5_000, 2_000)
    assert manager.redis_options["socket_timeout"] == 1.0
    assert "buffer_bytes" not in manager.redis_options
    kombu = create_manager("amqp://guest:guest@127.0.0.1:1//", write_only=True,
                           options={"max_message_bytes": 3_000})
    assert kombu.settings.max_message_bytes == 3_000
    assert "max_message_bytes" not in kombu.transport.connection_options
    with pytest.raises(BusConfigurationError, match="max_message_bytes=-1"):
        create_manager("redis://127.0.0.1:1/0", options={"max_message_bytes": -1})


def test_remote_node_delivers_room_list_and_skip_sid(hub) -> None:
    s1, m1 = make_node(hub)
    s2, m2 = make_node(hub)
    a = m2.connect("a", "/")
    b = m2.connect("b", "/")
    m2.enter_room(a, "/", "r1")
    m2.enter_room(b, "/", "r2")
    s1.emit("ev", (1, 2), to=["r1", "r2"], skip_sid=[b])
    wait_for(lambda: s2.sent)
    time.sleep(0.1)
    assert s2.sent == [("a", '2["ev",1,2]')]


def test_forged_messages_dropped_counted_and_nothing_runs(hub) -> None:
    server, manager = make_node(hub, signing_secret="k" * 32)
    sid = manager.connect("eio1", "/")

    class Evil:
        def __reduce__(self):
            return (pytest.fail, ("pickle payload executed",))

    with mock.patch.object(manager, "apply_emit") as handle:
        hub.inject(json.dumps({"method": "emit", "event": "x", "data": [1],
                               "namespace": "/", "room": sid,
                               "host_id": "evil"}))
        hub.inject(b"not json at all {")
        hub.inject(pickle.dumps(Evil()))
        wait_for(lambda: manager.stats()["dropped_malformed"] == 2)
        wait_for(lambda: manager.stats()["dropped_unsigned"] == 1)
    handle.assert_not_called()
    assert server.sent == []


def test_ack_expires_and_calls_on_timeout(hub) -> None:
    s1, m1 = make_node(hub, ack_timeout=0.3)
    s2, m2 = make_node(hub)
    remote = m2.connect("r", "/")
    expired, answered = [], []
    s1.emit("q", 1, to=remote, callback=with_timeout(answered.append, 0.2,
                                                      lambda: expired.append(1)))
    s1.emit("q", 2, to=remote, callback=answered.append)  # default 0.3 s
    assert m1.stats()["pending_acks"] == 2
    wait_for(lambda: m1.stats()["acks_expired"] == 2)
    assert expired == [1] and answered == [] and m1.callbacks == {}


def test_remote_ack_reaches_the_emitter(hub) -> None:
    s1, m1 = make_node(hub)
    s2, m2 = make_node(hub)
    remote = m2.connect("r", "/")
    answers = []
    s1.emit("q", 1, to=remote, callback=lambda *a: answers.append(a))
    wait_for(lambda: s2.sent)
    packet = s2.sent[0][1]  # '2<id>["q",1]' sent by node 2 with its own ack id
    ack_id = int(packet[1:packet.index("[")])
    m2.trigger_callback(remote, ack_id, ["yes"])
    wait_for(lambda: answers == [("yes",)])


def test_outage_buffers_then_publishes_in_order(hub) -> None:
    # no heartbeat during the test: it would compete for buffer slots
    s1, m1 = make_node(hub, buffer_size=5, max_backoff=0.05,
                       heartbeat_interval=60)
    s2, m2 = make_node(hub)
    sid = m2.connect("x", "/")
    wait_for(lambda: m1.ready)
    assert m1.flush(2)
    hub.down = True
    for i in range(8):
        s1.emit("n", i, to=sid)
    wait_for(lambda: not m1.ready)
    stats = m1.stats()
    assert stats["buffered"] == 5 and stats["dropped_buffer_full"] == 3
    hub.down = False
    wait_for(lambda: len(s2.sent) == 5)
    assert [d for _, d in s2.sent] == [f'2["n",{i}]' for i in range(5)]
    wait_for(lambda: m1.ready)
    assert m1.stats()["reconnects"] >= 1


def test_burst_is_batched(hub) -> None:
    s1, m1 = make_node(hub)
    wait_for(lambda: m1.ready)
    for i in range(2000):
        s1.emit("b", i, to="nobody")
    assert m1.flush(5)
    assert sum(m1.transport.batches) >= 2000 and max(m1.transport.batches) > 1


def test_write_only_publish_error_is_raised_not_swallowed() -> None:
    manager = RedisManager("redis://127.0.0.1:1/0", write_only=True,
                           publish_timeout=0.3)
    with pytest.raises(BusPublishError, match="reachable"):
        manager.emit("x", 1, to="room")
    assert manager.stats()["publish_errors"] >= 1 and not manager.ready


def test_cluster_queries_over_the_bus(hub) -> None:
    s1, m1 = make_node(hub)
    s2, m2 = make_node(hub)
    a = m1.connect("a", "/")
    b = m2.connect("b", "/")
    m2.enter_room(b, "/", "lobby")
    wait_for(lambda: len(m1.cluster.live_nodes()) == 2)
    assert m1.cluster.room_members("lobby") == [b]
    assert m1.cluster.rooms_of(b) == ["lobby"]
    assert {s["sid"] for s in m1.cluster.sockets()} == {a, b}
    m1.cluster.sockets_join("all", to=None)
    wait_for(lambda: m1.cluster.room_size("all") == 2)
    m2.cluster.on("double", lambda x: 2 * x)
    assert m1.cluster.server_side_call("double", 21) == [42]
    m2.close()
    wait_for(lambda: len(m1.cluster.live_nodes()) == 1)
    assert m1.cluster.room_members("lobby") == []


def test_presence_first_join_last_leave(hub) -> None:
    s1, m1 = make_node(hub)
    s2, m2 = make_node(hub)
    seen = []
    for m in (m1, m2):
        m.presence.on(lambda ev, room, ns, name=m.node_name: seen.append(
            (ev, room)))
    wait_for(lambda: len(m1.cluster.live_nodes()) == 2)
    a = m1.connect("a", "/")
    b = m2.connect("b", "/")
    m1.enter_room(a, "/", "user:1")
    wait_for(lambda: ("first_join", "user:1") in seen)
    wait_for(lambda: m2.presence.rooms() == ["user:1"])
    m2.enter_room(b, "/", "user:1")  # second member elsewhere: no event
    # (changes closer than one bus round trip may both report: documented)
    wait_for(lambda: m1.presence._remote.get(("/", "user:1")))
    m1.leave_room(a, "/", "user:1")
    time.sleep(0.2)
    m2.leave_room(b, "/", "user:1")
    wait_for(lambda: ("last_leave", "user:1") in seen)
    time.sleep(0.2)
    assert seen == [("first_join", "user:1"), ("last_leave", "user:1")]


def test_node_death_reports_its_rooms_vacated_once(hub) -> None:
    s1, m1 = make_node(hub)
    s2, m2 = make_node(hub)
    s3, m3 = make_node(hub)
    seen = []
    for m in (m1, m2, m3):
        m.presence.on(lambda ev, room, ns, me=m: seen.append((me, ev, room)))
    wait_for(lambda: all(len(m.cluster.live_nodes()) == 3 for m in (m1, m2, m3)))
    sid = m3.connect("z", "/")
    m3.enter_room(sid, "/", "user:9")
    wait_for(lambda: m1.presence.rooms() == ["user:9"]
             and m2.presence.rooms() == ["user:9"])
    m3.subscription.closed = True  # crash: no goodbye, heartbeats stop
    hub.subscribers.remove(m3.transport)
    wait_for(lambda: len(m1.cluster.live_nodes()) == 2
             and len(m2.cluster.live_nodes()) == 2, timeout=5)
    wait_for(lambda: any(ev == "last_leave" for _, ev, _ in seen))
    time.sleep(0.3)
    reporters = [m for m, ev, _ in seen if ev == "last_leave"]
    assert len(reporters) == 1 and reporters[0] is min(
        (m1, m2), key=lambda m: m.host_id)

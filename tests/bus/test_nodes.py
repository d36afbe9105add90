"""Every cross-node operation, with two real node processes on real Redis."""
from __future__ import annotations

import time

import pytest

from tests.bus.conftest import wait_nodes


@pytest.fixture
def pair(bus_nodes, connect):
    """Node 1 with client a; node 2 with clients b and c."""
    n1, n2 = bus_nodes(2)
    a, b, c = connect(n1), connect(n2), connect(n2)
    wait_nodes(a, 2)
    wait_nodes(b, 2)
    return n1, n2, a, b, c


def test_emit_to_sid_room_rooms_broadcast_and_skip_sid(pair) -> None:
    n1, n2, a, b, c = pair
    b.call("join", {"room": "r1"})
    c.call("join", {"room": "r2"})
    a.call("join", {"room": "r1"})
    a.call("relay", {"to": b.sid, "payload": "to-sid"})
    a.call("relay", {"to": "r1", "payload": "to-room"})
    a.call("relay", {"to": ["r1", "r2"], "payload": "to-rooms"})
    a.call("relay", {"payload": "to-all"})
    a.call("relay", {"to": "r1", "payload": "skip-self", "skip_self": True})
    a.call("relay", {"payload": "skip-b", "skip_sid": b.sid})
    b.wait_event("relayed", 5)
    c.wait_event("relayed", 3)
    time.sleep(0.3)  # anything extra would have arrived by now
    assert b.got("relayed") == ["to-sid", "to-room", "to-rooms", "to-all",
                                "skip-self"]
    assert c.got("relayed") == ["to-rooms", "to-all", "skip-b"]
    # the emitting node's own members get it once, without a round trip
    assert a.got("relayed") == ["to-room", "to-rooms", "to-all", "skip-b"]


def test_ack_from_a_client_on_another_node(pair) -> None:
    n1, n2, a, b, c = pair
    b.answers["question"] = "forty-two"
    reply = a.call("ask", {"sid": b.sid, "payload": "q?", "timeout": 5})
    assert reply == {"answer": ["forty-two"]}
    assert a.call("call", {"sid": b.sid, "timeout": 5}) == {"answer": "forty-two"}


def test_ack_timeout_calls_back_and_call_raises(pair) -> None:
    n1, n2, a, b, c = pair
    b.client.on("question", lambda *args: time.sleep(2))  # answers too late
    start = time.monotonic()
    assert a.call("ask", {"sid": b.sid, "timeout": 0.5}) == {"expired": True}
    assert a.call("call", {"sid": b.sid, "timeout": 0.5}) == {
        "error": "TimeoutError"}
    assert time.monotonic() - start < 5
    stats = a.call("stats")["stats"]
    assert stats["acks_expired"] >= 1


def test_join_leave_disconnect_of_a_remote_sid_and_close_room(pair) -> None:
    n1, n2, a, b, c = pair
    a.call("join", {"room": "club", "sid": b.sid})   # b lives on node 2
    a.call("join", {"room": "club", "sid": c.sid})
    a.call("relay", {"to": "club", "payload": 1})
    b.wait_event("relayed")
    c.wait_event("relayed")
    a.call("leave", {"room": "club", "sid": b.sid})
    a.call("relay", {"to": "club", "payload": 2})
    c.wait_event("relayed", 2)
    a.call("close", {"room": "club"})
    a.call("relay", {"to": "club", "payload": 3})
    a.call("relay", {"to": c.sid, "payload": "marker"})
    c.wait_event("relayed", 3)
    assert b.got("relayed") == [1] and c.got("relayed") == [1, 2, "marker"]
    a.call("kick", {"sid": c.sid})
    deadline = time.monotonic() + 5
    while c.client.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not c.client.connected and b.client.connected


def test_cluster_queries(pair) -> None:
    n1, n2, a, b, c = pair
    b.call("join", {"room": "lobby"})
    a.call("join", {"room": "lobby"})

    def q(op, *args, **kwargs):
        reply = a.call("query", {"op": op, "args": list(args), "kwargs": kwargs})
        return reply["result"]

    assert q("room_members", "lobby") == sorted([a.sid, b.sid])
    assert q("room_size", "lobby") == 2
    assert q("rooms_of", b.sid) == ["lobby"]
    assert q("rooms_of", "no-such-sid") == []
    sockets = {s["sid"]: s for s in q("sockets")}
    assert set(sockets) == {a.sid, b.sid, c.sid}
    assert sockets[b.sid]["node_id"] == sockets[c.sid]["node_id"] \
        != sockets[a.sid]["node_id"]
    assert [s["sid"] for s in q("sockets", rooms=["lobby"])] == sorted(
        [a.sid, b.sid])
    q("sockets_join", "vip", to="lobby")
    assert sorted(q("room_members", "vip")) == sorted([a.sid, b.sid])
    q("sockets_leave", "vip", to=[b.sid])
    assert q("room_members", "vip") == [a.sid]
    assert q("server_side_call", "whoami", "hi-") == [
        b.call("whoami")["node"].join(["hi-", ""])]
    assert len(q("live_nodes")) == 2
    # a is in lobby too, so no ack will come back: plain emit
    a.client.emit("query", {"op": "disconnect_sockets", "kwargs": {"to": "lobby"}})
    deadline = time.monotonic() + 5
    while (a.client.connected or b.client.connected) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not a.client.connected and not b.client.connected
    assert c.client.connected


def test_query_does_not_hang_when_a_node_dies(pair) -> None:
    n1, n2, a, b, c = pair
    b.call("join", {"room": "lobby"})
    n2.kill()  # SIGKILL: no goodbye
    start = time.monotonic()
    reply = a.call("query", {"op": "room_members", "args": ["lobby"]},
                   timeout=15)
    elapsed = time.monotonic() - start
    # either node 2's heartbeat expired first (answer without it) or the
    # request timed out naming it: never a hang
    assert reply in ({"result": []}, {"timeout": True, "missing": reply.get("missing")})
    assert elapsed < 6.5
    wait_nodes(a, 1)
    assert a.call("query", {"op": "live_nodes"})["result"][0]["self"] is True


def test_presence_events(pair) -> None:
    n1, n2, a, b, c = pair
    a.call("join", {"room": "watchers"})
    a.wait_event("presence")  # "watchers" itself just appeared

    def user7():
        return [(e["event"], e["node"]) for e in a.got("presence")
                if e["room"] == "user:7"]

    b.call("join", {"room": "user:7"})
    c.call("join", {"room": "user:7"})
    b.call("leave", {"room": "user:7"})
    c.call("leave", {"room": "user:7"})
    deadline = time.monotonic() + 5
    while len(user7()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # a duplicate would have arrived by now
    node2 = b.call("whoami")["node"]
    assert user7() == [("first_join", node2), ("last_leave", node2)]


def test_burst_of_1000_concurrent_emits_is_delivered_in_full(pair) -> None:
    n1, n2, a, b, c = pair
    b.call("join", {"room": "burst"})
    assert a.call("burst", {"n": 1000, "to": "burst"}) == 1000
    got = b.wait_event("burst", 1000, timeout=20)
    assert sorted(got) == list(range(1000))
    stats = a.call("stats")["stats"]
    assert stats["publish_errors"] == 0 and stats["dropped_buffer_full"] == 0


def test_answers_to_a_query_reach_only_the_node_that_asked(bus_nodes, connect) -> None:
    # the request goes to every node; each answer only to the asker's
    # channel, so a third node reads one message per query, not one per node
    n1, n2, n3 = bus_nodes(3)
    a, third = connect(n1), connect(n3)
    wait_nodes(a, 3)
    wait_nodes(third, 3)

    def received(recorder) -> int:
        return int(recorder.call("stats")["stats"]["received"])

    queries = 100
    before_asker, before_third = received(a), received(third)
    for _ in range(queries):
        assert a.call("query", {"op": "room_members", "args": ["lobby"]}) == {"result": []}
    asked, read_by_third = received(a) - before_asker, received(third) - before_third
    assert asked >= 2 * queries  # both answers arrived at the asker
    # requests plus heartbeats (about one per node per second)
    assert queries <= read_by_third < queries + 40, read_by_third

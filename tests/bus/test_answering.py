"""The nodes' side of asks and SocketIO.gather, over the loopback bus.

The loopback transport does not route, so replies travel on the common
channel and each asker keeps what is addressed to it: the same code paths
as on Redis, one channel instead of the asker's own.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import socketio
from socketio.packet import Packet

from cluster.bus.errors import BusSerializationError, ClusterRequestError
from cluster.bus.services import answering
from cluster.bus.services.answering import gather_here, gather_on
from cluster.bus.services.asks import GatherResult, encode_args
from cluster.bus.services.membership import LocalManager
from tests.bus.loopback import LoopbackHub, make_node, wait_for


@pytest.fixture
def hub() -> Any:
    hub = LoopbackHub()
    yield hub
    for manager in list(hub.managers):
        manager.close(timeout=0.5)


def asked(server: Any, eio_sid: str) -> list[tuple[int, list[Any]]]:
    """``(ack id, [event, *args])`` of the events with an ack id sent to
    ``eio_sid`` (the loopback server records them encoded)."""
    out = []
    for to, encoded in list(server.sent):
        if to == eio_sid and isinstance(encoded, str):
            packet = Packet(encoded_packet=encoded)
            if packet.id is not None:
                out.append((packet.id, packet.data))
    return out


def answer_all(server: Any, manager: Any, clients: dict[str, str], event: str,
               answer: Any) -> None:
    """Every client in ``clients`` (sid -> eio sid) acks ``event`` with
    ``answer(sid)`` once it got it."""
    def run() -> None:
        pending = dict(clients)
        deadline = time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            for sid, eio_sid in list(pending.items()):
                for ack_id, data in asked(server, eio_sid):
                    if data[0] == event:
                        manager.trigger_callback(sid, ack_id, [answer(sid)])
                        del pending[sid]
                        break
            time.sleep(0.01)
    threading.Thread(target=run, daemon=True).start()


def nodes(hub: LoopbackHub, count: int, **kwargs: Any) -> list[tuple[Any, Any]]:
    made = [make_node(hub, **kwargs) for _ in range(count)]
    wait_for(lambda: all(len(m.cluster.live_nodes()) == count for _, m in made))
    return made


def test_gather_collects_every_node_s_answers_and_returns_once_all_answered(hub) -> None:
    (s1, m1), (s2, m2), (s3, m3) = nodes(hub, 3)
    a, b = m1.connect("ea", "/"), m2.connect("eb", "/")
    c = m2.connect("ec", "/")
    outsider = m3.connect("eo", "/")
    for manager, sid in ((m1, a), (m2, b), (m2, c)):
        manager.enter_room(sid, "/", "team")
    answer_all(s1, m1, {a: "ea"}, "vote", lambda sid: f"yes from {sid}")
    answer_all(s2, m2, {b: "eb", c: "ec"}, "vote", lambda sid: f"yes from {sid}")
    started = time.monotonic()
    result = m1.answering.gather("vote", ["lunch?"], to="team", timeout=10)
    assert time.monotonic() - started < 5  # all answered: no wait for the deadline
    assert result == GatherResult({sid: f"yes from {sid}" for sid in (a, b, c)}, [])
    assert asked(s1, "ea")[0][1] == ["vote", "lunch?"]
    assert asked(s3, "eo") == []  # not in the room
    assert outsider not in result.answers
    # nothing stays behind on any node
    wait_for(lambda: all(not m.answering._serving and not len(m.answering.asker)
                         for m in (m1, m2, m3)))


def test_gather_names_the_silent_at_its_deadline_and_their_acks_expire(hub) -> None:
    (s1, m1), (s2, m2) = nodes(hub, 2)
    a, b = m1.connect("ea", "/"), m2.connect("eb", "/")
    for manager, sid in ((m1, a), (m2, b)):
        manager.enter_room(sid, "/", "team")
    answer_all(s2, m2, {b: "eb"}, "vote", lambda sid: 42)
    started = time.monotonic()
    result = m1.answering.gather("vote", [], to="team", timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 3
    assert result == GatherResult({b: 42}, [a])
    # the silent client's ack callback is dropped with the ask, on its node
    wait_for(lambda: m1.stats()["pending_acks"] == 0 and not m1.answering._serving)
    assert m1.stats()["acks_expired"] == 1


def test_gather_skips_sids_and_reaches_a_list_of_rooms(hub) -> None:
    (s1, m1), (s2, m2) = nodes(hub, 2)
    a, b, c = m1.connect("ea", "/"), m2.connect("eb", "/"), m2.connect("ec", "/")
    m1.enter_room(a, "/", "red")
    m2.enter_room(b, "/", "blue")
    m2.enter_room(c, "/", "blue")
    answer_all(s1, m1, {a: "ea"}, "ping", lambda sid: "pong")
    answer_all(s2, m2, {b: "eb"}, "ping", lambda sid: "pong")
    result = m1.answering.gather("ping", [], to=["red", "blue"], skip_sid=c, timeout=5)
    assert result == GatherResult({a: "pong", b: "pong"}, [])
    assert asked(s2, "ec") == []


def test_binary_arguments_and_answers_cross_nodes(hub) -> None:
    (s1, m1), (s2, m2) = nodes(hub, 2)
    b = m2.connect("eb", "/")
    sent: list[Any] = []

    def answer() -> None:
        wait_for(lambda: [p for to, p in s2.sent if to == "eb"])
        packets = [p for to, p in s2.sent if to == "eb"]
        sent.extend(packets)
        head = packets[0][0]  # '51-<ack id>["blob",{"_placeholder":true,"num":0}]'
        ack_id = int(head[head.index("-") + 1:head.index("[")])
        m2.trigger_callback(b, ack_id, [b"\x00answer"])
    threading.Thread(target=answer, daemon=True).start()
    result = m1.answering.gather("blob", [b"\x01question"], to=b, timeout=5)
    assert result.answers == {b: b"\x00answer"}
    assert sent[0][1] == b"\x01question"  # the attachment, rebuilt on node 2


def test_a_reply_to_another_asker_is_ignored(hub) -> None:
    (s1, m1), (s2, m2) = nodes(hub, 2)
    pending = m1.answering.asker.open("room", 5)
    assert pending is not None
    m1.answering.handle_answer({"method": "answer", "host_id": m2.host_id, "to": "other",
                                "ask_id": pending.ask_id, "roster": ["x"],
                                "nodes": [m2.host_id]})
    assert pending.roster == {}


def test_a_node_serving_too_many_asks_refuses_with_a_reason(hub, monkeypatch) -> None:
    monkeypatch.setattr(answering, "MAX_SERVED_ASKS", 1)
    (s1, m1), (s2, m2) = nodes(hub, 2)
    b, c = m2.connect("eb", "/"), m2.connect("ec", "/")
    m2.enter_room(b, "/", "team")
    m2.enter_room(c, "/", "team")
    waiting = threading.Thread(target=m1.answering.gather, args=("slow", []),
                               kwargs={"to": b, "timeout": 2}, daemon=True)
    waiting.start()
    wait_for(lambda: m2.answering._serving)
    pending = m1.answering.asker.open(c, 2)
    assert pending is not None
    m1.answering.asker.expect(pending, m1.answering.link.nodes.ids())
    message = m1.answering.asker.message(pending, "refused", [], namespace="/")
    m1.answering.link.publish(message)
    m1.answering.handle_ask(message)  # m1's own part: nobody there
    assert pending.wait() and pending.roster == {}
    assert "serving 1 asks already" in pending.errors[0]
    waiting.join(5)


def test_gather_refuses_what_would_hang_or_cannot_travel(hub) -> None:
    (s1, m1), = nodes(hub, 1)
    with pytest.raises(ValueError, match="to="):
        m1.answering.gather("x", [], to=None)
    with pytest.raises(ValueError, match="timeout"):
        m1.answering.gather("x", [], to="r", timeout=0)
    with pytest.raises(BusSerializationError):
        m1.answering.gather("x", [object()], to="r")
    m1.receiver._local.inside = True
    try:
        with pytest.raises(RuntimeError, match="listener"):
            m1.answering.gather("x", [], to="r")
    finally:
        m1.receiver._local.inside = False
    assert len(m1.answering.asker) == 0  # nothing left by the refusals


def test_a_write_only_manager_points_to_the_emitter(hub) -> None:
    from cluster.bus.manager import ClusterManager
    from tests.bus.loopback import LoopbackTransport

    manager = ClusterManager(LoopbackTransport(hub), write_only=True)
    with pytest.raises(ClusterRequestError, match="workers.Emitter"):
        manager.answering.gather("x", [], to="r", timeout=1)


def test_gather_on_a_disconnected_bus_says_so(hub) -> None:
    (s1, m1), (s2, m2) = nodes(hub, 2)
    m1.subscription.subscribed = False
    with pytest.raises(ClusterRequestError, match="disconnected"):
        m1.answering.gather("x", [], to="r", timeout=1)


def test_the_asks_limit_of_a_node(hub) -> None:
    (s1, m1), = nodes(hub, 1)
    m1.answering.asker.limit = 1
    assert m1.answering.asker.open("r", 5) is not None
    with pytest.raises(ClusterRequestError, match="pending on this node"):
        m1.answering.gather("x", [], to="r", timeout=1)


def test_a_server_without_a_bus_gathers_its_own_clients() -> None:
    server = socketio.Server(client_manager=LocalManager(), async_mode="threading")
    server.manager.set_server(server)
    server.manager.initialize()
    sent: list[tuple[str, Any]] = []
    server._send_packet = lambda eio_sid, pkt: sent.append((eio_sid, pkt))
    a = server.manager.connect("ea", "/")
    b = server.manager.connect("eb", "/")
    server.manager.enter_room(a, "/", "team")
    server.manager.enter_room(b, "/", "team")

    def answer() -> None:
        wait_for(lambda: len(sent) == 2)
        for eio_sid, packet in sent:
            if eio_sid == "ea":
                server.manager.trigger_callback(a, packet.id, ["here"])
    threading.Thread(target=answer, daemon=True).start()
    result = gather_on(server, "roll", [], to="team", namespace="/", timeout=0.5)
    assert result == GatherResult({a: "here"}, [b])
    with pytest.raises(ValueError, match="to="):
        gather_here(server, "roll", [], to=None, namespace="/", timeout=1)


def test_encode_args_is_what_travels() -> None:
    # the ask's wire form: one list of JSON arguments, attachments beside it
    assert encode_args(["a"]) == [["a"]]

"""Unit tests of workers.emitter at the bus seam (the backend's send), plus
its wire messages read back from a real Redis."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest

from cluster.bus import BusConfigurationError, BusPublishError, BusSerializationError, Codec
from cluster.bus.channels import room_channel
from cluster.devtools.processes import free_port
from workers import ConfigurationError, Emitter, PayloadError, PublishError

URL = "redis://127.0.0.1:6399/0"  # never contacted: the send is replaced
SECRET = "0123456789abcdef-unit-secret"


class Wire:
    """Replaces the backend's connect and send; decodes what was sent."""

    def __init__(self, emitter: Emitter, secret: str | None = None) -> None:
        self.codec = Codec(secret)
        self.raw: list[bytes] = []
        self.channels: list[str | None] = []
        self.emitter = emitter
        self.patch()

    def patch(self) -> None:
        manager = self.emitter.manager
        manager.transport.connect = lambda: None  # type: ignore[method-assign]
        manager.transport.send_each = self.send_each  # type: ignore[method-assign]

    def send_each(self, payloads: list[bytes], logged: list[bool],
                  channels: list[str | None] | None = None) -> list[str | None]:
        """Every payload accepted, none logged (the transport's seam)."""
        self.raw.extend(payloads)
        self.channels.extend(channels or [None] * len(payloads))
        return [None] * len(payloads)

    def messages(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.raw:
            message, _ = self.codec.open(raw)
            out.append({k: v for k, v in message.items() if k not in ("ts", "host_id")})
        return out


@pytest.fixture
def emitter() -> Emitter:
    return Emitter(URL, allow_unsigned=True)


@pytest.fixture
def wire(emitter: Emitter) -> Wire:
    return Wire(emitter)


def test_emit_to_a_room_with_skip_sid(emitter: Emitter, wire: Wire) -> None:
    emitter.emit("news", {"title": "hi"}, to="lobby", skip_sid="abc")
    assert wire.messages() == [{
        "method": "emit", "event": "news", "data": [{"title": "hi"}], "binary": False,
        "namespace": "/", "room": "lobby", "skip_sid": "abc", "callback": None}]


def test_emit_variants(emitter: Emitter, wire: Wire) -> None:
    emitter.emit("many", 1, "two", room=["a", "b"], namespace="/chat")
    emitter.emit("none")
    emitter.emit("everyone", [1, 2], skip_sid=("x", "y"))
    emitter.send("text", to="sid1")
    got = [(m["event"], m["data"], m["room"], m["namespace"], m["skip_sid"])
           for m in wire.messages()]
    assert got == [("many", [1, "two"], ["a", "b"], "/chat", None),
                   ("none", [], None, "/", None),
                   ("everyone", [[1, 2]], None, "/", ["x", "y"]),
                   ("message", ["text"], "sid1", "/", None)]
    # one room (or sid) has its channel; several rooms and everyone share
    # the common one (see cluster.bus.channels)
    assert wire.channels == [None, None, None, room_channel("flask-socketio", "/", "sid1")]


def test_bytes_travel_as_binary_attachments(emitter: Emitter, wire: Wire) -> None:
    emitter.emit("blob", {"data": b"\x00\x01"}, to="r")
    (message,) = wire.messages()
    assert message["binary"] is True
    assert message["data"][0] == [{"data": {"_placeholder": True, "num": 0}}]
    assert message["data"][1] == "AAE="


def test_room_commands_for_any_sid(emitter: Emitter, wire: Wire) -> None:
    emitter.join_room("sid1", "vip")
    emitter.leave_room("sid1", "vip", namespace="/chat")
    emitter.close_room("vip")
    assert wire.messages() == [
        {"method": "enter_room", "sid": "sid1", "room": "vip", "namespace": "/"},
        {"method": "leave_room", "sid": "sid1", "room": "vip", "namespace": "/chat"},
        {"method": "close_room", "room": "vip", "namespace": "/"},
    ]


def test_disconnect_of_a_remote_sid_is_a_bus_command(emitter: Emitter, wire: Wire) -> None:
    emitter.disconnect("sid1")  # python-socketio's write-only manager crashes here
    (message,) = wire.messages()
    assert (message["method"], message["op"], message["args"], message["reply"]) == (
        "request", "disconnect_sockets", {"to": ["sid1"], "namespace": "/"}, False)


def test_cluster_commands(emitter: Emitter, wire: Wire) -> None:
    emitter.sockets_join(["a", "b"], to="lobby")
    emitter.sockets_leave("a")
    emitter.disconnect_sockets(to=["lobby", "hall"], namespace="/chat")
    emitter.server_side_emit("reload", {"v": 2})
    got = [(m["op"], m["args"]) for m in wire.messages()]
    assert got == [
        ("sockets_join", {"rooms": ["a", "b"], "to": ["lobby"], "namespace": "/"}),
        ("sockets_leave", {"rooms": ["a"], "to": None, "namespace": "/"}),
        ("disconnect_sockets", {"to": ["lobby", "hall"], "namespace": "/chat"}),
        ("server_side_emit", {"event": "reload", "args": [{"v": 2}], "namespace": "/"}),
    ]


def test_cluster_queries_are_not_offered_but_answers_from_clients_are(
        emitter: Emitter) -> None:
    # room_members, rooms_of, sockets: run them on a node (socketio.cluster)
    assert not hasattr(emitter, "room_members")
    assert callable(emitter.call) and callable(emitter.gather)  # see test_emitter_asks.py


def test_signed_messages_verify_with_the_nodes_secret() -> None:
    emitter = Emitter(URL, signing_secret=SECRET, channel="custom")
    wire = Wire(emitter, secret=SECRET)
    emitter.emit("signed", 1)
    envelope = json.loads(wire.raw[0])
    assert set(envelope) == {"v", "src", "seq", "ts", "log", "sig", "body"}
    assert wire.messages()[0]["event"] == "signed"
    with pytest.raises(Exception, match="signature"):
        Codec("another-secret-of-16-bytes").open(wire.raw[0])


def test_unserializable_payload_raises_at_the_caller(emitter: Emitter, wire: Wire) -> None:
    with pytest.raises(PayloadError, match="not JSON serializable") as info:
        emitter.emit("bad", {"when": object()}, to="room")
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, BusSerializationError)
    with pytest.raises(PayloadError):
        emitter.server_side_emit("bad", {1, 2})
    assert wire.raw == []  # nothing was sent


@pytest.mark.parametrize("call", [
    lambda e: e.emit("x", to={"not": "a room"}),
    lambda e: e.emit("x", to=True),
    lambda e: e.emit("x", skip_sid=3),
    lambda e: e.emit("", 1),
    lambda e: e.emit(None, 1),
    lambda e: e.join_room(None, "r"),
    lambda e: e.join_room("sid", ["a", "b"]),
    lambda e: e.leave_room("sid", 1.5),
    lambda e: e.close_room(None),
    lambda e: e.disconnect(""),
    lambda e: e.sockets_join([]),
])
def test_bad_addresses_raise_before_sending(emitter: Emitter, wire: Wire, call: Any) -> None:
    with pytest.raises(PayloadError):
        call(emitter)
    assert wire.raw == []


def test_bad_configuration_raises_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="message queue URL"):
        Emitter("")
    with pytest.raises(ConfigurationError, match="too short") as info:
        Emitter(URL, signing_secret="short")
    assert isinstance(info.value, BusConfigurationError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigurationError, match="start with '/'"):
        Emitter(URL, namespace="chat", allow_unsigned=True)
    with pytest.raises(ConfigurationError, match="Invalid message queue URL"):
        Emitter("localhost:6379", allow_unsigned=True)
    with pytest.raises(ConfigurationError, match="channel"):
        Emitter(URL, channel="", allow_unsigned=True)


def test_an_unsigned_emitter_needs_the_explicit_opt_out(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match="CLUSTER_SIGNING_SECRET") as info:
        Emitter(URL)
    assert "allow_unsigned=True" in str(info.value)
    with pytest.raises(ConfigurationError, match="CLUSTER_ALLOW_UNSIGNED_BUS"):
        Emitter.from_env({"REDIS_URL": URL})
    with caplog.at_level("WARNING", logger="workers.emitter"):
        assert not Emitter(URL, allow_unsigned=True).manager.signed
        assert not Emitter.from_env({"REDIS_URL": URL, "CLUSTER_ALLOW_UNSIGNED_BUS": "1"}
                                    ).manager.signed
    assert sum("UNSIGNED" in r.getMessage() for r in caplog.records) == 2


def test_from_env_reads_the_nodes_variables() -> None:
    emitter = Emitter.from_env({"REDIS_URL": URL, "MESSAGE_QUEUE_CHANNEL": "chan",
                                "CLUSTER_SIGNING_SECRET": SECRET})
    assert (emitter.url, emitter.channel) == (URL, "chan")
    assert emitter.manager.channel == "chan"
    assert emitter.manager.codec.signed
    assert SECRET not in repr(emitter)
    with pytest.raises(ConfigurationError, match="MESSAGE_QUEUE_URL"):
        Emitter.from_env({})


def test_a_forked_child_opens_its_own_connection(redis_url: str, redis_server: Any) -> None:
    # Celery's prefork pool forks after import: a module-level emitter used
    # in the parent must not share its socket with the children
    client = redis_server.client(socket_timeout=5)
    pubsub = client.pubsub()
    pubsub.subscribe("flask-socketio")
    pubsub.get_message(timeout=2)
    emitter = Emitter(redis_url, allow_unsigned=True)
    emitter.emit("from", "parent")
    parent = emitter.manager
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through Redis
        try:
            emitter.emit("from", "child", emitter.manager is not parent)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    got = []
    for _ in range(2):
        message = pubsub.get_message(timeout=5)
        while message is not None and message["type"] != "message":
            message = pubsub.get_message(timeout=5)
        assert message is not None
        got.append(json.loads(message["data"])["data"])
    pubsub.close()
    client.close()
    assert got == [["parent"], ["child", True]]
    assert emitter.manager is parent  # the parent keeps its own
    emitter.close()


def test_close_then_reuse(emitter: Emitter) -> None:
    first = emitter.manager
    emitter.close()
    assert emitter.manager is not first
    with emitter as same:
        assert same is emitter


def test_unreachable_bus_raises_publish_error() -> None:
    emitter = Emitter(f"redis://127.0.0.1:{free_port()}/0", publish_timeout=0.3,
                      allow_unsigned=True)
    with pytest.raises(PublishError, match="reachable") as info:
        emitter.emit("lost", 1)
    assert isinstance(info.value, BusPublishError)
    assert not emitter.ready


def test_emits_from_many_threads_all_reach_redis(redis_url: str, redis_server: Any) -> None:
    client = redis_server.client(socket_timeout=5)
    pubsub = client.pubsub()
    pubsub.subscribe("flask-socketio")
    pubsub.get_message(timeout=2)  # the subscribe confirmation
    emitter = Emitter(redis_url, allow_unsigned=True)
    threads = [threading.Thread(target=lambda n=n: [emitter.emit("n", n * 10 + i)
                                                    for i in range(10)]) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    received = []
    for _ in range(200):
        message = pubsub.get_message(timeout=1)
        if message is None:
            break
        if message["type"] == "message":
            received.append(json.loads(message["data"])["data"][0])
    pubsub.close()
    client.close()
    assert sorted(received) == sorted(n * 10 + i for n in range(4) for i in range(10))
    assert emitter.ready
    emitter.close()

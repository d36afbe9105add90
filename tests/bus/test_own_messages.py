"""A node's own messages coming back are handled by their cleartext header,
before any decode: dropped (unlogged) or, for a logged emit, matched by lid
and by the very bytes it sealed, and delivered from the copy it holds."""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from cluster.bus import codec as codec_module
from cluster.bus.batch import Item
from cluster.bus.codec import NO_LID, UNSERVED_LID, Codec, OwnHeader, body_lid
from cluster.bus.errors import Dropped
from cluster.bus.local_delivery import LocalDelivery
from cluster.bus.ordered_delivery import OrderedDelivery, PendingDelivery
from cluster.bus.receiver import Receiver
from cluster.bus.runtime import Runtime
from cluster.bus.sender import SealedSender
from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.stats import BusStats
from cluster.bus.transport import Subscription, Transport

SECRET = "o" * 32
ME = "me"


class Scripted(Transport):
    """Yields the given payloads once, then ends the subscription."""

    def __init__(self) -> None:
        self.payloads: list[Any] = []

    def listen(self, subscription: Subscription) -> Any:
        subscription.up()
        yield from self.payloads
        subscription.closed = True


class Wire(Transport):
    """Takes what the sender writes; logged messages get an offset now."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_each(self, payloads: list[bytes], logged: list[bool],
                  channels: list[str | None] | None = None) -> list[Any]:
        self.sent.extend(payloads)
        return [now_offset() if log else None for log in logged]


class StubPublisher:
    """What LocalDelivery's listener part uses of the publisher."""

    def __init__(self, codec: Codec, sender: SealedSender) -> None:
        self.codec = codec
        self.sender = sender

    def watch_seals(self, watcher: Any) -> None:
        self.sender.on_sealed = watcher


def now_offset(shift_ms: int = 0) -> str:
    return f"{int(time.time() * 1000) + shift_ms}-0"


class Node:
    """The listener side of one node: codec, sender, ordered delivery,
    receiver, on a scripted channel."""

    def __init__(self) -> None:
        self.codec = Codec(SECRET)
        self.stats = BusStats()
        self.wire = Wire()
        self.sender = SealedSender(self.wire, self.codec, ME)
        self.ordered = OrderedDelivery(Runtime())
        self.delivered: list[dict[str, Any]] = []
        self.local = LocalDelivery(
            self.ordered, StubPublisher(self.codec, self.sender),  # type: ignore[arg-type]
            Runtime(), self.stats, apply_emit=self.delivered.append,
            logs_recovery=lambda: True, participants=lambda ns, room: [],
            recovering=lambda: None, subscribed=lambda: True, in_listener=lambda: False,
            offset_wait=0.1)
        self.channel = Scripted()
        self.subscription = sub = Subscription(self.stats, NodeRegistry(ME, ME, 3.0), Runtime(),
                           logging.getLogger("test"), node_timeout=3.0, max_backoff=0.05,
                           publishing=lambda: True)
        self.others: list[dict[str, Any]] = []
        self.receiver = Receiver(self.channel, sub, self.codec, self.stats,
                                 logging.getLogger("test"), host_id=ME,
                                 handlers={"emit": self.others.append},
                                 own_emit=self.local.came_back)

    def emit(self, n: int) -> tuple[PendingDelivery, dict[str, Any], bytes]:
        """A logged emit as the manager makes it, sealed and sent: its
        pending delivery, the message held here, the bytes on the wire."""
        pending = self.ordered.expect()
        message = {"method": "emit", "event": "e", "data": [{"n": n}], "binary": False,
                   "namespace": "/", "room": "r", "skip_sid": None, "callback": None,
                   "host_id": ME, "lid": pending.lid}
        body = self.codec.dumps(message)
        pending.message, pending.body = message, body
        self.sender.send([Item(body, False, True, pending)])
        return pending, message, self.wire.sent[-1]

    def receive(self, *raws: Any) -> None:
        self.channel.payloads = list(raws)
        self.subscription.closed = False  # each call listens once more
        self.receiver.run()

    def count(self, name: str) -> float:
        return self.stats.get(name)


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on every decode or HMAC of a bus message is listed and
    refused (as the codec refuses a message, so the listener goes on)."""
    calls: list[str] = []

    def refuse(what: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(what)
            raise Dropped("dropped_malformed", f"{what} called")
        return call

    monkeypatch.setattr(Codec, "open", refuse("Codec.open"))
    monkeypatch.setattr(codec_module.hmac, "new", refuse("hmac.new"))
    monkeypatch.setattr(codec_module.hmac, "compare_digest", refuse("hmac.compare_digest"))
    return calls


def test_own_unlogged_messages_are_dropped_before_any_decode_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node()
    heartbeat = node.codec.seal(node.codec.dumps({"method": "heartbeat", "host_id": ME}), ME)
    unlogged_emit = node.codec.seal(node.codec.dumps(
        {"method": "emit", "event": "e", "data": [1], "host_id": ME}), ME)
    # the header, then bytes no decoder would take
    header = b'{"v":2,"src":"me",'
    garbage = [header + b'\xff\xfe not json at all', header + b'"lid":',
               b"@" + now_offset().encode() + b"@" + header + b"\x00"]
    calls = forbid_decoding(monkeypatch)
    node.receive(heartbeat, unlogged_emit, *garbage)
    assert calls == []
    assert node.count("own_dropped") == 5 and node.count("received") == 5
    assert node.count("dropped_malformed") == 0 and node.count("handler_errors") == 0
    assert node.delivered == [] and node.others == []
    # an offset on a message that was not decoded is not trusted
    assert node.receiver.catch_up.base is None


def test_an_own_logged_emit_is_delivered_from_the_held_copy_without_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node()
    pending, message, wire = node.emit(1)
    offset = now_offset()
    calls = forbid_decoding(monkeypatch)
    node.receive(b"@" + offset.encode() + b"@" + wire)
    assert calls == []
    assert node.count("own_returned") == 1 and node.count("own_dropped") == 0
    assert node.delivered == [dict(message, data=[{"n": 1}, offset], offset=offset)]
    assert node.delivered[0]["data"][0] is message["data"][0]  # the held object itself
    assert pending.delivered  # its emitter goes on
    assert node.receiver.catch_up.base == offset  # a checked offset
    # a second copy (a replay of the genuine bytes) finds no emit waiting
    node.receive(b"@" + offset.encode() + b"@" + wire)
    assert len(node.delivered) == 1 and node.count("own_dropped") == 1


def test_an_own_emit_read_back_in_a_catch_up_takes_the_same_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node()
    _, message, wire = node.emit(2)
    offset = now_offset()
    calls = forbid_decoding(monkeypatch)
    # the catch-up hands each stream entry (offset, stored payload) to apply
    assert node.receiver.apply(offset, wire) is True
    assert [m["data"] for m in node.delivered] == [[{"n": 2}, offset]]
    assert node.receiver.apply(offset, wire) is False  # done: not trusted again
    assert calls == [] and node.count("own_dropped") == 1


def test_forged_copies_with_an_own_header_deliver_nothing() -> None:
    node = Node()
    pending, _, wire = node.emit(3)
    offset = now_offset()
    outer = json.loads(wire)
    forger = Codec("f" * 32)  # no secret: any bytes it writes are not a seal of ours
    forged = forger.seal(outer["body"].replace('"n":3', '"n":666'), ME, logged=True)
    assert OwnHeader(ME).read(forged) == pending.lid  # the same header...
    node.receive(b"@" + offset.encode() + b"@" + forged)
    # ...other bytes: decoded and verified like any message, and dropped
    assert node.count("dropped_bad_signature") == 1 and node.delivered == []
    assert not pending.delivered
    # a forged lid that no emit waits for is dropped unread
    node.receive(forger.seal('{"lid":999,"method":"emit"}', ME, logged=True))
    assert node.count("own_dropped") == 1 and node.delivered == []
    # the genuine copy still delivers, once, with its own offset
    node.receive(b"@" + offset.encode() + b"@" + wire)
    assert [m["data"][0] for m in node.delivered] == [{"n": 3}]
    assert node.count("own_returned") == 1


def test_the_genuine_bytes_with_an_offset_they_cannot_carry_are_dropped() -> None:
    node = Node()
    pending, _, wire = node.emit(4)
    for bad in (b"", b"@99999999999999-0@", b"@1-0@"):
        node.receive(bad + wire)
    assert node.count("dropped_bad_offset") == 3 and node.delivered == []
    assert not pending.delivered and node.receiver.catch_up.base is None
    offset = now_offset()
    node.receive(b"@" + offset.encode() + b"@" + wire)
    assert [m["offset"] for m in node.delivered] == [offset]


def test_an_abandoned_emit_returning_late_goes_to_the_others_as_it_was_sent() -> None:
    node = Node()
    pending, message, wire = node.emit(5)
    assert node.ordered.settle(pending, frozenset({"a"}))  # the emitter gave up
    message["data"][0]["n"] = 55  # and its caller went on with the object
    offset = now_offset()
    node.receive(b"@" + offset.encode() + b"@" + wire)
    [late] = node.delivered
    assert late["data"] == [{"n": 5}, offset] and late["skip_sid"] == ["a"]
    assert node.count("own_returned") == 1


def test_a_copy_sealed_again_without_the_node_knowing_is_verified_then_delivered() -> None:
    node = Node()
    pending, _, _ = node.emit(6)
    resealed = node.codec.seal(pending.body or "", ME, logged=True)  # not reported
    offset = now_offset()
    node.receive(b"@" + offset.encode() + b"@" + resealed)
    assert node.count("own_returned") == 0  # the slow path did it
    assert [m["data"] for m in node.delivered] == [[{"n": 6}, offset]]
    assert pending.delivered


def test_messages_of_other_nodes_never_take_the_own_path() -> None:
    node = Node()
    other = Codec(SECRET)
    body = other.dumps({"method": "emit", "event": "e", "data": [7], "host_id": "mee",
                        "lid": 1})
    node.receive(other.seal(body, "mee", logged=False))  # a src that starts like ours
    assert [m["data"] for m in node.others] == [[7]]
    assert node.count("own_dropped") == 0


def test_the_header_reader_and_the_lid_first_body() -> None:
    codec = Codec(SECRET)
    body = codec.dumps({"method": "emit", "data": ['"lid":5,'], "lid": 12})
    assert body.startswith('{"lid":12,') and body_lid(body) == 12
    assert json.loads(body)["lid"] == 12
    assert body_lid(codec.dumps({"method": "emit", "data": [{"lid": 3}]})) is None
    header = OwnHeader(ME)
    assert header.read(codec.seal(body, ME)) == 12
    assert header.read(codec.seal(codec.dumps({"method": "heartbeat"}), ME)) == NO_LID
    assert header.read(codec.seal(body, "other")) is None
    assert header.read(Codec().seal(body, ME)) is None  # an unsigned header
    assert OwnHeader(ME, signed=False).read(Codec().seal(body, ME)) == 12
    assert OwnHeader(ME, signed=False).read(codec.seal(body, ME)) is None
    assert header.read(body) is None and header.read(b"") is None
    assert header.read(b'{"v":2,"src":"me","lid":12') == NO_LID  # cut short
    assert header.read(b'{"v":2,"src":"me","lid":-1,') == NO_LID
    # the envelope starts with the header, and the stock body order is kept
    assert codec.seal(body, ME).startswith(b'{"v":2,"src":"me","lid":12,"seq":')


def test_a_header_lid_that_is_not_the_signed_one_is_malformed() -> None:
    sender, receiver = Codec(SECRET), Codec(SECRET)
    outer = json.loads(sender.seal(sender.dumps({"method": "emit", "event": "e", "data": [],
                                                 "host_id": "h", "lid": 3}), "h"))
    outer["lid"] = 4
    with pytest.raises(Dropped) as info:
        receiver.open(json.dumps(outer))
    assert info.value.reason == "dropped_malformed"


def test_the_sender_reports_every_seal_of_an_emit_with_a_lid() -> None:
    codec, wire = Codec(SECRET), Wire()
    sender = SealedSender(wire, codec, ME)
    seen: list[tuple[int, bytes, bool]] = []
    sender.on_sealed = lambda lid, payload, logged, ms: seen.append((lid, payload, logged))
    logged = Item(codec.dumps({"method": "emit", "lid": 8}), False, True, None)
    plain = Item(codec.dumps({"method": "heartbeat"}), False, False, None)
    sender.send([plain, logged])
    assert seen == [(8, wire.sent[1], True)]
    logged.payload = None  # sealed again (a retry after a refusal)
    sender.send([logged])
    assert seen[1] == (8, wire.sent[2], True) and wire.sent[2] != wire.sent[1]


def test_an_emit_served_to_nobody_here_is_decoded_and_delivered_when_it_comes_back() -> None:
    node = Node()
    body = node.codec.dumps({"method": "emit", "event": "e", "data": [{"n": 9}],
                             "binary": False, "namespace": "/", "room": "r",
                             "skip_sid": None, "callback": None, "host_id": ME,
                             "lid": UNSERVED_LID})
    assert body_lid(body) == UNSERVED_LID
    wire = node.codec.seal(body, ME, logged=True)
    assert OwnHeader(ME).read(wire) == UNSERVED_LID != NO_LID
    offset = now_offset()
    node.receive(b"@" + offset.encode() + b"@" + wire)
    [delivered] = node.delivered
    assert delivered["data"] == [{"n": 9}, offset] and delivered["offset"] == offset
    assert node.count("own_dropped") == 0 and node.count("own_returned") == 0
    assert node.receiver.catch_up.base == offset  # verified, so its offset counts
    # a forgery with that header is verified like any message, and dropped
    forged = Codec("f" * 32).seal(body.replace('"n":9', '"n":666'), ME, logged=True)
    node.receive(b"@" + now_offset().encode() + b"@" + forged)
    assert node.count("dropped_bad_signature") == 1 and len(node.delivered) == 1

"""LocalDelivery: a logged emit that does not come back through the bus in
time is delivered by its emitter, to whom, and whom it skips."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cluster.bus.local_delivery import LocalDelivery
from cluster.bus.ordered_delivery import OrderedDelivery
from cluster.bus.runtime import Runtime
from cluster.bus.stats import BusStats
from cluster.recovery.replay import PacketHold


class LostPublisher:
    """Queues every emit, none of which ever comes back (published before
    this node's subscription to the target's channel was in place)."""

    healthy = True

    def __init__(self) -> None:
        self.published: list[str] = []

    def start(self) -> None:
        pass

    def watch_seals(self, watcher: Any) -> None:
        pass

    def publish(self, *, body: str, logged: bool, waiter: Any, channel: Any = None) -> bool:
        self.published.append(body)
        return True


class RefusingPublisher(LostPublisher):
    """Refuses every emit (the outbox is full): none is ever logged."""

    healthy = False

    def publish(self, *, body: str, logged: bool, waiter: Any, channel: Any = None) -> bool:
        return False


def _emitter(publisher: Any, members: list[tuple[str, str]],
             recovering: Callable[[str], bool]
             ) -> tuple[LocalDelivery, OrderedDelivery, list[dict[str, Any]]]:
    """A node's local delivery over ``publisher``, whose room has
    ``members`` (sid, eio sid); and what it delivered."""
    delivered: list[dict[str, Any]] = []
    ordered = OrderedDelivery(Runtime())
    local = LocalDelivery(
        ordered, publisher, Runtime(), BusStats(),
        apply_emit=delivered.append, logs_recovery=lambda: True,
        participants=lambda namespace, room: members, recovering=lambda: recovering,
        subscribed=lambda: True, in_listener=lambda: False, offset_wait=0.05)
    return local, ordered, delivered


def _logged_emit(event: str, lid: int) -> dict[str, Any]:
    """An emit to room ``r`` as the manager hands it on, awaited as ``lid``."""
    return {"method": "emit", "event": event, "data": ["hi"], "binary": False,
            "namespace": "/", "room": "r", "skip_sid": None, "callback": None, "lid": lid}


def test_an_emit_that_never_comes_back_reaches_a_plain_connect_and_skips_a_replay() -> None:
    hold = PacketHold(lambda kind, item: (None, None), {})
    # a fresh connection in its CONNECT: held only until its reply goes out
    hold.start("fresh-eio")
    # a recovering one: held until its replay, whose tail reads the stream
    hold.start("recovering-eio", replaying=True)
    assert not hold.replaying("fresh-eio") and hold.replaying("recovering-eio")
    members = [("fresh", "fresh-eio"), ("old", "recovering-eio"), ("plain", "plain-eio")]
    local, ordered, delivered = _emitter(LostPublisher(), members, hold.replaying)
    pending = ordered.expect()
    message = _logged_emit("welcome", pending.lid)
    local.deliver_logged(message, "{}", pending)
    # the connect handler's welcome reaches its own, still connecting,
    # client (the hold sends it after the reply); only the connection
    # being recovered is skipped, which its replay's tail covers
    (sent,) = delivered
    assert sent["event"] == "welcome" and sent["skip_sid"] == ["old"]


def test_an_emit_that_does_not_come_back_in_time_skips_a_just_recovered_connection() -> None:
    # packets are (offset, namespace) here: what the hold's locate reads
    hold = PacketHold(lambda kind, item: item, {})
    hold.start("recovered-eio", replaying=True)
    # its replay is out, and sent everything logged up to 100-5
    hold.release("recovered-eio", floor=("/", "100-5"))
    assert not hold.replaying("recovered-eio") and hold.needs_offsets("recovered-eio")
    assert not hold.needs_offsets("plain-eio")
    members = [("recovered", "recovered-eio"), ("plain", "plain-eio")]
    local, ordered, delivered = _emitter(LostPublisher(), members, hold.needs_offsets)
    pending = ordered.expect()
    message = _logged_emit("chat", pending.lid)
    local.deliver_logged(message, "{}", pending)
    # the emitter's copy has no offset: the recovered connection, whose
    # replay may have sent it already, is skipped (a reconnect storm's
    # recovered clients got such emits twice)
    (sent,) = delivered
    assert sent["skip_sid"] == ["recovered"]
    # it comes back late, with its offset: now it reaches the recovered
    # connection only (the plain one got it from the emitter) ...
    local.came_back(dict(message, offset="100-3"))
    assert delivered[1]["skip_sid"] == ["plain"] and delivered[1]["offset"] == "100-3"
    # ... where the floor drops it, as the replay sent it (at or below 100-5)
    assert hold.hold("recovered-eio", "pkt", ("100-3", "/"))
    # the first live packet past the floor ends it
    assert not hold.hold("recovered-eio", "pkt", ("100-6", "/"))
    assert not hold.needs_offsets("recovered-eio")


def test_an_emit_never_queued_reaches_a_just_recovered_connection_now() -> None:
    # it is in no replay and never comes back: skipped, it would be missed
    hold = PacketHold(lambda kind, item: item, {})
    hold.start("recovered-eio", replaying=True)
    hold.release("recovered-eio", floor=("/", "100-5"))
    local, ordered, delivered = _emitter(RefusingPublisher(), [("recovered", "recovered-eio")],
                                         hold.needs_offsets)
    pending = ordered.expect()
    local.deliver_logged(_logged_emit("chat", pending.lid), "{}", pending)
    (sent,) = delivered
    assert not sent["skip_sid"]

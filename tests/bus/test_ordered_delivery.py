"""Unit tests of the link between a node's logged emits and their return."""

from __future__ import annotations

from cluster.bus.ordered_delivery import PRUNE_AT, OrderedDelivery
from cluster.bus.runtime import Runtime


def test_the_listener_delivers_a_returning_emit_and_wakes_its_emitter() -> None:
    ordered = OrderedDelivery(Runtime())
    pending = ordered.expect()
    assert ordered.arrived(pending.lid) is True
    ordered.done(pending.lid)
    assert pending.delivered
    assert ordered.settle(pending) is False  # nothing left for the emitter
    assert len(ordered) == 0


def test_an_abandoned_emit_is_not_delivered_again_when_it_returns() -> None:
    ordered = OrderedDelivery(Runtime())
    pending = ordered.expect()
    assert ordered.settle(pending) is True  # the emitter delivered it itself
    assert ordered.arrived(pending.lid) is False
    assert ordered.arrived(pending.lid) is False  # nor a second copy


def test_an_abandoned_emit_comes_back_to_those_the_emitter_did_not_reach() -> None:
    # under load the emitter gave up waiting and delivered it to a and b; a
    # client recovering meanwhile entered the room after that, and its replay
    # was read before the emit reached the stream: only the return reaches it
    ordered = OrderedDelivery(Runtime())
    pending = ordered.expect()
    assert ordered.settle(pending, frozenset({"a", "b"})) is True
    assert ordered.arrived(pending.lid) == frozenset({"a", "b"})
    assert ordered.arrived(pending.lid) is False  # a second copy goes nowhere
    nobody = ordered.expect()
    assert ordered.settle(nobody, frozenset()) is True  # no local member then
    assert ordered.arrived(nobody.lid) == frozenset()  # everyone here gets it now


def test_a_claimed_emit_is_not_abandoned() -> None:
    ordered = OrderedDelivery(Runtime())
    pending = ordered.expect()
    assert ordered.arrived(pending.lid) is True
    assert ordered.abandon(pending) is False  # the listener is delivering it


def test_junk_ids_are_never_delivered() -> None:
    ordered = OrderedDelivery(Runtime())
    ordered.expect()
    for junk in ("1", None, True, 1.0, 999):
        assert ordered.arrived(junk) is False


def test_abandoned_ids_that_can_no_longer_return_are_pruned() -> None:
    ordered = OrderedDelivery(Runtime())
    lost = [ordered.expect() for _ in range(PRUNE_AT + 10)]
    for pending in lost:
        ordered.settle(pending)
    later = ordered.expect()
    ordered.settle(later)
    assert ordered.arrived(later.lid) is False
    assert len(ordered._abandoned) == 0


def test_losing_the_subscription_hands_back_the_listeners_own_emits() -> None:
    ordered = OrderedDelivery(Runtime())
    waiting = ordered.expect()
    waiting.message = {"method": "emit", "event": "waited for"}  # its emitter delivers it
    detached = ordered.expect()
    detached.message = {"method": "emit", "event": "e"}
    detached.detached = True  # made by the listener, which cannot wait
    assert ordered.wake_all() == [detached.message]
    assert ordered.arrived(detached.lid) is False  # delivered already
    assert ordered.settle(waiting) is True

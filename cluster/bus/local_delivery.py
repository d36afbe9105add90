"""Emits handed to this node's clients, in stream order when they are logged.

:class:`LocalDelivery` is what the bus manager composes around an
:class:`~.ordered_delivery.OrderedDelivery` (whose module doc tells why
and how this node's own logged emits reach its clients in stream order):
the listener's delivery of remote emits, the emitter's wait for its own
emit to come back, the listener's delivery when it does, and who an
abandoned emit reaches.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from cluster.bus.codec import UNSERVED_LID
from cluster.bus.errors import Dropped
from cluster.bus.ordered_delivery import (
    MAX_TRACKED,
    OrderedDelivery,
    Outcome,
    PendingDelivery,
    Returned,
)
from cluster.bus.publisher import Publisher
from cluster.bus.runtime import Runtime
from cluster.bus.stats import BusStats

__all__ = ["LocalDelivery"]


class LocalDelivery:
    """Emits handed to this node's clients: the remote ones as the listener
    reads them (:meth:`deliver`), and the emitter's and the listener's parts
    of delivering this node's own logged emits in stream order (see the
    module doc), around an :class:`OrderedDelivery`.

    :param apply_emit: python-socketio's delivery of an emit to this node's
        clients.
    :param logs_recovery: whether emits are logged for connection state
        recovery (each then ends with its offset, see :meth:`deliver`).
    :param participants: ``(namespace, room) -> (sid, eio_sid), ...``, the
        room's members on this node.
    :param recovering: the node's current test of whether a connection (by
        Engine.IO sid) is being recovered, or None (read at each emit: the
        node's server sets it after the bus is built).
    :param subscribed: whether the bus is subscribed now.
    :param in_listener: whether the caller is the listener, which cannot
        wait for its own emits to come back.
    :param offset_wait: seconds an emitter waits for its emit to come back.
    """

    def __init__(self, ordered: OrderedDelivery, publisher: Publisher, runtime: Runtime,
                 stats: BusStats, *, apply_emit: Callable[[dict[str, Any]], None],
                 logs_recovery: Callable[[], bool],
                 participants: Callable[[str, Any], Iterable[tuple[Any, Any]]],
                 recovering: Callable[[], Callable[[Any], bool] | None],
                 subscribed: Callable[[], bool], in_listener: Callable[[], bool],
                 offset_wait: float) -> None:
        self._ordered = ordered
        self._publisher = publisher
        self._runtime = runtime
        self._stats = stats
        self._apply_emit = apply_emit
        self._logs_recovery = logs_recovery
        self._participants = participants
        self._recovering = recovering
        self._subscribed = subscribed
        self._in_listener = in_listener
        self._offset_wait = offset_wait
        # the seals of this node's emits, by which their copies are known
        publisher.watch_seals(ordered.sealed)

    def deliver(self, message: dict[str, Any]) -> None:
        """Hand an emit to python-socketio for this node's clients."""
        if self._logs_recovery() and message.get("callback") is None:
            # with recovery every event that asks for no ack ends with its
            # offset, where socket.io's client reads it, or with None when
            # it has none (delivered during an outage, or published by an
            # emitter that does not log): cluster.Client then strips that
            # last argument always, never guessing, and the official client
            # ignores a trailing non-string
            offset = message.get("offset")
            marker = offset if isinstance(offset, str) else None
            data = list(message["data"])
            if message.get("binary"):
                data[0] = [*data[0], marker]
            else:
                data.append(marker)
            message = dict(message, data=data)
        self._apply_emit(message)

    def deliver_logged(self, message: dict[str, Any], body: str,
                       pending: PendingDelivery, channel: str | None = None) -> None:
        """Publish a logged emit and wait until the listener delivered it to
        this node's clients, in stream order; without the bus it is
        delivered here at once, without an offset, and logged when the bus
        returns."""
        self._publisher.start()
        queued_at = time.monotonic()
        coming_back = self._publisher.healthy and self._subscribed()
        in_listener = self._in_listener()
        # held for its return, delivered from here (see the module doc)
        pending.message, pending.body = message, body
        if in_listener and coming_back:
            pending.detached = True  # delivered when it comes back
        queued = self._publisher.publish(body=body, logged=True, waiter=pending,
                                         channel=channel)
        if queued and coming_back:
            if in_listener:
                return  # the listener cannot wait for itself
            pending.wait(self._offset_wait)
        # did not come back in time: who gets it now, so that those who
        # enter the room before it comes back still get it then
        recipients, recovering = (None, ()) if pending.claimed \
            else self._local_recipients(message)
        if self._ordered.settle(pending, recipients, returns=queued):
            if self._runtime.paused_since(queued_at):
                # frozen while it waited: the outbox drops it, and its
                # clients, here too, have moved on (cluster.node.pause_fence)
                return
            if queued:
                self._stats.incr("delivered_unlogged")
            if recovering and queued:
                # not to connections being recovered, or just recovered:
                # without an offset their replay could not tell it from its
                # own copy (sent twice); they get it from the replay, or
                # when it comes back. One never queued never comes back and
                # is in no replay: they get it now (held until the replay
                # is out, for one being replayed to)
                message = dict(message, skip_sid=_with_skipped(message, recovering))
            self.deliver(message)

    def stop_waiting(self) -> None:
        """The subscription is gone: no logged emit comes back for now."""
        for message in self._ordered.wake_all():
            self._stats.incr("delivered_unlogged")
            self.deliver(message)

    def came_back(self, message: dict[str, Any] | Returned) -> Outcome | None:
        """The listener's part: this node's logged emit came back, known by
        its header only (a :class:`Returned`: says what it did with it) or
        decoded and verified (the message: delivered as received)."""
        if isinstance(message, Returned):
            return self._returned(message)
        lid = message.get("lid")
        if not isinstance(lid, int):
            return None
        if lid == UNSERVED_LID:
            # nobody here got it when it was made: whoever is here now gets
            # it, as from a peer (see the receiver's module doc)
            self.deliver(message)
            return None
        verdict = self._ordered.arrived(lid)
        if verdict is True:
            try:
                self.deliver(message)
            finally:
                self._ordered.done(lid)
        elif isinstance(verdict, frozenset):
            # abandoned, back late: to the clients the emitter did not reach
            self.deliver(dict(message, skip_sid=_with_skipped(message, verdict)))
        return None

    def _returned(self, back: Returned) -> Outcome:
        """Deliver the emit held here that ``back`` is a copy of (see the
        module doc); never the received bytes."""
        seal = self._ordered.match(back.lid, back.payload)
        if seal is None:
            return Outcome.UNKNOWN
        if not isinstance(seal, tuple):
            return Outcome.VERIFY
        logged, sealed_ms = seal
        try:
            self._publisher.codec.check_offset(back.offset, logged, sealed_ms)
        except Dropped as drop:
            self._stats.incr(drop.reason)
            return Outcome.DROPPED
        verdict, pending = self._ordered.claim(back.lid)
        if pending is None:
            return Outcome.UNKNOWN
        if verdict is True:
            try:
                held = pending.snapshot() if pending.detached else pending.message
                if held is not None:
                    self.deliver(_with_offset(held, back.offset))
            finally:
                self._ordered.done(back.lid)
        elif isinstance(verdict, frozenset):
            # abandoned, back late: to the clients the emitter did not reach
            held = pending.snapshot()
            if held is not None:
                self.deliver(dict(_with_offset(held, back.offset),
                                  skip_sid=_with_skipped(held, verdict)))
        return Outcome.HANDLED

    def _local_recipients(self, message: dict[str, Any]
                          ) -> tuple[frozenset[Any] | None, list[Any]]:
        """The sids of this node an abandoned emit goes to now (None: more
        than :data:`MAX_TRACKED`), and those of its targets that are being
        recovered, which it skips."""
        namespace = message.get("namespace") or "/"
        room = message.get("room")
        rooms = room if isinstance(room, list) else [room]
        recovering = self._recovering()
        sids: set[Any] = set()
        held: list[Any] = []
        for target in rooms:
            for sid, eio_sid in self._participants(namespace, target):
                if recovering is not None and recovering(eio_sid):
                    held.append(sid)
                    continue
                sids.add(sid)
        return (frozenset(sids) if len(sids) <= MAX_TRACKED else None), held


def _with_offset(message: dict[str, Any], offset: str | None) -> dict[str, Any]:
    """``message`` as delivered with ``offset`` (None: it came back unlogged)."""
    return dict(message, offset=offset) if offset is not None else message


def _with_skipped(message: dict[str, Any], sids: Iterable[Any]) -> list[Any]:
    """The emit's ``skip_sid`` with ``sids`` added."""
    skip = message.get("skip_sid")
    skipped = set(skip) if isinstance(skip, list) else {skip} if skip else set()
    return sorted(skipped.union(sids), key=str)

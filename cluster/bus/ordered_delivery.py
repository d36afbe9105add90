"""This node's logged emits, delivered to its own clients in stream order.

With connection state recovery a client's last offset must say exactly what
it has: the official client keeps only the offset of the last event it got,
and a recovering reconnect replays everything after it. So each client must
get logged emits in the order of their offsets (the recovery stream's
order), or a replay sends again what arrived "early".

The recovery script appends and publishes in one step, so every node's
listener sees the channel in stream order. Remote emits are delivered by
the listener; this node's own logged emits used to be delivered by the
emitting handler as soon as its offset came back, which put them ahead of
remote emits still on their way (measured: 138 of 800 packets out of order
with one local and one remote sender). Now the listener delivers those too,
when they come back through the channel, and the emitter waits for that
(``offset_wait``, 2 s at most) so an emit still reaches this node's clients
before the handler goes on.

When that cannot happen (the bus is down, the message was refused, or it did
not come back in time), the emitter delivers it itself without an offset
and the emit is *abandoned*: when it does come back later (logged after an
outage, or late under load), the listener delivers it only to the clients
that were not among the emitter's recipients (up to :data:`MAX_TRACKED` of
them are remembered; past that, or when unknown, to nobody). A client that
entered the room in between, a recovering one above all, whose replay was
read before the message reached the stream, gets it then, with its offset;
measured without this: recovered clients of a reconnect storm missed 0.2%
of their messages, all emitted on the node where they were recovering.

Each logged emit carries a node-local id (``lid``) that links the message
coming back to its waiting emitter. A node's own messages come back in the
order of their ids (one publisher, FIFO), which bounds the abandoned set.
"""
from __future__ import annotations

import itertools
import threading
from typing import Any

from cluster.bus.runtime import Runtime

#: abandoned ids kept before those that can no longer come back are pruned
PRUNE_AT = 1024
#: recipients remembered per abandoned emit (more: it comes back to nobody)
MAX_TRACKED = 1000


class PendingDelivery:
    """One logged emit waiting to come back through the channel."""

    __slots__ = ("lid", "claimed", "delivered", "message", "_event")

    def __init__(self, lid: int, event: Any) -> None:
        self.lid = lid
        self.claimed = False
        self.delivered = False
        #: set for an emit made by the listener itself (an ack callback, a
        #: presence hook), which cannot wait for its own return: kept until
        #: it comes back, or delivered by :meth:`OrderedDelivery.wake_all`
        self.message: dict[str, Any] | None = None
        self._event = event

    def wake(self) -> None:
        """Stop waiting: delivered, or its publish failed."""
        self._event.set()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)


class OrderedDelivery:
    """Links this node's logged emits to their return through the listener.

    The emitter calls :meth:`expect` (before publishing), then waits, then
    :meth:`settle`; the listener calls :meth:`arrived` for each own logged
    message and, when told to deliver it, :meth:`done` afterwards.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._ids = itertools.count(1)
        self._pending: dict[int, PendingDelivery] = {}
        # abandoned id -> the sids the emitter delivered it to (None: unknown)
        self._abandoned: dict[int, frozenset[Any] | None] = {}
        # the listener and emitters may be OS threads (threading mode)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pending)

    def expect(self) -> PendingDelivery:
        """A new id, whose message the listener will deliver on return."""
        with self._lock:
            pending = PendingDelivery(next(self._ids), self._runtime.event())
            self._pending[pending.lid] = pending
        return pending

    def abandon(self, pending: PendingDelivery,
                recipients: frozenset[Any] | None = None) -> bool:
        """The emitter delivers it itself (without an offset), to
        ``recipients`` (the sids, when known); False if the listener has
        delivered or is delivering it already."""
        with self._lock:
            if pending.claimed:
                return False
            self._pending.pop(pending.lid, None)
            self._abandoned[pending.lid] = recipients
            return True

    settle = abandon  # after the wait: whatever did not come back is abandoned

    def arrived(self, lid: Any) -> bool | frozenset[Any]:
        """The listener got own message ``lid``: True to deliver it (then
        call :meth:`done`); for an abandoned one, the sids the emitter
        delivered it to (deliver it to the others), or False (a second
        copy, or recipients unknown)."""
        if not isinstance(lid, int) or isinstance(lid, bool):
            return False
        with self._lock:
            pending = self._pending.get(lid)
            if pending is None or pending.claimed:
                served = self._abandoned.pop(lid, None)
                if len(self._abandoned) > PRUNE_AT:
                    # ids come back in order: older ones never will now
                    self._abandoned = {kept: sids for kept, sids in self._abandoned.items()
                                       if kept > lid}
                return served if served is not None else False
            pending.claimed = True
            return True

    def done(self, lid: int) -> None:
        """The listener delivered ``lid``: its emitter may go on."""
        with self._lock:
            pending = self._pending.pop(lid, None)
        if pending is not None:
            pending.delivered = True
            pending.wake()

    def wake_all(self) -> list[dict[str, Any]]:
        """The subscription is gone: every waiting emitter delivers by
        itself now; returns the listener's own emits (abandoned here), which
        the caller delivers."""
        with self._lock:
            waiting = list(self._pending.values())
            detached = [pending for pending in waiting
                        if pending.message is not None and not pending.claimed]
            for pending in detached:
                self._pending.pop(pending.lid, None)
                self._abandoned[pending.lid] = None
        for pending in waiting:
            pending.wake()
        return [pending.message for pending in detached if pending.message is not None]

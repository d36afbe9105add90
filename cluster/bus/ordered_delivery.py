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

The returning message needs only its lid and its offset, since this node
still holds the message: the listener reads the lid from the envelope's
cleartext header (:class:`~.codec.OwnHeader`) and hands it on as a
:class:`Returned`, without parsing or verifying anything (in process: 7
µs per return instead of 21-29 signed, 9-14 unsigned, delivery to a stub
included; redis-py still reads every return, most of the 14.8% of an
emitting node's Python samples it cost in a room of 10, see the benchmarks'
README). The message delivered
is always the one held here, never the received bytes, and only when
those bytes are exactly a seal this node made of that emit (the sender
reports each one, :attr:`~.sender.SealedSender.on_sealed`), so nothing
another writer to Redis sends can make a node deliver anything, nor
deliver its own emit early: a copy with other bytes (a seal this node was
not told of, or a forgery) is decoded and verified as before (the slow
path, :meth:`~.local_delivery.LocalDelivery.came_back` with the decoded message), and an
unknown lid is dropped. The offset (outside the signature anyway) is
checked against the seal's time as the codec checks it
(:meth:`~.codec.Codec.check_offset`). Emits whose emitter no longer waits
(abandoned, or made by the listener) are delivered from the body held
here, parsed then: the caller may have changed the objects it passed.

:class:`OrderedDelivery` keeps those links; :class:`~.local_delivery.LocalDelivery`
is what the manager composes: the emitter's wait, the listener's delivery
on return, and who an abandoned emit reaches.
"""
from __future__ import annotations

import enum
import itertools
import json
import threading
from typing import Any, NamedTuple

from cluster.bus.runtime import Runtime

#: abandoned ids kept before those that can no longer come back are pruned
PRUNE_AT = 1024
#: recipients remembered per abandoned emit (more: it comes back to nobody)
MAX_TRACKED = 1000
#: seals remembered per emit (one, unless it was sealed again for a retry)
MAX_SEALS = 4


class Returned(NamedTuple):
    """This node's own message back from the channel, known by its header
    only: the ``lid`` it names, the offset it came with, its raw bytes."""

    lid: int
    offset: str | None
    payload: bytes


class Outcome(enum.Enum):
    """What :meth:`~.local_delivery.LocalDelivery.came_back` did with a :class:`Returned`."""

    #: one of this node's seals: delivered (or skipped, as the emit's state
    #: says), its offset checked
    HANDLED = "handled"
    #: one of this node's seals with an offset it cannot carry: counted
    DROPPED = "dropped"
    #: no emit of this node waits for that lid (any more): drop it
    UNKNOWN = "unknown"
    #: bytes this node did not seal (as far as it was told): decode and
    #: verify them like any message
    VERIFY = "verify"


#: :meth:`OrderedDelivery.match` of an emit none of whose seals has those bytes
MISMATCH = "mismatch"


class PendingDelivery:
    """One logged emit waiting to come back through the channel."""

    __slots__ = ("lid", "claimed", "delivered", "message", "body", "detached",
                 "recipients", "seals", "_event")

    def __init__(self, lid: int, event: Any) -> None:
        self.lid = lid
        self.claimed = False
        self.delivered = False
        #: the emit, as the emitter made it, and serialized (set before it
        #: is published)
        self.message: dict[str, Any] | None = None
        self.body: str | None = None
        #: an emit made by the listener itself (an ack callback, a presence
        #: hook), which cannot wait for its own return: kept until it comes
        #: back, or delivered by :meth:`OrderedDelivery.wake_all`
        self.detached = False
        #: once abandoned: the sids the emitter delivered it to (None: unknown)
        self.recipients: frozenset[Any] | None = None
        #: ``(payload, logged, sealed_ms)`` of each seal the sender made
        self.seals: list[tuple[bytes, bool, int]] = []
        self._event = event

    def wake(self) -> None:
        """Stop waiting: delivered, or its publish failed."""
        self._event.set()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)

    def snapshot(self) -> dict[str, Any] | None:
        """The emit as it was published (parsed from the held body): for a
        delivery after the emitter went on, which may have changed the
        objects it passed."""
        if self.body is not None:
            try:
                message = json.loads(self.body)
            except (ValueError, RecursionError):
                message = None
            if isinstance(message, dict):
                return message
        return self.message


class OrderedDelivery:
    """Links this node's logged emits to their return through the listener.

    The emitter calls :meth:`expect` (before publishing), then waits, then
    :meth:`settle`; the sender reports each seal (:meth:`sealed`); the
    listener calls :meth:`match` then :meth:`claim` (header path) or
    :meth:`arrived` (decoded) for each own logged message and, when told to
    deliver it, :meth:`done` afterwards.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._ids = itertools.count(1)
        self._pending: dict[int, PendingDelivery] = {}
        # abandoned id -> its emit (``recipients``: the sids the emitter
        # delivered it to)
        self._abandoned: dict[int, PendingDelivery] = {}
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
                recipients: frozenset[Any] | None = None, *, returns: bool = True) -> bool:
        """The emitter delivers it itself (without an offset), to
        ``recipients`` (the sids, when known); False if the listener has
        delivered or is delivering it already. ``returns``: whether it may
        still come back (False: it was never queued, nothing to keep)."""
        with self._lock:
            if pending.claimed:
                return False
            self._pending.pop(pending.lid, None)
            if returns:
                pending.recipients = recipients
                self._abandoned[pending.lid] = pending
            return True

    settle = abandon  # after the wait: whatever did not come back is abandoned

    def sealed(self, lid: int, payload: bytes, logged: bool, sealed_ms: int) -> None:
        """The sender sealed emit ``lid`` as ``payload`` (see
        :data:`~.sender.SealWatcher`); ignored once it is no longer kept."""
        with self._lock:
            pending = self._pending.get(lid) or self._abandoned.get(lid)
            if pending is not None:
                pending.seals.append((payload, logged, sealed_ms))
                del pending.seals[:-MAX_SEALS]

    def match(self, lid: int, payload: bytes) -> tuple[bool, int] | str | None:
        """Whether ``payload`` is a seal of emit ``lid``: its ``(logged,
        sealed_ms)``; :data:`MISMATCH` when the emit is kept but none of its
        known seals has these bytes; None when no emit ``lid`` is kept."""
        with self._lock:
            pending = self._pending.get(lid) or self._abandoned.get(lid)
            if pending is None:
                return None
            for sealed, logged, sealed_ms in pending.seals:
                if sealed == payload:
                    return logged, sealed_ms
            return MISMATCH

    def claim(self, lid: int) -> tuple[bool | frozenset[Any], PendingDelivery | None]:
        """:meth:`arrived`, with the emit it is about (None: none kept)."""
        with self._lock:
            pending = self._pending.get(lid)
            if pending is None or pending.claimed:
                served = self._abandoned.pop(lid, None)
                if len(self._abandoned) > PRUNE_AT:
                    # ids come back in order: older ones never will now
                    self._abandoned = {kept: emit for kept, emit in self._abandoned.items()
                                       if kept > lid}
                if served is None:
                    return False, None
                sids = served.recipients
                return (sids if sids is not None else False), served
            pending.claimed = True
            return True, pending

    def arrived(self, lid: Any) -> bool | frozenset[Any]:
        """The listener got own message ``lid``: True to deliver it (then
        call :meth:`done`); for an abandoned one, the sids the emitter
        delivered it to (deliver it to the others), or False (a second
        copy, or recipients unknown)."""
        if not isinstance(lid, int) or isinstance(lid, bool):
            return False
        return self.claim(lid)[0]

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
                        if pending.detached and pending.message is not None
                        and not pending.claimed]
            for pending in detached:
                self._pending.pop(pending.lid, None)
                pending.recipients = None
                self._abandoned[pending.lid] = pending
        for pending in waiting:
            pending.wake()
        return [pending.message for pending in detached if pending.message is not None]

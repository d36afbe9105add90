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
path, :meth:`LocalDelivery.came_back` with the decoded message), and an
unknown lid is dropped. The offset (outside the signature anyway) is
checked against the seal's time as the codec checks it
(:meth:`~.codec.Codec.check_offset`). Emits whose emitter no longer waits
(abandoned, or made by the listener) are delivered from the body held
here, parsed then: the caller may have changed the objects it passed.

:class:`OrderedDelivery` keeps those links; :class:`LocalDelivery` is what
the manager composes: the emitter's wait, the listener's delivery on return,
and who an abandoned emit reaches.
"""
from __future__ import annotations

import enum
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from cluster.bus.errors import Dropped
from cluster.bus.publisher import Publisher
from cluster.bus.runtime import Runtime
from cluster.bus.stats import BusStats

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
    """What :meth:`LocalDelivery.came_back` did with a :class:`Returned`."""

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
            if recovering:
                # not to connections being recovered: without an offset their
                # replay could not tell it from its own copy (sent twice);
                # they get it from the replay, or when it comes back
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

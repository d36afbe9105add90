"""The receiving half of the bus: listen, check, dispatch.

Every raw message goes through :meth:`Receiver.dispatch`, which never
raises: the codec either returns a checked message or says why it was
dropped (counted in ``stats()`` and logged at most every 10 s, since a flood
of forged messages must not flood the log too), and a message that fails
while being applied is counted in ``handler_errors``. The listener therefore
survives any single bad message and any backend failure.

This node's own messages come back on every channel it subscribes to.
They are recognized by the envelope's cleartext header
(:class:`~.codec.OwnHeader`) before anything is decoded: those that name no
``lid`` (heartbeats, room changes, emits without recovery...) are dropped
at once, and a logged emit is handed on by its lid and offset alone
(:class:`~.ordered_delivery.Returned`: delivered from what this node holds,
only if the bytes are one of its own seals), both counted (``own_dropped``,
``own_returned``). Only a copy whose bytes this node did not seal is
decoded and verified like any message (without a secret: decoded).

An emit made where the room had no member is delivered here to nobody, and
its header says so (:data:`~.codec.UNSERVED_LID`). It comes back only if
the node follows the room's channel by then, that is when a member arrived
meanwhile: a join, or a client resuming or recovering here, whose replay was
read before the emit reached the stream (its node's outbox may hold it for
seconds, through a Redis restart). It is decoded, verified and delivered
like a peer's emit, so that member gets it, once: before this, it was
dropped by its header, and lost.

After a subscription outage the receiver first catches up on what the
recovery stream holds since the last offset it got from the channel, then
handles the live messages (see :mod:`.catch_up`); own entries read back
there take the same header path.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from cluster.bus.catch_up import CatchUp, CatchUpReader
from cluster.bus.codec import NO_LID, UNSERVED_LID, Codec, OwnHeader
from cluster.bus.errors import Dropped
from cluster.bus.ordered_delivery import Outcome, Returned
from cluster.bus.runtime import Backoff
from cluster.bus.stats import BusStats
from cluster.bus.transport import Subscription, Transport
from cluster.recovery.stream import split_published
from session_store.quiet_log import QuietLog

Handler = Callable[[dict[str, Any]], Any]
#: this node's own logged emit back from the channel: decoded, or known by
#: its header only (then it returns an :class:`Outcome`; anything else,
#: None included, has the message decoded and handed on again)
OwnEmit = Callable[[dict[str, Any] | Returned], Any]


class Receiver:
    """Runs the listener of one manager.

    :param handlers: what to do with each message method coming from
        another host (``"emit"``, ``"disconnect"``, ``"heartbeat"``...);
        ``"callback"`` is the one method taken only when addressed to this
        host. Methods without a handler are ignored.
    :param own_emit: this host's own logged emit coming back through the
        channel, to be delivered to this node's clients in stream order
        (see :data:`OwnEmit`).
    :param reset_clients: closes every local client connection, when a
        catch-up cannot be exact; returns how many (see :mod:`.catch_up`).
    """

    def __init__(self, transport: Transport, subscription: Subscription, codec: Codec,
                 stats: BusStats, logger: logging.Logger, *, host_id: str,
                 handlers: Mapping[str, Handler], own_emit: OwnEmit,
                 reset_clients: Callable[[], int] = lambda: 0) -> None:
        self.transport = transport
        self.subscription = subscription
        self.codec = codec
        self.stats = stats
        self.logger = logger
        self.host_id = host_id
        self.handlers = handlers
        self.own_emit = own_emit
        self._own = OwnHeader(host_id, codec.signed)
        self._local = threading.local()  # green-thread local under eventlet/gevent
        self._quiet = QuietLog(logger, 10.0)
        self.catch_up = CatchUp(self._stream_reader, self.apply, stats, logger,
                                max_age_ms=self._max_age_ms, reset_clients=reset_clients,
                                sleep=subscription.sleep)
        # runs inside the transport's listen loop, right after it subscribed
        # and before it yields a live message
        subscription.on_lost(self.catch_up.lost)
        subscription.on_subscribed(self.catch_up.subscribed)

    def _stream_reader(self) -> CatchUpReader | None:
        # set on the transport after the manager is built (None: no stream);
        # a reader that cannot list raw entries offers no catch-up
        recovery = self.transport.recovery
        if recovery is None or not hasattr(recovery, "raw_page"):
            return None
        return cast(CatchUpReader, recovery)

    def _max_age_ms(self) -> int | None:
        return self.codec.max_age_ms if self.codec.signed else None

    def in_listener(self) -> bool:
        """Whether the caller runs inside this listener (an ack callback or
        a presence hook it called), which must never wait for the listener."""
        return getattr(self._local, "inside", False)

    def run(self) -> None:
        """The listener task: returns once the subscription is closed."""
        self._local.inside = True
        try:
            self._listen()
        finally:
            self._local.inside = False

    def _listen(self) -> None:
        subscription = self.subscription
        backoff = Backoff(cap=subscription.max_backoff)
        while not subscription.closed:
            try:
                for raw in self.transport.listen(subscription):
                    self.dispatch(raw)
                    if subscription.closed:
                        return
            except Exception:  # a listener must outlive any single failure
                self.logger.exception("Cluster bus listener failed")
                subscription.lost()
                subscription.sleep(backoff.next())

    def dispatch(self, raw: Any) -> None:
        """Check and apply one raw bus message; never raises."""
        self.stats.incr("received")
        self.subscription.received()
        offset, raw = split_published(raw)
        if offset is None:
            self.apply(None, raw)
        elif self.catch_up.duplicate(offset):
            self.stats.incr("catch_up_skipped")  # the catch-up handled it
        elif self.apply(offset, raw):
            self.catch_up.seen(offset)

    def apply(self, offset: str | None, raw: Any) -> bool:
        """Check and apply one message published with ``offset``; False
        when it was dropped (its offset then says nothing). Never raises."""
        lid = self._own.read(raw)
        if lid is not None:
            handled = self._own_message(lid, offset, raw)
            if handled is not None:
                return handled
        try:
            message, sent_ms = self.codec.open(raw, offset=offset)
        except Dropped as drop:
            self.stats.incr(drop.reason)
            self._log_drop(drop)
            return False
        if offset is not None and message.get("method") == "emit":
            message["offset"] = offset
        method, host = message["method"], message.get("host_id")
        try:
            if method == "callback":
                if host == self.host_id:
                    self.handlers["callback"](message)
                return True
            if host == self.host_id:
                # our own message coming back: a logged emit is delivered
                # to this node's clients now, in stream order
                if method == "emit" and "lid" in message:
                    self.own_emit(message)
                return True
            if sent_ms is not None:
                self.stats.record_lag(time.time() - sent_ms / 1000)
            handler = self.handlers.get(method)
            if handler is not None:
                handler(message)
        except Exception:
            self.stats.incr("handler_errors")
            self.logger.exception("Error applying bus message %r", method)
        return True

    def _own_message(self, lid: int, offset: str | None, raw: Any) -> bool | None:
        """This node's own message by its header (see the module doc): what
        :meth:`apply` returns, or None to decode and verify it."""
        if lid == UNSERVED_LID:
            return None  # see the module doc: decoded, verified, delivered
        if lid != NO_LID:
            try:
                outcome = self.own_emit(Returned(lid, offset, bytes(raw)))
            except Exception:
                self.stats.incr("handler_errors")
                self.logger.exception("Error delivering an own bus message")
                return True
            if outcome is Outcome.HANDLED:
                self.stats.incr("own_returned")
                return True
            if outcome is Outcome.DROPPED:
                return False
            if outcome is not Outcome.UNKNOWN:
                return None  # bytes it did not seal: decoded and verified
        # sent by this node, wanted by nobody here: not even decoded; its
        # offset (if any) is unchecked, so the catch-up does not start there
        self.stats.incr("own_dropped")
        return offset is None

    def _log_drop(self, drop: Dropped) -> None:
        # the likely cause, by reason: ages and offsets are about clocks
        if drop.reason in ("dropped_replayed", "dropped_bad_offset"):
            advice = ("check that every node's and emitter's clock is within "
                      "max_clock_skew of the Redis server's (NTP), and that the same "
                      "signing secret is used everywhere")
        else:
            advice = "check that every node and emitter uses the same signing secret"
        # rate limited: could be a flood
        self._quiet.log(logging.WARNING, "drop", "Dropped a bus message (%s: %s). If this "
                        "is a peer of ours, %s.", drop.reason, drop, advice)

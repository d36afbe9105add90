"""Catching up, after a subscription outage, on what the channel carried.

Redis pub/sub has no memory: while a node's subscription is down (its
connection reset, a stalled link, Redis cutting it at its output buffer
limit), whatever other nodes publish is gone for that node, and its clients
would miss it while staying connected and hearing nothing. With connection
state recovery on, every emit that is not an ack request is also in the
recovery stream (:mod:`cluster.recovery.stream`), and the channel carries
each one with its stream offset, in stream order. So the node can read back
what it missed:

1. The receiver remembers the offset of the last logged message it got from
   the channel (:meth:`CatchUp.seen`); at the first subscription, the
   stream's newest offset.
2. When the subscription comes back after a loss, the transport has already
   subscribed again, so new messages queue on the socket. Before the
   listener handles any of them, :meth:`CatchUp.subscribed` reads the
   stream's newest offset (``until``: everything after it is published after
   the subscription, so arrives live), then the entries after the remembered
   offset up to ``until``, in pages of :data:`PAGE`, and hands each to the
   receiver exactly as a live message (signature, age, offset and
   per-sender sequence checks of :mod:`.codec`, own messages through
   :mod:`.ordered_delivery`), in stream order.
3. Live messages whose offset the catch-up handled (published between the
   re-subscription and the read of ``until``) are skipped before any check
   (``catch_up_skipped``): the codec's sequence check would drop them too,
   but as replays, the counter that signals an attack. Only the offsets the
   catch-up handled are skipped, never "anything older", so a stream that
   restarted with smaller ids cannot silence the channel.

An unlogged message (a heartbeat, an ack reply, a cluster query) that
another node published within the round trip between the re-subscription
and the read of ``until``, followed at once by a logged emit of the same
node, reaches the codec after that emit and is dropped as out of sequence
(``dropped_replayed``): the window is one round trip, not the outage.

Redis restarting (its ``run_id`` changed during the outage; empty, or
restored from a snapshot older than the remembered offset) is not a gap:
this node was subscribed, and so received everything, until the old server
went down, and everything the new one logged is in its stream. The catch-up
then hands on every entry after the remembered offset (all of them when the
new server's ids are below it, a clock that differs) and disconnects nobody
(``catch_up_after_restart``), as connection sessions restored after a
restart start their history at the restart (:mod:`cluster.sessions.leases`).
What the old server had accepted but not yet written to this node's socket
when it died is lost, as with any pub/sub crash.

The catch-up cannot be exact when the stream no longer holds everything
after the remembered offset on the same server (trimmed past it: an outage
longer than the recovery window or than ``recovery_max_entries`` emits;
reset, see ``recovery_stream_resets``), when the outage outlasts
the codec's ``max_message_age`` (60 s: older messages are refused, see
:mod:`.codec`; :data:`AGE_MARGIN_MS` is kept for the reading itself), when
more than :data:`MAX_ENTRIES` messages are missing, or when the stream
cannot be read. Then the node says so instead of losing silently: it closes
every local client connection at the Engine.IO level, spread over a few
seconds as a drain does (:mod:`cluster.node.client_closing`), so they
reconnect and recover through their own offsets (``recovered`` True
with the replay while their history is in the stream, else False), counted
in ``catch_up_impossible`` and ``catch_up_disconnects``.

Without a recovery stream (recovery off, or the kombu bus) there is nothing
to read back: messages published while the subscription is down are lost
for this node's clients, as with python-socketio's own managers. The node
then disconnects nobody (that would turn every Redis blip into a reconnect
storm); ``reconnects`` counts the outages. The kombu bus keeps no
stream either, but its broker can hold a node's queue across a short
outage: by default the queue is exclusive and auto-deleted, so it goes with
the connection and an outage loses what was published meanwhile, as on
Redis; with ``queue_options={"exclusive": False, "auto_delete": False}`` it
outlives the connection (the default ``x-expires`` of 300 s still deletes
the queue of a node that never returns) and the node reads what was queued
when it reconnects, except messages the broker had already pushed to the
broken connection (the consumer does not acknowledge) and those older than
``max_message_age`` by then (refused by the codec).

Each outage is logged in one line, when it ends.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from cluster.bus.stats import BusStats
from cluster.recovery.offsets import Offset

#: entries read from the stream per round trip
PAGE = 500
#: messages one catch-up hands on at most; past it the node's clients are
#: sent to recover by themselves (a replay per client reads only its own
#: history, and the listener is not held up for long)
MAX_ENTRIES = 10_000
#: milliseconds of ``max_message_age`` kept for reading and handling: an
#: entry older than the age less this margin may be refused while handled
AGE_MARGIN_MS = 2_000
#: attempts at one stream read (the reader reconnects between them)
READ_ATTEMPTS = 3


class CatchUpReader(Protocol):
    """The reads of the recovery stream a catch-up needs (see
    :class:`~.backends.redis_recovery.RedisRecoveryReader`); each returns its default
    (None) when the stream cannot be read."""

    def last_offset(self) -> str | None: ...
    def server_id(self) -> str | None: ...
    def readable(self, offset: str) -> bool | None: ...
    def raw_page(self, offset: str, until: str, count: int
                 ) -> list[tuple[str, bytes | None]] | None: ...


class CatchUp:
    """The listener's memory of the channel, and its catch-up after a loss.

    :param reader: the recovery stream's reader, looked up at each use
        (None: no stream, nothing to catch up).
    :param handle: hands one ``(offset, payload)`` on as a live message.
    :param max_age_ms: the codec's message age limit (None: unsigned bus,
        no age limit).
    :param reset_clients: closes every local client connection (so they
        recover by themselves); returns how many.
    """

    def __init__(self, reader: Callable[[], CatchUpReader | None],
                 handle: Callable[[str, bytes], Any], stats: BusStats,
                 logger: logging.Logger, *, max_age_ms: Callable[[], int | None],
                 reset_clients: Callable[[], int], sleep: Callable[[float], None]) -> None:
        self.reader = reader
        self.handle = handle
        self.stats = stats
        self.logger = logger
        self.max_age_ms = max_age_ms
        self.reset_clients = reset_clients
        self.sleep = sleep
        #: offset of the last logged message this node got from the channel
        self.base: str | None = None
        #: the stream server's identity when :attr:`base` was current (a
        #: restart changes it)
        self.server: str | None = None
        self._started = False
        self._down_since: float | None = None
        self._caught: set[str] = set()
        self._caught_last: Offset | None = None

    # -- the live path ------------------------------------------------------------
    def seen(self, offset: str) -> None:
        """A live logged message was handled."""
        self.base = offset
        if self._caught_last is not None:
            parsed = Offset.parse(offset)
            if parsed is not None and parsed > self._caught_last:
                # the channel went past the catch-up: no duplicate can follow
                self._caught.clear()
                self._caught_last = None

    def duplicate(self, offset: str) -> bool:
        """Whether a live message is a copy of one the catch-up handled."""
        return offset in self._caught

    # -- reported by the subscription ---------------------------------------------
    def lost(self) -> None:
        """The subscription is gone (reported once or more per outage)."""
        if self._started and self._down_since is None:
            self._down_since = time.monotonic()

    def subscribed(self) -> None:
        """The subscription is (back) up, no live message handled yet."""
        reader = self.reader()
        first, self._started = not self._started, True
        if reader is None:
            self._down_since = None
            return
        if first or self._down_since is None:
            if self.base is None:
                self.base = reader.last_offset()
            self.server = reader.server_id()
            return
        down_for = time.monotonic() - self._down_since
        self._down_since = None
        self._caught.clear()
        self._caught_last = None
        self.stats.incr("catch_ups")
        try:
            count, problem = self._catch_up(reader)
        except Exception as exc:  # the listener must go on whatever happens here
            self.logger.exception("Cluster bus catch-up failed")
            count, problem = 0, f"it failed ({exc})"
        self.server = reader.server_id()
        if problem is None:
            self.logger.warning(
                "Cluster bus subscription was down %.1f s; caught up on %d message(s) "
                "published meanwhile, from the recovery stream", down_for, count)
            return
        self.stats.incr("catch_up_impossible")
        closed = self.reset_clients()
        self.stats.incr("catch_up_disconnects", closed)
        self.logger.error(
            "Cluster bus subscription was down %.1f s and this node cannot catch up "
            "exactly on what was published meanwhile: %s (%d message(s) handed on). "
            "Closed its %d client connection(s) so that they reconnect and recover from "
            "their own offsets (told recovered=False where their history is gone)",
            down_for, problem, count, closed)

    # -- reading the stream ---------------------------------------------------------
    def _read(self, read: Callable[[], Any]) -> Any:
        for attempt in range(READ_ATTEMPTS):
            result = read()
            if result is not None:
                return result
            if attempt + 1 < READ_ATTEMPTS:
                self.sleep(0.1 * (attempt + 1))
        return None

    def _catch_up(self, reader: CatchUpReader) -> tuple[int, str | None]:
        """Hand on what the stream holds after :attr:`base`; returns how
        many messages, and why it could not be exact (None: it was)."""
        until = self._read(reader.last_offset)
        if until is None:
            return 0, "the recovery stream could not be read"
        base = self.base
        start, end = Offset.parse(base), Offset.parse(until)
        if start is None or end is None:
            return 0, "it knew no stream offset from before the outage"
        if end == start:
            return 0, None
        cursor = str(start)
        if end < start or not self._read(lambda: reader.readable(str(start)) or None):
            server = self.server
            if server is None or self._read(reader.server_id) in (None, server):
                self.base = until
                return 0, ("the recovery stream no longer holds everything after its "
                           "last offset (trimmed: an outage longer than the recovery "
                           "window or than recovery_max_entries emits; or reset)")
            # Redis restarted: what the old server carried was received
            self.stats.incr("catch_up_after_restart")
            if end < start:
                cursor = "0-0"
        max_age = self.max_age_ms()
        count = 0
        while True:
            page = self._read(functools.partial(reader.raw_page, cursor, until, PAGE))
            if page is None:
                self.base = until
                return count, "the recovery stream could not be read"
            for offset, payload in page:
                parsed = Offset.parse(offset)
                if parsed is None:
                    continue
                if count >= MAX_ENTRIES:
                    self.base = until
                    return count, f"more than {MAX_ENTRIES} messages were published meanwhile"
                if max_age is not None and parsed.age_ms() > max_age - AGE_MARGIN_MS:
                    self.base = until
                    return count, (f"the outage outlasted the bus's max_message_age "
                                   f"({max_age / 1000:g} s), past which messages are refused")
                cursor = self.base = offset
                self._caught.add(offset)
                self._caught_last = parsed
                if payload is not None:
                    count += 1
                    self.stats.incr("caught_up")
                    self.handle(offset, payload)
            if len(page) < PAGE or cursor == until:
                return count, None


"""The single publisher: one queue, one connection, pipelined batches.

Every message a node or an emitter publishes goes through one
:class:`Outbox`: emits from handlers, workers and cluster commands, with or
without the bus. On a node callers only append to a deque (no pool
checkout, no I/O), and one background task drains it in batches written
with one round trip each; a write-only emitter (no background task: Celery
workers) sends through :meth:`Outbox.publish_now`, the same send function
and the same retry policy.

With connection state recovery an item can be *logged*: appended to the
recovery stream by the batch that publishes it (the offset comes back to
this node through the channel: :mod:`.ordered_delivery`). A logged emit buffered
during an outage is logged (in order) when the bus returns, so a client
recovering later is replayed what it missed. This is what lets a burst of
thousands of concurrent emits go out in full: python-socketio's RedisManager
checks a connection out of redis-py's pool per emit, runs out of connections
under load and then rebuilds its client, losing messages.

While the backend is unreachable the queue doubles as the outage buffer:
messages wait and are published on reconnect, up to ``max_size`` messages
*and* ``max_bytes`` bytes, whichever comes first (a count alone lets a few
large emits fill the node's memory: 10,000 messages of 1 MiB are 10 GiB);
beyond that new messages are refused, counted in ``dropped_buffer_full``
and logged.
"Volatile" messages (heartbeats, queries) are never buffered: they are stale
by the time the bus returns. What was queued before the node itself was
found paused (SIGSTOP, a frozen VM: :mod:`cluster.node.pause_fence`) is
dropped, not published late, since its clients have moved on.

When the server refuses part of a batch (Redis at ``maxmemory`` refuses the
recovery stream's writes but not plain publishes), what it accepted is done
and only the refused items are retried, with their original seals and in
order (:mod:`.batch` says why that keeps exactly-once and per-sender order).
A logged emit the stream keeps refusing is held (with everything queued
behind it, to keep the order) for at most ``log_retry`` seconds, then sent
as a plain publish without an offset: delivered once to every node, but not
replayable to a client that reconnects, counted in ``published_unlogged``
and logged at most once per 10 s. Until a logged write succeeds again, later
logged emits that are refused take that path at once rather than waiting.
On the emitting node each such emit reaches the clients once too: a held
one's emitter stops waiting and delivers it without an offset, and the
listener skips the copy that comes back later; one sent unlogged at once
comes back (with its ``lid``) and the listener delivers it, as usual (see
:mod:`.ordered_delivery`).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable

from cluster.bus.batch import Item, SendBatch, Settled, Waiter, settle, take, unlog
from cluster.bus.runtime import Backoff, Runtime
from cluster.bus.stats import BusStats
from session_store.quiet_log import QuietLog

#: default ``max_bytes``: the outage buffer's share of a node's memory
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: default ``log_retry``: seconds a refused logged emit is retried as such
DEFAULT_LOG_RETRY = 5.0
#: seconds between two log lines about the same kind of trouble
LOG_WINDOW = 10.0
_MIB = 1024 * 1024

__all__ = ["DEFAULT_LOG_RETRY", "DEFAULT_MAX_BYTES", "Item", "Outbox", "Waiter"]


class Outbox:
    """Bounded publish queue drained by one background task.

    :param send_batch: ``send_batch(items)`` seals the items not sealed yet
                       and writes them in one round trip (a logged item is
                       appended to the recovery stream too); returns, per
                       item, its offset (``None`` when unlogged) or the
                       error the server refused it with (only those are
                       retried); raises when the outcome is unknown (the
                       whole batch is retried, with the same seals).
    :param connect: opens the publisher connection; called once at start
                    (retried with backoff) so readiness does not wait for
                    the first message.
    :param before_resume: called after a failure, before the buffered
                          messages are sent again (used to wait until the
                          other nodes have resubscribed); may raise.
    :param max_size: outage buffer size in messages. Default 10,000.
    :param max_bytes: outage buffer size in bytes of serialized messages
                      (those queued and the batch being sent). Default
                      64 MiB. A message is refused when either limit would
                      be passed, so ``max_bytes`` must be at least the
                      largest message the bus accepts.
    :param max_batch: messages per round trip. Default 500.
    :param max_backoff: cap of the retry delay in seconds. Default 1.0.
    :param log_retry: seconds a logged item the server refuses is retried
                      as such before it is sent unlogged (see the module
                      doc). Default 5.0.
    """

    def __init__(self, runtime: Runtime,
                 send_batch: SendBatch,
                 stats: BusStats,
                 logger: logging.Logger, *,
                 connect: Callable[[], None] | None = None,
                 before_resume: Callable[[], None] | None = None,
                 max_size: int = 10_000, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_batch: int = 500, max_backoff: float = 1.0,
                 log_retry: float = DEFAULT_LOG_RETRY) -> None:
        self.runtime = runtime
        self.send_batch = send_batch
        self.stats = stats
        self.logger = logger
        self.connect = connect
        self.before_resume = before_resume
        self.max_size = max_size
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self.max_backoff = max_backoff
        self.log_retry = log_retry
        self.healthy = False
        self.failed_since: float | None = None
        self._queue: collections.deque[Item] = collections.deque()
        self._in_flight = 0
        # bytes of the queued items and of the batch in flight: running
        # sums so that put() stays O(1), under a lock because threaded
        # emitters put concurrently and a lost update would never heal
        self._queued_bytes = 0
        self._in_flight_bytes = 0
        self._bytes_lock = threading.Lock()
        self._wakeup = runtime.event()
        self._closed = False
        # one line per kind of trouble per window, not per message
        self._quiet = QuietLog(logger, LOG_WINDOW)
        # the stream refused logged writes until they were sent unlogged;
        # cleared by the next logged write that goes through
        self._stream_refusing = False

    def __len__(self) -> int:
        return len(self._queue) + self._in_flight

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: queued messages plus the batch being sent."""
        return self._queued_bytes + self._in_flight_bytes

    def put(self, body: str, volatile: bool = False, *, logged: bool = False,
            waiter: Waiter | None = None, channel: str | None = None) -> bool:
        """Queue one message; False when it was refused (and counted).

        ``logged``: append it to the recovery stream when it is published;
        ``waiter`` is woken if publishing fails (it then stops waiting for
        the message to come back through the channel); ``channel``: where
        it travels (None: the common channel, see :mod:`.channels`).
        """
        if volatile and not self.healthy:
            return False
        item = Item(body, volatile, logged, waiter, channel)
        with self._bytes_lock:
            full = (len(self) >= self.max_size
                    or self.buffered_bytes + item.size > self.max_bytes)
            if not full:
                self._queue.append(item)
                self._queued_bytes += item.size
        if full:
            if not volatile:
                self.stats.incr("dropped_buffer_full")
                self._log_drop()
            return False
        self._wakeup.set()
        return True

    def publish_now(self, body: str, *, logged: bool, timeout: float,
                    connect: Callable[[], None], channel: str | None = None) -> str | None:
        """Send one message synchronously (write-only emitters).

        Retries with the same capped backoff as the queue (and the same
        seal), reconnecting with ``connect``, and raises the last error once
        ``timeout`` seconds passed without success. A logged message the
        server keeps refusing goes out unlogged after ``log_retry`` seconds
        or before the deadline, whichever comes first (see the module doc).
        Returns the offset of a logged message.
        """
        deadline = time.monotonic() + timeout
        backoff = Backoff(cap=self.max_backoff)
        item = Item(body, False, logged, None, channel)
        refused_since: float | None = None
        while True:
            try:
                if not self.healthy:
                    connect()
                results = self.send_batch([item])
                done = settle([item], results)
            except Exception:
                self.healthy = False
                self.stats.incr("publish_errors")
                if time.monotonic() + backoff.initial >= deadline:
                    raise
                time.sleep(min(backoff.next(), max(0.0, deadline - time.monotonic())))
                continue
            self.healthy = True
            if not done.kept:
                self.stats.incr("published")
                result = results[0]
                return result if isinstance(result, str) else None
            self.stats.incr("publish_errors")
            now = time.monotonic()
            refused_since = refused_since or now
            late = now + backoff.initial >= deadline
            if item.logged and (late or now - refused_since >= self.log_retry):
                self._unlog(done)
                continue
            if late:
                assert done.error is not None
                raise done.error
            time.sleep(min(backoff.next(), max(0.0, deadline - now)))

    def _log_drop(self) -> None:
        self._quiet.log(
            logging.ERROR, "buffer_full",
            "Cluster bus outage buffer full (%d messages, %.1f MiB; "
            "limits: %d messages, %.1f MiB): dropping emits (total "
            "dropped so far: %d). Fix the bus connection, or raise "
            "buffer_size / buffer_bytes in message_queue_options if "
            "the node has the memory.", len(self),
            self.buffered_bytes / _MIB, self.max_size,
            self.max_bytes / _MIB, self.stats.get("dropped_buffer_full"))

    def run(self) -> None:
        """Publisher loop; returns once closed and drained (or abandoned)."""
        backoff = Backoff(cap=self.max_backoff)
        while self.connect is not None and not self._closed:
            try:
                self.connect()
            except Exception as exc:  # keep trying: the bus may come later
                if self.failed_since is None:
                    self.failed_since = time.monotonic()
                    self.logger.error("Cannot connect to the cluster bus "
                                      "(%s: %s); retrying", type(exc).__name__,
                                      exc)
                self.runtime.sleep(backoff.next())
                continue
            self.healthy, self.failed_since = True, None
            break
        while True:
            self._wakeup.clear()
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.wait(1.0)
                continue
            batch = self._take_batch()
            try:
                if not self._send_with_retry(batch):
                    return
            finally:
                self._in_flight = self._in_flight_bytes = 0

    def _take_batch(self) -> list[Item]:
        """Up to ``max_batch`` items off the queue, accounted as in flight."""
        with self._bytes_lock:
            batch = take(self._queue, self.max_batch)
            size = sum(item.size for item in batch)
            self._in_flight, self._in_flight_bytes = len(batch), size
            self._queued_bytes -= size
        return batch

    def _send_with_retry(self, batch: list[Item]) -> bool:
        backoff = Backoff(cap=self.max_backoff)
        refused_since: float | None = None
        while True:
            if self._drop_stale(batch) and not batch and self.healthy:
                return True
            # (all of a failed batch dropped as stale: the probe below must
            # still make the outbox healthy, or it would wait for a message
            # that never comes, as heartbeats are refused while unhealthy)
            try:
                if not self.healthy and self.failed_since is not None \
                        and self.before_resume is not None:
                    self.before_resume()
                if batch:
                    done = settle(batch, self.send_batch(batch))
                elif self.connect is not None:
                    self.connect()  # only volatile messages were lost: probe
                    done = Settled(0, [], None, False)
                else:
                    done = settle([], self.send_batch([]))
            except Exception as exc:  # any driver error means "retry later"
                # whoever waits for its emit to come back delivers it now
                # without an offset; the items stay queued and are logged
                # once the bus is back
                self._wake_waiters(batch)
                self._wake_waiters(self._queue)
                self.stats.incr("publish_errors")
                if self.healthy or self.failed_since is None:
                    self.failed_since = time.monotonic()
                    self.logger.error(
                        "Cluster bus publish failed (%s: %s); buffering up "
                        "to %d messages or %.1f MiB and retrying every "
                        "<= %.1f s", type(exc).__name__, exc, self.max_size,
                        self.max_bytes / _MIB, self.max_backoff)
                self.healthy = False
                refused_since = None
                if not self._retry_later(batch, backoff):
                    return False
                continue
            if done.sent:
                self.stats.incr("published", done.sent)
            if done.logged_ok:
                self._stream_refusing = False
            if done.kept:
                # the server refused these (and only these): keep them, with
                # their seals, ahead of everything queued after them
                now = time.monotonic()
                refused_since = refused_since or now
                batch[:] = done.kept
                if any(item.logged for item in batch) and (
                        self._stream_refusing or now - refused_since >= self.log_retry):
                    self._unlog(done)
                    continue  # nothing of them was published: at once
                self._refused(done)
                if not self._retry_later(batch, backoff):
                    return False
                continue
            if not self.healthy and self.failed_since is not None:
                self.stats.incr("reconnects")
                self.logger.warning(
                    "Cluster bus publishing again after %.1f s outage",
                    time.monotonic() - self.failed_since)
            self.healthy = True
            self.failed_since = None
            return True

    def _retry_later(self, batch: list[Item], backoff: Backoff) -> bool:
        """Keep what is worth retrying and wait a backoff step; False when
        closed (then everything left is dropped and counted)."""
        batch[:] = [item for item in batch if not item.volatile]
        self._in_flight = len(batch)
        self._in_flight_bytes = sum(item.size for item in batch)
        if self._closed:
            self.stats.incr("dropped_unpublished", len(batch) + len(self._queue))
            self._clear_queue()
            return False
        self.runtime.sleep(backoff.next())
        return True

    def _refused(self, done: Settled) -> None:
        """Part of a batch was refused: hold it (and the queue behind it)."""
        # emitters stop waiting for these (and for the queue behind them)
        # and deliver on this node without an offset; the listener skips
        # the copy that comes back later (see :mod:`.ordered_delivery`)
        self._wake_waiters(done.kept)
        self._wake_waiters(self._queue)
        self.stats.incr("publish_errors")
        self.healthy = False
        self._quiet.log(
            logging.ERROR, "refused",
            "The bus server refused %d of the messages of a batch (%s: "
            "%s); the others went out. Retrying just those, in order, "
            "with their original signatures; logged emits for at most "
            "%.1f s, then without a recovery offset. If Redis is at "
            "maxmemory, free memory or raise maxmemory: the recovery "
            "stream needs room.", len(done.kept), type(done.error).__name__,
            done.error, self.log_retry)

    def _unlog(self, done: Settled) -> None:
        """The stream keeps refusing: send the held logged items as plain
        publishes (delivered once, not replayable), counted and logged."""
        count = unlog(done.kept)
        self._stream_refusing = True
        self.stats.incr("published_unlogged", count)
        self._quiet.log(
            logging.ERROR, "unlogged",
            "The recovery stream refuses writes (%s: %s): sent %d emits "
            "without a recovery offset (delivered once, but not replayed "
            "to a client that reconnects; %d so far, metric "
            "published_unlogged). If Redis is at maxmemory, free memory "
            "or raise maxmemory: the stream needs room.",
            type(done.error).__name__, done.error, count,
            self.stats.get("published_unlogged"))

    def _drop_stale(self, batch: list[Item]) -> int:
        """Drop (and count in ``dropped_after_pause``) the items queued
        before this node was found paused (:meth:`Runtime.paused_since`):
        their clients have moved to other nodes meanwhile, and publishing
        them now would deliver them after what those clients sent since.
        Their emitters were not answered yet (a logged emit's handler waits
        for it), so nobody was told they went out."""
        paused_since = self.runtime.paused_since
        if not batch or not paused_since(batch[0].queued_at):
            return 0
        stale = [item for item in batch if paused_since(item.queued_at)]
        batch[:] = [item for item in batch if not paused_since(item.queued_at)]
        self._in_flight = len(batch)
        self._in_flight_bytes = sum(item.size for item in batch)
        self._wake_waiters(stale)
        self.stats.incr("dropped_after_pause", len(stale))
        self._quiet.log(
            logging.WARNING, "paused",
            "Dropped %d message(s) queued before this node was paused: their "
            "clients have reconnected elsewhere, and publishing them now would "
            "deliver them out of order (metric dropped_after_pause).", len(stale))
        return len(stale)

    @staticmethod
    def _wake_waiters(items: Iterable[Item]) -> None:
        for item in items:
            if item.waiter is not None:
                waiter, item.waiter = item.waiter, None
                waiter.wake()

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, try to flush for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self) and self.healthy and time.monotonic() < deadline:
            self.runtime.sleep(0.01)
        self._closed = True
        self._wakeup.set()
        self._wake_waiters(self._queue)
        left = len(self._queue)
        if left:
            self.stats.incr("dropped_unpublished", left)
            self.logger.error("Cluster bus closed with %d unpublished "
                              "messages", left)
            self._clear_queue()

    def _clear_queue(self) -> None:
        with self._bytes_lock:
            self._queue.clear()
            self._queued_bytes = 0

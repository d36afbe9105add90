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
by the time the bus returns.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from cluster.bus.codec import encoded_size
from cluster.bus.runtime import Backoff, Runtime
from cluster.bus.stats import BusStats

#: default ``max_bytes``: the outage buffer's share of a node's memory
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_MIB = 1024 * 1024


class Waiter(Protocol):
    """Someone waiting for a logged item (see :mod:`.ordered_delivery`)."""

    def wake(self) -> None: ...


class _Item:
    __slots__ = ("body", "size", "volatile", "logged", "waiter")

    def __init__(self, body: str, volatile: bool, logged: bool, waiter: Waiter | None) -> None:
        self.body, self.volatile, self.logged, self.waiter = body, volatile, logged, waiter
        self.size = encoded_size(body)


class Outbox:
    """Bounded publish queue drained by one background task.

    :param send_batch: ``send_batch(bodies, logged)`` writes serialized
                       messages in one round trip (``logged[i]``: append
                       item ``i`` to the recovery stream too) and returns
                       their offsets (``None`` for unlogged ones); raises on
                       any failure (the whole batch is retried).
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
    """

    def __init__(self, runtime: Runtime,
                 send_batch: Callable[[list[str], list[bool]], list[str | None]],
                 stats: BusStats,
                 logger: logging.Logger, *,
                 connect: Callable[[], None] | None = None,
                 before_resume: Callable[[], None] | None = None,
                 max_size: int = 10_000, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_batch: int = 500, max_backoff: float = 1.0) -> None:
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
        self.healthy = False
        self.failed_since: float | None = None
        self._queue: collections.deque[_Item] = collections.deque()
        self._in_flight = 0
        # bytes of the queued items and of the batch in flight: running
        # sums so that put() stays O(1), under a lock because threaded
        # emitters put concurrently and a lost update would never heal
        self._queued_bytes = 0
        self._in_flight_bytes = 0
        self._bytes_lock = threading.Lock()
        self._wakeup = runtime.event()
        self._closed = False
        self._last_drop_log = 0.0

    def __len__(self) -> int:
        return len(self._queue) + self._in_flight

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: queued messages plus the batch being sent."""
        return self._queued_bytes + self._in_flight_bytes

    def put(self, body: str, volatile: bool = False, *, logged: bool = False,
            waiter: Waiter | None = None) -> bool:
        """Queue one message; False when it was refused (and counted).

        ``logged``: append it to the recovery stream when it is published;
        ``waiter`` is woken if publishing fails (it then stops waiting for
        the message to come back through the channel).
        """
        if volatile and not self.healthy:
            return False
        item = _Item(body, volatile, logged, waiter)
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
                    connect: Callable[[], None]) -> str | None:
        """Send one message synchronously (write-only emitters).

        Retries with the same capped backoff as the queue, reconnecting with
        ``connect``, and raises the last error once ``timeout`` seconds
        passed without success. Returns the offset of a logged message.
        """
        deadline = time.monotonic() + timeout
        backoff = Backoff(cap=self.max_backoff)
        while True:
            try:
                if not self.healthy:
                    connect()
                offsets = self.send_batch([body], [logged])
            except Exception:
                self.healthy = False
                self.stats.incr("publish_errors")
                if time.monotonic() + backoff.initial >= deadline:
                    raise
                time.sleep(min(backoff.next(), max(0.0, deadline - time.monotonic())))
                continue
            self.healthy = True
            self.stats.incr("published")
            return offsets[0] if offsets else None

    def _log_drop(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_log > 5:  # one line per 5 s, not per message
            self._last_drop_log = now
            self.logger.error(
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

    def _take_batch(self) -> list[_Item]:
        """Up to ``max_batch`` items off the queue, accounted as in flight."""
        batch: list[_Item] = []
        with self._bytes_lock:
            while self._queue and len(batch) < self.max_batch:
                batch.append(self._queue.popleft())
            size = sum(item.size for item in batch)
            self._in_flight, self._in_flight_bytes = len(batch), size
            self._queued_bytes -= size
        return batch

    def _send_with_retry(self, batch: list[_Item]) -> bool:
        backoff = Backoff(cap=self.max_backoff)
        while True:
            try:
                if not self.healthy and self.failed_since is not None \
                        and self.before_resume is not None:
                    self.before_resume()
                if batch:
                    self.send_batch([item.body for item in batch],
                                    [item.logged for item in batch])
                elif self.connect is not None:
                    self.connect()  # only volatile messages were lost: probe
                else:
                    self.send_batch([], [])
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
                batch[:] = [item for item in batch if not item.volatile]
                self._in_flight = len(batch)
                self._in_flight_bytes = sum(item.size for item in batch)
                if self._closed:
                    self.stats.incr("dropped_unpublished",
                                    len(batch) + len(self._queue))
                    self._clear_queue()
                    return False
                self.runtime.sleep(backoff.next())
                continue
            if not self.healthy and self.failed_since is not None:
                self.stats.incr("reconnects")
                self.logger.warning(
                    "Cluster bus publishing again after %.1f s outage",
                    time.monotonic() - self.failed_since)
            self.healthy = True
            self.failed_since = None
            self.stats.incr("published", len(batch))
            return True

    @staticmethod
    def _wake_waiters(items: Any) -> None:
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

"""The one way out: every bus message of a manager is published here.

Emits from handlers, workers and cluster commands, heartbeats, queries,
presence and room changes all go through :meth:`Publisher.publish`: the
message is serialized (raising at the caller when it cannot be), queued in
the :class:`~.outbox.Outbox` (on a node) or sent before returning (a
write-only emitter), with the outbox's one retry policy either way; the
outbox hands each batch to the :class:`~.sender.SealedSender`, which seals
it in order and writes it to the transport.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from cluster.bus.codec import Codec
from cluster.bus.errors import BusConfigurationError, BusPublishError
from cluster.bus.outbox import Outbox, Waiter
from cluster.bus.runtime import Runtime
from cluster.bus.sender import SealedSender, SealWatcher
from cluster.bus.settings import BusSettings
from cluster.bus.stats import BusStats
from cluster.bus.transport import Transport


class Publisher:
    """Serializes, queues, seals and sends one manager's bus messages.

    :param expected_peers: how many subscribers the channel should have
        (the nodes known before an outage): after one, the buffer is held
        until they resubscribed, for at most ``resume_wait`` seconds, since
        pub/sub keeps nothing for absent subscribers.
    """

    def __init__(self, transport: Transport, codec: Codec, stats: BusStats,
                 runtime: Runtime, logger: logging.Logger, settings: BusSettings, *,
                 host_id: str, write_only: bool,
                 expected_peers: Callable[[], int]) -> None:
        self.transport = transport
        self.codec = codec
        self.stats = stats
        self.runtime = runtime
        self.logger = logger
        self.settings = settings
        self.host_id = host_id
        self.write_only = write_only
        self.expected_peers = expected_peers
        self.outbox: Outbox | None = None
        self.sender = SealedSender(transport, codec, host_id)
        self.lock = self.sender.lock
        self._last_backend_check = 0.0

    # -- lifecycle ------------------------------------------------------------
    def _make_outbox(self) -> Outbox:
        s = self.settings
        return Outbox(
            self.runtime, self.sender.send, self.stats, self.logger,
            connect=self.transport.connect, before_resume=self._wait_for_peers,
            max_size=s.buffer_size, max_bytes=s.buffer_bytes, max_batch=s.max_batch,
            max_backoff=s.max_backoff)

    def start(self) -> None:
        """Start the background publisher of a node (idempotent)."""
        if self.outbox is None:
            self.outbox = self._make_outbox()
            self.runtime.spawn(self.outbox.run)

    def close(self, timeout: float) -> None:
        """Flush for up to ``timeout`` seconds, then stop."""
        if self.outbox is not None:
            self.outbox.close(timeout)

    @property
    def started(self) -> bool:
        return self.outbox is not None

    @property
    def healthy(self) -> bool:
        """Whether the last attempt to publish succeeded."""
        return bool(self.outbox is not None and self.outbox.healthy)

    @property
    def buffered(self) -> int:
        return len(self.outbox) if self.outbox is not None else 0

    @property
    def buffered_bytes(self) -> int:
        return self.outbox.buffered_bytes if self.outbox is not None else 0

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was published."""
        deadline = time.monotonic() + timeout
        while self.outbox is not None and len(self.outbox):
            if time.monotonic() > deadline:
                return False
            self.runtime.sleep(0.01)
        return True

    def watch_seals(self, watcher: SealWatcher) -> None:
        """Have ``watcher`` told of every seal of a message with a ``lid``
        (see :class:`~.sender.SealedSender`)."""
        self.sender.on_sealed = watcher

    # -- publishing -----------------------------------------------------------
    def dumps(self, message: dict[str, Any]) -> str:
        """``message`` serialized, raising at the caller if it cannot be."""
        return self.codec.dumps(message)

    def publish(self, message: dict[str, Any] | None = None, *, body: str | None = None,
                volatile: bool = False, logged: bool = False,
                waiter: Waiter | None = None, channel: str | None = None) -> bool:
        """Queue one bus message; False when the outbox refused it.

        ``body`` is the message already serialized by the caller (then
        ``message`` may be omitted). ``logged`` appends it to the recovery
        stream as it is published; ``waiter`` is woken if that fails.
        ``channel``: where it travels (None: the common channel).
        ``volatile`` messages (heartbeats, queries) are dropped rather than
        buffered while the bus is down. Write-only publishers send before
        returning and raise :class:`~.errors.BusPublishError` after
        ``publish_timeout`` seconds without the bus.
        """
        if body is None:
            assert message is not None
            body = self.codec.dumps(message)
        if self.write_only:
            self._publish_now(body, logged, channel)
            return True
        if self.outbox is None:
            self.start()
        assert self.outbox is not None
        return self.outbox.put(body, volatile, logged=logged, waiter=waiter, channel=channel)

    def _publish_now(self, body: str, logged: bool, channel: str | None) -> None:
        if self.outbox is None:
            self.outbox = self._make_outbox()  # the same policy, no task
        now = time.monotonic()
        if now - self._last_backend_check > self.settings.heartbeat_interval:
            # no heartbeat task in write-only mode: follow failovers here
            self._last_backend_check = now
            check_backend(self.transport, self.logger)
        timeout = self.settings.publish_timeout
        try:
            with self.lock:
                self.outbox.publish_now(body, logged=logged, timeout=timeout,
                                        connect=self.transport.connect, channel=channel)
        except BusConfigurationError:
            raise
        except Exception as exc:
            raise BusPublishError(
                f"Could not publish to the cluster bus within {timeout} s "
                f"({type(exc).__name__}: {exc}). Check that the message queue "
                f"is running and reachable from this process.") from exc

    def _wait_for_peers(self) -> None:
        """Hold the outage buffer until the known nodes resubscribed."""
        expected = self.expected_peers()
        deadline = time.monotonic() + self.settings.resume_wait
        while True:
            count = self.transport.subscriber_count()
            if count is None or count >= expected or time.monotonic() >= deadline:
                return
            self.runtime.sleep(0.05)


def check_backend(transport: Transport, logger: logging.Logger) -> None:
    """Let the transport follow its topology; a failure (Sentinel down) is
    only logged: the listener notices a lost bus by itself. A configuration
    the cluster disagrees with (another ``redis_partitions`` recorded while
    this node could not refresh its own) is logged as the error it is."""
    try:
        transport.check()
    except BusConfigurationError as exc:
        logger.error("%s", exc)
    except Exception as exc:
        logger.debug("bus backend check failed: %s", exc)

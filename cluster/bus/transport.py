"""The one small interface a bus backend implements, the subscription
state it reports to, and the reads of a recovery stream it may offer.

A backend (Redis, Redis Cluster and Sentinel in
:mod:`.backends.redis_transport`, kombu in :mod:`.backends.kombu_transport`)
only moves bytes: it connects a publisher, sends a batch of sealed payloads
in one round trip (saying which of them the server refused,
:meth:`Transport.send_each`), and yields the payloads it receives, telling
the :class:`Subscription` when it subscribed, re-subscribed or lost the
channel. Everything else (checking, ordering, delivery, retries) belongs to
the pipeline's other parts. This module imports neither the manager nor the
cluster services: they import it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from cluster.bus.runtime import Backoff, Runtime
from cluster.bus.stats import BusStats

if TYPE_CHECKING:  # pragma: no cover
    from cluster.bus.channels import ChannelBase, ChannelFollower
    from cluster.recovery.routing import ScanPage
    from cluster.recovery.stream import OffsetFacts


class RecoveryReader(Protocol):
    """Reads of the shared recovery stream (see :mod:`cluster.recovery.replay`),
    offered by a backend that keeps one (:attr:`Transport.recovery`).

    Every read returns its documented default when the stream cannot be
    read (Redis down), and logs why: ``None`` for all of them.
    """

    def last_offset(self) -> str | None: ...
    def restart_point(self) -> str | None: ...
    def readable(self, offset: str) -> bool | None: ...
    def offset_facts(self, offset: str) -> OffsetFacts | None: ...
    def page(self, offset: str, count: int
             ) -> list[tuple[str, dict[str, Any] | None, int]] | None: ...
    def scan(self, offset: str, namespace: str, sid: str, rooms: Iterable[Any]
             ) -> ScanPage | None: ...
    def after(self, offset: str) -> list[tuple[str, dict[str, Any]]] | None: ...


class Registry(Protocol):
    """What the subscription needs of the node registry
    (:class:`~.services.nodes.NodeRegistry`): a protocol, so that the
    pipeline does not import the cluster services."""

    def freeze(self) -> None: ...
    def thaw(self) -> None: ...


class Transport:
    """Base of the bus backends; the defaults suit a backend without a
    recovery stream or a topology to follow."""

    #: shown in logs ("redis bus initialized ...")
    name = "transport"
    #: whether :meth:`send_logged` appends to a recovery stream
    logs_recovery = False
    #: reads of that stream (None without one)
    recovery: RecoveryReader | None = None
    #: whether messages may travel on channels of their own (rooms, nodes:
    #: see :mod:`.channels`) besides the common one
    routes = False
    #: the channels the node follows besides the common one (set by the
    #: manager of a node when :attr:`routes`)
    follower: ChannelFollower | None = None

    def route_base(self, channel: str) -> ChannelBase:
        """What room and node channel names start with (see
        :func:`~.channels.room_channel`): the common channel's name."""
        return channel

    def lane_of(self, channel: str | None) -> int:
        """The lane ``channel`` travels in, when the backend spreads channels
        over connections that do not keep order between them (see
        :mod:`.backends.redis_lanes`); 0: the common channel's, and
        everything of a backend that keeps one order."""
        return 0

    def connect(self) -> None:
        """(Re)connect the publishing side; raises when the bus is down."""
        raise NotImplementedError

    def send(self, payloads: list[bytes]) -> None:
        """Publish ``payloads`` in one round trip; raises on failure."""
        raise NotImplementedError

    def send_logged(self, payloads: list[bytes], logged: list[bool]) -> list[str | None]:
        """Publish ``payloads`` in one round trip, appending the ``logged``
        ones to the recovery stream; their offsets (None for the others)."""
        self.send(payloads)
        return [None] * len(payloads)

    def send_each(self, payloads: list[bytes], logged: list[bool],
                  channels: list[str | None] | None = None) -> list[str | None | Exception]:
        """Publish ``payloads`` in one round trip (appending the ``logged``
        ones to the recovery stream), each on its channel in ``channels``
        (``None``: the common one; only a backend that :attr:`routes` is
        given others), and say what became of each: its
        offset (``None`` when not logged) if the server took it, or, in its
        place, the error the server refused it with (it had no effect and
        is retried as it is). Raises when the outcome is unknown (the
        connection broke mid-batch): then every payload is retried.

        This default suits a backend that cannot tell: all or nothing.
        """
        results: list[str | None | Exception] = []
        if any(logged):
            results.extend(self.send_logged(payloads, logged))
        else:
            self.send(payloads)
            results.extend([None] * len(payloads))
        return results

    def listen(self, subscription: Subscription) -> Iterator[Any]:
        """Yield received payloads until ``subscription.closed``, reporting
        (re)subscriptions and losses to it and resubscribing by itself."""
        raise NotImplementedError

    def server_time(self) -> float | None:
        """The bus server's clock in seconds since the epoch (None: this
        backend cannot tell), for :class:`~.clock.ClockWatch`."""
        return None

    def subscriber_count(self) -> int | None:
        """How many subscribers the channel has (None: unknown)."""
        return None

    def check(self) -> None:
        """Called about once per heartbeat: follow topology changes (a
        Sentinel failover)."""

    def new_client(self) -> Any:
        """A new client of the bus's server for other parts (None if the
        backend offers none)."""
        return None

    def close(self) -> None:
        """Close every connection; safe to call on broken ones."""


class Subscription:
    """The listener's hold on the channel, as the transport reports it.

    Parts that care register with :meth:`on_subscribed` / :meth:`on_lost`
    (the node registry, presence, the ordered delivery of own emits).
    """

    def __init__(self, stats: BusStats, nodes: Registry, runtime: Runtime,
                 logger: logging.Logger, *, node_timeout: float, max_backoff: float,
                 publishing: Callable[[], bool]) -> None:
        self.stats = stats
        self.nodes = nodes
        self.runtime = runtime
        self.logger = logger
        self.node_timeout = node_timeout
        #: cap of the transports' resubscribe backoff, in seconds
        self.max_backoff = max_backoff
        self.publishing = publishing
        self.closed = False
        self.subscribed = False
        self.ever_subscribed = False
        self.first_subscribed_at = 0.0
        self.subscribed_at = 0.0
        self.last_received = time.monotonic()
        self._on_subscribed: list[Callable[[], None]] = []
        self._on_lost: list[Callable[[], None]] = []

    def on_subscribed(self, callback: Callable[[], None]) -> None:
        self._on_subscribed.append(callback)

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._on_lost.append(callback)

    def sleep(self, seconds: float) -> None:
        self.runtime.sleep(seconds)

    def received(self) -> None:
        self.last_received = time.monotonic()

    # -- reported by the transport ---------------------------------------------
    def up(self) -> None:
        """The transport is subscribed (first time, or again)."""
        if self.ever_subscribed and not self.subscribed:
            self.stats.incr("reconnects")
            self.logger.warning("Cluster bus subscription restored")
        now = time.monotonic()
        if not self.ever_subscribed:
            self.first_subscribed_at = now
        self.ever_subscribed = True
        self.subscribed = True
        self.subscribed_at = self.last_received = now
        self.nodes.thaw()
        for callback in self._on_subscribed:
            callback()

    def lost(self, exc: BaseException | None = None) -> None:
        """The subscription is gone (the transport retries by itself)."""
        if self.subscribed:
            self.logger.error(
                "Cluster bus subscription lost (%s); serving local clients "
                "only until it returns", exc or "listener stopped")
        self.subscribed = False
        self.nodes.freeze()
        for callback in self._on_lost:
            callback()

    def retry_after(self, exc: BaseException, backoff: Backoff) -> bool:
        """A transport's listener failed: report the loss and wait one
        backoff step; False when the subscription was closed (stop)."""
        if self.closed:
            return False
        self.lost(exc)
        self.sleep(backoff.next())
        return True

    def deaf(self) -> bool:
        """Subscribed, publishing fine, yet not even our own heartbeats
        come back: the subscription is silently broken."""
        now = time.monotonic()
        return (self.publishing()
                and now - self.last_received > self.node_timeout
                and now - self.subscribed_at > self.node_timeout)

    def knows_peers(self, heartbeat_interval: float) -> bool:
        """Subscribed for longer than a heartbeat interval: the other
        nodes' heartbeats have had time to arrive."""
        return bool(self.ever_subscribed
                    and time.monotonic() - self.first_subscribed_at > heartbeat_interval * 1.5)

"""The kombu transport of the bus (RabbitMQ and other kombu brokers).

A fanout exchange named after the channel carries the common channel (the
exchange python-socketio's KombuManager declares, so stock emitters still
reach the nodes); a direct exchange ``<channel>.rooms`` carries the room and
node channels of :mod:`cluster.bus.channels`, with the channel as routing
key. Each node has one exclusive auto-deleting queue, bound to the fanout
exchange and, on the direct one, to the routing key of every channel it
follows; a node without a member of a room has no binding for it, so the
broker never sends it that room's emits. A direct exchange rather than a
topic one: the keys are matched exactly, which is what a direct exchange
does (by hash lookup), while a topic exchange would parse every key as a
pattern. An exclusive queue can only be bound by its own connection, so the
listener applies the follower's changes itself, between two reads (at most
:data:`BIND_EVERY` seconds apart), and then reports them confirmed.

Unlike python-socketio's KombuManager, bodies are published
pre-serialized as ``application/json`` and read back as raw bytes that go
through :class:`~cluster.bus.codec.Codec`: kombu's deserializers (pickle among them)
never run on what comes off the broker.
"""
from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

from cluster.bus.errors import BusConfigurationError
from cluster.bus.runtime import Backoff
from cluster.bus.transport import Subscription, Transport

try:
    import kombu as _kombu
except ImportError:  # pragma: no cover
    _kombu = None  # type: ignore[assignment]

#: kombu's own annotations are partial and it re-exports implicitly: used
#: as an untyped module
kombu: Any = _kombu

#: seconds between two chances of the listener to bind what the node started
#: following: how long a join waits at most for its room's binding
BIND_EVERY = 0.1


class _PendingBindings:
    """The follower's view of the listener (its ``pubsub``): changes are
    queued here and applied by the listener between two reads."""

    def __init__(self) -> None:
        self.changes: collections.deque[tuple[bool, tuple[str, ...]]] = collections.deque()

    def subscribe(self, *channels: str) -> None:
        self.changes.append((True, channels))

    def unsubscribe(self, *channels: str) -> None:
        self.changes.append((False, channels))


class KombuTransport(Transport):
    """Publishes to and consumes from the fanout exchange and the rooms'
    direct exchange (see the module doc).

    :param url: kombu URL; a ``kombu+`` prefix is removed.
    :param queue_name: this node's queue (unique per node).
    :param connection_options: keyword arguments of ``kombu.Connection``
        (``connect_timeout`` defaults to 2 s).
    :param exchange_options: keyword arguments of ``kombu.Exchange``.
    :param queue_options: keyword arguments of ``kombu.Queue``.
    :param producer_options: keyword arguments of ``Producer.publish``.
    """

    name = "kombu"
    routes = True

    def __init__(self, url: str, channel: str, queue_name: str, *,
                 connection_options: dict[str, Any] | None = None,
                 exchange_options: dict[str, Any] | None = None,
                 queue_options: dict[str, Any] | None = None,
                 producer_options: dict[str, Any] | None = None) -> None:
        if kombu is None:  # pragma: no cover
            raise BusConfigurationError(
                "The kombu package is needed for this bus URL: pip install kombu")
        self.url = url[len("kombu+"):] if url.startswith("kombu+") else url
        self.channel = channel
        self.queue_name = queue_name
        self.connection_options = dict(connection_options or {})
        self.connection_options.setdefault("connect_timeout", 2)
        self.exchange_options = exchange_options or {}
        self.queue_options = queue_options or {}
        self.producer_options = producer_options or {}
        self._pub_conn: Any = None
        self._producer: Any = None
        self._rooms: Any = None

    def _connection(self) -> Any:
        return kombu.Connection(self.url, **self.connection_options)

    def _exchange(self) -> Any:
        options = {"type": "fanout", "durable": False, "auto_delete": False}
        options.update(self.exchange_options)
        return kombu.Exchange(self.channel, **options)

    def _rooms_exchange(self) -> Any:
        options: dict[str, Any] = {"durable": False, "auto_delete": False}
        options.update(self.exchange_options)
        options["type"] = "direct"
        return kombu.Exchange(f"{self.channel}.rooms", **options)

    def connect(self) -> None:
        self.close()
        conn = self._connection()
        conn.ensure_connection(max_retries=1)
        self._pub_conn = conn
        self._producer = kombu.Producer(conn.channel(), exchange=self._exchange(),
                                        auto_declare=True)
        self._rooms = self._rooms_exchange()
        self._rooms(self._producer.channel).declare()

    def send(self, payloads: list[bytes]) -> None:
        for result in self.send_each(payloads, [False] * len(payloads)):
            if isinstance(result, Exception):
                raise result

    def send_each(self, payloads: list[bytes], logged: list[bool],
                  channels: list[str | None] | None = None) -> list[str | None | Exception]:
        """Publish one by one (kombu has no pipeline), each on its channel
        (the fanout exchange, or the rooms' exchange with the channel as
        routing key), tracking how far it got: when a publish fails after
        some went out, those are reported sent (never sent again) and the
        failed one and the rest refused, retried with their seals (the
        failed one may have reached the broker: receivers then drop the
        second copy as a replay). A failure on the first raises, like any
        outage. Nothing is logged: kombu keeps no recovery stream."""
        if self._producer is None:
            self.connect()
        results: list[str | None | Exception] = []
        routes = channels if channels is not None else [None] * len(payloads)
        try:
            for payload, channel in zip(payloads, routes, strict=True):
                if channel is None:
                    self._producer.publish(
                        payload, content_type="application/json",
                        content_encoding="utf-8", retry=False,
                        **self.producer_options)
                else:
                    self._producer.publish(
                        payload, exchange=self._rooms, routing_key=channel,
                        content_type="application/json", content_encoding="utf-8",
                        retry=False, **self.producer_options)
                results.append(None)
        except Exception as exc:
            self.close()
            if not results:
                raise
            results.extend([exc] * (len(payloads) - len(results)))
        return results

    def close(self) -> None:
        conn, self._pub_conn, self._producer = self._pub_conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # already broken: nothing to release
                pass

    def listen(self, subscription: Subscription) -> Iterator[bytes]:
        backoff = Backoff(cap=subscription.max_backoff)
        inbox: collections.deque[bytes] = collections.deque()

        def on_message(message: Any) -> None:
            # on_message= makes kombu skip decoding entirely: we take the raw
            # body bytes, whatever content type the publisher claimed
            inbox.append(message.body)

        while not subscription.closed:
            conn = None
            pending: _PendingBindings | None = None
            try:
                conn = self._connection()
                conn.ensure_connection(max_retries=1)
                options = {"durable": False, "auto_delete": True,
                           "exclusive": True,
                           "queue_arguments": {"x-expires": 300_000}}
                options.update(self.queue_options)
                queue = kombu.Queue(self.queue_name, self._exchange(), **options)
                channel = conn.channel()
                with kombu.Consumer(channel, queues=[queue],
                                    on_message=on_message, no_ack=True):
                    bound = queue(channel)
                    pending = self._start_binding(bound)
                    subscription.up()
                    backoff.reset()
                    while not subscription.closed:
                        if pending is not None and pending.changes:
                            self._bind(bound, pending)
                        try:
                            conn.drain_events(timeout=BIND_EVERY if pending else 1.0)
                        except TimeoutError:
                            if subscription.deaf():
                                raise ConnectionError(
                                    "subscribed but not even our own "
                                    "heartbeats arrive") from None
                        while inbox:
                            yield inbox.popleft()
            except Exception as exc:  # any failure: resubscribe with backoff
                if not subscription.retry_after(exc, backoff):
                    break
            finally:
                inbox.clear()
                if self.follower is not None and pending is not None:
                    self.follower.detach(pending)
                if conn is not None:
                    try:
                        conn.release()
                    except Exception:  # broken connection: nothing to close
                        pass

    # -- room bindings ------------------------------------------------------------
    def _start_binding(self, bound: Any) -> _PendingBindings | None:
        """Bind everything followed so far; from now on the follower's
        changes queue up for the listener (None: the node follows nothing)."""
        follower = self.follower
        if follower is None:
            return None
        pending = _PendingBindings()
        followed = follower.followed()
        follower.attach(pending, followed)  # follows made from now on are queued
        pending.subscribe(*followed)
        self._rooms_exchange()(bound.channel).declare()
        self._bind(bound, pending)
        return pending

    def _bind(self, bound: Any, pending: _PendingBindings) -> None:
        """Apply the queued changes in order, then report the bindings."""
        exchange = self._rooms_exchange()
        while pending.changes:
            follow, channels = pending.changes.popleft()
            for channel in channels:
                if follow:
                    bound.bind_to(exchange=exchange, routing_key=channel)
                    if self.follower is not None:
                        self.follower.confirmed(channel)
                else:
                    bound.unbind_from(exchange=exchange, routing_key=channel)
                    if self.follower is not None:
                        self.follower.unsubscribed(channel)

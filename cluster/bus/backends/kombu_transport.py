"""The kombu transport of the bus (RabbitMQ and other kombu brokers).

A fanout exchange named after the channel, one exclusive auto-deleting queue
per node. Unlike python-socketio's KombuManager, bodies are published
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


class KombuTransport(Transport):
    """Publishes to and consumes from one fanout exchange.

    :param url: kombu URL; a ``kombu+`` prefix is removed.
    :param queue_name: this node's queue (unique per node).
    :param connection_options: keyword arguments of ``kombu.Connection``
        (``connect_timeout`` defaults to 2 s).
    :param exchange_options: keyword arguments of ``kombu.Exchange``.
    :param queue_options: keyword arguments of ``kombu.Queue``.
    :param producer_options: keyword arguments of ``Producer.publish``.
    """

    name = "kombu"

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

    def _connection(self) -> Any:
        return kombu.Connection(self.url, **self.connection_options)

    def _exchange(self) -> Any:
        options = {"type": "fanout", "durable": False, "auto_delete": False}
        options.update(self.exchange_options)
        return kombu.Exchange(self.channel, **options)

    def connect(self) -> None:
        self.close()
        conn = self._connection()
        conn.ensure_connection(max_retries=1)
        self._pub_conn = conn
        self._producer = kombu.Producer(conn.channel(), exchange=self._exchange(),
                                        auto_declare=True)

    def send(self, payloads: list[bytes]) -> None:
        for result in self.send_each(payloads, [False] * len(payloads)):
            if isinstance(result, Exception):
                raise result

    def send_each(self, payloads: list[bytes], logged: list[bool],
                  channels: list[str | None] | None = None) -> list[str | None | Exception]:
        """Publish one by one (kombu has no pipeline), on the one fanout
        exchange (kombu does not route by room yet), tracking how far it
        got: when a publish fails after some went out, those are reported
        sent (never sent again) and the failed one and the rest refused,
        retried with their seals (the failed one may have reached the
        broker: receivers then drop the second copy as a replay). A failure
        on the first raises, like any outage. Nothing is logged: kombu keeps
        no recovery stream."""
        if self._producer is None:
            self.connect()
        results: list[str | None | Exception] = []
        try:
            for payload in payloads:
                self._producer.publish(
                    payload, content_type="application/json",
                    content_encoding="utf-8", retry=False,
                    **self.producer_options)
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
            try:
                conn = self._connection()
                conn.ensure_connection(max_retries=1)
                options = {"durable": False, "auto_delete": True,
                           "exclusive": True,
                           "queue_arguments": {"x-expires": 300_000}}
                options.update(self.queue_options)
                queue = kombu.Queue(self.queue_name, self._exchange(), **options)
                with kombu.Consumer(conn.channel(), queues=[queue],
                                    on_message=on_message, no_ack=True):
                    subscription.up()
                    backoff.reset()
                    while not subscription.closed:
                        try:
                            conn.drain_events(timeout=1.0)
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
                if conn is not None:
                    try:
                        conn.release()
                    except Exception:  # broken connection: nothing to close
                        pass

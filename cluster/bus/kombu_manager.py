"""kombu backend of the cluster bus (RabbitMQ and other kombu transports).

A fanout exchange named after the channel, one exclusive auto-deleting queue
per node. Unlike python-socketio's KombuManager, bodies are published
pre-serialized as ``application/json`` and read back as raw bytes that go
through :class:`~.codec.Codec`: kombu's deserializers (pickle among them)
never run on what comes off the broker.
"""
from __future__ import annotations

import collections
from typing import Any
from collections.abc import Iterator

from cluster.bus.errors import BusConfigurationError
from cluster.bus.manager import ClusterManager, split_settings
from cluster.bus.runtime import Backoff

try:
    import kombu
except ImportError:  # pragma: no cover
    kombu = None  # type: ignore[assignment]


class KombuManager(ClusterManager):
    """Cluster bus over a kombu broker.

    :param url: kombu URL (``amqp://guest:guest@localhost:5672//``); a
                ``kombu+`` prefix forces kombu for schemes that would
                otherwise pick another backend (``kombu+redis://``).
    :param connection_options: keyword arguments of ``kombu.Connection``,
                               except the bus limits (``buffer_size``,
                               ``buffer_bytes``, ``max_message_bytes``),
                               which stay with the manager.
    :param exchange_options: keyword arguments of ``kombu.Exchange``.
    :param queue_options: keyword arguments of ``kombu.Queue``.
    :param producer_options: keyword arguments of ``Producer.publish``.

    Other keyword arguments: see :class:`~.manager.ClusterManager`.
    """

    name = "kombu"

    def __init__(self, url: str = "amqp://guest:guest@localhost:5672//",
                 channel: str = "flask-socketio", write_only: bool = False,
                 logger: Any = None, json: Any = None,
                 connection_options: dict[str, Any] | None = None,
                 exchange_options: dict[str, Any] | None = None,
                 queue_options: dict[str, Any] | None = None,
                 producer_options: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        if kombu is None:  # pragma: no cover
            raise BusConfigurationError(
                "The kombu package is needed for this bus URL: "
                "pip install kombu")
        connection_options = dict(connection_options or {})
        kwargs = split_settings(connection_options, kwargs)
        super().__init__(channel=channel, write_only=write_only,
                         logger=logger, json=json, **kwargs)
        if self.recovery_window:
            raise BusConfigurationError(
                "Connection state recovery needs a Redis bus (it keeps recent emits in a "
                "Redis Stream); use a redis:// message queue or turn recovery off.")
        self.url = url[len("kombu+"):] if url.startswith("kombu+") else url
        self.connection_options = connection_options
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

    def _connect_publisher(self) -> None:
        self._close_transport()
        conn = self._connection()
        conn.ensure_connection(max_retries=1)
        self._pub_conn = conn
        self._producer = kombu.Producer(conn.channel(), exchange=self._exchange(),
                                        auto_declare=True)

    def _send_batch(self, payloads: list[bytes]) -> None:
        if self._producer is None:
            self._connect_publisher()
        try:
            for payload in payloads:
                self._producer.publish(
                    payload, content_type="application/json",
                    content_encoding="utf-8", retry=False,
                    **self.producer_options)
        except Exception:
            self._close_transport()
            raise

    def _close_transport(self) -> None:
        conn, self._pub_conn, self._producer = self._pub_conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # already broken: nothing to release
                pass

    def _listen(self) -> Iterator[bytes]:
        backoff = Backoff(cap=self.max_backoff)
        inbox: collections.deque[bytes] = collections.deque()

        def on_message(message: Any) -> None:
            # on_message= makes kombu skip decoding entirely: we take the raw
            # body bytes, whatever content type the publisher claimed
            inbox.append(message.body)

        while not self._closed:
            conn = None
            try:
                conn = self._connection()
                conn.ensure_connection(max_retries=1)
                options = {"durable": False, "auto_delete": True,
                           "exclusive": True,
                           "queue_arguments": {"x-expires": 300_000}}
                options.update(self.queue_options)
                queue = kombu.Queue(f"{self.channel}.{self.host_id}",
                                    self._exchange(), **options)
                with kombu.Consumer(conn.channel(), queues=[queue],
                                    on_message=on_message, no_ack=True):
                    self._on_subscribed()
                    backoff.reset()
                    while not self._closed:
                        try:
                            conn.drain_events(timeout=1.0)
                        except TimeoutError:
                            if self._listener_is_deaf():
                                raise ConnectionError(
                                    "subscribed but not even our own "
                                    "heartbeats arrive") from None
                        while inbox:
                            yield inbox.popleft()
            except Exception as exc:  # any failure: resubscribe with backoff
                if self._closed:
                    break
                self._on_unsubscribed(exc)
                self._runtime.sleep(backoff.next())
            finally:
                inbox.clear()
                if conn is not None:
                    try:
                        conn.release()
                    except Exception:  # broken connection: nothing to close
                        pass

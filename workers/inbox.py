"""The reply channel of one process: where the nodes' answers reach a worker.

A write-only emitter publishes and never listens, which is why a worker
could not hear back. Asking (:mod:`workers.calls`) needs one subscription,
and only one: to this process's own node channel,
``<channel>:node:<the emitter's bus id>``
(:func:`cluster.bus.channels.node_channel`), where the nodes send answers
meant for it and nothing else. A worker pays for its own answers only,
never for the cluster's broadcasts.

- Redis (single, TLS, unix socket, Sentinel): ``SUBSCRIBE`` to that
  channel, on a connection of its own.
- kombu (RabbitMQ...): an exclusive, auto-deleted queue bound to the
  ``<channel>.rooms`` direct exchange with that channel as routing key,
  exactly as a node binds the channels it follows
  (:mod:`cluster.bus.backends.kombu_transport`).
- A bus that does not route (Redis Cluster's sharded pub/sub, or
  ``route_by_room=False``): the nodes answer on the common channel, so the
  inbox reads that one and keeps what is addressed here. It works, at the
  cost of reading every broadcast while the inbox is open.

A daemon thread reads it (a green thread in a monkey-patched process),
opens each message with the emitter's codec (signature, age, replay,
fields; nothing is unpickled) and hands on the ``answer`` messages. A lost
subscription is retried with capped backoff; what was answered meanwhile is
lost, and the calls waiting for it end at their deadline.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from cluster.bus import ClusterManager
from cluster.bus.backends.kombu_transport import KombuTransport
from cluster.bus.backends.redis_transport import RedisTransport
from cluster.bus.channels import node_channel
from cluster.bus.errors import Dropped
from cluster.bus.runtime import Backoff

from .exceptions import ConfigurationError, PublishError

#: seconds between two looks at the deadlines of pending asks
TICK = 0.25


class ReplyInbox:
    """Reads this process's replies in a daemon thread.

    :param manager: the emitter's write-only bus manager: its transport says
        where the broker is, its codec checks what arrives, its ``host_id``
        names the reply channel.
    :param handle: called with each ``answer`` message (in the thread).
    :param tick: called at least every :data:`TICK` seconds (expiry).
    """

    def __init__(self, manager: ClusterManager, handle: Callable[[dict[str, Any]], None],
                 tick: Callable[[], None], logger: logging.Logger) -> None:
        if not isinstance(manager.transport, (RedisTransport, KombuTransport)):
            raise ConfigurationError(
                f"Answers from clients need a Redis or kombu bus; this emitter's is "
                f"{manager.transport.name!r}.")
        self.manager = manager
        self.handle = handle
        self.tick = tick
        self.logger = logger
        #: the one channel read: this process's own, or the common one on a
        #: bus that does not route
        self.channel = (node_channel(manager.route_base, manager.host_id) if manager.routes
                        else manager.channel)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_tick = 0.0
        #: raw messages read from the channel (all of them answers to this
        #: process on a bus that routes)
        self.received = 0

    @property
    def ready(self) -> bool:
        """Whether the reply channel is subscribed now."""
        return self._ready.is_set()

    def start(self, timeout: float) -> None:
        """Subscribe (once; later calls return at once while subscribed),
        waiting up to ``timeout`` s: an ask is published only once its
        answers have somewhere to arrive."""
        with self._lock:
            if self._stop.is_set():
                raise PublishError("This emitter was closed: make a new one to ask again.")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="emitter-replies")
                self._thread.start()
        if not self._ready.wait(timeout):
            raise PublishError(
                f"Could not subscribe to this process's reply channel within {timeout} s. "
                f"Check that the message queue is running and reachable from this process.")

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2 * TICK + 1)

    # -- the thread -----------------------------------------------------------------
    def _run(self) -> None:
        backoff = Backoff(cap=self.manager.settings.max_backoff)
        listen = (self._listen_redis if isinstance(self.manager.transport, RedisTransport)
                  else self._listen_kombu)
        while not self._stop.is_set():
            try:
                for raw in listen():
                    if raw is not None:
                        backoff.reset()
                        self._dispatch(raw)
                    self._maybe_tick()
                    if self._stop.is_set():
                        return
            except Exception as exc:  # any failure: subscribe again, backed off
                if self._ready.is_set():
                    self.logger.warning("Lost the reply channel %s (%s: %s); answers sent "
                                        "until it is back are lost", self.channel,
                                        type(exc).__name__, exc)
                self._ready.clear()
                self._maybe_tick()
                time.sleep(backoff.next())
        self._ready.clear()

    def _maybe_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick >= TICK:
            self._last_tick = now
            try:
                self.tick()
            except Exception:  # the reader must outlive a failing hook
                self.logger.exception("Error expiring pending asks")

    def _dispatch(self, raw: Any) -> None:
        self.received += 1
        try:
            message, _ = self.manager.codec.open(raw)
        except Dropped as drop:
            # on a routed bus only nodes write here: say why, quietly
            self.logger.debug("Dropped a message on the reply channel (%s: %s)",
                              drop.reason, drop)
            return
        if message.get("method") == "answer":
            try:
                self.handle(message)
            except Exception:
                self.logger.exception("Error handling an answer")

    def _listen_redis(self) -> Iterator[Any]:
        """Payloads of the reply channel (``None`` when idle for a tick)."""
        transport = self.manager.transport
        assert isinstance(transport, RedisTransport)
        connector = transport.connector
        client = connector.client()
        pubsub = client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis-py 8
        try:
            if connector.sharded:
                pubsub.ssubscribe(self.channel)
            else:
                pubsub.subscribe(self.channel)
            confirmed = False
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=TICK)
                if connector.stale(client):
                    raise ConnectionError("the Redis master changed")
                if message is None:
                    yield None
                    continue
                kind = message["type"]
                if kind in ("message", "smessage"):
                    yield message["data"]
                elif kind in ("subscribe", "ssubscribe"):
                    if confirmed:  # redis-py reconnected and subscribed again by itself
                        self.logger.warning("The reply channel %s was subscribed again; "
                                            "answers sent meanwhile are lost", self.channel)
                    confirmed = True
                    self._ready.set()
                elif kind in ("unsubscribe", "sunsubscribe"):
                    raise ConnectionError("unsubscribed by the server")
        finally:
            for closing in (pubsub, client):
                try:
                    closing.close()
                except Exception:  # a broken connection: nothing to close
                    pass

    def _listen_kombu(self) -> Iterator[Any]:
        """The same over kombu: a queue of this process's own."""
        transport = self.manager.transport
        assert isinstance(transport, KombuTransport)
        import kombu as kombu_module
        kombu: Any = kombu_module  # kombu's annotations are partial: used untyped

        base = self.manager.channel
        # declared as the nodes declare them (KombuTransport): a broker
        # refuses a second declaration of a name with other arguments
        exchange_options: dict[str, Any] = {"durable": False, "auto_delete": False}
        exchange_options.update(transport.exchange_options)
        if self.manager.routes:
            exchange = kombu.Exchange(f"{base}.rooms", **dict(exchange_options, type="direct"))
            routing_key = self.channel
        else:
            exchange = kombu.Exchange(base, **{"type": "fanout", **exchange_options})
            routing_key = ""
        queue_options: dict[str, Any] = {"durable": False, "auto_delete": True,
                                         "exclusive": True,
                                         "queue_arguments": {"x-expires": 300_000}}
        queue_options.update(transport.queue_options)
        queue = kombu.Queue(f"{base}.{self.manager.host_id}.replies", exchange,
                            routing_key=routing_key, **queue_options)
        inbox: collections.deque[bytes] = collections.deque()
        conn = kombu.Connection(transport.url, **transport.connection_options)
        try:
            conn.ensure_connection(max_retries=1)
            with kombu.Consumer(conn.channel(), queues=[queue], no_ack=True,
                                on_message=lambda message: inbox.append(message.body)):
                self._ready.set()  # declared and bound: replies have a queue
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=TICK)
                    except TimeoutError:
                        pass
                    while inbox:
                        yield inbox.popleft()
                    yield None
        finally:
            try:
                conn.release()
            except Exception:  # a broken connection: nothing to release
                pass

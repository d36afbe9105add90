"""ClusterManager: python-socketio's PubSubManager made safe and observable.

The backend subclasses (:mod:`.redis_manager`, :mod:`.kombu_manager`) only
move bytes: ``_connect_publisher``, ``_send_batch``, ``_listen`` and
``_subscriber_count``. Everything else lives here: JSON-only (optionally
signed) messages, local delivery plus exactly one publish per emit, one
queued publisher, ack deadlines, heartbeats, and the cluster-wide queries of
:class:`~.view.ClusterView`.
"""
from __future__ import annotations

import base64
import itertools
import logging
import os
import socket
import threading
import time
from typing import Any
from collections.abc import Iterator

from socketio import PubSubManager
from socketio.packet import Packet

from cluster.bus.acks import AckDeadlines
from cluster.bus.codec import DEFAULT_MAX_MESSAGE_BYTES, Codec
from cluster.bus.errors import BusConfigurationError, BusPublishError
from cluster.bus.membership import MembershipEvents
from cluster.bus.nodes import NodeRegistry
from cluster.bus.ordered_delivery import OrderedDelivery
from cluster.bus.outbox import DEFAULT_MAX_BYTES as DEFAULT_BUFFER_BYTES, Outbox
from cluster.bus.presence import Presence
from cluster.bus.receiving import ReceivingMixin
from cluster.bus.runtime import Runtime
from cluster.bus.stats import BusStats
from cluster.bus.view import ClusterView

log = logging.getLogger("cluster.bus")

#: manager settings a user may put among the driver options: the
#: extension passes ``message_queue_options`` on as driver options only,
#: and these are the limits a deployment tunes there
DRIVER_OPTION_SETTINGS = frozenset({"buffer_size", "buffer_bytes", "max_message_bytes",
                                    "max_clock_skew"})


def split_settings(driver_options: dict[str, Any] | None,
                   settings: dict[str, Any]) -> dict[str, Any]:
    """Move :data:`DRIVER_OPTION_SETTINGS` out of ``driver_options`` (in
    place) into a copy of ``settings``; an explicit keyword wins."""
    merged = dict(settings)
    for key in DRIVER_OPTION_SETTINGS:
        if driver_options and key in driver_options:
            value = driver_options.pop(key)
            merged.setdefault(key, value)
    return merged


def driver_only(options: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``options`` without the bus settings, for other clients
    built from the same ``message_queue_options`` (the session store's)."""
    return {k: v for k, v in (options or {}).items() if k not in DRIVER_OPTION_SETTINGS}


class ClusterManager(ReceivingMixin, MembershipEvents, PubSubManager):
    """Base class of the cluster bus managers (do not use directly).

    :param channel: bus channel shared by all nodes and emitters.
    :param write_only: emit-only mode for processes without a server
                       (Celery workers): no listener, no heartbeat, and each
                       publish is synchronous, raising
                       :class:`~.errors.BusPublishError` after
                       ``publish_timeout`` seconds without the bus.
    :param signing_secret: shared HMAC secret. ``None`` (default) accepts
                           unsigned messages, including those of stock
                           python-socketio emitters.
    :param node_name: label shown in cluster queries; default
                      ``"<hostname>:<pid>"``.
    :param buffer_size: messages held while the bus is down (10,000).
    :param buffer_bytes: bytes of serialized messages held while the bus is
                         down (64 MiB); whichever of ``buffer_size`` and
                         ``buffer_bytes`` is reached first refuses further
                         emits, counted in ``dropped_buffer_full``. At least
                         ``max_message_bytes``.
    :param max_message_bytes: largest serialized bus message (8 MiB). A
                              bigger emit raises
                              :class:`~.errors.BusMessageTooLarge` at the
                              caller before anything is delivered or sent:
                              Redis disconnects every subscriber that falls
                              32 MB behind (``client-output-buffer-limit
                              pubsub``), so one huge message would cut all
                              nodes off the bus.
    :param max_batch: messages written per round trip (500).
    :param max_backoff: retry delay cap in seconds (1.0); the node is back
                        within about this long after the bus returns.
    :param ack_timeout: seconds before an unanswered ack callback is dropped
                        (60); ``None`` keeps them forever as python-socketio
                        does. Per call: :func:`~.acks.with_timeout`.
    :param request_timeout: default timeout of cluster queries (5.0).
    :param heartbeat_interval: seconds between heartbeats (1.0).
    :param node_timeout: silence after which a node counts as gone
                         (default ``3 * heartbeat_interval + 0.5``).
    :param max_message_age: signed messages older than this many seconds
                            are rejected as replays (60).
    :param max_clock_skew: seconds host clocks may differ (2.0): a node
                           drops signed messages sealed more than this
                           before it started (replays of what it cannot
                           remember), and offsets stamped more than this
                           before their message was sealed. May be given in
                           ``message_queue_options``.
    :param publish_timeout: write-only publish deadline in seconds (5.0).
    :param resume_wait: after an outage, wait up to this many seconds for
                        the other nodes to resubscribe before flushing the
                        outage buffer (3.0).

    Where the bus is built from a URL (``create_manager``, the extension's
    ``message_queue_options``, the worker emitter's ``options``), the
    settings in :data:`DRIVER_OPTION_SETTINGS` may also be given among the
    driver options: the backends take them out before the rest goes to
    redis-py or kombu.
    """

    name = "cluster"

    def __init__(self, channel: str = "flask-socketio", write_only: bool = False,
                 logger: Any = None, json: Any = None, *,
                 signing_secret: str | bytes | None = None,
                 node_name: str | None = None, buffer_size: int = 10_000,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_batch: int = 500, max_backoff: float = 1.0,
                 ack_timeout: float | None = 60.0, request_timeout: float = 5.0,
                 heartbeat_interval: float = 1.0,
                 node_timeout: float | None = None,
                 max_message_age: float = 60.0, max_clock_skew: float = 2.0,
                 publish_timeout: float = 5.0,
                 resume_wait: float = 3.0, recovery_window: float | None = None,
                 recovery_max_entries: int = 100_000) -> None:
        super().__init__(channel=channel, write_only=write_only,
                         logger=logger, json=json)
        for key, value in (("buffer_size", buffer_size), ("buffer_bytes", buffer_bytes),
                           ("max_message_bytes", max_message_bytes),
                           ("max_batch", max_batch),
                           ("max_backoff", max_backoff),
                           ("request_timeout", request_timeout),
                           ("heartbeat_interval", heartbeat_interval),
                           ("max_message_age", max_message_age),
                           ("publish_timeout", publish_timeout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise BusConfigurationError(
                    f"Bus option {key}={value!r} must be a positive number.")
        if buffer_bytes < max_message_bytes:
            raise BusConfigurationError(
                f"Bus option buffer_bytes={buffer_bytes!r} is smaller than "
                f"max_message_bytes={max_message_bytes!r}: the largest message "
                f"could never be buffered. Raise buffer_bytes or lower "
                f"max_message_bytes.")
        self.node_name = node_name or f"{socket.gethostname()}:{os.getpid()}"
        self.buffer_size, self.max_batch = int(buffer_size), int(max_batch)
        self.buffer_bytes = int(buffer_bytes)
        self.max_message_bytes = int(max_message_bytes)
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout or 3 * heartbeat_interval + 0.5
        self.publish_timeout = publish_timeout
        self.resume_wait = resume_wait
        #: connection state recovery: seconds of emits kept in a stream
        self.recovery_window = recovery_window
        self.recovery_max_entries = recovery_max_entries
        self._codec = Codec(signing_secret, self.json, max_message_age,
                            max_message_bytes=self.max_message_bytes,
                            max_clock_skew=max_clock_skew)
        self._stats = BusStats()
        self._runtime = Runtime()
        self._acks = AckDeadlines(ack_timeout)
        self._ack_ids = itertools.count(1)
        self._nodes = NodeRegistry(self.host_id, self.node_name,
                                   self.node_timeout)
        self._outbox: Outbox | None = None
        self._initialized = False
        self._closed = False
        self._subscribed = False
        self._subscribed_at = 0.0
        self._first_subscribed_at = 0.0
        self._ever_subscribed = False
        self._last_received = time.monotonic()
        # reentrant: a write-only publish holds it across its retries (so
        # one thread's reconnect cannot cut another's send) and the send
        # itself takes it again
        self._pub_lock = threading.RLock()
        #: seconds a logged emit waits to come back through the channel
        #: (where the listener delivers it, offset and all, in stream order)
        #: before it is delivered locally without an offset (it is still
        #: logged later)
        self.offset_wait = min(2.0, publish_timeout)
        self._ordered = OrderedDelivery(self._runtime)
        self._last_drop_log = 0.0
        self._last_backend_check = 0.0
        #: cluster-wide queries and commands (see :class:`ClusterView`)
        self.cluster = ClusterView(self)
        #: first-join / last-leave room events (see :class:`Presence`)
        self.presence = Presence(self)

    # -- lifecycle ----------------------------------------------------------
    def set_server(self, server: Any) -> None:
        super().set_server(server)
        self._codec.json = self.json
        self._runtime = Runtime(server)
        self._ordered = OrderedDelivery(self._runtime)

    def initialize(self) -> None:
        """Start the publisher, listener and heartbeat tasks (idempotent).

        python-socketio calls this on the first client connection; a node
        should call it at start-up so ``ready`` turns true before that.
        """
        if self._initialized or self.write_only:
            return
        self._initialized = True
        if self.server is not None:
            self.server.manager_initialized = True
            self._check_monkey_patched()
        self._outbox = self._make_outbox()
        self._runtime.spawn(self._outbox.run)
        self.thread = self._runtime.spawn(self._thread)
        self._runtime.spawn(self._ticker)
        self._get_logger().info("%s bus initialized (node %s, channel %r)",
                                self.name, self.node_name, self.channel)

    def _make_outbox(self) -> Outbox:
        return Outbox(
            self._runtime, self._seal_and_send, self._stats,
            self._get_logger(), connect=self._connect_publisher,
            before_resume=self._wait_for_peers, max_size=self.buffer_size,
            max_bytes=self.buffer_bytes, max_batch=self.max_batch,
            max_backoff=self.max_backoff)

    def _check_monkey_patched(self) -> None:
        if self._runtime.async_mode == "eventlet":
            from eventlet.patcher import is_monkey_patched
            if not is_monkey_patched("socket"):
                raise RuntimeError(
                    "The cluster bus needs eventlet's monkey patching with "
                    "async_mode='eventlet': call eventlet.monkey_patch() "
                    "before importing anything else.")

    def close(self, timeout: float = 2.0) -> None:
        """Say goodbye, flush the publisher for up to ``timeout`` s, stop."""
        if self._closed:
            return
        if self._outbox is not None:
            self._publish({"method": "bye", "host_id": self.host_id},
                          volatile=True)
            self._outbox.close(timeout)
        self._closed = True
        self._subscribed = False
        try:
            self._close_transport()
        except Exception:  # closing a dead connection may fail; irrelevant
            pass

    @property
    def knows_peers(self) -> bool:
        """True once subscribed for longer than a heartbeat interval.

        Until then a fresh node has not heard the other nodes' heartbeats,
        so cluster-wide queries would ask nobody; a node reports ready only
        after this.
        """
        return bool(self._ever_subscribed and time.monotonic() - self._first_subscribed_at
                    > self.heartbeat_interval * 1.5)

    @property
    def ready(self) -> bool:
        """True when connected and subscribed (write-only: last publish ok)."""
        if self._closed:
            return False
        if self.write_only:
            return bool(self._outbox is not None and self._outbox.healthy)
        return bool(self._subscribed and self._outbox is not None
                    and self._outbox.healthy)

    def stats(self) -> dict[str, int | float]:
        """Counters and gauges; names documented in :mod:`.stats`."""
        values = self._stats.snapshot()
        values["buffered"] = len(self._outbox) if self._outbox else 0
        values["buffered_bytes"] = self._outbox.buffered_bytes if self._outbox else 0
        values["ready"] = int(self.ready)
        values["live_nodes"] = 0 if self.write_only else len(self._nodes)
        try:
            values["pending_acks"] = sum(
                len(c) - 1 for c in list(self.callbacks.values()))
        except RuntimeError:  # resized by another thread mid-copy
            values["pending_acks"] = -1
        return values

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was published."""
        deadline = time.monotonic() + timeout
        while self._outbox is not None and len(self._outbox):
            if time.monotonic() > deadline:
                return False
            self._runtime.sleep(0.01)
        return True

    # -- sending ------------------------------------------------------------
    def emit(self, event: str, data: Any, namespace: str | None = None,
             room: Any = None, skip_sid: Any = None, callback: Any = None,
             to: Any = None, **kwargs: Any) -> None:
        """Deliver locally, then publish exactly once to the other nodes.

        Same parameters as :meth:`socketio.Server.emit`. The payload is
        serialized first, so a value JSON cannot carry raises
        :class:`~.errors.BusSerializationError` here and nothing is sent.
        """
        room = to if to is not None else room
        if kwargs.get("ignore_queue"):
            if callback is None and self.logs_recovery:
                # never logged: it ends with the "no offset" marker (see _handle_emit)
                data = (*(data if isinstance(data, tuple) else (data,)), None)
            return super(PubSubManager, self).emit(
                event, data, namespace=namespace or "/", room=room,
                skip_sid=skip_sid, callback=callback)
        namespace = namespace or "/"
        if callback is not None:
            if self.server is None:
                raise RuntimeError("Callbacks can only be issued from the "
                                   "context of a server.")
            if room is None:
                raise ValueError("Cannot use callback without a room set.")
        args = list(data) if isinstance(data, tuple) else [data]
        binary = Packet.data_is_binary(args)
        if binary:
            args, attachments = Packet.deconstruct_binary(args)
            args = [args, *(base64.b64encode(a).decode() for a in attachments)]
        message = {"method": "emit", "event": event, "data": args,
                   "binary": binary, "namespace": namespace, "room": room,
                   "skip_sid": skip_sid, "callback": None,
                   "host_id": self.host_id}
        ack_id = None
        if callback is not None:
            ack_id = self._generate_ack_id(room, callback)
            message["callback"] = [room, namespace, ack_id]
        logged = ack_id is None and self.logs_recovery
        pending = None
        if logged and not self.write_only:
            pending = self._ordered.expect()
            message["lid"] = pending.lid
        try:
            body = self._codec.dumps(message)
        except Exception:
            if ack_id is not None:
                self.callbacks.get(room, {}).pop(ack_id, None)
            if pending is not None:
                self._ordered.abandon(pending)
            raise
        if self.write_only:
            self._publish(message, body=body, logged=logged)
        elif pending is not None:
            self._deliver_logged(message, body, pending)
        else:
            self._handle_emit(message)  # this node's clients: no round trip
            self._publish(message, body=body)

    @property
    def features(self) -> Any:
        """What the node asks of its manager (see :mod:`.features`)."""
        return self

    @property
    def recovery(self) -> Any:
        """Reads of the recovery stream, or None when emits are not logged."""
        return None

    def new_redis_client(self) -> Any:
        """A new client of the bus's Redis (None for other backends)."""
        return None

    @property
    def signed(self) -> bool:
        """Whether messages are signed (and unsigned ones dropped)."""
        return self._codec.signed

    @property
    def logs_recovery(self) -> bool:
        """Whether emits are logged for connection state recovery."""
        return bool(self.recovery_window) and self._supports_recovery_log()

    def _deliver_logged(self, message: dict[str, Any], body: str,
                        pending: Any) -> None:
        """Publish a logged emit and wait until the listener delivered it to
        this node's clients, in stream order (see :mod:`.ordered_delivery`);
        without the bus it is delivered here at once, without an offset, and
        logged when the bus returns."""
        outbox = self._outbox
        if outbox is None:
            self.initialize()
            outbox = self._outbox
        assert outbox is not None
        coming_back = outbox.healthy and self._subscribed
        in_listener = self._in_listener()
        if in_listener and coming_back:
            pending.message = message  # delivered when it comes back
        queued = self._publish(message, body=body, logged=True, waiter=pending)
        if queued and coming_back:
            if in_listener:
                return  # the listener cannot wait for itself
            pending.wait(self.offset_wait)
        if self._ordered.settle(pending):
            if queued:
                self._stats.incr("delivered_unlogged")
            self._handle_emit(message)

    def _emitters_stop_waiting(self) -> None:
        """The subscription is gone: no logged emit comes back for now."""
        for message in self._ordered.wake_all():
            self._stats.incr("delivered_unlogged")
            self._handle_emit(message)

    def _deliver_own_logged(self, message: dict[str, Any]) -> None:
        """The listener's part: this node's logged emit came back."""
        lid = message.get("lid")
        if self._ordered.arrived(lid):
            try:
                self._handle_emit(message)
            finally:
                self._ordered.done(lid)

    def _seal_and_send(self, bodies: list[str], logged: list[bool]) -> list[str | None]:
        # sealing (which numbers signed messages) and sending happen under
        # one lock, so messages leave in the order of their sequence numbers
        # whichever thread sends them (write-only emitters may be threaded)
        with self._pub_lock:
            payloads = [self._codec.seal(body, self.host_id, logged=log)
                        for body, log in zip(bodies, logged)]
            if any(logged):
                return self._send_logged_batch(payloads, logged)
            self._send_batch(payloads)
            return [None] * len(payloads)

    def _handle_emit(self, message: dict[str, Any]) -> None:
        if self.logs_recovery and message.get("callback") is None:
            # with recovery every event that asks for no ack ends with its
            # offset, where socket.io's client reads it, or with None when
            # it has none (delivered during an outage, or published by an
            # emitter that does not log): cluster.Client then strips that
            # last argument always, never guessing, and the official client
            # ignores a trailing non-string
            offset = message.get("offset")
            marker = offset if isinstance(offset, str) else None
            data = list(message["data"])
            if message.get("binary"):
                data[0] = [*data[0], marker]
            else:
                data.append(marker)
            message = dict(message, data=data)
        super()._handle_emit(message)

    def disconnect(self, sid: Any, namespace: str | None = None, **kwargs: Any) -> Any:
        """Disconnect ``sid`` wherever it lives; a write-only emitter (no
        server of its own) only publishes the request."""
        if self.server is None and not kwargs.get("ignore_queue"):
            self._publish({"method": "disconnect", "sid": sid,
                           "namespace": namespace or "/", "host_id": self.host_id})
            return None
        return super().disconnect(sid, namespace=namespace, **kwargs)

    def can_disconnect(self, sid: Any, namespace: str) -> Any:
        if self.server is None:
            self._publish({"method": "disconnect", "sid": sid,
                           "namespace": namespace or "/", "host_id": self.host_id})
            return False
        return super().can_disconnect(sid, namespace)

    def _publish(self, data: dict[str, Any], volatile: bool = False,
                 body: str | None = None, *, logged: bool = False,
                 waiter: Any = None) -> bool:
        """Queue one bus message: the one way out (the seam unit tests mock).

        ``body`` is ``data`` already serialized by the caller; otherwise it
        is serialized here, raising at the caller if it cannot be.
        ``logged`` appends it to the recovery stream as it is published;
        ``waiter`` is woken if that fails. Write-only managers publish before
        returning.
        """
        if body is None:
            body = self._codec.dumps(data)
        if self.write_only:
            self._publish_now(body, logged)
            return True
        if self._outbox is None:
            self.initialize()
        assert self._outbox is not None
        return self._outbox.put(body, volatile, logged=logged, waiter=waiter)

    def _publish_now(self, body: str, logged: bool) -> None:
        """Write-only: publish before returning, through the same outbox."""
        if self._outbox is None:
            self._outbox = self._make_outbox()
        now = time.monotonic()
        if now - self._last_backend_check > self.heartbeat_interval:
            # no ticker in write-only mode: follow failovers from here
            self._last_backend_check = now
            self._check_backend_safely()
        try:
            with self._pub_lock:
                self._outbox.publish_now(body, logged=logged, timeout=self.publish_timeout,
                                         connect=self._connect_publisher)
        except BusConfigurationError:
            raise
        except Exception as exc:
            raise BusPublishError(
                f"Could not publish to the cluster bus within "
                f"{self.publish_timeout} s ({type(exc).__name__}: {exc}). "
                f"Check that the message queue is running and reachable "
                f"from this process.") from exc

    def _wait_for_peers(self) -> None:
        """Hold the outage buffer until the known nodes resubscribed.

        Pub/sub keeps nothing for absent subscribers: flushing the instant
        Redis is back would lose messages for nodes still reconnecting.
        """
        expected = len(self._nodes)
        deadline = time.monotonic() + self.resume_wait
        while True:
            count = self._subscriber_count()
            if count is None or count >= expected \
                    or time.monotonic() >= deadline:
                return
            self._runtime.sleep(0.05)

    # -- presence hooks: every room change of this node passes here --------
    def basic_enter_room(self, sid: Any, namespace: str, room: Any,
                         eio_sid: Any = None) -> None:
        track = self.presence.enabled and room is not None and room != sid
        new = track and room not in self.rooms.get(namespace, {})
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if new:
            self.presence._local_added(namespace, room)

    def basic_leave_room(self, sid: Any, namespace: str, room: Any) -> None:
        track = self.presence.enabled and room is not None and room != sid
        had = track and room in self.rooms.get(namespace, {})
        super().basic_leave_room(sid, namespace, room)
        if had and room not in self.rooms.get(namespace, {}):
            self.presence._local_removed(namespace, room)

    # -- acks -----------------------------------------------------------------
    def _generate_ack_id(self, sid: Any, callback: Any) -> int:
        # one process-wide counter: ids stay unique even after an expired
        # sid's table is removed, so a late ack cannot hit a newer callback
        table = self.callbacks.setdefault(sid, {0: self._ack_ids})
        ack_id = next(self._ack_ids)
        table[ack_id] = callback
        self._acks.track(sid, ack_id, callback)
        return ack_id

    def _expire_acks(self) -> None:
        for sid, ack_id in self._acks.due():
            table = self.callbacks.get(sid)
            if table is None:
                continue
            callback = table.pop(ack_id, None)
            if len(table) <= 1:
                self.callbacks.pop(sid, None)
            if callback is None:
                continue
            self._stats.incr("acks_expired")
            on_timeout = getattr(callback, "on_ack_timeout", None)
            if on_timeout is not None:
                self._runtime.spawn(self._safe_call, on_timeout)

    def _safe_call(self, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except Exception:
            self._get_logger().exception("Error in bus callback %r", func)

    def _ticker(self) -> None:
        next_beat = 0.0
        while not self._closed:
            try:
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.heartbeat_interval
                    self._check_backend_safely()
                    self._publish({"method": "heartbeat", "host_id": self.host_id,
                                   "name": self.node_name}, volatile=True)
                self._expire_acks()
                if self._subscribed:
                    for host_id in self._nodes.expire():
                        self._node_gone(host_id)
            except Exception:
                self._get_logger().exception("Cluster bus ticker error")
            self._runtime.sleep(min(0.25, self.heartbeat_interval))

    def _check_backend_safely(self) -> None:
        try:
            self._check_backend()
        except Exception as exc:  # e.g. Sentinel down: the listener notices
            self._get_logger().debug("bus backend check failed: %s", exc)

    # -- backend interface ----------------------------------------------------
    def _check_backend(self) -> None:
        """Called about once per heartbeat; backends detect topology
        changes here (a Sentinel failover)."""

    def _connect_publisher(self) -> None:
        raise NotImplementedError

    def _send_batch(self, payloads: list[bytes]) -> None:
        raise NotImplementedError

    def _supports_recovery_log(self) -> bool:
        """Backends with a recovery stream (Redis) say True."""
        return False

    def _send_logged_batch(self, payloads: list[bytes], logged: list[bool]) -> list[str | None]:
        """Publish ``payloads`` in one round trip, appending ``logged`` ones
        to the recovery stream; their offsets (None for the others)."""
        self._send_batch(payloads)
        return [None] * len(payloads)

    def _subscriber_count(self) -> int | None:
        return None

    def _listen(self) -> Iterator[Any]:
        raise NotImplementedError

    def _close_transport(self) -> None:
        pass

"""The write-only emitter: reach Socket.IO clients from any process.

A Celery task, a cron job, a plain script or another web application
publishes on the cluster bus exactly as a socket node does; every node then
delivers to its own clients. From a script::

    from workers import Emitter
    emitter = Emitter.from_env()            # MESSAGE_QUEUE_URL, channel, secret
    emitter.emit("news", {"title": "Hi"}, to="lobby")

Clients can answer, too: ``call`` returns one client's ack, ``gather``
collects a room's answers by a deadline, and ``emit(..., callback=f)``
calls ``f`` in this process for each answer (see :mod:`workers.calls`).
The answers come back on a reply channel of this process's own, so a
worker reads its answers and nothing else::

    if emitter.call("confirm", {"job": 42}, to=sid, timeout=30) == "yes":
        ...
    votes = emitter.gather("vote", "lunch?", to="team", timeout=10)
    votes.answers   # {sid: answer}; votes.missing: who did not answer in time

Cluster queries that need an answer from the nodes (``room_members``,
``rooms_of``, ``sockets``) are not offered: run those on a socket node
(``socketio.cluster``).
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

from cluster.bus import ClusterManager, RedisManager, check_signing, create_manager
from cluster.bus.backends.redis_access import CHECKED_SCHEMES, check_access, check_clock_of
from cluster.bus.backends.redis_transport import RedisTransport
from cluster.bus.services.asks import DEFAULT_MAX_PENDING, GatherResult

from .arguments import (
    bus_errors,
    check_required_rooms,
    check_rooms,
    check_sid,
    check_sids,
    is_room,
)
from .calls import WorkerCalls, check_timeout
from .exceptions import ConfigurationError, PayloadError
from .settings import DEFAULT_CHANNEL, WorkerSettings

__all__ = ["Emitter", "GatherResult"]

log = logging.getLogger("workers.emitter")


class Emitter:
    """Emit to Socket.IO clients of the cluster from outside any node.

    :param url: the message queue URL the nodes use (``redis://``,
                ``rediss://``, ``redis+sentinel://``, ``amqp://``...).
    :param channel: bus channel; ``"flask-socketio"`` like the nodes. Use
                    :meth:`from_env` to take it from the nodes' variables.
    :param signing_secret: the nodes' ``CLUSTER_SIGNING_SECRET``. Required
                           unless ``allow_unsigned``.
    :param allow_unsigned: publish unsigned messages on purpose (for nodes
                           run with ``--allow-unsigned-bus``); logged as a
                           warning. Default ``False``: without a secret the
                           emitter raises :class:`ConfigurationError`.
    :param namespace: default namespace of every call (``"/"``).
    :param publish_timeout: seconds one publish may keep retrying an
                            unreachable bus before :class:`PublishError`
                            (5.0). Every publish is synchronous: when a call
                            returns, the message is on the bus.
    :param options: driver options (redis-py or ``kombu.Connection``
                    keyword arguments), as for the nodes.
    :param recovery_window: the nodes' connection state recovery window in
                            seconds: emits are then logged in the recovery
                            stream like the nodes' own, so a client that was
                            away gets them replayed. ``None`` (default): off.
    :param max_pending_calls: calls, gathers and callback emits that may
                              wait for answers at once in this process
                              (1,000); past it they raise
                              :class:`TooManyCallsError`.
    :param ack_timeout: seconds an ``emit`` callback waits for answers
                        (60, the nodes' own default) unless wrapped with
                        ``cluster.bus.with_timeout(f, seconds)``.

    Construction tries one ``PING`` of a Redis bus: a refused password, ACL
    permission or TLS certificate raises :class:`ConfigurationError` with
    the fix (an unreachable Redis does not: publishing retries). The bus
    connection opens on the first call and is re-opened in a forked
    child (Celery's prefork pool forks after import), so one module-level
    emitter is safe everywhere. It is thread-safe. ``close()`` releases the
    connection; a later call opens a new one. The first ``call``,
    ``gather`` or callback emit opens the reply channel (one more
    connection, and a daemon thread that reads it).

    Payloads are JSON (plus ``bytes``, sent as binary attachments); anything
    else raises :class:`PayloadError` here and nothing is sent.
    """

    def __init__(self, url: str, *, channel: str = DEFAULT_CHANNEL,
                 signing_secret: str | bytes | None = None,
                 namespace: str = "/", publish_timeout: float = 5.0,
                 options: Mapping[str, Any] | None = None,
                 recovery_window: float | None = None,
                 allow_unsigned: bool = False,
                 max_pending_calls: int = DEFAULT_MAX_PENDING,
                 ack_timeout: float = 60.0) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ConfigurationError(
                "Emitter needs the message queue URL the socket nodes use, "
                "e.g. Emitter('redis://localhost:6379/0'), or "
                "Emitter.from_env() with MESSAGE_QUEUE_URL set.")
        if not isinstance(channel, str) or not channel:
            raise ConfigurationError(
                f"channel={channel!r}: use the nodes' channel name "
                f"(default {DEFAULT_CHANNEL!r}).")
        with bus_errors():
            check_signing(bool(signing_secret), allow_unsigned, "The emitter",
                          "pass Emitter(..., allow_unsigned=True) (or set "
                          "CLUSTER_ALLOW_UNSIGNED_BUS=1 for Emitter.from_env)", log)
        self.url = url
        self.channel = channel
        self.namespace = self._namespace(namespace)
        self.publish_timeout = publish_timeout
        self._secret = signing_secret
        self._options = dict(options or {})
        self.recovery_window = recovery_window
        if not isinstance(max_pending_calls, int) or isinstance(max_pending_calls, bool) \
                or max_pending_calls < 1:
            raise ConfigurationError(f"max_pending_calls={max_pending_calls!r}: a positive "
                                     f"whole number.")
        self.max_pending_calls = max_pending_calls
        self.ack_timeout = check_timeout(ack_timeout)
        self._lock = threading.Lock()
        self._manager: ClusterManager | None = None
        self._pid = 0
        self._calls: WorkerCalls | None = None
        self._calls_pid = 0
        self._get_manager()  # a bad URL, secret or option fails here, not later

    @classmethod
    def from_settings(cls, settings: WorkerSettings, **kwargs: Any) -> Emitter:
        """An emitter for ``settings`` (keyword arguments override)."""
        kwargs.setdefault("channel", settings.channel)
        kwargs.setdefault("signing_secret", settings.signing_secret)
        kwargs.setdefault("recovery_window", settings.recovery_window)
        kwargs.setdefault("allow_unsigned", settings.allow_unsigned_bus)
        if settings.redis_partitions is not None:
            kwargs["options"] = {"redis_partitions": settings.redis_partitions,
                                 **(kwargs.get("options") or {})}
        return cls(settings.require_message_queue(), **kwargs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **kwargs: Any) -> Emitter:
        """An emitter configured like the nodes, from ``MESSAGE_QUEUE_URL``
        (then ``REDIS_URL``), ``MESSAGE_QUEUE_CHANNEL``,
        ``CLUSTER_SIGNING_SECRET`` and ``CLUSTER_ALLOW_UNSIGNED_BUS``; see
        :mod:`workers.settings`."""
        return cls.from_settings(WorkerSettings.from_env(environ), **kwargs)

    # -- the bus manager -------------------------------------------------------
    def _get_manager(self) -> ClusterManager:
        pid = os.getpid()
        with self._lock:
            if self._manager is None or self._pid != pid:
                # a connection inherited through fork is shared with the
                # parent: never use it, open our own
                with bus_errors():
                    self._manager = create_manager(
                        self.url, channel=self.channel, write_only=True,
                        signing_secret=self._secret, options=dict(self._options),
                        logger=log, publish_timeout=self.publish_timeout,
                        recovery_window=self.recovery_window)
                if not self._pid:
                    # once per emitter: a refused password or an untrusted
                    # certificate fails here with the fix, not after retries
                    with bus_errors():
                        options = (self._manager.redis_options
                                   if isinstance(self._manager, RedisManager) else None)
                        skew = self._manager.settings.max_clock_skew
                        check_access(self.url, options, max_clock_skew=skew,
                                     who="This emitter")
                        if isinstance(self._manager, RedisManager) and \
                                urlparse(self.url).scheme not in CHECKED_SCHEMES:
                            # Sentinel, Redis Cluster: through the bus's connector
                            check_clock_of(self._manager.new_redis_client, skew,
                                           who="This emitter")
                        if isinstance(self._manager.transport, RedisTransport):
                            # a lane count other than the nodes' would name
                            # every room channel wrong
                            self._manager.transport.check_partitions()
                self._pid = pid
            return self._manager

    @property
    def manager(self) -> ClusterManager:
        """The write-only :mod:`cluster.bus` manager (for advanced uses)."""
        return self._get_manager()

    @property
    def ready(self) -> bool:
        """True when the last publish reached the bus."""
        return self._manager is not None and self._manager.ready

    def _get_calls(self) -> WorkerCalls:
        manager = self._get_manager()
        pid = os.getpid()
        with self._lock:
            if self._calls is None or self._calls_pid != pid:
                # a forked child asks with its own manager's id, on its own
                # reply channel (the parent's reader thread did not survive)
                self._calls = WorkerCalls(manager, max_pending=self.max_pending_calls,
                                          ack_timeout=self.ack_timeout, logger=log)
                self._calls_pid = pid
            return self._calls

    def close(self) -> None:
        """Release the bus connection and the reply channel (a later call
        reconnects); calls still waiting raise :class:`PublishError`."""
        with self._lock:
            manager, self._manager = self._manager, None
            calls, self._calls = self._calls, None
        if calls is not None and self._calls_pid == os.getpid():
            calls.close()
        if manager is not None and self._pid == os.getpid():
            manager.close()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Emitter channel={self.channel!r} "
                f"signed={self._secret is not None}>")

    @staticmethod
    def _namespace(namespace: Any) -> str:
        if not isinstance(namespace, str) or not namespace.startswith("/"):
            raise ConfigurationError(
                f"namespace={namespace!r}: namespaces start with '/', "
                f"e.g. '/' or '/chat'.")
        return namespace

    def _ns(self, namespace: str | None) -> str:
        return self.namespace if namespace is None else self._namespace(namespace)

    # -- emitting --------------------------------------------------------------
    def emit(self, event: str, *args: Any, to: Any = None, room: Any = None,
             namespace: str | None = None, skip_sid: Any = None,
             callback: Callable[..., Any] | None = None) -> None:
        """Send ``event`` with ``args`` to clients, like ``socketio.emit``.

        :param to: a sid, a room, or a list of them; ``None`` (and no
                   ``room``) means every client of the namespace.
        :param room: alias of ``to`` (Flask-SocketIO's older name).
        :param namespace: default: the emitter's (``"/"``).
        :param skip_sid: a sid or list of sids that must not receive it.
        :param callback: called *in this process* with each client's ack:
            ``callback(*args)`` when the answer comes from the client ``to``
            names (a sid, as in a handler), ``callback(sid, *args)`` from
            each client of a room (``to`` a room or a list), once per
            answering client. It runs in a thread of the emitter's, after
            ``emit`` returned (a Celery task may have ended by then). It
            waits ``ack_timeout`` seconds (60) for answers, or as long as
            ``cluster.bus.with_timeout(callback, seconds, on_timeout=hook)``
            says, whose ``hook()`` runs once if a client stayed silent or
            none was reached. Needs ``to``.
        """
        if not isinstance(event, str) or not event:
            raise PayloadError(f"event={event!r}: the event name must be a "
                               f"non-empty string.")
        target = check_rooms(to if to is not None else room, "to")
        skip = check_sids(skip_sid, "skip_sid")
        if callback is not None:
            if not callable(callback):
                raise PayloadError(f"callback={callback!r} is not callable.")
            if target is None or target == []:
                raise PayloadError("An emit with a callback needs to= (a sid or a room): "
                                   "acks are asked of clients, not of everyone.")
            calls = self._get_calls()
            with bus_errors():
                calls.emit_with_callback(event, args, to=target, namespace=self._ns(namespace),
                                         skip_sid=skip, callback=callback)
            return
        data = args[0] if len(args) == 1 else tuple(args)
        with bus_errors():
            self._get_manager().emit(event, data, namespace=self._ns(namespace),
                                     room=target, skip_sid=skip)

    def call(self, event: str, *args: Any, to: str | None = None, sid: str | None = None,
             namespace: str | None = None, timeout: float = 60) -> Any:
        """Send ``event`` to one client and return its ack, as ``SocketIO.call``
        does in a handler: the one ack argument, a tuple of several, or
        ``None`` for none.

        :param to: the client's sid (``sid`` is an alias), on whichever node.
        :param timeout: seconds to wait (60; at most 600). A node forgets an
            unanswered ack after its ``ack_timeout`` (60 s by default), so a
            longer wait needs the nodes' ``ack_timeout`` raised too.
        :raises CallTimeoutError: no answer in time (also a ``TimeoutError``
            and python-socketio's ``socketio.exceptions.TimeoutError``).
        :raises NotConnectedError: no node has the client; known after one
            bus round trip, not at the timeout.
        :raises TooManyCallsError: ``max_pending_calls`` asks are waiting.
        """
        target = check_sid(to if to is not None else sid)
        if not isinstance(event, str) or not event:
            raise PayloadError(f"event={event!r}: the event name must be a "
                               f"non-empty string.")
        seconds = check_timeout(timeout)
        calls = self._get_calls()
        with bus_errors():
            return calls.call(event, args, to=target, namespace=self._ns(namespace),
                              timeout=seconds)

    def gather(self, event: str, *args: Any, to: Any, namespace: str | None = None,
               timeout: float = 5, skip_sid: Any = None) -> GatherResult:
        """Send ``event`` to every client in ``to`` (a room, a sid or a list
        of them), on every node, and wait for their acks, at most
        ``timeout`` seconds (5; at most 600): socket.io's
        ``io.to(room).timeout(ms).emitWithAck()``, across the cluster.

        Returns a :class:`GatherResult`: ``answers`` maps each answering
        client's sid to its answer (shaped as :meth:`call` returns it),
        ``missing`` names the clients that got the event and did not answer
        in time, those of a node that died meanwhile included. It returns
        as soon as every client answered, and never after the deadline.
        """
        if not isinstance(event, str) or not event:
            raise PayloadError(f"event={event!r}: the event name must be a "
                               f"non-empty string.")
        target = check_rooms(to, "to")
        if target is None or target == []:
            raise PayloadError("gather() needs to=: a sid, a room or a list of them.")
        skip = check_sids(skip_sid, "skip_sid")
        seconds = check_timeout(timeout)
        calls = self._get_calls()
        with bus_errors():
            return calls.gather(event, args, to=target, namespace=self._ns(namespace),
                                timeout=seconds, skip_sid=skip)

    def send(self, data: Any, to: Any = None, room: Any = None,
             namespace: str | None = None, skip_sid: Any = None) -> None:
        """Send a ``message`` event, like Flask-SocketIO's ``send``."""
        self.emit("message", data, to=to, room=room, namespace=namespace,
                  skip_sid=skip_sid)

    # -- rooms and connections of any sid --------------------------------------
    def join_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        """Put client ``sid`` (on whichever node it is) into ``room``."""
        room = check_rooms(room, "room")
        if not is_room(room):
            raise PayloadError(f"room={room!r}: join one room per call.")
        with bus_errors():
            self._get_manager().enter_room(check_sid(sid), self._ns(namespace), room)

    def leave_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        """Take client ``sid`` out of ``room``."""
        room = check_rooms(room, "room")
        if not is_room(room):
            raise PayloadError(f"room={room!r}: leave one room per call.")
        with bus_errors():
            self._get_manager().leave_room(check_sid(sid), self._ns(namespace), room)

    def close_room(self, room: Any, namespace: str | None = None) -> None:
        """Remove every client from ``room``, on every node."""
        room = check_rooms(room, "room")
        if not is_room(room):
            raise PayloadError(f"room={room!r}: close one room per call.")
        with bus_errors():
            self._get_manager().close_room(room, self._ns(namespace))

    def disconnect(self, sid: str, namespace: str | None = None) -> None:
        """Disconnect client ``sid`` from ``namespace``, on whichever node.

        python-socketio's write-only managers crash here (they try to
        disconnect locally, without a server); this goes through the bus.
        """
        with bus_errors():
            self._get_manager().cluster.disconnect_sockets(
                to=check_sid(sid), namespace=self._ns(namespace))

    # -- cluster-wide commands (no answer needed) ------------------------------
    def sockets_join(self, rooms: Any, to: Any = None,
                     namespace: str | None = None) -> None:
        """Make every client in ``to`` (sids/rooms; all when ``None``) join
        ``rooms``, on every node (socket.io's ``socketsJoin``)."""
        rooms, to = check_required_rooms(rooms), check_rooms(to, "to")
        with bus_errors():
            self._get_manager().cluster.sockets_join(
                rooms, to=to, namespace=self._ns(namespace))

    def sockets_leave(self, rooms: Any, to: Any = None,
                      namespace: str | None = None) -> None:
        """Make every client in ``to`` leave ``rooms`` (``socketsLeave``)."""
        rooms, to = check_required_rooms(rooms), check_rooms(to, "to")
        with bus_errors():
            self._get_manager().cluster.sockets_leave(
                rooms, to=to, namespace=self._ns(namespace))

    def disconnect_sockets(self, to: Any = None,
                           namespace: str | None = None) -> None:
        """Disconnect every client in ``to`` -- *all* clients of the
        namespace when ``to`` is ``None`` (``disconnectSockets``)."""
        with bus_errors():
            self._get_manager().cluster.disconnect_sockets(
                to=check_rooms(to, "to"), namespace=self._ns(namespace))

    def server_side_emit(self, event: str, *args: Any,
                         namespace: str | None = None) -> None:
        """Call the nodes' ``manager.cluster.on(event)`` handlers with
        ``args`` (``serverSideEmit`` without ack)."""
        if not isinstance(event, str) or not event:
            raise PayloadError(f"event={event!r} must be a non-empty string.")
        with bus_errors():
            self._get_manager().cluster.server_side_emit(
                event, *args, namespace=self._ns(namespace))

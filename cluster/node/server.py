"""python-socketio's ``Server`` with the cluster's lifecycle hooks.

:class:`ClusterServer` adds to the stock server:

- the forked session's lifecycle: bound at connect (a new fork, or a resume),
  persisted only once the connection exists (nothing is left by a refused
  CONNECT or one to an unknown namespace), expired when the connection ends;
- a clear, counted rejection of malformed packets (the client is
  disconnected, as socket.io does on a parse error) instead of a traceback,
  kept apart from exceptions of the application's handlers, which are
  logged with their traceback and counted as ``handler_errors``
  (:mod:`cluster.node.packet_dispatch`);
- the per-connection limits of :mod:`cluster.node.limits`: an event rate limit
  (on by default, 100/s), a cap on rooms per connection, a connect timeout,
  and bounded recovery replays;
- swapping the client manager before the first connection, so the node
  runner can join an already-built application to the bus;
- in-process delivery to :class:`cluster.flask_integration.testing.SocketIOTestClient`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import flask
import socketio
from socketio import packet as sio_packet

from cluster.node.connect_deadlines import ConnectDeadlines
from cluster.node.engine import ClusterEngineServer
from cluster.exceptions import ConfigurationError, RoomLimitExceeded
from cluster.node.limits import ALLOW, FLOOD, FLOOD_FACTOR, FLOOD_SECONDS, Limits, RateLimiter
from cluster.node.packet_dispatch import (CONNECT_FAILED, MALFORMED, decode_message, describe,
                              dispatch_packet, report_handler_error)
from cluster.recovery.replay import PacketHold, RecoveryOptions, locate
from cluster.recovery.flow import RecoveryFlow

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO

logger = logging.getLogger("cluster.node.server")

EXTENSION_OPTIONS = frozenset({
    "manage_session", "message_queue", "channel", "write_only",
    "message_queue_options", "signing_secret", "session_store", "session_ttl",
    "session_key_prefix", "connection_state_recovery",
    "websocket_compression", "tcp_nodelay", "max_connections",
    "max_events_per_second", "max_backlog", "redis_url", "path", "resource", "resume_identity",
    "node_name", "max_rooms_per_connection", "connect_timeout", "max_replay_packets",
    "max_replay_bytes", "http_header_timeout", "http_idle_timeout", "client_manager",
})

def _legacy_connect_signature(exc: Exception, args: tuple[Any, ...]) -> bool:
    """Whether python-socketio should retry the connect handler without auth.

    python-socketio calls a connect handler with ``auth=None`` first and,
    on a ``TypeError``, again without it (``handler(sid, environ)``). Only a
    ``TypeError`` raised by that call itself (its traceback ends in
    python-socketio's dispatch frame, not in the handler) is such a case.
    """
    if not isinstance(exc, TypeError) or len(args) < 3 or args[2] is not None:
        return False
    depth, tb = 0, exc.__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth <= 2  # this method's frame and the one that called the handler


#: the CONNECT_ERROR payload for a namespace nobody serves, as socket.io's
INVALID_NAMESPACE = {"message": "Invalid namespace"}


class ClusterServer(socketio.Server):
    """A ``socketio.Server`` that knows the extension it serves.

    :param limits: the per-connection limits (:class:`cluster.node.limits.Limits`;
        default: its defaults, e.g. 100 events/s with a burst of 200).
    :param max_events_per_second: overrides ``limits.max_events_per_second``
        when given; ``0`` switches the rate limit off.
    """

    manager: Any
    manager_initialized: bool

    def __init__(self, *args: Any, max_events_per_second: float | None = None,
                 max_backlog: int | None = None, limits: Limits | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, max_backlog=max_backlog, **kwargs)
        self.extension: SocketIO | None = None
        self.options: dict[str, Any] = {}
        self.test_sinks: dict[str, Callable[[Any], None]] = {}
        self.socketio_path = "socket.io"
        self.recovery: RecoveryOptions | None = None
        self.recovering = RecoveryFlow(self)
        self.counters: dict[str, int] = {
            "malformed_packets": 0,
            # exceptions of application handlers no error handler took
            "handler_errors": 0,
            "rate_limited_events": 0,
            "flood_disconnects": 0,
            "connect_timeouts": 0,
            "room_limit_refusals": 0,
            "recoveries": 0,
            "recovery_failed": 0,
            "recovery_over_limit": 0,
            "replayed_packets": 0,
        }
        self.limits = Limits()
        self.rate_limiter: RateLimiter | None = None
        self.deadlines: ConnectDeadlines = None  # type: ignore[assignment]
        if max_events_per_second is not None:
            limits = Limits.from_options(
                dict(vars(limits or Limits()), max_events_per_second=max_events_per_second))
        self.set_limits(limits or Limits())
        # one dict: the transport counts its slow consumers in it too
        self.counters.update(self.eio.counters)
        self.packet_hold = PacketHold(lambda kind, item: locate(self, kind, item),
                                      self.counters)
        self.eio.counters = self.counters
        self._listen_to_membership(self.manager)

    def set_limits(self, limits: Limits) -> None:
        """Apply new per-connection limits (the node runner's flags).

        The rate limit and the room cap apply at once; a new connect timeout
        applies to connections opened afterwards.
        """
        self.limits = limits
        rate = limits.max_events_per_second
        if self.rate_limiter is None or rate != self.rate_limiter.rate:
            self.rate_limiter = RateLimiter(rate) if rate else None
        if self.deadlines is None:
            self.deadlines = ConnectDeadlines(limits.connect_timeout, self._close_unconnected,
                                              self.start_background_task, self.sleep)
        else:
            self.deadlines.set_timeout(limits.connect_timeout)

    @property
    def max_events_per_second(self) -> float | None:
        return self.limits.max_events_per_second

    def _listen_to_membership(self, manager: Any) -> None:
        if hasattr(manager, "membership_listener"):
            manager.membership_listener = self._note_room_change

    # -- bus ---------------------------------------------------------------

    def replace_manager(self, url: str | None, **options: Any) -> None:
        """Use a new client manager; only before the first connection."""
        if self.manager_initialized:
            raise ConfigurationError(
                "The message queue can only be changed before the first client "
                "connects; pass message_queue= to SocketIO() or --message-queue "
                "to the node runner instead."
            )
        self.options = dict(self.options, message_queue=url, **options)
        self.recovery = RecoveryOptions.from_option(self.options.get("connection_state_recovery"))
        from cluster.node.server_setup import build_manager, create_connection_sessions

        self.manager = build_manager(self.options, write_only=False)
        self.manager.set_server(self)
        self._listen_to_membership(self.manager)
        if self.extension is not None:
            self.extension._apply_cluster_registrations()
            self.extension.sessions = create_connection_sessions(self.extension, self.options)

    def initialize_manager(self) -> None:
        """Join the bus now instead of at the first connection.

        python-socketio starts the manager lazily, but a node must be ready
        (subscribed, heartbeating) before the load balancer sends it clients.
        """
        if not self.manager_initialized:
            self.manager_initialized = True
            self.manager.initialize()

    # -- packets -----------------------------------------------------------

    def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        if pkt.packet_type in (sio_packet.CONNECT, sio_packet.CONNECT_ERROR):
            if pkt.packet_type == sio_packet.CONNECT and isinstance(pkt.data, dict):
                self._add_resume_id(eio_sid, pkt.data)
        elif self.packet_hold.holding(eio_sid) and self.packet_hold.hold(eio_sid, "pkt", pkt):
            return  # held during a recovery, or already replayed
        self._deliver_packet(eio_sid, pkt)

    def _deliver_packet(self, eio_sid: str, pkt: Any) -> None:
        sink = self.test_sinks.get(eio_sid)
        if sink is None:
            super()._send_packet(eio_sid, pkt)
            return
        encoded = pkt.encode()
        for part in encoded if isinstance(encoded, list) else [encoded]:
            sink(part)

    def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        if self.packet_hold.holding(eio_sid) and self.packet_hold.hold(eio_sid, "eio", eio_pkt):
            return  # held during a recovery, or already replayed
        self._deliver_eio_packet(eio_sid, eio_pkt)

    def _deliver_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        # the hot path of every broadcast, once per recipient: straight to
        # the socket (python-engineio's send_packet adds a lookup that also
        # prunes closed sockets, and a log call); anything unusual goes the
        # long way
        eio_socket = self.eio.sockets.get(eio_sid)
        if eio_socket is not None and not eio_socket.closed and not self.test_sinks:
            eio_socket.send(eio_pkt)
            return
        sink = self.test_sinks.get(eio_sid)
        if sink is None:
            super()._send_eio_packet(eio_sid, eio_pkt)
            return
        sink(eio_pkt.data)

    def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # decoding and dispatch apart: only what cannot be decoded is the
        # client's malformed packet (see cluster.node.packet_dispatch)
        try:
            pkt = decode_message(self, eio_sid, data)
        except MALFORMED as exc:
            # a client that sends what cannot be parsed is closed, as the
            # reference server does, instead of failing in a traceback
            self.counters["malformed_packets"] += 1
            logger.warning(
                "Malformed Socket.IO packet from connection %s (%s); closing "
                "the connection.", eio_sid[:8], exc,
            )
            self._binary_packet.pop(eio_sid, None)
            if eio_sid not in self.test_sinks:
                self.eio.disconnect(eio_sid)
            return
        if pkt is None:
            return  # binary attachments still to come
        try:
            dispatch_packet(self, eio_sid, pkt)
        except Exception as exc:
            if eio_sid in self.test_sinks:
                raise  # the test client sees it, as Flask-SocketIO's does
            report_handler_error(self, exc, eio_sid, describe(pkt), pkt.namespace)

    def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        if not self._take_token(eio_sid):
            return
        super()._handle_event(eio_sid, namespace, id, data)

    def _handle_event_internal(self, server: Any, sid: str, eio_sid: str, data: Any,
                               namespace: str, id: Any) -> None:
        # with async_handlers the event runs in a task of its own: what the
        # application raises there is reported here, and the task ends cleanly
        try:
            super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        except Exception as exc:
            if eio_sid in self.test_sinks:
                raise
            report_handler_error(self, exc, eio_sid, f"event {data[0]!r}", namespace)

    def _take_token(self, eio_sid: str) -> bool:
        """Whether the rate limit lets this event through (see cluster.node.limits)."""
        limiter = self.rate_limiter
        if limiter is None:
            return True
        verdict = limiter.take(eio_sid, time.monotonic())
        if verdict == FLOOD:
            # far over the limit for seconds: not a person, and dropping its
            # events still costs the node their parsing
            self.counters["rate_limited_events"] += 1
            self.counters["flood_disconnects"] += 1
            logger.warning(
                "Connection %s disconnected: it sent more than %dx max_events_per_second=%g "
                "for %g s (flood_disconnects counts these).", eio_sid[:8],
                FLOOD_FACTOR, limiter.rate, FLOOD_SECONDS)
            if eio_sid not in self.test_sinks:
                self.eio.disconnect(eio_sid)
            return False
        if verdict != ALLOW:
            self.counters["rate_limited_events"] += 1
            return False
        return True

    def _add_resume_id(self, eio_sid: str, data: dict[str, Any]) -> None:
        # the connection exists now: its session is persisted (not before, so
        # a refused CONNECT leaves nothing), and the CONNECT reply carries its
        # resume id as ``pid``, where socket.io's connection state recovery
        # puts it, so the official client keeps it and sends it back
        sessions = self.extension.sessions if self.extension is not None else None
        environ = self.environ.get(eio_sid)
        if sessions is None or environ is None:
            return
        resume_id = sessions.accept(environ)
        if resume_id is not None:
            data["pid"] = resume_id
            if self.recovery is not None and getattr(self.manager, "logs_recovery", False):
                # tells cluster.Client that events asking for no ack end
                # with their offset, or None (see ClusterManager._handle_emit)
                data["offsets"] = True

    # -- rooms -------------------------------------------------------------

    def enter_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        """Put ``sid`` in ``room``, within ``max_rooms_per_connection``.

        :raises RoomLimitExceeded: ``sid`` is a connection of this node that
            is already in that many rooms of the namespace (a sid on another
            node is checked there).
        """
        namespace = namespace or "/"
        if room != sid and self._rooms_beyond_cap(sid, namespace, room, joining=True):
            self.counters["room_limit_refusals"] += 1
            raise RoomLimitExceeded(sid, namespace, self.limits.max_rooms_per_connection)
        super().enter_room(sid, room, namespace=namespace)

    def _rooms_beyond_cap(self, sid: str, namespace: str, room: Any, joining: bool) -> bool:
        """Whether local ``sid`` is (``joining``: would be) past the room cap."""
        manager = self.manager
        if joining:
            members = manager.rooms.get(namespace, {}).get(room)
            if members is not None and sid in members:
                return False  # already in: nothing grows
            if not (manager.is_connected(sid, namespace)
                    or manager.is_pre_connected(sid, namespace)):
                return False  # not on this node: its own node decides
        # the index counts the sid's own room too
        count = len(manager.get_rooms(sid, namespace)) - 1
        cap = self.limits.max_rooms_per_connection
        return count >= cap if joining else count > cap

    def _note_room_change(self, sid: str, namespace: str, room: str, joined: bool) -> None:
        """Membership listener of the manager: keeps resumable rooms current."""
        if joined and self._rooms_beyond_cap(sid, namespace, room, joining=False):
            # a join that bypassed enter_room (another node's join_room(sid=),
            # sockets_join) cannot raise to whoever asked: it is undone
            self.counters["room_limit_refusals"] += 1
            logger.warning("connection %s is in more than max_rooms_per_connection=%d rooms "
                           "of %s; the join of %r is undone", sid[:8],
                           self.limits.max_rooms_per_connection, namespace, room)
            self.start_background_task(self.manager.leave_room, sid, namespace, room)
            return
        sessions = self.extension.sessions if self.extension is not None else None
        if sessions is None:
            return
        try:
            environ = self.get_environ(sid, namespace)
        except KeyError:  # the namespace's bookkeeping is being torn down
            return
        if environ is None:  # the client lives on another node
            return
        # inside the client's own handler the runner saves after the handler
        # (before its ack); anywhere else the change is saved now
        in_handler = flask.has_request_context() and getattr(flask.request, "sid", None) == sid
        sessions.on_rooms_changed(sid, namespace, environ, room, joined, in_handler)

    # -- connect -----------------------------------------------------------

    def _engineio_server_class(self) -> type:
        return ClusterEngineServer

    def _handle_eio_connect(self, eio_sid: str, environ: Any) -> None:
        super()._handle_eio_connect(eio_sid, environ)
        if eio_sid not in self.test_sinks:
            self.deadlines.opened(eio_sid)  # connect_timeout to send a CONNECT

    def _serves(self, namespace: str) -> bool:
        """The test python-socketio applies before it accepts a CONNECT."""
        namespaces = getattr(self, "namespaces", None)
        return (namespace in self.handlers or namespace in self.namespace_handlers
                or namespaces == "*" or (namespaces is not None and namespace in namespaces))

    def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        sessions = self.extension.sessions if self.extension is not None else None
        environ = self.environ.get(eio_sid)
        if not self._serves(namespace):
            # refused here, before a session is bound (one per attempt was
            # left behind, in Redis for 24 h and in the node), with the
            # official server's answer: socket.io-client shows its message
            self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data=INVALID_NAMESPACE, namespace=namespace))
            self._settle_connect(eio_sid, namespace, None)
            return
        restore_sid = replay = offset = None
        if sessions is not None and environ is not None:
            # bind (create or resume) the session before the sid is chosen,
            # so a recovered connection can get its old sid back
            restore_sid = sessions.prepare(namespace, environ, data)
            if restore_sid is not None and self.manager.is_connected(restore_sid, namespace):
                restore_sid = None  # never two live connections with one sid
            if restore_sid is not None:
                replay = self.recovering.plan(environ, namespace, restore_sid)
            offset = sessions.recovery_offset(environ, namespace)
            if replay is not None:
                sessions.mark_recovered(environ)
                self.eio.restore_next_id(restore_sid)
        # what the connect handler emits is held until the CONNECT reply has
        # gone out: clients then see "connected" before its first event (the
        # official client buffers such events anyway; python-socketio's
        # would dispatch them for a namespace it does not know yet)
        self.packet_hold.start(eio_sid)
        try:
            super()._handle_connect(eio_sid, namespace, data)
        finally:
            self.eio.restore_next_id(None)
            try:
                if replay is not None and restore_sid is not None and offset is not None:
                    self.recovering.finish(eio_sid, restore_sid, namespace, offset, replay)
                else:
                    self.recovering.release_held(eio_sid, namespace, covered=None)
            finally:
                self._settle_connect(eio_sid, namespace, environ)

    def _settle_connect(self, eio_sid: str, namespace: str, environ: Any) -> None:
        """After a CONNECT: release what a failed one bound, and its deadline."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        connected = sid is not None and self.manager.is_connected(sid, namespace)
        sessions = self.extension.sessions if self.extension is not None else None
        if sessions is not None and environ is not None:
            sessions.settle(namespace, environ, connected)
        if eio_sid in self.test_sinks:
            return
        if connected:
            self.deadlines.connected(eio_sid)
        elif not self._in_a_namespace(eio_sid):
            self.deadlines.refused(eio_sid)  # closed once the CONNECT_ERROR is out

    def _in_a_namespace(self, eio_sid: str) -> bool:
        return any(self.manager.sid_from_eio_sid(eio_sid, namespace) is not None
                   for namespace in list(self.manager.get_namespaces()))

    def _close_unconnected(self, eio_sid: str, reason: str) -> None:
        """The sweeper's verdict on a connection that did not CONNECT in time."""
        eio_socket = self.eio.sockets.get(eio_sid)
        if eio_socket is None or self._in_a_namespace(eio_sid):
            return  # already gone, or connected meanwhile
        self.counters["connect_timeouts"] += 1
        logger.debug("connection %s closed: %s (connect_timeout=%g s)", eio_sid[:8], reason,
                     self.limits.connect_timeout)
        # not eio.disconnect(): it waits until a polling client polls again,
        # and one that never does would hold the sweeper for everyone
        eio_socket.close(wait=False, reason=self.eio.reason.SERVER_DISCONNECT)
        self.eio.sockets.pop(eio_sid, None)

    # -- lifecycle ---------------------------------------------------------

    def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        sessions = self.extension.sessions if self.extension is not None else None
        if event == "connect":
            return self._trigger_connect(namespace, sessions, *args)
        if event == "disconnect":
            sid = args[0]
            eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
            environ = self.get_environ(sid, namespace) if sessions is not None else None
            try:
                return super()._trigger_event(event, namespace, *args)
            except Exception as exc:
                if eio_sid in self.test_sinks:
                    raise
                # the connection is torn down all the same
                report_handler_error(self, exc, eio_sid, "disconnect", namespace)
                return None
            finally:
                if sessions is not None and environ is not None:
                    sessions.on_disconnect(sid, namespace, environ)
                self._watch_idle(eio_sid)
        return super()._trigger_event(event, namespace, *args)

    def _trigger_connect(self, namespace: str, sessions: Any, *args: Any) -> Any:
        sid, environ = args[0], args[1]
        if sessions is not None:
            auth = args[2] if len(args) > 2 else None
            sessions.on_connect(sid, namespace, environ, auth)
            if self.recovery is not None and self.recovery.skip_connect_handler \
                    and sessions.is_recovered(environ):
                return True
        try:
            result = super()._trigger_event("connect", namespace, *args)
        except socketio.exceptions.ConnectionRefusedError:
            if sessions is not None:
                sessions.on_refused(sid, namespace, environ)
            raise
        except Exception as exc:
            if sessions is not None:
                sessions.on_refused(sid, namespace, environ)
            eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
            if eio_sid in self.test_sinks or _legacy_connect_signature(exc, args):
                raise
            # a connect handler that failed accepted nobody: refused, with
            # no detail of the exception for the client
            report_handler_error(self, exc, eio_sid, "CONNECT", namespace)
            raise socketio.exceptions.ConnectionRefusedError(CONNECT_FAILED) from exc
        except BaseException:
            if sessions is not None:
                sessions.on_refused(sid, namespace, environ)
            raise
        if result is False and sessions is not None:
            sessions.on_refused(sid, namespace, environ)
        return result

    def _watch_idle(self, eio_sid: str | None) -> None:
        """A namespace was left: if the Engine.IO connection stays open and in
        no namespace, it has connect_timeout to CONNECT again (checked when
        the deadline passes)."""
        if eio_sid is None or eio_sid in self.test_sinks:
            return
        eio_socket = self.eio.sockets.get(eio_sid)
        if eio_socket is None or getattr(eio_socket, "closing", False) \
                or getattr(eio_socket, "closed", False):
            return  # the whole connection is closing
        self.deadlines.left_every_namespace(eio_sid)

    def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        if self.rate_limiter is not None:
            self.rate_limiter.forget(eio_sid)
        self.deadlines.closed(eio_sid)
        self.packet_hold.forget(eio_sid)
        super()._handle_eio_disconnect(eio_sid, reason)

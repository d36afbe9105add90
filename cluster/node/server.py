"""python-socketio's ``Server`` with the cluster's lifecycle hooks.

:class:`ClusterServer` adds to the stock server:

- the forked session's lifecycle: bound at connect (a new fork, or a resume),
  persisted only once the connection exists (nothing is left by a refused
  CONNECT or one to an unknown namespace), expired when the connection ends
  (the CONNECT steps are :mod:`cluster.node.connecting`);
- a clear, counted rejection of malformed packets (the client is
  disconnected, as socket.io does on a parse error) instead of a traceback,
  kept apart from exceptions of the application's handlers, which are
  logged with their traceback and counted as ``handler_errors``
  (:mod:`cluster.node.packet_dispatch`);
- the per-connection limits of :mod:`cluster.node.limits`: a rate limit
  every packet type draws on (on by default, 100 tokens/s; a CONNECT costs
  five, ACKs for ids never issued are dropped: :mod:`cluster.node.packet_budget`),
  a cap on rooms per connection (:mod:`cluster.node.room_cap`), a cap on
  namespaces per connection and a connect timeout
  (:mod:`cluster.node.connecting`), and bounded recovery replays
  (:mod:`cluster.recovery.flow`);
- swapping the client manager before the first connection, so the node
  runner can join an already-built application to the bus;
- in-process delivery to :class:`cluster.flask_integration.testing.SocketIOTestClient`.

It overrides python-socketio's private hooks under the public names
:class:`cluster.compat.SocketServerSeam` gives them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from socketio import packet as sio_packet

from cluster import compat
from cluster.bus import ClusterManager, MembershipEvents, bus_features
from cluster.exceptions import ConfigurationError
from cluster.node.client_closing import DEFAULT_DRAIN_SPREAD_SECONDS, close_spread
from cluster.node.connect_admission import ConnectAdmission
from cluster.node.connect_deadlines import ConnectDeadlines
from cluster.node.connecting import INVALID_NAMESPACE, Connects
from cluster.node.engine import ClusterEngineServer
from cluster.node.limits import LOG_WINDOW, Limits, RateLimiter
from cluster.node.packet_budget import PacketBudget
from cluster.node.packet_dispatch import (
    MALFORMED,
    decode_message,
    describe,
    dispatch_packet,
    report_handler_error,
)
from cluster.node.room_cap import RoomCap
from cluster.recovery.flow import RecoveryFlow
from cluster.recovery.replay import PacketHold, RecoveryOptions, locate
from session_store.quiet_log import QuietLog

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO
    from cluster.sessions.connection_sessions import ConnectionSessions

__all__ = ["ClusterServer", "INVALID_NAMESPACE"]

logger = logging.getLogger("cluster.node.server")


class ClusterServer(compat.SocketServerSeam):
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
        #: the node's cluster.config.NodeConfig (set by cluster.node.server_setup)
        self.config: Any = None
        #: connections served in process (the test client), by eio sid
        self.test_sinks: dict[str, Callable[[Any], None]] = {}
        self.in_process = self.test_sinks
        self.socketio_path = "socket.io"
        self.recovery: RecoveryOptions | None = None
        self.recovering = RecoveryFlow(
            self, lambda: bus_features(self.manager).recovery,
            lambda namespace, rooms, timeout: bus_features(self.manager).await_rooms(
                namespace, rooms, timeout))
        self.connects = Connects(self)
        self.room_cap = RoomCap(self)
        self.budget = PacketBudget(self)
        #: what clients cause is logged once per window per kind (each is counted)
        self.quiet_log = QuietLog(logger, LOG_WINDOW)
        self.counters: dict[str, int] = {
            "malformed_packets": 0,
            # exceptions of application handlers no error handler took
            "handler_errors": 0,
            "rate_limited_events": 0,
            "flood_disconnects": 0,
            "connect_timeouts": 0,
            "room_limit_refusals": 0,
            # CONNECTs past max_namespaces_per_connection
            "namespace_limit_refusals": 0,
            # ACKs for ids this node never issued or already resolved
            "unknown_acks": 0,
            "recoveries": 0,
            "recovery_failed": 0,
            "recovery_over_limit": 0,
            # recoveries closed because their rooms' live traffic did not
            # reach this node in time (the client recovers again)
            "recovery_rooms_late": 0,
            # CONNECT replies sent before this node received all the
            # connection's rooms' traffic (FOLLOW_WAIT passed)
            "connect_rooms_late": 0,
            "replayed_packets": 0,
        }
        self.limits = Limits()
        self.admission: ConnectAdmission | None = None
        self.rate_limiter: RateLimiter | None = None
        self.deadlines: ConnectDeadlines = None  # type: ignore[assignment]
        if max_events_per_second is not None:
            limits = Limits.from_options(
                dict(vars(limits or Limits()), max_events_per_second=max_events_per_second))
        self.set_limits(limits or Limits())
        # one dict: the transport counts its slow consumers in it too
        self.eio.share_counters(self.counters)
        self.packet_hold = PacketHold(lambda kind, item: locate(self, kind, item),
                                      self.counters)
        self._listen_to_membership(self.manager)

    def set_limits(self, limits: Limits) -> None:
        """Apply new per-connection limits (the node runner's flags).

        The rate limit and the room and namespace caps apply at once; a new connect timeout
        applies to connections opened afterwards.
        """
        self.limits = limits
        if self.admission is None or self.admission.limit != limits.max_concurrent_connects:
            self.admission = ConnectAdmission(limits.max_concurrent_connects, self.counters)
        rate = limits.max_events_per_second
        if self.rate_limiter is None or rate != self.rate_limiter.rate:
            self.rate_limiter = RateLimiter(rate) if rate else None
        if self.deadlines is None:
            self.deadlines = ConnectDeadlines(limits.connect_timeout,
                                              self.connects.close_unconnected,
                                              self.start_background_task, self.sleep)
        else:
            self.deadlines.set_timeout(limits.connect_timeout)

    @property
    def max_events_per_second(self) -> float | None:
        return self.limits.max_events_per_second

    @property
    def sessions(self) -> ConnectionSessions | None:
        """The connection sessions of the extension served (None without one)."""
        extension = self.extension
        return extension.sessions if extension is not None else None

    def _listen_to_membership(self, manager: Any) -> None:
        if isinstance(manager, MembershipEvents):  # not a user's stock manager
            manager.membership_listener = self.room_cap.room_changed
        if isinstance(manager, ClusterManager):
            # the bus sends every client to recover when it cannot catch up
            manager.client_closer = self.close_clients
            # connections whose replay covers, or may have covered, an emit
            # that did not come back in time
            manager.recovering = self.packet_hold.needs_offsets

    def close_clients(self, window: float = DEFAULT_DRAIN_SPREAD_SECONDS) -> int:
        """Close every client connection at the Engine.IO level, spread over
        ``window`` seconds with jitter (:mod:`cluster.node.client_closing`),
        in a task of its own so the caller (the bus's listener) is not held
        up; returns how many are being closed. The clients reconnect, here
        or elsewhere, and resume and recover."""
        count = len(compat.open_engine_sockets(self.eio))
        if count:
            self.start_background_task(close_spread, self.eio, window, self.sleep)
        return count

    # -- bus ---------------------------------------------------------------

    def replace_manager(self, manager: Any) -> None:
        """Use a new client manager; only before the first connection."""
        if self.manager_initialized:
            raise ConfigurationError(
                "The message queue can only be changed before the first client "
                "connects; pass message_queue= to SocketIO() or --message-queue "
                "to the node runner instead."
            )
        self.manager = manager
        self.manager.set_server(self)
        self._listen_to_membership(self.manager)

    def initialize_manager(self) -> None:
        """Join the bus now instead of at the first connection.

        python-socketio starts the manager lazily, but a node must be ready
        (subscribed, heartbeating) before the load balancer sends it clients.
        """
        if not self.manager_initialized:
            self.manager_initialized = True
            self.manager.initialize()

    # -- packets -----------------------------------------------------------

    def send_packet(self, eio_sid: str, pkt: Any) -> None:
        if pkt.packet_type in (sio_packet.CONNECT, sio_packet.CONNECT_ERROR):
            if pkt.packet_type == sio_packet.CONNECT and isinstance(pkt.data, dict):
                self.connects.accepted(eio_sid, pkt.data, pkt.namespace or "/")
        elif self.packet_hold.holding(eio_sid) and self.packet_hold.hold(eio_sid, "pkt", pkt):
            return  # held during a recovery, or already replayed
        self.deliver_packet(eio_sid, pkt)

    def deliver_packet(self, eio_sid: str, pkt: Any) -> None:
        """Send ``pkt`` now, past the recovery hold."""
        sink = self.test_sinks.get(eio_sid)
        if sink is None:
            super().send_packet(eio_sid, pkt)
            return
        encoded = pkt.encode()
        for part in encoded if isinstance(encoded, list) else [encoded]:
            sink(part)

    def send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        if self.packet_hold.holding(eio_sid) and self.packet_hold.hold(eio_sid, "eio", eio_pkt):
            return  # held during a recovery, or already replayed
        # straight to the socket (compat.SocketServerSeam.deliver_eio_packet)
        self.deliver_eio_packet(eio_sid, eio_pkt)

    def deliver_eio_packet_slowly(self, eio_sid: str, eio_pkt: Any) -> None:
        sink = self.test_sinks.get(eio_sid)
        if sink is None:
            super().deliver_eio_packet_slowly(eio_sid, eio_pkt)
            return
        sink(eio_pkt.data)

    def handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # decoding and dispatch apart: only what cannot be decoded is the
        # client's malformed packet (see cluster.node.packet_dispatch)
        try:
            pkt = decode_message(self, eio_sid, data)
        except MALFORMED as exc:
            # a client that sends what cannot be parsed is closed, as the
            # reference server does, instead of failing in a traceback
            self.counters["malformed_packets"] += 1
            self.quiet_log.log(
                logging.WARNING, "malformed_packet",
                "Malformed Socket.IO packet from connection %s (%s); closed the "
                "connection. malformed_packets counts these; one line per %g s.",
                eio_sid[:8], str(exc)[:200], LOG_WINDOW)
            compat.pending_binary_packets(self).pop(eio_sid, None)
            if eio_sid not in self.test_sinks:
                self.eio.disconnect(eio_sid)
            return
        if pkt is None:
            return  # binary attachments still to come
        if not self.budget.admit(eio_sid, pkt):
            return  # over the rate limit, or an ACK nobody waits for
        try:
            dispatch_packet(self, eio_sid, pkt)
        except Exception as exc:
            if eio_sid in self.test_sinks:
                raise  # the test client sees it, as Flask-SocketIO's does
            report_handler_error(self, exc, eio_sid, describe(pkt), pkt.namespace)

    def handle_event_internal(self, server: Any, sid: str, eio_sid: str, data: Any,
                              namespace: str, id: Any) -> None:
        # with async_handlers the event runs in a task of its own: what the
        # application raises there is reported here, and the task ends cleanly
        try:
            super().handle_event_internal(server, sid, eio_sid, data, namespace, id)
        except Exception as exc:
            if eio_sid in self.test_sinks:
                raise
            report_handler_error(self, exc, eio_sid, f"event {data[0]!r}", namespace)

    # -- rooms -------------------------------------------------------------

    def enter_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        """Put ``sid`` in ``room``, within ``max_rooms_per_connection``.

        :raises RoomLimitExceeded: ``sid`` is a connection of this node that
            is already in that many rooms of the namespace (a sid on another
            node is checked there).
        """
        namespace = namespace or "/"
        self.room_cap.check_join(sid, namespace, room)
        super().enter_room(sid, room, namespace=namespace)

    # -- connect -----------------------------------------------------------

    def engineio_server_class(self) -> type:
        return ClusterEngineServer

    def handle_eio_connect(self, eio_sid: str, environ: Any) -> None:
        super().handle_eio_connect(eio_sid, environ)
        if eio_sid not in self.test_sinks:
            self.deadlines.opened(eio_sid)  # connect_timeout to send a CONNECT

    def handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        self.connects.handle(eio_sid, namespace, data)

    # -- lifecycle ---------------------------------------------------------

    def trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        sessions = self.sessions
        if event == "connect":
            return self.connects.trigger(namespace, sessions, *args)
        if event == "disconnect":
            sid = args[0]
            eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
            environ = self.get_environ(sid, namespace) if sessions is not None else None
            try:
                return super().trigger_event(event, namespace, *args)
            except Exception as exc:
                if eio_sid in self.test_sinks:
                    raise
                # the connection is torn down all the same
                report_handler_error(self, exc, eio_sid, "disconnect", namespace)
                return None
            finally:
                if sessions is not None and environ is not None:
                    sessions.on_disconnect(sid, namespace, environ)
                self.connects.watch_idle(eio_sid)
        return super().trigger_event(event, namespace, *args)

    def _trigger_connect(self, namespace: str, sessions: Any, *args: Any) -> Any:
        """The connect handler's run (see :meth:`.connecting.Connects.trigger`)."""
        return self.connects.trigger(namespace, sessions, *args)

    def handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        if self.rate_limiter is not None:
            self.rate_limiter.forget(eio_sid)
        self.deadlines.closed(eio_sid)
        self.packet_hold.forget(eio_sid)
        super().handle_eio_disconnect(eio_sid, reason)

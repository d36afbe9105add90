"""A CONNECT on a node: the session bound, recovery, deadlines, refusals.

:class:`Connects` wraps python-socketio's handling of a Socket.IO CONNECT
for :class:`cluster.node.server.ClusterServer`:

- a CONNECT to a namespace nobody serves is refused before a session is
  bound, with socket.io's ``Invalid namespace``;
- ``max_namespaces_per_connection`` (default 10): a CONNECT to one more
  namespace than that is refused the same way, with :func:`too_many_namespaces`
  as its message, counted in ``namespace_limit_refusals`` and logged at most
  once per ``LOG_WINDOW`` for the node; the connection keeps the namespaces
  it is in (with ``namespaces='*'`` one connection could otherwise open
  thousands, each with its own room cap and connection-record entry);
- at most ``max_concurrent_connects`` CONNECTs are worked on at once
  (:mod:`cluster.node.connect_admission`); the rooms a CONNECT enters are
  waited for once, all together, just before its reply (:meth:`Connects.accepted`),
  after its slot was given back;
- the session is bound (a new fork, or a resume) before the sid is chosen,
  so connection state recovery can give the connection its old sid back
  (:mod:`cluster.recovery.flow` plans, replays and releases);
- the CONNECT reply carries the resume id as ``pid``, and ``offsets: true``
  when events carry their offset;
- a connect handler that raises refuses the connection (counted, logged,
  no detail for the client); one that refuses leaves nothing behind;
- ``connect_timeout``: an Engine.IO connection that is in no namespace is
  closed when its deadline passes (:mod:`cluster.node.connect_deadlines`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import socketio
from socketio import packet as sio_packet

from cluster import compat
from cluster.bus import bus_features
from cluster.bus.channels import FOLLOW_WAIT
from cluster.node.connect_admission import Slot
from cluster.node.limits import LOG_WINDOW
from cluster.node.packet_dispatch import CONNECT_FAILED, report_handler_error

if TYPE_CHECKING:
    from cluster.node.server import ClusterServer

logger = logging.getLogger("cluster.node.server")

#: the CONNECT_ERROR payload for a namespace nobody serves, as socket.io's
INVALID_NAMESPACE = {"message": "Invalid namespace"}


def too_many_namespaces(cap: int) -> dict[str, str]:
    """The CONNECT_ERROR payload for a CONNECT past ``max_namespaces_per_connection``."""
    return {"message": f"Too many namespaces: a connection may be connected to at most "
                       f"{cap} at once (the server's max_namespaces_per_connection); "
                       "disconnect from one first"}


def legacy_connect_signature(exc: Exception, args: tuple[Any, ...]) -> bool:
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
    return depth <= 2  # the catching frame and the one that called the handler


class Connects:
    """The CONNECT steps of one server (see the module doc)."""

    def __init__(self, server: ClusterServer) -> None:
        self.server = server
        # the admission slots of the CONNECTs being worked on, by eio sid
        self._slots: dict[str, Slot] = {}

    def handle(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        """A client's CONNECT to ``namespace`` with payload ``data``."""
        server = self.server
        namespace = namespace or "/"
        environ = server.environ_of(eio_sid)
        if not server.serves_namespace(namespace):
            # refused here, before a session is bound (one per attempt was
            # left behind, in Redis for 24 h and in the node), with the
            # official server's answer: socket.io-client shows its message
            self.refuse(eio_sid, namespace, INVALID_NAMESPACE)
            return
        if self.over_namespace_cap(eio_sid, namespace):
            cap = server.limits.max_namespaces_per_connection
            server.counters["namespace_limit_refusals"] += 1
            server.quiet_log.log(
                logging.WARNING, "namespace_cap", "CONNECT refused past "
                "max_namespaces_per_connection=%d, from connection %s; counted as "
                "namespace_limit_refusals, logged at most every %g s. Raise "
                "max_namespaces_per_connection (--max-namespaces-per-connection) if the "
                "application needs more.", cap, eio_sid[:8], LOG_WINDOW)
            self.refuse(eio_sid, namespace, too_many_namespaces(cap))
            return
        admission = server.admission
        if admission is None or eio_sid in server.test_sinks:
            self.bind_and_connect(eio_sid, namespace, data, environ)
            return
        with admission.admitted(server.limits.connect_timeout) as slot:
            if slot is not None:
                if self.still_open(eio_sid):
                    # accepted() gives the slot back before the CONNECT
                    # reply waits for the rooms' subscriptions
                    self._slots[eio_sid] = slot
                    try:
                        self.bind_and_connect(eio_sid, namespace, data, environ)
                    finally:
                        self._slots.pop(eio_sid, None)
                return
        # not refused: a CONNECT_ERROR would stop socket.io-client for good, a
        # closed connection makes it come back after its back-off with its
        # session and offset (see cluster.node.connect_admission)
        self.close_unconnected(eio_sid, "its CONNECT waited for longer than "
                                        "connect_timeout (max_concurrent_connects)")

    def still_open(self, eio_sid: str) -> bool:
        """Whether the Engine.IO connection is still there (it may have closed
        while its CONNECT waited)."""
        eio_socket = compat.engine_socket(self.server.eio, eio_sid)
        return eio_socket is not None and not getattr(eio_socket, "closed", False) \
            and self.server.environ_of(eio_sid) is not None

    def bind_and_connect(self, eio_sid: str, namespace: str, data: Any, environ: Any) -> None:
        """The CONNECT's work, once admitted: the session bound, python-socketio's
        handling, the recovery replay, the settling."""
        server = self.server
        sessions = server.sessions
        restore_sid = None
        features = bus_features(server.manager)
        # the rooms it enters (restored, or joined by the connect handler)
        # are waited for once, all together, before the CONNECT reply
        # (accepted()), not one by one while it holds its slot
        with features.follow_waits_deferred():
            if sessions is not None and environ is not None:
                # bind (create or resume) the session before the sid is chosen,
                # so a recovered connection can get its old sid back
                restore_sid = sessions.prepare(namespace, environ, data)
            # what the connect handler emits is held until the CONNECT reply
            # has gone out (the official client buffers such events anyway;
            # python-socketio's would dispatch them for a namespace it does
            # not know yet)
            attempt = server.recovering.begin(eio_sid, namespace, environ, sessions,
                                              restore_sid)
        try:
            if server.environ_of(eio_sid) is None:
                return  # the connection closed while its session was bound
            with features.follow_waits_deferred():
                server.library_handle_connect(eio_sid, namespace, data)
        finally:
            try:
                server.recovering.end(eio_sid, namespace, attempt)
            finally:
                self.settle(eio_sid, namespace, environ)

    def refuse(self, eio_sid: str, namespace: str, data: Any) -> None:
        """Answer a CONNECT to ``namespace`` with a CONNECT_ERROR carrying
        ``data``, before anything is bound for it; a connection left in no
        namespace is closed a moment later."""
        server = self.server
        server.send_packet(eio_sid, server.packet_class(
            sio_packet.CONNECT_ERROR, data=data, namespace=namespace))
        self.settle(eio_sid, namespace, None)

    def over_namespace_cap(self, eio_sid: str, namespace: str) -> bool:
        """Whether a CONNECT to ``namespace`` would put the connection in more
        than ``max_namespaces_per_connection`` namespaces (one it is in
        already adds none; python-socketio refuses that CONNECT itself).
        Counted by looking at each namespace in use on the node: with the
        cap, no connection adds more than a few."""
        manager = self.server.manager
        if manager.sid_from_eio_sid(eio_sid, namespace) is not None:
            return False
        cap = self.server.limits.max_namespaces_per_connection
        count = 0
        for other in list(manager.get_namespaces()):
            if manager.sid_from_eio_sid(eio_sid, other) is not None:
                count += 1
                if count >= cap:
                    return True
        return False

    def accepted(self, eio_sid: str, data: dict[str, Any], namespace: str) -> None:
        """The CONNECT reply goes out: the connection exists now. Its session
        is persisted (not before, so a refused CONNECT leaves nothing), and
        the reply carries its resume id as ``pid``, where socket.io's
        connection state recovery puts it, so the official client keeps it
        and sends it back. Before that, with its admission slot given back,
        it waits (up to ``FOLLOW_WAIT`` s) until this node receives the
        traffic of every room it is in, so what the client does once
        connected is answered in those rooms."""
        server = self.server
        slot = self._slots.pop(eio_sid, None)
        if slot is not None:
            slot.release()
        sid = data.get("sid")
        if sid is not None:
            rooms = server.manager.get_rooms(sid, namespace)
            if not bus_features(server.manager).await_rooms(namespace, rooms, FOLLOW_WAIT):
                server.counters["connect_rooms_late"] += 1
        sessions = server.sessions
        environ = server.environ_of(eio_sid)
        if sessions is None or environ is None:
            return
        resume_id = sessions.accept(environ)
        if resume_id is not None:
            data["pid"] = resume_id
        if server.recovering.marks_offsets():
            # tells cluster.Client that events asking for no ack end with
            # their offset, or None (see local_delivery.LocalDelivery.deliver);
            # said with or without a pid, since every connection's events
            # carry it (one whose session the store could not take has none)
            data["offsets"] = True

    def settle(self, eio_sid: str, namespace: str, environ: Any) -> None:
        """After a CONNECT: release what a failed one bound, and its deadline."""
        server = self.server
        manager = server.manager
        sid = manager.sid_from_eio_sid(eio_sid, namespace)
        connected = sid is not None and manager.is_connected(sid, namespace)
        sessions = server.sessions
        if sessions is not None and environ is not None:
            sessions.settle(namespace, environ, connected)
        if eio_sid in server.test_sinks:
            return
        if connected:
            server.deadlines.connected(eio_sid)
        elif not self.in_a_namespace(eio_sid):
            server.deadlines.refused(eio_sid)  # closed once the CONNECT_ERROR is out

    def in_a_namespace(self, eio_sid: str) -> bool:
        manager = self.server.manager
        return any(manager.sid_from_eio_sid(eio_sid, namespace) is not None
                   for namespace in list(manager.get_namespaces()))

    def trigger(self, namespace: str, sessions: Any, *args: Any) -> Any:
        """Run the application's connect handler (``args``: sid, environ,
        auth) with the session bound, or skip it for a recovered connection
        when ``skip_connect_handler`` says so."""
        server = self.server
        sid, environ = args[0], args[1]
        if sessions is not None:
            auth = args[2] if len(args) > 2 else None
            sessions.on_connect(sid, namespace, environ, auth)
            if server.recovering.skips_connect_handler(sessions, environ):
                return True
        try:
            result = server.library_trigger_event("connect", namespace, *args)
        except socketio.exceptions.ConnectionRefusedError:
            if sessions is not None:
                sessions.on_refused(sid, namespace, environ)
            raise
        except Exception as exc:
            if sessions is not None:
                sessions.on_refused(sid, namespace, environ)
            eio_sid = server.manager.eio_sid_from_sid(sid, namespace)
            if eio_sid in server.test_sinks or legacy_connect_signature(exc, args):
                raise
            # a connect handler that failed accepted nobody: refused, with
            # no detail of the exception for the client
            report_handler_error(server, exc, eio_sid, "CONNECT", namespace)
            raise socketio.exceptions.ConnectionRefusedError(CONNECT_FAILED) from exc
        except BaseException:
            if sessions is not None:
                sessions.on_refused(sid, namespace, environ)
            raise
        if result is False and sessions is not None:
            sessions.on_refused(sid, namespace, environ)
        return result

    # -- connect_timeout -----------------------------------------------------

    def close_unconnected(self, eio_sid: str, reason: str) -> None:
        """The sweeper's verdict on a connection that did not CONNECT in time."""
        server = self.server
        eio_socket = compat.engine_socket(server.eio, eio_sid)
        if eio_socket is None or self.in_a_namespace(eio_sid):
            return  # already gone, or connected meanwhile
        server.counters["connect_timeouts"] += 1
        logger.debug("connection %s closed: %s (connect_timeout=%g s)", eio_sid[:8], reason,
                     server.limits.connect_timeout)
        # not eio.disconnect(): it waits until a polling client polls again,
        # and one that never does would hold the sweeper for everyone
        eio_socket.close(wait=False, reason=server.eio.reason.SERVER_DISCONNECT)
        compat.forget_engine_socket(server.eio, eio_sid)

    def watch_idle(self, eio_sid: str | None) -> None:
        """A namespace was left: if the Engine.IO connection stays open and in
        no namespace, it has connect_timeout to CONNECT again (checked when
        the deadline passes)."""
        server = self.server
        if eio_sid is None or eio_sid in server.test_sinks:
            return
        eio_socket = compat.engine_socket(server.eio, eio_sid)
        if eio_socket is None or getattr(eio_socket, "closing", False) \
                or getattr(eio_socket, "closed", False):
            return  # the whole connection is closing
        server.deadlines.left_every_namespace(eio_sid)

"""python-socketio's ``Server`` with the cluster's lifecycle hooks.

:class:`ClusterServer` adds to the stock server:

- the forked session's lifecycle: bound at connect (a new fork, or a resume),
  released when a connect is refused, expired when the connection ends;
- a clear, counted rejection of malformed packets (the client is
  disconnected, as socket.io does on a parse error) instead of a traceback;
- a per-connection event rate limit (off unless ``max_events_per_second``);
- swapping the client manager before the first connection, so the node
  runner can join an already-built application to the bus;
- in-process delivery to :class:`cluster.testing.SocketIOTestClient`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import flask
import socketio
from socketio import packet as sio_packet

from .engine import ClusterEngineServer
from .exceptions import ConfigurationError
from .recovery import (PacketHold, RecoveryOptions, message_reaches, namespace_of, newer,
                       offset_of, replay_packet)

if TYPE_CHECKING:
    from .extension import SocketIO

logger = logging.getLogger("cluster.server")

EXTENSION_OPTIONS = frozenset({
    "manage_session", "message_queue", "channel", "write_only",
    "message_queue_options", "signing_secret", "session_store", "session_ttl",
    "session_key_prefix", "connection_state_recovery",
    "websocket_compression", "tcp_nodelay", "max_connections",
    "max_events_per_second", "max_backlog", "redis_url", "path", "resource", "resume_identity", "node_name",
})
DEFAULT_CHANNEL = "flask-socketio"


def default_async_mode() -> str:
    """``eventlet`` when eventlet has patched the process, else ``threading``.

    The node runner monkey-patches before importing the application, so the
    same module serves production under eventlet and unit tests (or
    ``flask run``) with threads, without an ``async_mode`` argument.
    """
    if "eventlet" not in sys.modules:
        # not imported means not patched; importing it here would only
        # print eventlet's deprecation warning in threaded processes
        return "threading"
    from eventlet.patcher import is_monkey_patched

    return "eventlet" if is_monkey_patched("socket") else "threading"


def build_manager(options: dict[str, Any], *, write_only: bool) -> Any:
    """The client manager for ``options``: a bus manager or a local one."""
    from .bus import LocalManager, create_manager

    url = options.get("message_queue")
    if not url:
        return LocalManager()
    recovery = RecoveryOptions.from_option(options.get("connection_state_recovery"))
    settings: dict[str, Any] = {}
    if options.get("node_name"):
        settings["node_name"] = options["node_name"]
    if recovery is not None:
        settings["recovery_window"] = recovery.max_disconnection_duration
    return create_manager(
        url,
        channel=options.get("channel") or DEFAULT_CHANNEL,
        write_only=write_only,
        signing_secret=options.get("signing_secret"),
        options=options.get("message_queue_options"),
        logger=logging.getLogger("cluster.bus"),
        **settings,
    )


def create_server(ext: "SocketIO", app: "flask.Flask | None", options: dict[str, Any]) -> "ClusterServer":
    """Build the server for ``ext`` from the extension's keyword options."""
    server_kwargs = {k: v for k, v in options.items() if k not in EXTENSION_OPTIONS}
    server_kwargs.setdefault("async_mode", default_async_mode())
    write_only = bool(options.get("write_only", app is None))
    if write_only and not options.get("message_queue"):
        raise ConfigurationError(
            "A SocketIO without a Flask app is a write-only emitter and needs "
            "message_queue=<bus URL> (e.g. 'redis://localhost:6379/0')."
        )
    server = ClusterServer(
        client_manager=build_manager(options, write_only=write_only),
        max_events_per_second=options.get("max_events_per_second"),
        max_backlog=options.get("max_backlog"),
        **server_kwargs,
    )
    server.extension = ext
    server.options = options
    server.recovery = RecoveryOptions.from_option(options.get("connection_state_recovery"))
    server.socketio_path = (options.get("path") or options.get("resource") or "socket.io").strip("/")
    from .connection_sessions import create_connection_sessions

    ext.server = server  # the session binding registers on its manager
    ext.sessions = create_connection_sessions(ext, options)
    return server


class ClusterServer(socketio.Server):
    """A ``socketio.Server`` that knows the extension it serves.

    :param max_events_per_second: per-connection rate of incoming events;
        extra events are dropped with a warning. ``None`` (default) is no
        limit. The burst allowance is twice the rate.
    """

    manager: Any
    manager_initialized: bool

    def __init__(self, *args: Any, max_events_per_second: float | None = None,
                 max_backlog: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, max_backlog=max_backlog, **kwargs)
        self.extension: SocketIO | None = None
        self.options: dict[str, Any] = {}
        self.test_sinks: dict[str, Callable[[Any], None]] = {}
        self.socketio_path = "socket.io"
        self.recovery: RecoveryOptions | None = None
        self.packet_hold = PacketHold()
        self.max_events_per_second = max_events_per_second
        self._rate_buckets: dict[str, tuple[float, float]] = {}
        self.counters: dict[str, int] = {
            "malformed_packets": 0,
            "rate_limited_events": 0,
            "recoveries": 0,
            "recovery_failed": 0,
            "replayed_packets": 0,
        }
        # one dict: the transport counts its slow consumers in it too
        self.counters.update(self.eio.counters)
        self.eio.counters = self.counters
        self._listen_to_membership(self.manager)

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
        self.manager = build_manager(self.options, write_only=False)
        self.manager.set_server(self)
        self._listen_to_membership(self.manager)
        if self.extension is not None:
            from .connection_sessions import create_connection_sessions

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
        elif self.packet_hold.holding(eio_sid):
            self.packet_hold.hold(eio_sid, "pkt", pkt)
            return
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
        if self.packet_hold.holding(eio_sid):
            self.packet_hold.hold(eio_sid, "eio", eio_pkt)
            return
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
        try:
            super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
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

    def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise ValueError("an event packet must be a list starting with the event name")
        if self.max_events_per_second and not self._take_token(eio_sid):
            self.counters["rate_limited_events"] += 1
            logger.warning(
                "Connection %s exceeds %s events/s; event %r dropped.",
                eio_sid[:8], self.max_events_per_second, data[0],
            )
            return
        super()._handle_event(eio_sid, namespace, id, data)

    def _take_token(self, eio_sid: str) -> bool:
        rate = float(self.max_events_per_second or 0)
        burst = rate * 2
        now = time.monotonic()
        tokens, last = self._rate_buckets.get(eio_sid, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1:
            self._rate_buckets[eio_sid] = (tokens, now)
            return False
        self._rate_buckets[eio_sid] = (tokens - 1, now)
        return True

    def _add_resume_id(self, eio_sid: str, data: dict[str, Any]) -> None:
        # the CONNECT reply carries the connection's resume id as ``pid``,
        # where socket.io's connection state recovery puts it, so the official
        # client keeps it and sends it back on reconnect
        sessions = self.extension.sessions if self.extension is not None else None
        environ = self.environ.get(eio_sid)
        if sessions is None or environ is None:
            return
        resume_id = sessions.resume_id(environ)
        if resume_id is not None:
            data["pid"] = resume_id
            if self.recovery is not None:
                # tells cluster.Client that events end with their offset
                data["offsets"] = True

    # -- rooms -------------------------------------------------------------

    def _note_room_change(self, sid: str, namespace: str, room: str, joined: bool) -> None:
        """Membership listener of the manager: keeps resumable rooms current."""
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

    def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        sessions = self.extension.sessions if self.extension is not None else None
        environ = self.environ.get(eio_sid)
        restore_sid = None
        if sessions is not None and environ is not None:
            # bind (create or resume) the session before the sid is chosen,
            # so a recovered connection can get its old sid back
            restore_sid = sessions.prepare(namespace, environ, data)
        if restore_sid is not None and self.manager.is_connected(restore_sid, namespace):
            restore_sid = None  # never two live connections with one sid
        offset = None
        if restore_sid is not None and sessions is not None and environ is not None:
            offset = sessions.recovery_offset(environ, namespace)
            readable = offset is not None and self._recovery_log_readable(offset)
            if not readable:
                # too old, or unknown: a resumed session, but not a recovery
                self.counters["recovery_failed"] += 1
                restore_sid = None
        recovering = not (restore_sid is None or offset is None or sessions is None
                          or environ is None)
        if recovering:
            sessions.mark_recovered(environ)  # type: ignore[union-attr]
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
            if recovering:
                self._finish_recovery(eio_sid, restore_sid, namespace, offset)  # type: ignore[arg-type]
            else:
                self._release_held(eio_sid, namespace, covered=None)

    def _recovery_log_readable(self, offset: str) -> bool:
        readable = getattr(self.manager, "recovery_readable", None)
        return bool(readable(offset)) if callable(readable) else False

    def _recovery_log_after(self, offset: str) -> Any:
        after = getattr(self.manager, "recovery_after", None)
        return after(offset) if callable(after) else None

    def _finish_recovery(self, eio_sid: str, sid: str, namespace: str, offset: str) -> None:
        """Replay what the recovered connection missed, then what was held."""
        covered: str | None = None
        try:
            if self.manager.is_connected(sid, namespace):
                missed = self._recovery_log_after(offset) or []
                rooms = self.manager.get_rooms(sid, namespace)
                replayed = 0
                for entry_offset, message in missed:
                    if message_reaches(message, sid, namespace, rooms):
                        self._deliver_packet(
                            eio_sid, replay_packet(self, message, entry_offset, namespace))
                        replayed += 1
                    covered = entry_offset
                self.counters["recoveries"] += 1
                self.counters["replayed_packets"] += replayed
                logger.info("connection %s recovered, %d missed packet(s) replayed",
                            sid[:8], replayed)
        finally:
            self._release_held(eio_sid, namespace, covered)

    def _release_held(self, eio_sid: str, namespace: str, covered: str | None) -> None:
        """Send what was held during a connect; drop it if the connect failed."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        connected = sid is not None and self.manager.is_connected(sid, namespace)
        for kind, item in self.packet_hold.release(eio_sid):
            if not connected and namespace_of(self, kind, item) == namespace:
                continue  # refused: its connect handler's emits go nowhere
            held_offset = offset_of(self, kind, item)
            if covered is not None and held_offset is not None and not newer(held_offset, covered):
                continue  # the replay already delivered it
            if kind == "pkt":
                self._deliver_packet(eio_sid, item)
            else:
                self._deliver_eio_packet(eio_sid, item)

    # -- lifecycle ---------------------------------------------------------

    def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        sessions = self.extension.sessions if self.extension is not None else None
        if event == "connect" and sessions is not None:
            sid, environ = args[0], args[1]
            auth = args[2] if len(args) > 2 else None
            sessions.on_connect(sid, namespace, environ, auth)
            if self.recovery is not None and self.recovery.skip_connect_handler \
                    and sessions.is_recovered(environ):
                return True
            try:
                result = super()._trigger_event(event, namespace, *args)
            except BaseException:
                sessions.on_refused(sid, namespace, environ)
                raise
            if result is False:
                sessions.on_refused(sid, namespace, environ)
            return result
        if event == "disconnect" and sessions is not None:
            sid = args[0]
            environ = self.get_environ(sid, namespace)
            try:
                return super()._trigger_event(event, namespace, *args)
            finally:
                if environ is not None:
                    sessions.on_disconnect(sid, namespace, environ)
        return super()._trigger_event(event, namespace, *args)

    def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self._rate_buckets.pop(eio_sid, None)
        super()._handle_eio_disconnect(eio_sid, reason)

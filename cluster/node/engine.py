"""The node's Engine.IO server: restorable ids and the bounded transport.

:class:`ClusterEngineServer` is python-engineio's server with:

- ``restore_next_id`` (of :class:`cluster.compat.EngineServerSeam`):
  connection state recovery sets the previous sid right before the connect
  so the recovered connection keeps it;
- under eventlet or gevent, the node's websocket transport
  (:class:`~.websocket_transport.ClusterSocket`: frames written directly and
  coalesced, pings on timers) for every new connection, on the
  :class:`~cluster.runtime.Runtime` of the server's ``async_mode``;
- ``max_backlog``: bytes a client may leave unread before it is
  disconnected (default 1 MiB), counted in ``slow_consumers``;
- ``write_window``: how long a frame may wait for the next ones on a
  websocket streamed to (default 1 ms, see :mod:`.frame_writer`);
- every socket decodes what its client sends strictly
  (:class:`~.engine_socket.StrictSocket`): an undecodable polling payload
  gets 400, a websocket message the connection closed, the session ends,
  and :meth:`ClusterEngineServer.malformed_payload` counts it in
  ``malformed_packets`` with one log line per 10 s at most;
- ``sid_minter``: with session forwarding on, new sids name their node
  (:mod:`.sid_owner`);
- a :class:`~.pause_fence.PauseFence`: after the node did not run for
  ``ping_timeout`` (frozen, starved), what its older connections send is
  not received and they are closed (their clients have moved on).
"""

from __future__ import annotations

import logging
from typing import Any

from cluster import compat, runtime
from cluster.exceptions import ConfigurationError
from cluster.node.engine_socket import StrictSocket
from cluster.node.frame_writer import (
    DEFAULT_MAX_BACKLOG,
    DEFAULT_WRITE_WINDOW,
    Flusher,
    checked_write_window,
)
from cluster.node.pause_fence import PauseFence
from cluster.node.websocket_reads import ReadScheduler
from cluster.node.websocket_transport import ClusterSocket
from session_store.quiet_log import QuietLog

logger = logging.getLogger("cluster.transport")

#: seconds between two log lines about malformed Engine.IO payloads: a
#: flood of them costs one line per window, with the count since the last
MALFORMED_LOG_WINDOW = 10.0


class ClusterEngineServer(compat.EngineServerSeam):
    """python-engineio's ``Server`` as a node runs it (see the module doc).

    :param max_backlog: unread bytes per client before it is disconnected;
        ``None`` keeps the default (1 MiB).
    :param write_window: seconds a frame may wait to leave with the next
        ones on a websocket streamed to (see :mod:`.frame_writer`); ``None``
        keeps the default (1 ms), 0 switches it off.
    """

    def __init__(self, *args: Any, max_backlog: int | None = None,
                 write_window: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the green-thread runtime of ``async_mode`` (None under threading),
        #: and the flusher of its websockets' writes
        self.runtime: runtime.Runtime | None = None
        self.flusher: Flusher | None = None
        #: the read turns of its detached websockets (.websocket_reads)
        self.read_scheduler: ReadScheduler | None = None
        if self.async_mode in runtime.MODES:
            self.runtime = runtime.load(self.async_mode)
            self.flusher = Flusher(self.runtime, DEFAULT_WRITE_WINDOW)
            self.read_scheduler = ReadScheduler(self.runtime)
        self.max_backlog = DEFAULT_MAX_BACKLOG
        if max_backlog is not None:
            self.set_max_backlog(max_backlog)
        self.write_window = DEFAULT_WRITE_WINDOW
        if write_window is not None:
            self.set_write_window(write_window)
        #: shared with the Socket.IO server's counters (see ClusterServer)
        self.counters: dict[str, int] = {"slow_consumers": 0}
        self._quiet = QuietLog(logger, MALFORMED_LOG_WINDOW)
        #: started with the first connection (see :mod:`.pause_fence`)
        self.pause_fence = PauseFence(self.ping_timeout, spawn=self.start_background_task,
                                      sleep=self.sleep, counters=self.counters)
        self.pause_fence.on_pause = self.close_fenced
        #: called with each fenced connection's sid before it is closed (the
        #: Socket.IO server marks its session as no longer held there)
        self.on_fenced: Any = None

    #: mints new sids (:class:`~.sid_owner.SidMinter`) when session
    #: forwarding is on (see :mod:`.forwarding`); None: python-engineio's ids
    sid_minter: Any = None

    def shape_new_id(self, random_id: str) -> str:
        return random_id if self.sid_minter is None else str(self.sid_minter.mint(random_id))

    def share_counters(self, counters: dict[str, int]) -> None:
        """Count in ``counters`` from now on (the Socket.IO server's, so
        that one dict holds every counter the metrics report)."""
        counters.update(self.counters)
        self.counters = counters
        self.pause_fence.counters = counters

    def set_max_backlog(self, max_backlog: int) -> None:
        """Bytes a client may leave unread; applies to sockets opened later."""
        if isinstance(max_backlog, bool) or not isinstance(max_backlog, int) \
                or max_backlog < 1024:
            raise ConfigurationError(
                f"max_backlog must be a whole number of bytes, at least 1024 (got "
                f"{max_backlog!r}); e.g. max_backlog=4 * 1024 * 1024 for 4 MiB.")
        self.max_backlog = max_backlog

    def set_write_window(self, write_window: float) -> None:
        """Seconds a frame may wait for the next ones on a websocket streamed
        to (0: off); applies at once, to every websocket."""
        self.write_window = checked_write_window(write_window)
        if self.flusher is not None:
            self.flusher.write_window = self.write_window

    def socket_created(self, eio_socket: Any) -> None:
        # polling is decoded strictly under every async mode; on a green
        # runtime the websocket transport is the node's own
        compat.adopt_socket(eio_socket,
                            ClusterSocket if self.runtime is not None else StrictSocket)
        self.pause_fence.start()
        eio_socket.fence_generation = self.pause_fence.check()

    def close_fenced(self, generation: int) -> None:
        """A pause was found: every connection opened before it is marked
        now (no waiting: the caller may be answering whether a session is
        held here) and closed in the background, as if its client's close
        had been read (see :mod:`.pause_fence`)."""
        fenced = [(sid, eio_socket) for sid, eio_socket in compat.open_engine_sockets(self)
                  if getattr(eio_socket, "fence_generation", generation) < generation]
        if not fenced:
            return
        self.counters["connections_fenced"] = \
            self.counters.get("connections_fenced", 0) + len(fenced)
        if self.on_fenced is not None:
            for sid, _ in fenced:
                self.on_fenced(sid)
        self.start_background_task(self._close_all, [s for _, s in fenced])

    def _close_all(self, sockets: list[Any]) -> None:
        for eio_socket in sockets:
            try:
                eio_socket.close(wait=False, abort=True, reason=self.reason.TRANSPORT_CLOSE)
            except Exception:  # noqa: BLE001 - one failure must not keep the others open
                logger.exception("closing a fenced connection failed")

    def disconnect(self, sid: str | None = None) -> None:
        """Close a client's session (every session when ``sid`` is None).

        A long-polling session is closed without waiting for the client to
        poll its CLOSE packet: python-engineio's ``disconnect`` waits for
        that (``Socket.close(wait=True)`` joins the packet queue), and a
        client with no poll pending never takes it, since later polls of a
        closed session get 400. The POST that made the node disconnect it (a
        malformed packet, a flood) would hang for good. A poll that is
        pending still gets the CLOSE packet.
        """
        eio_socket = compat.engine_socket(self, sid) if sid is not None else None
        if sid is None or eio_socket is None or getattr(eio_socket, "upgraded", True):
            super().disconnect(sid)
            return
        eio_socket.close(wait=False, reason=self.reason.SERVER_DISCONNECT)
        compat.forget_engine_socket(self, sid)

    def malformed_payload(self, sid: str, transport: str, reason: str) -> None:
        """A client sent what does not decode as Engine.IO: count it, and
        log one line per :data:`MALFORMED_LOG_WINDOW` at most (never a
        traceback: the bytes are the client's fault, not the node's).

        The socket raises right after, and the transport ends the session
        (a POST gets 400).
        """
        self.counters["malformed_packets"] = self.counters.get("malformed_packets", 0) + 1
        self._quiet.log(
            logging.WARNING, "malformed_payload",
            "Refused a malformed Engine.IO payload (connection %s over %s: %s); the "
            "session was closed (a POST gets 400) and malformed_packets counts these. "
            "Clients must speak Engine.IO 4 (socket.io-client 3+, python-socketio 5+).",
            sid[:8], transport, reason[:200])

    def backlog_exceeded(self, sid: str, backlog: int) -> None:
        """A client left more than ``max_backlog`` bytes unread: it was cut."""
        self.counters["slow_consumers"] = self.counters.get("slow_consumers", 0) + 1
        self._quiet.log(
            logging.WARNING, "slow_consumer",
            "Connection %s disconnected: %d bytes unread exceed max_backlog=%d "
            "(%d slow consumer(s) so far). A client that stops reading is cut "
            "so it cannot grow the node's memory; raise --max-backlog if "
            "legitimate clients lag this far.", sid[:8], backlog, self.max_backlog,
            self.counters["slow_consumers"])

    def unread_bytes(self, sid: str) -> int:
        """Bytes client ``sid`` has not taken yet (0 when unknown or gone)."""
        socket = compat.engine_socket(self, sid)
        return int(getattr(socket, "unread_bytes", 0)) if socket is not None else 0

    def read_stats(self) -> dict[str, int]:
        """Websockets read in turns (detached from their HTTP request) and
        the turns running and waiting (:mod:`.websocket_reads`)."""
        scheduler = self.read_scheduler
        if scheduler is None:
            return {"detached": 0, "turns_running": 0, "turns_waiting": 0}
        return {"detached": scheduler.detached, "turns_running": scheduler.running,
                "turns_waiting": scheduler.waiting}

    def transport_stats(self) -> dict[str, int]:
        """Websocket writes, the frames they carried (coalescing ratio), and
        the writes held for the write window."""
        if self.flusher is None:
            return {"writes": 0, "frames": 0, "held": 0}
        return dict(self.flusher.counters)

"""The node's Engine.IO socket: websocket frames written directly, bounded.

:class:`ClusterSocket` is python-engineio's socket with a different
websocket transport under eventlet and gevent (polling is untouched):

- once a connection is on the websocket, :meth:`ClusterSocket.send` turns
  the packet into a frame (shared by every recipient of a broadcast, see
  :mod:`.frames`) and appends it to the connection's
  :class:`~.frame_writer.FrameWriter`: no queue, no writer green thread, no
  per-packet timer, and one ``send`` per socket per turn of the event loop;
- pings are hub timers instead of one sleeping green thread per connection,
  and so is the pong deadline that finds a dead peer;
- once upgraded, a websocket detaches from the WSGI server and is read in
  turns when it has bytes (:mod:`.websocket_reads`): an idle connection
  holds no green thread;
- the handshake is the node's own (:mod:`.websocket_handshake`), and the
  runtime's hub is reached through the server's
  :class:`~cluster.runtime.Runtime` only, so the same code runs on both;
- what a client leaves unread is bounded in bytes (``max_backlog`` of the
  Engine.IO server), on the websocket and on long-polling alike: past it
  the client is disconnected, logged and counted (``slow_consumers``).

The upgrade from polling keeps python-engineio's protocol exactly: the
probe, the NOOP that ends the pending poll, the UPGRADE packet; whatever was
queued while polling is written first, in order.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

from cluster import compat
from cluster.node.engine_socket import MalformedPayload, StrictSocket
from cluster.node.frame_writer import DEFAULT_MAX_BACKLOG, FrameWriter
from cluster.node.frames import frame, frame_of
from cluster.node.websocket_handshake import NodeWebSocket, upgrade
from cluster.node.websocket_reader import WebSocketReader
from cluster.node.websocket_reads import DetachedReads

logger = logging.getLogger("cluster.transport")

PING_FRAME = frame(b"2")
#: seconds past ``ping_timeout`` the pong deadline allows (timers and the
#: client's own turn of its event loop)
PONG_GRACE = 0.5
#: how a Socket.IO CONNECT starts, as an Engine.IO message over a websocket
_CONNECT_MESSAGE = "40"


class _SpentQueue:
    """Stands in for python-engineio's packet queue (a green queue with its
    events and locks, ~2 KiB) once the socket writes frames itself."""

    __slots__ = ("_empty",)

    def __init__(self, empty: type[Exception]) -> None:
        self._empty = empty

    def put(self, item: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise self._empty()

    def task_done(self) -> None:
        pass

    def join(self, *args: Any) -> None:
        pass


def _packet_size(pkt: Any) -> int:
    data = pkt.data
    return len(data) + 2 if isinstance(data, (str, bytes, bytearray)) else 64


class ClusterSocket(StrictSocket):
    """python-engineio's ``Socket`` with the node's websocket transport.

    Adopted by :class:`~.engine.ClusterEngineServer` right after python-engineio
    creates the socket (see :func:`.compat.adopt_socket`); it adds no
    ``__init__`` state, only class-level defaults. Its server has a
    ``runtime`` (:class:`cluster.runtime.Runtime`) and a ``flusher``.
    """

    frame_writer: FrameWriter | None = None
    websocket: NodeWebSocket | None = None
    compressed = False
    polling_backlog = 0
    ping_timer: Any = None
    pong_timer: Any = None
    #: the pause fence's generation when it opened (set by the engine)
    fence_generation = 0
    #: a message is handled apart (a CONNECT waiting for admission, its
    #: handler, its rooms), so nothing of this connection is read meanwhile:
    #: a pong may be waiting unread (see :meth:`check_ping_timeout`)
    reads_paused = False

    # python-engineio's own state (set in its ``Socket.__init__``), declared
    # for mypy only: the base class is untyped
    queue: Any
    last_ping: float | None
    connected: bool
    upgraded: bool
    closing: bool
    closed: bool

    # -- sending -----------------------------------------------------------

    @property
    def unread_bytes(self) -> int:
        """Bytes sent to this client that it has not taken yet (what
        ``max_backlog`` bounds)."""
        writer = self.frame_writer
        return writer.backlog if writer is not None else self.polling_backlog

    def send(self, pkt: Any) -> None:
        fence = getattr(self.server, "pause_fence", None)
        if fence is not None and fence.generation != self.fence_generation:
            # opened before the node was frozen: an answer now (the ack of
            # an emit the outbox dropped) would tell its client a lie
            return
        writer = self.frame_writer
        if writer is None:
            self._send_polling(pkt)
            return
        if not self.check_ping_timeout():
            return
        if self.compressed:
            writer.write(self._frame(pkt))
        else:
            writer.write(frame_of(pkt))

    def _send_polling(self, pkt: Any) -> None:
        size = _packet_size(pkt)
        limit = getattr(self.server, "max_backlog", DEFAULT_MAX_BACKLOG)
        if self.polling_backlog + size > limit and not self.closing and not self.closed:
            self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)
            self._report_backlog(self.polling_backlog + size)
            return
        self.polling_backlog += size
        super().send(pkt)

    def poll(self) -> list[Any]:
        packets: list[Any] = super().poll()
        self.polling_backlog = max(0, self.polling_backlog - sum(map(_packet_size, packets)))
        return packets

    def _report_backlog(self, backlog: int) -> None:
        report = getattr(self.server, "backlog_exceeded", None)
        if callable(report):
            report(self.sid, backlog)

    def _writer_overflowed(self, backlog: int) -> None:
        # runs in a green thread of its own (see FrameWriter._overflow)
        self._report_backlog(backlog)
        self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)

    # -- pings: timers, not a sleeping green thread per connection ---------

    def schedule_ping(self) -> None:
        if self.last_ping:
            self.last_ping = None
            self.ping_timer = self.server.runtime.call_later(self.server.ping_interval,
                                                             self._ping_due)

    def _cancel_ping(self) -> None:
        # a pending timer holds this socket, its writer, websocket and
        # environ for up to ping_interval after the connection is gone:
        # ~12 KB per closed connection under churn
        timer, self.ping_timer = self.ping_timer, None
        pong_timer, self.pong_timer = self.pong_timer, None
        cancel = self.server.runtime.cancel_call
        if timer is not None:
            cancel(timer)
        if pong_timer is not None:
            cancel(pong_timer)

    def _ping_due(self) -> None:
        # runs in the hub: only non-blocking work here
        if self.closing or self.closed:
            return
        sent_at = self.last_ping = time.time()
        writer = self.frame_writer
        if writer is not None:
            writer.write(PING_FRAME)
            # nothing reads a detached websocket that has nothing to say, so
            # a dead peer is found by its missing pong, not by a read timeout
            self.pong_timer = self.server.runtime.call_later(
                self.server.ping_timeout + PONG_GRACE, self._pong_due, sent_at)
        else:
            self.server.runtime.spawn(self.send, eio_packet.Packet(eio_packet.PING))

    def check_ping_timeout(self) -> bool:
        """python-engineio's check, except while reading is paused: the
        client's pong may then be in the socket, unread, and a CONNECT
        that waits for its turn longer than ``ping_timeout`` (a reconnect
        storm's queue, a slow connect handler) would close a client that
        answered. Once reading resumes, the pong is read or the deadline
        (re-armed meanwhile, :meth:`_pong_due`) closes the connection."""
        if self.reads_paused and not self.closed:
            return True
        return bool(super().check_ping_timeout())

    def _pong_due(self, sent_at: float) -> None:
        # runs in the hub; a pong in time cleared last_ping (schedule_ping)
        self.pong_timer = None
        if self.last_ping != sent_at or self.closing or self.closed:
            return
        if self.reads_paused:
            # the pong may be waiting unread (see check_ping_timeout): one
            # more deadline, from now
            self.pong_timer = self.server.runtime.call_later(
                self.server.ping_timeout + PONG_GRACE, self._pong_due, sent_at)
            return
        self.server.logger.info("%s: Client is gone, closing socket", self.sid)
        # close() runs the disconnect handlers, which may block
        self.server.runtime.spawn(self.close, False, False, self.server.reason.PING_TIMEOUT)

    # -- closing -----------------------------------------------------------

    def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        self._cancel_ping()
        writer = self.frame_writer
        if writer is None:
            super().close(wait=wait, abort=abort, reason=reason)
            return
        if self.closed or self.closing:
            return
        self.closing = True
        try:
            self.trigger_disconnect(reason or self.server.reason.SERVER_DISCONNECT)
        finally:
            self.closed = True
            if not abort:
                writer.write(frame_of(eio_packet.Packet(eio_packet.CLOSE)))
                if wait and not self.server.runtime.in_hub():
                    writer.wait_drained(timeout=1.0)
                else:
                    writer.flush()
            writer.close()

    # -- the websocket transport -------------------------------------------

    def upgrade_to_websocket(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.upgraded:
            raise OSError("Socket has been upgraded already")
        return upgrade(environ, start_response, self._serve_websocket)

    def _serve_websocket(self, ws: NodeWebSocket) -> None:
        server = self.server
        sock = ws.socket
        # bounds each read of the upgrade handshake (and, when the server
        # cannot detach the connection, every read: a dead peer)
        sock.settimeout(server.ping_interval + server.ping_timeout)
        writer = FrameWriter(
            sock, server.flusher, max_backlog=getattr(server, "max_backlog", DEFAULT_MAX_BACKLOG),
            on_overflow=self._writer_overflowed)
        deflate = ws.deflate
        self.compressed = deflate is not None
        if self.compressed:
            self.websocket = ws  # compresses with this connection's own context
        reader = WebSocketReader(sock, writer.write, max_message=server.max_http_buffer_size,
                                 deflate=deflate)
        receive_frame = reader.read_message
        detached = False

        try:
            if self.connected:
                if not self._finish_upgrade(receive_frame, writer):
                    return
            else:
                self.connected = True
                self.upgraded = True
            for pkt in compat.drain_queue(self.queue):
                if pkt is None:  # closed while upgrading
                    return
                writer.write(self._frame(pkt))
            self.frame_writer = writer
            # nothing reads the queue from now on: free it
            self.queue = _SpentQueue(server.get_queue_empty_exception())
            if ws.detach is not None:
                release = ws.detach()
                try:
                    reads = DetachedReads(self, reader, sock, server.read_scheduler, release)
                except BaseException:
                    release()  # the socket and its slot, which nothing else holds now
                    raise
                detached = True  # the writer is the connection's from now on
                try:
                    reads.start()
                except BaseException:
                    reads.finish()  # closes the session, the socket and its slot
                    raise
                return
            self._read_loop(receive_frame)
        finally:
            if not detached:
                if self.frame_writer is writer:
                    self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
                writer.close()

    def _frame(self, pkt: Any) -> bytes:
        websocket = self.websocket
        if websocket is not None:
            return websocket.compressed_frame(pkt.encode())
        return frame_of(pkt)

    def _finish_upgrade(self, receive_frame: Any, writer: FrameWriter) -> bool:
        """python-engineio's upgrade handshake: probe, NOOP, UPGRADE."""
        self.upgrading = True  # sends keep going to the polling queue meanwhile
        try:
            probe = self._upgrade_packet(receive_frame())
            if probe is None:
                return False
            if probe.packet_type != eio_packet.PING or probe.data != "probe":
                self.server.logger.info("%s: Failed websocket upgrade, no PING packet",
                                        self.sid)
                return False
            writer.write(self._frame(eio_packet.Packet(eio_packet.PONG, data="probe")))
            self.queue.put(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            upgrade = self._upgrade_packet(receive_frame())
            if upgrade is None:
                return False
            if upgrade.packet_type != eio_packet.UPGRADE:
                self.server.logger.info("%s: Failed websocket upgrade, expected UPGRADE",
                                        self.sid)
                return False
            self.upgraded = True
            return True
        finally:
            self.upgrading = False

    def _upgrade_packet(self, data: str | bytes | None) -> Any:
        """A packet of the upgrade handshake; None when the client closed, or
        sent what does not decode (refused and counted, the session ends)."""
        if data is None:
            return eio_packet.Packet(encoded_packet=None)  # a NOOP: the upgrade fails
        try:
            return self.decode_client_packet(data, "websocket")
        except MalformedPayload:
            return None  # the session is closed already

    def _read_loop(self, receive_frame: Any) -> None:
        while True:
            try:
                data = receive_frame()
            except Exception as exc:
                if not self.closed:
                    self.server.logger.info('%s: Unexpected error "%s", closing connection',
                                            self.sid, exc)
                return
            if data is None:  # closed by the client, or a protocol violation
                return
            if not self.handle_message(data):
                return

    # -- what a detached websocket's reads hand over (.websocket_reads) -----

    def handle_message(self, data: str | bytes) -> bool:
        """Handle one message from the client; ``False`` once the
        connection is to end."""
        try:
            writer = self.frame_writer
            if writer is not None:
                writer.heard()  # what answers this leaves at the end of the turn
            return self._handle(data)
        finally:
            # the message handled apart, if it was one, is done: the
            # connection's reading resumes after this
            self.reads_paused = False

    def _handle(self, data: str | bytes) -> bool:
        try:
            pkt = self.decode_client_packet(data, "websocket")
            self.check_packet_type(pkt, "websocket")
            self.receive_client_packet(pkt, "websocket")
            # a client that sends without pause would otherwise keep this
            # green thread running (its reads never wait): let the other
            # connections have the hub after each message
            self.server.runtime.sleep(0)
        except MalformedPayload:
            return False  # counted and logged by the server; the caller closes
        except eio_exceptions.SocketIsClosedError:
            return False
        except Exception:
            self.server.logger.exception("Unknown receive error")
            return False
        return not self.closed

    def handled_apart(self, data: str | bytes) -> bool:
        """A Socket.IO CONNECT (an Engine.IO message, ``4``, whose packet is a
        CONNECT, ``0``, to any namespace) waits for admission and for its
        rooms: see :mod:`.websocket_reads`."""
        apart = isinstance(data, str) and data.startswith(_CONNECT_MESSAGE)
        if apart:
            self.reads_paused = True
        return apart

    def connection_lost(self) -> None:
        """The detached websocket's reading ended: the session ends with it."""
        writer = self.frame_writer
        if writer is None:
            return
        try:
            if not (self.closed or self.closing):
                self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            writer.close()
        finally:
            # python-engineio drops a closed socket from its server at the end
            # of the request that served it, and this one's ended long ago
            if compat.engine_socket(self.server, self.sid) is self:
                compat.forget_engine_socket(self.server, self.sid)


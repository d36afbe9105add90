"""Reading websockets without a green thread per connection.

A websocket used to be read by the green thread that served its HTTP
upgrade, blocked in ``recv`` for the connection's whole life: its stack,
its frames and the WSGI server's objects for the request (buffered reader
and writer, protocol object) stayed alive while the connection idled, most
of what an idle websocket cost (issue 26: ~32 KiB traced per connection).

Here, once the upgrade is done, the connection *detaches* from the WSGI
server (:data:`cluster.runtime.UPGRADE_DETACH`: the server's green thread
ends, the socket stays open and keeps its ``max_connections`` slot) and a
one-shot readiness watch in the hub (:meth:`cluster.runtime.Runtime.watch_readable`)
waits for its next bytes. When they come, :class:`ReadScheduler` gives the
connection a *read turn* in a green thread: it reads what the kernel has
(non-blocking), parses the complete messages (:class:`.websocket_reader.WebSocketReader`
keeps a partial one for later), hands each to the Engine.IO socket in
order, and arms the watch again. One turn at a time per connection, so a
connection's messages keep their order; at most ``limit`` turns at once on
the node (past it, ready connections queue, first come first served), so
a burst of readable connections cannot spawn without bound. An idle
connection then holds its socket, its frame writer, its parser and its
Engine.IO/Socket.IO state, and nothing that waits.

A message that may wait long is handled *apart*, in a green thread of its
own, with the connection's reading paused until it is done (its order
kept): a Socket.IO CONNECT waits for an admission slot
(:mod:`.connect_admission`) and for its rooms' subscriptions. Handled in a
turn, a reconnect storm's CONNECTs held every turn while they waited, and
the node's connected clients queued behind them: their messages took
seconds (issue 29's storm, others' p99 12.9 s). Apart, a waiting CONNECT
costs one green thread, only until it is served.

A dead peer is no longer found by a read that times out (nothing reads):
the Engine.IO socket's pong deadline closes it (see
:mod:`.websocket_transport`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from cluster.node.websocket_reader import WebSocketReader

if TYPE_CHECKING:
    from cluster.runtime import Runtime

__all__ = ["DEFAULT_READ_TURNS", "DetachedReads", "ReadScheduler"]

logger = logging.getLogger("cluster.transport")

#: read turns running at once on a node (see :class:`ReadScheduler`)
DEFAULT_READ_TURNS = 256
#: ``recv`` calls one turn makes at most before letting the next
#: connection in line have a turn (64 KiB each)
RECVS_PER_TURN = 8
_RECV_SIZE = 65536


class MessageSink(Protocol):
    """What a detached connection's messages go to (the Engine.IO socket)."""

    def handle_message(self, data: str | bytes) -> bool:
        """Handle one message from the client; ``False``: stop reading."""

    def handled_apart(self, data: str | bytes) -> bool:
        """Whether handling this message may wait long (see the module doc),
        so it runs in a green thread of its own, not in a read turn."""

    def connection_lost(self) -> None:
        """The client closed, broke the protocol, or the socket failed."""


class ReadScheduler:
    """Runs the read turns of a node's detached websockets, at most
    ``limit`` at once (default :data:`DEFAULT_READ_TURNS`).

    A turn runs in a green thread; when it ends, the same green thread runs
    the next connection waiting, if any, so a burst of readable connections
    costs ``limit`` green threads at most, each for as long as the queue lasts.
    """

    def __init__(self, runtime: Runtime, limit: int = DEFAULT_READ_TURNS) -> None:
        self.runtime = runtime
        self.limit = max(1, int(limit))
        self.running = 0
        #: detached websockets being read (started and not finished)
        self.detached = 0
        self._waiting: deque[DetachedReads] = deque()

    def ready(self, connection: DetachedReads) -> None:
        """``connection`` has bytes to read (called in the hub or a green thread)."""
        if self.running < self.limit:
            self.running += 1
            self.runtime.spawn(self._run, connection)
        else:
            self._waiting.append(connection)

    @property
    def waiting(self) -> int:
        """Ready connections waiting for a turn."""
        return len(self._waiting)

    def _run(self, connection: DetachedReads) -> None:
        try:
            while True:
                try:
                    connection.read_turn()
                except Exception:  # noqa: BLE001 - one connection must not stop the others
                    logger.exception("websocket read turn failed")
                    connection.fail()
                if not self._waiting:
                    return
                connection = self._waiting.popleft()
        finally:
            self.running -= 1


class DetachedReads:
    """One detached websocket's reads (see the module doc).

    :param sink: where its messages go.
    :param reader: the connection's parser, maybe holding bytes read during
        the upgrade.
    :param sock: the connection's socket (green or raw).
    :param release: closes the socket and gives its connection slot back
        (from the server's detach), called once when reading ends.
    """

    __slots__ = ("_sink", "_reader", "_raw", "_watch", "_scheduler", "_release", "done")

    def __init__(self, sink: MessageSink, reader: WebSocketReader, sock: Any,
                 scheduler: ReadScheduler, release: Callable[[], None]) -> None:
        runtime = scheduler.runtime
        self._sink = sink
        self._reader = reader
        self._raw = runtime.raw_socket(sock)
        self._watch = runtime.watch_readable(self._raw.fileno())
        self._scheduler = scheduler
        self._release = release
        self.done = False

    def start(self) -> None:
        """Wait for the client's next message (or handle the ones already
        buffered at once)."""
        self._scheduler.detached += 1
        if self._reader.buffered:
            self._scheduler.ready(self)
        else:
            self._watch.arm(self._readable)

    def _readable(self) -> None:
        # in the hub: only hand over
        if not self.done:
            self._scheduler.ready(self)

    def read_turn(self) -> None:
        """Read what is there, handle every complete message, wait again."""
        if self.done:
            return
        reader = self._reader
        # what the upgrade's reads took in past its last frame (a client
        # sends its first messages right behind the UPGRADE packet, often in
        # the same segment) is handled before anything is read: the kernel
        # may have nothing more, and this connection no turn until it does
        if reader.buffered and not self._handle_messages():
            return
        recv = self._raw.recv
        for _ in range(RECVS_PER_TURN):
            try:
                chunk = recv(_RECV_SIZE)
            except BlockingIOError:
                break  # all read: wait for more
            except OSError:
                chunk = b""  # reset by the peer, or shut down under us
            reader.feed(chunk)
            if not self._handle_messages():
                return
            if len(chunk) < _RECV_SIZE:
                break
        else:
            # more may be waiting: queue behind the others rather than
            # keep the turn
            self._scheduler.ready(self)
            return
        self._watch.arm(self._readable)

    def _handle_messages(self) -> bool:
        """Hand over the complete messages buffered; ``False`` when reading
        stops here: the connection ended, or a message is handled apart."""
        reader, sink = self._reader, self._sink
        while True:
            message = reader.next_message()
            if message is None:
                if reader.closed:
                    self.finish()
                    return False
                return True
            if sink.handled_apart(message):
                # no watch is armed and no turn is queued until it is done,
                # so nothing of this connection is read or handled meanwhile
                self._scheduler.runtime.spawn(self._handle_apart, message)
                return False
            if not sink.handle_message(message) or self.done:
                self.finish()
                return False

    def _handle_apart(self, message: str | bytes) -> None:
        try:
            keep_reading = self._sink.handle_message(message)
        except Exception:  # noqa: BLE001 - end this connection, not the node
            logger.exception("websocket message handling failed")
            keep_reading = False
        if not keep_reading or self.done:
            self.finish()
        else:
            # the rest of what was read, then the socket: in a turn again
            self._scheduler.ready(self)

    def fail(self) -> None:
        """A turn failed unexpectedly: end the connection."""
        self.finish()

    def finish(self) -> None:
        """Stop reading, tell the sink, close the socket and free its slot (once)."""
        if self.done:
            return
        self.done = True
        self._scheduler.detached -= 1
        self._watch.cancel()
        try:
            self._sink.connection_lost()
        finally:
            self._release()

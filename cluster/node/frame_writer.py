"""Writing websocket frames: coalesced, non-blocking, with a bounded backlog.

python-engineio gives every websocket a writer green thread that takes one
packet at a time from a queue (a ``get`` with a timeout: a timer created and
cancelled per packet) and writes each frame with its own ``sendall``. With
``TCP_NODELAY`` on, each frame is then its own TCP segment. On a node that
fans out to thousands of sockets that writer loop was most of the CPU.

Here a frame is appended to its socket's :class:`FrameWriter` instead. The
first frame of a turn of the event loop asks the node's :class:`Flusher` for
one callback at the end of that turn, which writes each socket that got
frames with *one* non-blocking ``send`` of everything it has pending. An
event and its ack still leave at once (latency stays sub-millisecond with
``TCP_NODELAY``), while a burst of broadcasts leaves as a few large writes.

Across turns, a socket that is streamed to packs its frames too: Nagle's
idea, under the node's control and within a bound (``write_window``, 1 ms
by default). A frame for a socket written less than a window ago, whose
client has sent nothing since, waits until a window after that write and
leaves with whatever joined it by then. A frame to a socket quiet for a
window leaves at the end of the turn as before, and so does anything
written after the client spoke (an ack, a reply): request and answer never
wait (event+ack stayed at 0.6 ms p50). Nagle's own rule, hold while
anything is unacknowledged, held each frame for the client's delayed ACK,
up to 40 ms (Flask-SocketIO's p99 of 24-47 ms at 13,500 deliveries/s). On
one node streaming to a room of 10 at 10,400 and 13,500 deliveries/s, a
2 ms window cut the segments per delivery from 1.02 to 0.42-0.46 and
0.31-0.33 (1 ms: 0.58, 0.51), and the clients' ACKs with them, for 0.4-1
ms more p50 (see ``benchmarks/README.md``).

A socket whose kernel buffer is full keeps the rest and gets a green thread
that waits until it can write again; everyone else goes on. What a client
does not read piles up only to ``max_backlog`` bytes: past that the client
is disconnected (``on_overflow``), so one stalled or hostile reader cannot
grow the node's memory.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.exceptions import ConfigurationError

if TYPE_CHECKING:
    from cluster.runtime import Runtime

logger = logging.getLogger("cluster.transport")

#: pending bytes at which a socket is written at once rather than at the end
#: of the turn: bounds what a long burst without a yield holds per socket
FLUSH_AT_BYTES = 64 * 1024
#: default of ``max_backlog``: unsent bytes a client may leave behind
DEFAULT_MAX_BACKLOG = 1024 * 1024

#: seconds a frame may wait for the next ones on a socket streamed to (the
#: node's ``write_window``; see the module doc)
DEFAULT_WRITE_WINDOW = 0.001
#: the largest ``write_window`` accepted: a window is about packing frames,
#: not about delaying them
MAX_WRITE_WINDOW = 0.1


def checked_write_window(value: Any) -> float:
    """``value`` as a ``write_window`` in seconds.

    :raises ConfigurationError: for anything but a number from 0 (off) to
        :data:`MAX_WRITE_WINDOW`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= MAX_WRITE_WINDOW:
        raise ConfigurationError(
            f"write_window must be a number of seconds from 0 (off) to "
            f"{MAX_WRITE_WINDOW:g} (got {value!r}); e.g. write_window=0.002 for 2 ms.")
    return float(value)


#: states of a writer's next flush
NOT_SCHEDULED, AT_TURN_END, HELD = "not scheduled", "at turn end", "held"


class Flusher:
    """Writes every :class:`FrameWriter` that got frames, once per hub turn.

    One hub callback per turn (not per frame, not per socket; the
    runtime's :meth:`~cluster.runtime.Runtime.call_soon`) runs :meth:`run`
    in the hub once the running green thread yields. It only does
    non-blocking sends, which is all the hub may do. Writers held for
    their window (see the module doc) are written by one timer, armed by
    the first of them, which writes every writer held by then.

    :param runtime: the node's green-thread runtime; its writers wait and
        spawn through it too.
    :param write_window: seconds a frame may wait to leave with the next
        ones, on a socket written less than that ago whose client has sent
        nothing since (default 0 here: off; the node's default is
        :data:`DEFAULT_WRITE_WINDOW`).
    """

    def __init__(self, runtime: Runtime, write_window: float = 0.0) -> None:
        self.runtime = runtime
        self.write_window = write_window
        self._dirty: list[FrameWriter] = []
        self._armed = False
        self._held: list[FrameWriter] = []
        self._held_timer: Any = None
        #: ``writes`` (send calls), ``frames`` (frames they carried) and
        #: ``held`` (writes that waited for the write window)
        self.counters = {"writes": 0, "frames": 0, "held": 0}

    def schedule(self, writer: FrameWriter) -> None:
        self._dirty.append(writer)
        if not self._armed:
            self._armed = True
            self.runtime.call_soon(self.run)

    def hold(self, writer: FrameWriter, delay: float) -> None:
        """Write ``writer`` within ``delay`` seconds (with every other writer
        held by then). No frame waits longer than its window: the timer is
        armed by the first writer held, within that writer's window, and
        every writer held later was held after it."""
        self._held.append(writer)
        self.counters["held"] += 1
        if self._held_timer is None:
            self._held_timer = self.runtime.call_later(max(0.0, delay), self.run_held)

    def run_held(self) -> None:
        self._held_timer = None
        held, self._held = self._held, []
        _flush_each(held, FrameWriter.flush_held)

    def run(self) -> None:
        self._armed = False
        dirty, self._dirty = self._dirty, []
        _flush_each(dirty, FrameWriter.flush)


def _flush_each(writers: list[FrameWriter], flush: Callable[[FrameWriter], None]) -> None:
    for writer in writers:
        try:
            flush(writer)
        except Exception:  # one socket's failure must not stop the others
            logger.exception("websocket flush failed")


class FrameWriter:
    """The outgoing side of one websocket: pending frames and their socket.

    :param sock: the connection's green socket; writes go to the real socket
        beneath it, non-blocking.
    :param flusher: the node's :class:`Flusher` (and its runtime).
    :param max_backlog: unsent bytes tolerated before ``on_overflow`` is
        called (default 1 MiB, :data:`DEFAULT_MAX_BACKLOG`).
    :param on_overflow: called once, from a green thread of its own, when the
        backlog is exceeded; the pending frames are dropped and nothing more
        is written by then.
    """

    __slots__ = ("_fd", "_flusher", "_pending", "_pending_bytes", "_scheduled",
                 "_draining", "closed", "max_backlog", "_on_overflow", "_sent_at", "_heard")

    def __init__(self, sock: Any, flusher: Flusher, *, max_backlog: int = DEFAULT_MAX_BACKLOG,
                 on_overflow: Callable[[int], None] | None = None) -> None:
        self._fd = flusher.runtime.raw_socket(sock)
        self._flusher = flusher
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        #: NOT_SCHEDULED, AT_TURN_END or HELD
        self._scheduled = NOT_SCHEDULED
        self._draining = False
        self.closed = False
        self.max_backlog = max_backlog
        self._on_overflow = on_overflow
        #: when the last send went out (monotonic seconds)
        self._sent_at = 0.0
        #: the client sent something since that send
        self._heard = True

    @property
    def backlog(self) -> int:
        """Bytes accepted but not yet handed to the kernel."""
        return self._pending_bytes

    def write(self, data: bytes) -> None:
        """Queue ``data`` (one or more whole frames) for this socket."""
        if self.closed:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._draining:
            # the drain thread writes it once the kernel takes more
            if self._pending_bytes > self.max_backlog:
                self._overflow()
        elif self._pending_bytes >= FLUSH_AT_BYTES:
            self.flush()
        elif self._scheduled is NOT_SCHEDULED:
            window = self._flusher.write_window
            if window and not self._heard:
                wait = self._sent_at + window - time.monotonic()
                if wait > 0:
                    self._scheduled = HELD
                    self._flusher.hold(self, wait)
                    return
            self._scheduled = AT_TURN_END
            self._flusher.schedule(self)
        elif self._scheduled is HELD and self._heard:
            # the client spoke meanwhile: what answers it leaves this turn
            self._scheduled = AT_TURN_END
            self._flusher.schedule(self)

    def heard(self) -> None:
        """The client sent something: what is written next leaves at the
        end of the turn, as an answer must (see :attr:`Flusher.write_window`)."""
        self._heard = True

    def flush_held(self) -> None:
        """The hold of :meth:`write` is over (a no-op when something else
        flushed meanwhile)."""
        if self._scheduled is HELD:
            self.flush()

    def flush(self) -> None:
        """Hand everything pending to the kernel with one non-blocking send."""
        self._scheduled = NOT_SCHEDULED
        if self.closed or self._draining or not self._pending:
            return
        if not self._send_pending():
            return
        if self._pending:
            if self._pending_bytes > self.max_backlog:
                self._overflow()
                return
            self._draining = True
            self._flusher.runtime.spawn(self._drain)

    def _send_pending(self) -> bool:
        """One send of all pending bytes; False when the socket broke."""
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        try:
            sent = self._fd.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._broken(exc)
            return False
        counters = self._flusher.counters
        counters["writes"] += 1
        counters["frames"] += len(pending)
        self._sent_at = time.monotonic()
        self._heard = False
        if sent >= len(data):
            self._pending = []
            self._pending_bytes = 0
        else:
            rest = data[sent:]
            self._pending = [rest]
            self._pending_bytes = len(rest)
        return True

    def _drain(self) -> None:
        # a green thread, only while the kernel buffer is full: waits for room
        wait_writable = self._flusher.runtime.wait_writable
        try:
            while self._pending and not self.closed:
                try:
                    wait_writable(self._fd.fileno())
                except Exception as exc:  # closed under us
                    self._broken(exc)
                    return
                if not self._send_pending():
                    return
        finally:
            self._draining = False

    def wait_drained(self, timeout: float) -> bool:
        """Wait (green) up to ``timeout`` s until nothing is pending."""
        sleep = self._flusher.runtime.sleep
        deadline = time.monotonic() + timeout
        self.flush()
        while self._pending and not self.closed and time.monotonic() < deadline:
            sleep(0.005)
        return not self._pending

    def close(self, flush: bool = True) -> None:
        """Stop writing and shut the connection down (the reader sees EOF).

        ``flush``: first hand what is pending (a close frame, say) to the
        kernel if it takes it without waiting.
        """
        if self.closed:
            return
        if flush and self._pending and not self._draining:
            self._send_pending()
        self.closed = True
        self._pending = []
        self._pending_bytes = 0
        try:
            self._fd.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.EBADF):
                logger.debug("websocket shutdown: %s", exc)

    def _overflow(self) -> None:
        backlog = self._pending_bytes
        self.close(flush=False)
        if self._on_overflow is not None:
            # not here: this may run inside the hub, and the disconnect
            # handlers it leads to may block
            self._flusher.runtime.spawn(self._on_overflow, backlog)

    def _broken(self, exc: BaseException) -> None:
        if not isinstance(exc, OSError) or exc.errno not in (
                errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
            logger.debug("websocket write failed: %s", exc)
        self.close(flush=False)  # the reader sees EOF and runs the disconnect

"""A TCP proxy that injects network faults between a node and Redis.

This kernel has no ``netem`` qdisc and no toxiproxy server is available, so
latency, stalls and resets come from this proxy. The node's
``--message-queue`` URL points at :attr:`FaultProxy.url`; the proxy forwards
to the real Redis. Controls act at run time, from the test's thread:

- :meth:`set_latency` ``(delay, jitter, direction)``: every chunk read is
  held ``delay +- jitter`` seconds (uniform) before it is written on. Order
  within a connection is kept (a TCP stream cannot reorder), so a chunk
  never leaves before the one read before it.
- :meth:`stall` / :meth:`unstall`: hold every byte (nothing is written on,
  nothing is dropped) until released; the connection stays open, as under
  a partition that TCP has not yet noticed.
- :meth:`reset_all`: cut every current connection with a TCP RST on both
  sides (what a dying middlebox or a NAT timeout does); returns how many.
- :meth:`refuse` : accept and reset new connections at once (``False``
  accepts them again).
- :meth:`normal`: no latency, no stall, accept again.

Threads: one acceptor, and per connection one reader and one writer per
direction. Everything binds to 127.0.0.1; :meth:`stop` closes every socket
and joins every thread (bounded).
"""

from __future__ import annotations

import collections
import random
import socket
import struct
import threading
import time
from typing import Literal

__all__ = ["FaultProxy", "Direction"]

#: ``"up"`` is the node towards Redis (commands), ``"down"`` Redis towards
#: the node (replies, pub/sub messages); ``"both"`` is both
Direction = Literal["up", "down", "both"]
CHUNK = 65536
JOIN_TIMEOUT = 2.0


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST rather than a FIN (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _close(sock, socket.SHUT_RD)


def _close(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    # close() alone does not wake a thread blocked in recv() on Linux;
    # shutdown does (SHUT_RD sends nothing, so a reset stays an RST)
    try:
        sock.shutdown(how)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Faults:
    """The proxy's current faults, shared by all its pipes."""

    def __init__(self, seed: int) -> None:
        self.lock = threading.Condition()
        self.delay = {"up": 0.0, "down": 0.0}
        self.jitter = {"up": 0.0, "down": 0.0}
        self.stalled = {"up": False, "down": False}
        self.refusing = False
        self.random = random.Random(seed)

    def hold_for(self, direction: str) -> float:
        with self.lock:
            delay, jitter = self.delay[direction], self.jitter[direction]
            if not delay and not jitter:
                return 0.0
            return max(0.0, delay + self.random.uniform(-jitter, jitter))


class _Pipe:
    """One direction of one connection: a reader queues chunks with the
    time they are due, a writer sends them when due and not stalled."""

    def __init__(self, link: _Link, src: socket.socket, dst: socket.socket,
                 direction: str) -> None:
        self.link, self.src, self.dst, self.direction = link, src, dst, direction
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.ready = threading.Condition()
        self.last_due = 0.0
        self.threads = [threading.Thread(target=self._read, daemon=True,
                                         name=f"fault-proxy-{direction}-read"),
                        threading.Thread(target=self._write, daemon=True,
                                         name=f"fault-proxy-{direction}-write")]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _read(self) -> None:
        faults = self.link.proxy.faults
        while True:
            try:
                data = self.src.recv(CHUNK)
            except OSError:
                data = b""
            # due no earlier than the chunk before: the stream keeps its order
            due = max(time.monotonic() + faults.hold_for(self.direction), self.last_due)
            self.last_due = due
            with self.ready:
                self.queue.append((due, data or None))
                self.ready.notify()
            if not data:
                return

    def _write(self) -> None:
        faults = self.link.proxy.faults
        while True:
            with self.ready:
                while not self.queue and not self.link.closed:
                    self.ready.wait(0.2)
                if self.link.closed:
                    return
                due, data = self.queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.2))  # re-check: a reset may come meanwhile
                continue
            with faults.lock:
                while faults.stalled[self.direction] and not self.link.closed:
                    faults.lock.wait(0.2)
            if self.link.closed:
                return
            with self.ready:
                self.queue.popleft()
            if data is None:  # the source closed: pass the FIN on
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self.link.half_closed()
                return
            try:
                self.dst.sendall(data)
            except OSError:
                self.link.close()
                return

    def wake(self) -> None:
        with self.ready:
            self.ready.notify_all()


class _Link:
    """One proxied connection (client socket and upstream socket)."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.closed = False
        self._halves = 0
        self._lock = threading.Lock()
        self.pipes = [_Pipe(self, client, upstream, "up"), _Pipe(self, upstream, client, "down")]

    def start(self) -> None:
        for pipe in self.pipes:
            pipe.start()

    def half_closed(self) -> None:
        with self._lock:
            self._halves += 1
            done = self._halves == 2
        if done:
            self.close(rst=False)

    def close(self, rst: bool = True) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            if rst:
                _reset(sock)
            else:
                _close(sock)
        for pipe in self.pipes:
            pipe.wake()
        with self.proxy.faults.lock:
            self.proxy.faults.lock.notify_all()
        self.proxy._forget(self)

    def join(self, timeout: float) -> None:
        for pipe in self.pipes:
            for thread in pipe.threads:
                thread.join(timeout)


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``target`` with injectable faults.

    :param target_host: where Redis listens.
    :param target_port: its port.
    :param port: where the proxy listens (0: a free port, see :attr:`port`).
    :param seed: seeds the jitter, so a run can be repeated.
    """

    def __init__(self, target_host: str, target_port: int, *, port: int = 0,
                 seed: int = 29) -> None:
        self.target = (target_host, target_port)
        self.faults = _Faults(seed)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._links: set[_Link] = set()
        self._ended: list[_Link] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True,
                                          name="fault-proxy-accept")
        #: connections accepted, refused and reset since the start
        self.accepted = self.refused = self.resets = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``: the URL to give the node."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the threads."""
        self._stopping.set()
        self._acceptor.join(JOIN_TIMEOUT)
        self._listener.close()
        for link in self.links():
            link.close(rst=False)
        for link in self._ended:
            link.join(JOIN_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def links(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        return len(self.links())

    # -- controls ----------------------------------------------------------

    def set_latency(self, delay: float, jitter: float = 0.0,
                    direction: Direction = "both") -> None:
        """Hold every chunk ``delay +- jitter`` seconds (applies to chunks read from now)."""
        if delay < 0 or jitter < 0:
            raise ValueError("delay and jitter are seconds >= 0")
        with self.faults.lock:
            for name in self._directions(direction):
                self.faults.delay[name], self.faults.jitter[name] = delay, jitter

    def stall(self, direction: Direction = "both") -> None:
        """Hold every byte in ``direction`` until :meth:`unstall`."""
        with self.faults.lock:
            for name in self._directions(direction):
                self.faults.stalled[name] = True

    def unstall(self, direction: Direction = "both") -> None:
        with self.faults.lock:
            for name in self._directions(direction):
                self.faults.stalled[name] = False
            self.faults.lock.notify_all()

    def reset_all(self) -> int:
        """Cut every current connection with an RST; returns how many."""
        links = self.links()
        for link in links:
            link.close(rst=True)
        self.resets += len(links)
        return len(links)

    def refuse(self, refusing: bool = True) -> None:
        """Reset new connections as soon as they are accepted (or accept them again)."""
        with self.faults.lock:
            self.faults.refusing = refusing

    def normal(self) -> None:
        """No latency, no stall, new connections accepted."""
        self.set_latency(0.0, 0.0)
        self.refuse(False)
        self.unstall()

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _directions(direction: Direction) -> tuple[str, ...]:
        if direction not in ("up", "down", "both"):
            raise ValueError(f"direction is 'up', 'down' or 'both', not {direction!r}")
        return ("up", "down") if direction == "both" else (direction,)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.faults.lock:
                refusing = self.faults.refusing
            if refusing:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
                self._ended.append(link)
            self.accepted += 1
            link.start()

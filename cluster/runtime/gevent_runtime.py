"""The node on gevent: :class:`~cluster.runtime.Runtime` with gevent's hub.

gevent's loop offers what eventlet's hub does under other names: timers
(``loop.timer``), callbacks at the end of a turn (``loop.run_callback``),
waits on a file descriptor (``wait_read``/``wait_write``) and raw green
threads (``spawn_raw``, the twin of eventlet's ``spawn_n``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.monkey
import gevent.queue
import gevent.socket
import greenlet

from cluster.runtime import ServerHandle, ServerOptions

__all__ = ["RUNTIME", "GeventReadWatch", "GeventRuntime"]


class GeventReadWatch:
    """A one-shot read watcher in gevent's loop (see
    :class:`cluster.runtime.ReadWatch`): the watcher a green thread's
    blocking read would start, with a callback in its place. The watcher
    object is made at the first arm and kept for the next ones."""

    __slots__ = ("fileno", "_watcher", "_callback")

    def __init__(self, fileno: int) -> None:
        self.fileno = fileno
        self._watcher: Any = None
        self._callback: Callable[[], Any] | None = None

    def arm(self, callback: Callable[[], Any]) -> None:
        self._callback = callback
        watcher = self._watcher
        if watcher is None:
            watcher = self._watcher = gevent.get_hub().loop.io(self.fileno, 1)
        if not watcher.active:
            watcher.start(self._fire)

    def cancel(self) -> None:
        self._callback = None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()  # stops it and frees the libev/libuv handle

    def _fire(self) -> None:
        # one-shot: a watcher left started would fire again every turn
        # until someone reads
        callback, self._callback = self._callback, None
        watcher = self._watcher
        if watcher is not None:
            watcher.stop()
        if callback is not None:
            callback()


class GeventRuntime:
    """gevent's primitives under the seam's names (see :class:`cluster.runtime.Runtime`)."""

    name = "gevent"

    def monkey_patch(self) -> None:
        if not self.is_monkey_patched():
            gevent.monkey.patch_all()

    def is_monkey_patched(self) -> bool:
        return bool(gevent.monkey.is_module_patched("socket"))

    def spawn(self, target: Callable[..., Any], *args: Any) -> None:
        # spawn_raw: a bare greenlet, no Greenlet object with links and value
        gevent.spawn_raw(target, *args)

    def sleep(self, seconds: float = 0) -> None:
        gevent.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        timer = gevent.get_hub().loop.timer(delay)
        # from now, not from the loop's cached time (as old as this turn of
        # the loop): a timer counts from when it was asked for, as on eventlet
        timer.start(callback, *args, update=True)
        return timer

    def cancel_call(self, handle: Any) -> None:
        handle.close()  # stops the watcher and frees it; fine after it fired

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        gevent.get_hub().loop.run_callback(callback, *args)

    def in_hub(self) -> bool:
        return greenlet.getcurrent() is gevent.get_hub()

    def wait_readable(self, fileno: int) -> None:
        gevent.socket.wait_read(fileno)

    def wait_writable(self, fileno: int) -> None:
        gevent.socket.wait_write(fileno)

    def watch_readable(self, fileno: int) -> GeventReadWatch:
        return GeventReadWatch(fileno)

    def raw_socket(self, sock: Any) -> Any:
        # gevent's socket keeps the real, non-blocking socket in _sock (its
        # pywsgi reads it there too)
        return getattr(sock, "_sock", sock)

    def event(self) -> Any:
        return gevent.event.Event()

    def queue(self, maxsize: int = 0) -> Any:
        return gevent.queue.Queue(maxsize or None)

    def semaphore(self, value: int = 1) -> Any:
        return gevent.lock.Semaphore(value)

    def serve(self, wsgi_app: Callable[..., Any], host: str, port: int,
              options: ServerOptions) -> ServerHandle:
        from cluster.runtime.gevent_server import serve

        return serve(wsgi_app, host, port, options)


RUNTIME = GeventRuntime()

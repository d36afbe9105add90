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

__all__ = ["RUNTIME", "GeventRuntime"]


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

"""The node on eventlet: :class:`~cluster.runtime.Runtime` with eventlet's hub.

eventlet announces its retirement with a ``DeprecationWarning`` on import;
a node's operators cannot act on it, so it stays out of the log here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"eventlet\b.*")
    import eventlet
    import eventlet.queue
    import eventlet.semaphore
    import greenlet
    from eventlet.green import threading as green_threading
    from eventlet.hubs import get_hub, trampoline
    from eventlet.patcher import is_monkey_patched

from cluster.runtime import ServerHandle, ServerOptions

__all__ = ["RUNTIME", "EventletReadWatch", "EventletRuntime"]


class EventletReadWatch:
    """A one-shot read listener in eventlet's hub (see
    :class:`cluster.runtime.ReadWatch`): the listener a green thread's
    blocking read would add, with a callback in its place."""

    __slots__ = ("fileno", "_listener", "_callback")

    def __init__(self, fileno: int) -> None:
        self.fileno = fileno
        self._listener: Any = None
        self._callback: Callable[[], Any] | None = None

    def arm(self, callback: Callable[[], Any]) -> None:
        self._callback = callback
        if self._listener is None:
            hub = get_hub()
            self._listener = hub.add(hub.READ, self.fileno, self._fire, self._closed, None)

    def cancel(self) -> None:
        self._callback = None
        listener, self._listener = self._listener, None
        if listener is not None:
            get_hub().remove(listener)

    def _fire(self, _fileno: int) -> None:
        callback = self._callback
        # one-shot: the hub's poll is level-triggered, so a listener left in
        # place would fire again every turn until someone reads
        self.cancel()
        if callback is not None:
            callback()

    def _closed(self, *_exc: Any) -> None:
        # the hub dropped the listener (the descriptor was closed under it)
        self._listener = None
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class EventletRuntime:
    """eventlet's primitives under the seam's names (see :class:`cluster.runtime.Runtime`)."""

    name = "eventlet"

    def monkey_patch(self) -> None:
        eventlet.monkey_patch()  # patching twice is a no-op

    def is_monkey_patched(self) -> bool:
        return bool(is_monkey_patched("socket"))

    def spawn(self, target: Callable[..., Any], *args: Any) -> None:
        # spawn_n: no GreenThread object to wait on, the cheapest green thread
        eventlet.spawn_n(target, *args)

    def sleep(self, seconds: float = 0) -> None:
        eventlet.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        # "global": runs even if the green thread that scheduled it has ended
        return get_hub().schedule_call_global(delay, callback, *args)

    def cancel_call(self, handle: Any) -> None:
        handle.cancel()

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        get_hub().schedule_call_global(0, callback, *args)

    def in_hub(self) -> bool:
        return greenlet.getcurrent() is get_hub().greenlet

    def wait_readable(self, fileno: int) -> None:
        trampoline(fileno, read=True)

    def wait_writable(self, fileno: int) -> None:
        trampoline(fileno, write=True)

    def watch_readable(self, fileno: int) -> EventletReadWatch:
        return EventletReadWatch(fileno)

    def raw_socket(self, sock: Any) -> Any:
        # eventlet's GreenSocket keeps the real, non-blocking socket in .fd
        return getattr(sock, "fd", sock)

    def event(self) -> Any:
        return green_threading.Event()

    def queue(self, maxsize: int = 0) -> Any:
        return eventlet.queue.Queue(maxsize)

    def semaphore(self, value: int = 1) -> Any:
        return eventlet.semaphore.Semaphore(value)

    def serve(self, wsgi_app: Callable[..., Any], host: str, port: int,
              options: ServerOptions) -> ServerHandle:
        from cluster.runtime.eventlet_server import serve

        return serve(wsgi_app, host, port, options)


RUNTIME = EventletRuntime()

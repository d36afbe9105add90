"""The green-thread runtime a node runs on: eventlet (the default) or gevent.

Everything the node needs from a green-thread library goes through one
small interface, :class:`Runtime`, with one implementation per library:
:mod:`.eventlet_runtime` and :mod:`.gevent_runtime` (their WSGI servers in
:mod:`.eventlet_server` and :mod:`.gevent_server`). These modules are the
only ones of the project that import eventlet or gevent.

Why two: eventlet's maintainers plan its retirement (new uses are
"heavily discouraged", and it warns so on import), while gevent has the
same green-thread model for Flask applications and is maintained.
Flask-SocketIO applications deployed on gevent port by changing their
import, as on eventlet.

How one is chosen, once per process and before anything else is imported:

- ``python -m cluster node --async-mode eventlet|gevent`` (default: the
  ``CLUSTER_ASYNC_MODE`` environment variable, else ``eventlet``) calls
  :func:`select`, which monkey-patches the standard library with it;
- an application that monkey-patches the process itself (``import
  eventlet; eventlet.monkey_patch()`` or gevent's ``monkey.patch_all()``,
  as Flask-SocketIO's documentation shows) gets that library:
  :func:`patched_mode` tells which, and the server's ``async_mode``
  defaults to it;
- ``SocketIO(app, async_mode="gevent")`` names it outright, as in
  Flask-SocketIO.

The node's parts then follow the Socket.IO server's ``async_mode``
(:func:`load` gives its runtime); nothing else keeps a global choice.

This module imports nothing beyond the standard library, so that it can
run before the monkey patch.
"""

from __future__ import annotations

import importlib
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

__all__ = [
    "DEFAULT_MODE",
    "ENV_VAR",
    "MODES",
    "UPGRADE_DETACH",
    "UPGRADE_SOCKET",
    "ReadWatch",
    "detached_environ",
    "once",
    "Runtime",
    "RuntimeUnavailableError",
    "ServerHandle",
    "ServerOptions",
    "load",
    "patched_mode",
    "select",
]

#: the green-thread libraries a node runs on
MODES = ("eventlet", "gevent")
#: the runtime of ``python -m cluster node`` when none is chosen
DEFAULT_MODE = "eventlet"
#: the environment variable behind ``--async-mode``
ENV_VAR = "CLUSTER_ASYNC_MODE"
#: the WSGI environ key under which the node's servers offer an upgrade
#: request's connection: a callable that hands the socket over to the
#: application (the server writes nothing more to it and closes it once
#: the application returns). See :mod:`cluster.node.websocket_handshake`.
UPGRADE_SOCKET = "cluster.upgrade_socket"
#: the WSGI environ key under which the node's servers offer to let an
#: upgraded connection outlive its request: a callable that, once the
#: socket was taken, makes the server neither close the socket nor free the
#: connection's slot (``max_connections``) when the application returns,
#: and gives back a callable that does both, later, once (idempotent). An
#: idle websocket then holds no green thread (see
#: :mod:`cluster.node.websocket_reads`). The environ, which python-socketio
#: keeps for the connection's life, then lets go of the server's objects
#: for the request (:func:`detached_environ`).
UPGRADE_DETACH = "cluster.upgrade_detach"

# a request input with nothing in it, for every detached environ (nothing
# writes to it; reads get b"")
_EMPTY_INPUT = io.BytesIO(b"")


def once(action: Callable[[], Any]) -> Callable[[], None]:
    """``action`` made safe to call many times: it runs at the first call
    only (what giving back a detached connection's socket and slot needs)."""
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run


def detached_environ(environ: dict[str, Any], server_keys: tuple[str, ...] = ()) -> None:
    """Drop from a detached connection's ``environ`` what refers to the
    server's request objects (its buffered reader and writer, its header
    parser, its handler): kept by python-socketio for as long as the
    connection lives, they were ~5 KiB of every idle websocket.

    The request input becomes an empty one (the upgrade request has no
    body; Flask reads the input only when asked for a body); the node's
    own upgrade keys and the server's ``server_keys`` go.
    """
    for key in (UPGRADE_SOCKET, UPGRADE_DETACH, *server_keys):
        environ.pop(key, None)
    environ["wsgi.input"] = _EMPTY_INPUT

_IMPLEMENTATIONS = {
    "eventlet": "cluster.runtime.eventlet_runtime",
    "gevent": "cluster.runtime.gevent_runtime",
}


class RuntimeUnavailableError(ImportError):
    """The chosen green-thread library is not installed.

    An ``ImportError`` rather than one of :mod:`cluster.exceptions`: that
    module imports python-socketio, which must not happen before the
    monkey patch this error is raised in front of.
    """

    def __init__(self, mode: str) -> None:
        other = next(name for name in MODES if name != mode)
        # eventlet is a dependency of the package, gevent an extra
        package = "eventlet" if mode == "eventlet" else f"'flask-socketio-cluster[{mode}]'"
        super().__init__(
            f"async mode {mode!r} needs {mode}, which is not installed: pip install "
            f"{package}, or choose async mode {other!r} (--async-mode {other})", name=mode)
        self.mode = mode


@dataclass(frozen=True)
class ServerOptions:
    """How a node's WSGI server serves (see :mod:`cluster.runner.serve` for
    why each default is what it is).

    ``None`` (or ``0``) switches a timeout off.
    """

    #: concurrent connections; past it new ones wait in the accept queue
    max_connections: int
    #: TCP_NODELAY on the listener (accepted sockets inherit it on Linux)
    tcp_nodelay: bool = True
    #: the listening socket's accept queue
    backlog: int = 2048
    #: a deadline for a whole request head
    header_timeout: float | None = None
    #: how long a kept-alive connection may wait for its next request, and
    #: a request body or response may stall (per socket operation)
    idle_timeout: float | None = None
    #: the total time a request may spend waiting for its body
    body_timeout: float | None = None
    #: log every request to the ``cluster.access`` logger
    log_output: bool = False
    #: offer upgraded websockets to detach (:data:`UPGRADE_DETACH`), so that
    #: an idle one holds no green thread; on by default (the node's runner
    #: turns it off with ``CLUSTER_DETACHED_WEBSOCKETS=0``)
    detach_websockets: bool = True


class ServerHandle(Protocol):
    """A running WSGI server (what ``SocketIO.wsgi_server`` holds)."""

    def stop(self) -> None:
        """Stop accepting and end every connection still open."""


class ReadWatch(Protocol):
    """A one-shot wait, in the hub, for a file descriptor to be readable
    (:meth:`Runtime.watch_readable`): no green thread waits meanwhile."""

    def arm(self, callback: Callable[[], Any]) -> None:
        """Run ``callback()`` in the hub once the descriptor is readable (or
        closed, or in error: the read then says which), one time. Arming an
        armed watch replaces its callback."""

    def cancel(self) -> None:
        """Stop waiting and let the watch go (a no-op when it is not armed)."""


class Runtime(Protocol):
    """What the node asks of a green-thread library.

    Callbacks given to :meth:`call_later` and :meth:`call_soon` run in the
    hub (the event loop itself): they must not block, and what may block
    is handed to :meth:`spawn`.
    """

    #: the ``async_mode`` name: ``"eventlet"`` or ``"gevent"``
    name: str

    def monkey_patch(self) -> None:
        """Make the standard library green (sockets, threads, time...)."""

    def is_monkey_patched(self) -> bool:
        """Whether this library has patched the process's ``socket``."""

    def spawn(self, target: Callable[..., Any], *args: Any) -> None:
        """Run ``target(*args)`` in a new green thread (fire and forget)."""

    def sleep(self, seconds: float = 0) -> None:
        """Yield to the other green threads for ``seconds`` (0: one turn)."""

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        """Run ``callback(*args)`` in the hub after ``delay`` seconds; the
        handle returned goes to :meth:`cancel_call`."""

    def cancel_call(self, handle: Any) -> None:
        """Cancel a :meth:`call_later` (a no-op once it ran)."""

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` in the hub at the end of this turn of the
        event loop, once the running green thread yields."""

    def in_hub(self) -> bool:
        """Whether the caller runs in the hub (a timer or callback)."""

    def wait_readable(self, fileno: int) -> None:
        """Block this green thread until ``fileno`` is readable."""

    def wait_writable(self, fileno: int) -> None:
        """Block this green thread until ``fileno`` is writable."""

    def watch_readable(self, fileno: int) -> ReadWatch:
        """A :class:`ReadWatch` on ``fileno``, not armed yet."""

    def raw_socket(self, sock: Any) -> Any:
        """The non-blocking OS socket beneath green socket ``sock`` (itself
        when it is not green): its ``send`` never waits."""

    def event(self) -> Any:
        """A green event: ``set()``, ``is_set()``, ``wait(timeout=None)``."""

    def queue(self, maxsize: int = 0) -> Any:
        """A green FIFO queue (``put``, ``get``, ``get_nowait``...)."""

    def semaphore(self, value: int = 1) -> Any:
        """A green semaphore (``acquire``, ``release``, a context manager)."""

    def serve(self, wsgi_app: Callable[..., Any], host: str, port: int,
              options: ServerOptions) -> ServerHandle:
        """Listen on ``host:port`` (raising ``OSError`` at once if it cannot)
        and serve ``wsgi_app`` from a green thread until stopped; upgrade
        requests get :data:`UPGRADE_SOCKET` in their environ."""


_loaded: dict[str, Runtime] = {}


def load(mode: str) -> Runtime:
    """The runtime of async mode ``mode`` (imports its library, patches nothing).

    :raises ValueError: ``mode`` is not one of :data:`MODES`.
    :raises RuntimeUnavailableError: its library is not installed.
    """
    runtime = _loaded.get(mode)
    if runtime is not None:
        return runtime
    if mode not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown async mode {mode!r}: choose one of {', '.join(MODES)}")
    try:
        module = importlib.import_module(_IMPLEMENTATIONS[mode])
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] in MODES:
            raise RuntimeUnavailableError(mode) from exc
        raise
    runtime = cast(Runtime, module.RUNTIME)
    _loaded[mode] = runtime
    return runtime


def select(mode: str) -> Runtime:
    """Run this process on ``mode``: load it and monkey-patch the standard
    library with it. Call it once, first thing, before Flask, redis-py,
    python-socketio or the application are imported."""
    runtime = load(mode)
    runtime.monkey_patch()
    return runtime


def patched_mode() -> str | None:
    """The library that has monkey-patched this process's ``socket``, if any.

    Imports neither: a library not imported yet has patched nothing (and
    importing eventlet prints its deprecation warning).
    """
    if "eventlet" in sys.modules and load("eventlet").is_monkey_patched():
        return "eventlet"
    if "gevent.monkey" in sys.modules and load("gevent").is_monkey_patched():
        return "gevent"
    return None

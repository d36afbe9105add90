"""Concurrency primitives that follow the server's async mode.

A node runs under eventlet or gevent (monkey patched, see
:mod:`cluster.runtime`) in production and under plain threads in tests and
in write-only processes such as Celery workers. The bus asks the Socket.IO
server for tasks, sleeps and events when it has one, so that everything it
starts is a green thread of the node's runtime, and falls back to daemon
threads otherwise.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Runtime:
    """Spawn/sleep/event factory bound to an optional Socket.IO server."""

    def __init__(self, server: Any = None) -> None:
        self.server = server

    def attach(self, server: Any) -> None:
        """Run in ``server``'s async mode from now on (its tasks, sleeps and
        events); every part holding this runtime follows."""
        self.server = server

    def spawn(self, target: Callable[..., Any], *args: Any) -> Any:
        if self.server is not None:
            return self.server.start_background_task(target, *args)
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=getattr(target, "__name__", "bus"))
        thread.start()
        return thread

    def sleep(self, seconds: float) -> None:
        if self.server is not None:
            self.server.sleep(seconds)
        else:
            time.sleep(seconds)

    def event(self) -> Any:
        if self.server is not None:
            return self.server.eio.create_event()
        return threading.Event()

    def paused_since(self, moment: float) -> bool:
        """Whether the node was found paused (frozen, starved of CPU) after
        monotonic time ``moment``, by its engine's pause fence (see
        :mod:`cluster.node.pause_fence`); always False outside a node."""
        fence = getattr(getattr(self.server, "eio", None), "pause_fence", None)
        return fence is not None and bool(fence.paused_since(moment))

    @property
    def async_mode(self) -> str:
        return getattr(self.server, "async_mode", None) or "threading"

    def require_monkey_patch(self) -> None:
        """Refuse a green async mode (eventlet, gevent) in a process its
        library has not monkey-patched: the bus's blocking Redis reads
        would stop every green thread of the node."""
        from cluster import runtime

        mode = self.async_mode
        if mode in runtime.MODES and not runtime.load(mode).is_monkey_patched():
            patch = ("eventlet.monkey_patch()" if mode == "eventlet"
                     else "gevent.monkey.patch_all()")
            raise RuntimeError(
                f"The cluster bus needs {mode}'s monkey patching with async_mode={mode!r}: "
                f"run the node with `python -m cluster node --async-mode {mode}`, or call "
                f"{patch} before importing anything else.")


class Backoff:
    """Capped exponential backoff: ``initial``, 2x, 4x ... up to ``cap``.

    The cap is what bounds recovery time: after the backend returns, the
    next attempt happens at most ``cap`` seconds later.
    """

    def __init__(self, initial: float = 0.05, cap: float = 1.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

"""The body deadline's accounting, shared by the eventlet and gevent servers.

Each server gives its request input a :class:`BodyBudget` and routes the
input's ``read``, ``readline`` and ``readlines`` through
:meth:`BodyBudget.charged`; what the deadline is for is told in
:mod:`cluster.runner.body_deadline`. This module imports neither green
library: each server hands in its own way of arming a timeout, so that a
node on one runtime never imports the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

from cluster.runner.body_deadline import BodyDeadlineExceeded

__all__ = ["BodyBudget", "ChargedReads"]


class BodyBudget:
    """The ``budget`` seconds one request may spend waiting for its body.

    Every charged read is bounded by what is left of the budget and uses up
    the time it waited, so a body trickling in over many reads meets the
    same deadline as one slow read.

    ``start_timer(seconds)`` arms the green library's timeout in the calling
    green thread and returns it (it is the exception raised there when it
    fires); ``stop_timer(timer)`` disarms it. ``on_expired`` runs once the
    budget is gone, before :class:`BodyDeadlineExceeded` is raised, so that
    the server marks the connection for closing rather than discarding the
    rest of the body (slowly).
    """

    def __init__(self, budget: float, on_expired: Callable[[], None], *,
                 start_timer: Callable[[float], BaseException],
                 stop_timer: Callable[[Any], None]) -> None:
        self.budget = budget
        self.on_expired = on_expired
        self.spent = 0.0
        self._start_timer = start_timer
        self._stop_timer = stop_timer
        self._reading = False

    def charged(self, read: Callable[..., Any], *args: Any) -> Any:
        """``read(*args)``, bounded by and charged to what is left of the budget."""
        if self._reading:  # a read made by another of this input's reads
            return read(*args)
        remaining = self.budget - self.spent
        if remaining <= 0:
            self.expire()
        self._reading = True
        started = time.monotonic()
        timer = self._start_timer(remaining)
        try:
            return read(*args)
        except BaseException as exc:
            # the timer is raised as itself: anything else (another timer
            # included) is not this deadline's and passes through untouched
            if exc is not timer:
                raise
            self.expire()
        finally:
            self._stop_timer(timer)
            self.spent += time.monotonic() - started
            self._reading = False

    def expire(self) -> NoReturn:
        """Use up the budget, tell the server, and raise :class:`BodyDeadlineExceeded`."""
        self.spent = self.budget
        self.on_expired()
        raise BodyDeadlineExceeded(f"request body not received within {self.budget:g} s")


class ChargedReads:
    """The three reads of a WSGI request input, each charged to the
    input's ``body_budget``; put before the server's own input class in
    the bases (``class DeadlineInput(ChargedReads, <server's Input>)``)."""

    body_budget: BodyBudget

    def read(self, length: int | None = None) -> bytes:
        data: bytes = self.body_budget.charged(super().read, length)  # type: ignore[misc]
        return data

    def readline(self, size: int | None = None) -> bytes:
        data: bytes = self.body_budget.charged(super().readline, size)  # type: ignore[misc]
        return data

    def readlines(self, hint: int | None = None) -> list[bytes]:
        lines: list[bytes] = self.body_budget.charged(super().readlines, hint)  # type: ignore[misc]
        return lines

"""Answers from clients to a worker: ``call``, ``gather`` and ``emit`` callbacks.

One :class:`WorkerCalls` per emitter and process does the asking half of
the protocol in :mod:`cluster.bus.services.asks` (the nodes do the other,
:mod:`cluster.bus.services.answering`): it publishes each ask, keeps it in
an :class:`~cluster.bus.services.asks.Asker` until it is answered or its
deadline passes, and reads the answers from the process's own reply channel
(:class:`~workers.inbox.ReplyInbox`), opened on the first ask.

Bounded: at most ``max_pending`` asks wait at once (1,000 by default; past
it :class:`~workers.exceptions.TooManyCallsError`), and each is forgotten at
its deadline, whoever waits for it, so expired calls leave nothing behind.
Callbacks run in one thread of their own, in arrival order, so a slow
callback never holds up the answers of others.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from cluster.bus import ClusterManager
from cluster.bus.services.asks import (
    MAX_ASK_SECONDS,
    Asker,
    GatherResult,
    PendingAsk,
    answer_value,
)

from .exceptions import (
    CallTimeoutError,
    ConfigurationError,
    NotConnectedError,
    PublishError,
    TooManyCallsError,
)
from .inbox import ReplyInbox


def check_timeout(timeout: Any) -> float:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) \
            or not 0 < timeout <= MAX_ASK_SECONDS:
        raise ConfigurationError(f"timeout={timeout!r}: give a number of seconds above 0 "
                                 f"and at most {MAX_ASK_SECONDS:g}.")
    return float(timeout)


class CallbackRunner:
    """Runs ack callbacks in a daemon thread of its own, in order; an
    exception is logged and the next callback runs."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, func: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="emitter-callbacks")
                self._thread.start()
        self._queue.put((func, args))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            func, args = item
            try:
                func(*args)
            except Exception:
                self.logger.exception("Error in the ack callback %r", func)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)


class WorkerCalls:
    """The asks of one emitter in one process.

    :param manager: the emitter's write-only bus manager (publishes the
        asks; its ``host_id`` is this process's reply address).
    :param max_pending: asks that may wait at once.
    :param ack_timeout: seconds an ``emit`` callback waits for answers,
        unless the callback carries its own (``cluster.bus.with_timeout``).
    """

    def __init__(self, manager: ClusterManager, *, max_pending: int, ack_timeout: float,
                 logger: logging.Logger) -> None:
        self.manager = manager
        self.ack_timeout = ack_timeout
        self.logger = logger
        self.asker = Asker(manager.host_id, threading.Event, limit=max_pending)
        self.inbox = ReplyInbox(manager, self.asker.handle_answer, self.asker.expire, logger)
        self.runner = CallbackRunner(logger)

    def close(self) -> None:
        self.inbox.close()
        self.asker.cancel_all()
        self.runner.close()

    def _ask(self, event: str, args: tuple[Any, ...], *, to: Any, namespace: str,
             timeout: float, skip_sid: Any = None, **options: Any) -> PendingAsk:
        # subscribed first: a fast answer must have somewhere to arrive
        self.inbox.start(self.manager.settings.publish_timeout)
        pending = self.asker.open(to, timeout, **options)
        if pending is None:
            raise TooManyCallsError(
                f"{self.asker.limit} calls, gathers and callback emits of this process are "
                f"waiting for answers already: wait for some to end, give them shorter "
                f"timeouts, or raise Emitter(max_pending_calls=...).")
        try:
            self.manager.publisher.publish(self.asker.message(
                pending, event, list(args), namespace=namespace, skip_sid=skip_sid))
        except BaseException:
            self.asker.close(pending)
            raise
        return pending

    def _wait(self, pending: PendingAsk) -> None:
        try:
            pending.wait()
        finally:
            self.asker.close(pending)
        if pending.cancelled:
            raise PublishError("The emitter was closed while waiting for answers.")
        if pending.errors and not pending.roster:
            raise TooManyCallsError("A node refused the ask: " + "; ".join(pending.errors))

    def call(self, event: str, args: tuple[Any, ...], *, to: str, namespace: str,
             timeout: float) -> Any:
        pending = self._ask(event, args, to=to, namespace=namespace, timeout=timeout,
                            first_answer=True)
        self._wait(pending)
        for answer in pending.answers.values():
            return answer_value(answer)
        if pending.reached_nobody():
            raise NotConnectedError(
                f"No client {to!r} is connected in namespace {namespace!r} on any of the "
                f"{len(pending.replied)} node(s) of the cluster: it disconnected (or the "
                f"sid is wrong). Check that it is the client's request.sid.")
        if pending.roster:
            why = "the client did not answer"
        else:
            silent = sorted(pending.expected - pending.replied)
            why = (f"node(s) {', '.join(silent)} did not reply (dead or unreachable)"
                   if silent else "no node replied (is any node running?)")
        raise CallTimeoutError(f"No answer to {event!r} from {to!r} within {timeout:g} s: "
                               f"{why}.")

    def gather(self, event: str, args: tuple[Any, ...], *, to: Any, namespace: str,
               timeout: float, skip_sid: Any = None) -> GatherResult:
        pending = self._ask(event, args, to=to, namespace=namespace, timeout=timeout,
                            skip_sid=skip_sid)
        self._wait(pending)
        if pending.errors:
            self.logger.warning("gather(%r): %s", event, "; ".join(pending.errors))
        return pending.result()

    def emit_with_callback(self, event: str, args: tuple[Any, ...], *, to: Any,
                           namespace: str, skip_sid: Any,
                           callback: Callable[..., Any]) -> None:
        """Publish the ask and return; ``callback`` runs for each answer:
        ``callback(*args)`` from the client ``to`` names, ``callback(sid,
        *args)`` from each client of a room. Its ``on_ack_timeout`` hook,
        if any, runs once when the deadline passes with a client silent or
        when no client was reached."""
        timeout = check_timeout(getattr(callback, "ack_timeout", None) or self.ack_timeout)
        on_timeout = getattr(callback, "on_ack_timeout", None)

        def on_answer(sid: str, ack: list[Any]) -> None:
            if sid == to:
                self.runner.submit(callback, *ack)
            else:
                self.runner.submit(callback, sid, *ack)

        def on_silence() -> None:
            if on_timeout is not None:
                self.runner.submit(on_timeout)

        self._ask(event, args, to=to, namespace=namespace, timeout=timeout,
                  skip_sid=skip_sid, on_answer=on_answer,
                  on_silence=on_silence if on_timeout is not None else None)

"""A node's side of asks: its clients' answers, collected and sent back once.

Another process (a worker's ``Emitter.call``/``gather``/``emit(...,
callback=f)``, another node's ``gather``) asks the clients of a sid or a
room (the protocol is in :mod:`.asks`). Every node that reads the ask:

- sends the event, each with an ack id of its own, to its connected
  clients in the target (the ack callbacks expire with the ask, through
  :class:`~.acks.AckTable`, like every other ack of the node);
- replies at once with its roster (the sids it sent to) and the node ids
  it knows to be alive, even when it reached nobody: that is how an asker
  tells a sid connected nowhere from a slow one;
- sends the answers back in one message when its last client answered, or
  batched on the bus's tick (about four times a second) while some are
  still thinking, so a room of thousands costs the asker a few messages per
  node, not one per client; at the ask's deadline it forgets it.

A node asks too: :meth:`Answering.gather` serves ``SocketIO.gather``. It
publishes the ask for the other nodes and serves its own clients without
the bus; its answers are collected like anyone's.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from cluster.bus.errors import BusSerializationError, ClusterRequestError
from cluster.bus.services.acks import AckTable, TimedAck
from cluster.bus.services.asks import (
    MAX_ASK_SECONDS,
    Asker,
    GatherResult,
    answer_value,
    decode_args,
    encode_args,
)
from cluster.bus.services.link import BusLink
from session_store.quiet_log import QuietLog

#: asks one node serves at once; past it, an ask is refused with an error
#: its asker reports (a runaway asker cannot grow a node's memory)
MAX_SERVED_ASKS = 10_000


class _Serving:
    """What a node collects for one ask."""

    def __init__(self, asker: str, ask_id: str, sids: Iterable[str], timeout: float) -> None:
        self.asker = asker
        self.ask_id = ask_id
        self.waiting = set(sids)
        self.deadline = time.monotonic() + timeout
        self.batch: dict[str, list[Any]] = {}

    def take(self) -> dict[str, list[Any]]:
        batch, self.batch = self.batch, {}
        return batch


class Answering:
    """Serves asks for this node's clients, and asks for ``SocketIO.gather``
    (``manager.answering``).

    :param link: publishes the replies and the node's own asks.
    :param local: this node's manager (``get_participants``,
        ``is_connected``, ``emit_here``).
    :param acks: the node's ack table: its tick also flushes and expires
        what is collected here.
    :param channel_of: the channel of a process's replies (``None``: the
        common one, on a bus that does not route).
    :param in_listener: whether the caller runs in the bus listener, which
        must never wait for answers it is the one to read.
    """

    def __init__(self, link: BusLink, local: Any, acks: AckTable,
                 channel_of: Callable[[str], str | None],
                 in_listener: Callable[[], bool]) -> None:
        self.link = link
        self.local = local
        self.channel_of = channel_of
        self.in_listener = in_listener
        self.asker = Asker(link.host_id, link.event)
        self._serving: dict[tuple[str, str], _Serving] = {}
        self._lock = threading.Lock()
        self._quiet = QuietLog(link.logger, 10.0)  # a runaway asker must not flood the log
        acks.add_chore(self.tick)

    # -- serving other processes' asks ------------------------------------------
    def handle_ask(self, message: dict[str, Any]) -> None:
        """An ask from another process (fields checked by the codec)."""
        asker, ask_id = message["host_id"], message["ask_id"]
        reply: dict[str, Any] = {"method": "answer", "host_id": self.link.host_id,
                                 "to": asker, "ask_id": ask_id, "roster": [],
                                 "nodes": self.link.nodes.ids()}
        namespace = message.get("namespace") or "/"
        try:
            args = decode_args(message["args"])
        except (ValueError, TypeError):
            self._send(asker, dict(reply, error="malformed binary attachment"))
            return
        sids = self._members(namespace, message["room"], message.get("skip_sid"))
        timeout = min(float(message["timeout"]), MAX_ASK_SECONDS)
        key = (asker, ask_id)
        with self._lock:
            busy = len(self._serving) >= MAX_SERVED_ASKS
            if sids and not busy:
                self._serving[key] = _Serving(asker, ask_id, sids, timeout)
        if busy:
            error = (f"node {self.link.nodes.name_of(self.link.host_id)} is serving "
                     f"{MAX_SERVED_ASKS} asks already: ask fewer at once, or with "
                     f"shorter timeouts")
            self._quiet.log(logging.WARNING, "busy", "Refused an ask of %s: %s", asker, error)
            self._send(asker, dict(reply, error=error))
            return
        # the roster first: its answers follow it on the same channel
        self._send(asker, dict(reply, roster=sids))
        for sid in sids:
            answered = TimedAck(functools.partial(self._answered, key, sid), timeout)
            self.local.emit_here(message["event"], tuple(args), namespace, room=sid,
                                 callback=answered)

    def _members(self, namespace: str, room: Any, skip: Any) -> list[str]:
        """This node's connected clients in ``room`` (a room or a list)."""
        skipped = {skip} if isinstance(skip, str) else set(skip or ())
        return sorted(sid for sid, _ in self.local.get_participants(namespace, room)
                      if sid not in skipped and self.local.is_connected(sid, namespace))

    def _answered(self, key: tuple[str, str], sid: str, *args: Any) -> None:
        """A client's ack (python-socketio calls it, in the client's task)."""
        with self._lock:
            serving = self._serving.get(key)
            if serving is None or sid not in serving.waiting:
                return  # past the deadline
            serving.waiting.discard(sid)
            serving.batch[sid] = encode_args(list(args))
            if serving.waiting:
                return  # sent with the others on the next tick
            del self._serving[key]
            batch = serving.take()
        self._send_answers(serving, batch)

    def tick(self) -> None:
        """Send what was answered since the last tick; forget expired asks
        (and this node's own expired gathers)."""
        now = time.monotonic()
        out = []
        with self._lock:
            for key, serving in list(self._serving.items()):
                if serving.batch:
                    out.append((serving, serving.take()))
                if serving.deadline <= now:
                    del self._serving[key]
        for serving, batch in out:
            self._send_answers(serving, batch)
        self.asker.expire()

    def _send_answers(self, serving: _Serving, batch: dict[str, list[Any]]) -> None:
        self._send(serving.asker, {"method": "answer", "host_id": self.link.host_id,
                                   "to": serving.asker, "ask_id": serving.ask_id,
                                   "answers": batch})

    def _send(self, asker: str, message: dict[str, Any]) -> None:
        if asker == self.link.host_id:
            self.asker.handle_answer(message)  # this node's own gather
            return
        try:
            # dropped rather than buffered while the bus is down: by the time
            # it returns, the asker's deadline has likely passed
            self.link.publish(message, channel=self.channel_of(asker), volatile=True)
        except BusSerializationError as exc:  # e.g. answers over max_message_bytes
            self.link.logger.warning("Could not send answers to %s: %s", asker, exc)

    # -- the cluster side of liveness ---------------------------------------------
    def handle_answer(self, message: dict[str, Any]) -> None:
        """Rosters and answers for this node's own gathers."""
        self.asker.handle_answer(message)

    def node_gone(self, host_id: str) -> None:
        """A node left: this node's gathers stop waiting for its roster."""
        self.asker.node_gone(host_id)

    # -- this node asking -------------------------------------------------------------
    def gather(self, event: str, args: list[Any], *, to: Any, namespace: str = "/",
               timeout: float = 5.0, skip_sid: Any = None) -> GatherResult:
        """Send ``event`` to every client in ``to`` on every node and return
        their answers by sid, naming those silent at ``timeout`` seconds."""
        check_gather(to, timeout)
        if self.link.write_only:
            raise ClusterRequestError(
                "A write-only SocketIO hears no answers: gather from a socket node, or "
                "from any process with workers.Emitter(url).gather(...), which listens "
                "on a reply channel of its own.")
        if self.in_listener():
            raise RuntimeError("gather() cannot wait inside the bus listener (an ack "
                               "callback or a bus hook): the answers it waits for would "
                               "be read by the listener it blocks. Call it from a "
                               "handler or a background task.")
        pending = self.asker.open(to, timeout)
        if pending is None:
            raise ClusterRequestError(
                f"{self.asker.limit} gathers are pending on this node already: wait for "
                f"some to end, or give them shorter timeouts.")
        try:
            message = self.asker.message(pending, event, args, namespace=namespace,
                                         skip_sid=skip_sid)
            self.link.dumps(message)  # a payload the bus cannot carry raises here
            nodes = self.link.nodes.ids()
            if len(nodes) > 1:
                if not self.link.ready():
                    raise ClusterRequestError(
                        "The cluster bus is disconnected; gather() works again once it "
                        "reconnects (see /readyz).")
                self.asker.expect(pending, nodes)
                self.link.publish(message)
            self.handle_ask(message)  # this node's clients, without the bus
            pending.wait()
            return pending.result()
        finally:
            self.asker.close(pending)


def check_gather(to: Any, timeout: Any) -> None:
    """Refuse a ``gather`` that could not work, before anything is sent."""
    if to is None or to == []:
        raise ValueError("gather() needs to=: a sid, a room or a list of them.")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) \
            or not 0 < timeout <= MAX_ASK_SECONDS:
        raise ValueError(f"timeout={timeout!r}: a number of seconds above 0 and at "
                         f"most {MAX_ASK_SECONDS:g}.")


def gather_here(server: Any, event: str, args: list[Any], *, to: Any, namespace: str,
                timeout: float, skip_sid: Any = None) -> GatherResult:
    """``gather`` on a server without a cluster bus: its own clients are
    every client there is (a stock python-socketio manager's other servers
    are not asked). Unanswered acks stay in python-socketio's table until
    their client disconnects, as python-socketio keeps any ack."""
    check_gather(to, timeout)
    manager = server.manager
    skipped = {skip_sid} if isinstance(skip_sid, str) else set(skip_sid or ())
    sids = sorted(sid for sid, _ in manager.get_participants(namespace, to)
                  if sid not in skipped and manager.is_connected(sid, namespace))
    answers: dict[str, list[Any]] = {}
    done = server.eio.create_event()
    lock = threading.Lock()

    def answered(sid: str, *ack: Any) -> None:
        with lock:
            answers.setdefault(sid, list(ack))
            if len(answers) == len(sids):
                done.set()

    for sid in sids:
        server.emit(event, tuple(args), to=sid, namespace=namespace,
                    callback=functools.partial(answered, sid))
    if sids:
        done.wait(timeout)
    with lock:
        got = dict(answers)
    return GatherResult({sid: answer_value(ack) for sid, ack in got.items()},
                        sorted(set(sids) - got.keys()))


def gather_on(server: Any, event: str, args: list[Any], *, to: Any, namespace: str,
              timeout: float, skip_sid: Any = None) -> GatherResult:
    """``gather`` through ``server``'s client manager: across the cluster
    when it is a cluster bus, else among the server's own clients."""
    answering = getattr(server.manager, "answering", None)
    if isinstance(answering, Answering):
        return answering.gather(event, args, to=to, namespace=namespace, timeout=timeout,
                                skip_sid=skip_sid)
    return gather_here(server, event, args, to=to, namespace=namespace, timeout=timeout,
                       skip_sid=skip_sid)

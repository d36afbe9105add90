"""Asking clients from any process, and collecting their answers by a deadline.

The asking side of ``gather`` (on a node's ``SocketIO`` and on a worker's
``Emitter``), of a worker's ``Emitter.call`` and of its ``emit(...,
callback=f)``; the nodes' side is :mod:`.answering`. The protocol:

1. The asker publishes one ``ask`` on the common channel: the event, its
   arguments, the target (a sid, a room or a list of them), the namespace,
   the sids to skip and the timeout in seconds.
2. Every node that reads it sends the event, with an ack id, to its own
   clients in the target, and replies at once with its *roster* (the sids
   it sent to) and the ids of the nodes it knows to be alive.
3. As its clients answer, the node sends their answers back, batched: at
   once when its last client answered, else about every quarter second.

Replies travel on the asker's node channel (``<channel>:node:<asker id>``,
:func:`~cluster.bus.channels.node_channel`), which only the asker follows:
answers cost one message to one process, never one to every node.

The asker is done when every node it heard of (its own registry for a
node, the lists in the rosters for a worker) sent its roster and every
rostered client answered; at the deadline it reports the others missing. So
a node that dies mid-call costs nothing but the wait to the deadline: its
clients are reported missing (or a ``call`` to one of them times out),
never waited for longer. An ask to a sid whose every known node sent an
empty roster reaches nobody, which the asker knows after one bus round
trip instead of at its timeout.

Arguments and answers travel as JSON, a binary attachment as base64 next to
its placeholder (:func:`encode_args`), as python-socketio's own bus does.
"""
from __future__ import annotations

import base64
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from socketio.packet import Packet

from cluster import compat

#: longest timeout of one ask, in seconds: a node keeps what it collects for
#: an ask at most this long, whatever the asker asked for
MAX_ASK_SECONDS = 600.0
#: asks one process may have outstanding by default
DEFAULT_MAX_PENDING = 1000

AnswerHook = Callable[[str, list[Any]], Any]


def encode_args(args: list[Any]) -> list[Any]:
    """Event or ack arguments as JSON: ``[args]``, or with binary
    attachments ``[args with placeholders, base64, ...]``."""
    if Packet.data_is_binary(args):
        shell, attachments = Packet.deconstruct_binary(args)
        return [shell, *(base64.b64encode(a).decode() for a in attachments)]
    return [args]


def decode_args(entry: list[Any]) -> list[Any]:
    """The arguments :func:`encode_args` encoded (raises ``ValueError`` on
    a malformed attachment)."""
    if len(entry) == 1:
        return list(entry[0])
    attachments = [base64.b64decode(a, validate=True) for a in entry[1:]]
    return list(compat.binary_event_data(entry[0], attachments))


def answer_value(args: list[Any]) -> Any:
    """An ack's arguments as ``SocketIO.call`` returns them: ``None`` for
    none, the argument for one, a tuple for several."""
    if not args:
        return None
    return args[0] if len(args) == 1 else tuple(args)


@dataclasses.dataclass(frozen=True)
class GatherResult:
    """What the clients of a ``gather`` answered by its deadline.

    :param answers: each answering client's answer by sid, shaped as
        ``SocketIO.call`` returns it (its one ack argument, a tuple of
        several, ``None`` for none).
    :param missing: the sids the event was sent to that did not answer in
        time (too slow, disconnected, or on a node that died), sorted.
    """

    answers: dict[str, Any]
    missing: list[str]

    @property
    def complete(self) -> bool:
        """Whether every client the event reached answered."""
        return not self.missing


class PendingAsk:
    """One outstanding ask: who was asked, who answered.

    :param first_answer: done at the first answer (a ``call``), not when
        every rostered client answered.
    :param on_answer: ``on_answer(sid, args)`` for each answer as it
        arrives (in the thread that reads the bus).
    :param on_silence: called once, without arguments, when the ask ends
        with a rostered client silent, or reached nobody.
    """

    def __init__(self, ask_id: str, target: Any, timeout: float, event: Any, *,
                 first_answer: bool = False, on_answer: AnswerHook | None = None,
                 on_silence: Callable[[], Any] | None = None) -> None:
        self.ask_id = ask_id
        self.target = target
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.event = event
        self.first_answer = first_answer
        self.on_answer = on_answer
        self.on_silence = on_silence
        #: nodes that should send a roster; nodes that sent one
        self.expected: set[str] = set()
        self.replied: set[str] = set()
        #: sid -> the node that sent it the event
        self.roster: dict[str, str] = {}
        self.answers: dict[str, list[Any]] = {}
        #: what nodes refused the ask with (e.g. too many asks there)
        self.errors: list[str] = []
        self.cancelled = False

    @property
    def heard_all(self) -> bool:
        """Every node known to the asker sent its roster."""
        return bool(self.replied) and self.expected <= self.replied

    def settled(self) -> bool:
        if self.cancelled or (self.first_answer and self.answers):
            return True
        return self.heard_all and self.roster.keys() <= self.answers.keys()

    def reached_nobody(self) -> bool:
        """Every known node answered with an empty roster."""
        return self.heard_all and not self.roster

    def missing(self) -> list[str]:
        return sorted(self.roster.keys() - self.answers.keys())

    def result(self) -> GatherResult:
        return GatherResult({sid: answer_value(args) for sid, args in self.answers.items()},
                            self.missing())

    def wait(self) -> bool:
        """Block until settled or the deadline; whether it settled."""
        while not self.settled():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.event.wait(remaining)
        return True


class Asker:
    """The asks of one process (a node or a worker), by id.

    :param host_id: this process's bus id: replies are addressed to it.
    :param event: makes an event of the caller's kind (threads or green
        threads) for each ask.
    :param limit: asks outstanding at once; :meth:`open` refuses more.
    """

    def __init__(self, host_id: str, event: Callable[[], Any],
                 limit: int = DEFAULT_MAX_PENDING) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"the limit of pending asks must be a positive whole "
                             f"number, not {limit!r}")
        self.host_id = host_id
        self.event = event
        self.limit = limit
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[str, PendingAsk] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def open(self, target: Any, timeout: float, **options: Any) -> PendingAsk | None:
        """A new ask (``options`` as :class:`PendingAsk`'s), or ``None``
        when :attr:`limit` asks are outstanding."""
        with self._lock:
            if len(self._pending) >= self.limit:
                return None
            pending = PendingAsk(str(next(self._ids)), target, timeout, self.event(),
                                 **options)
            self._pending[pending.ask_id] = pending
        return pending

    def expect(self, pending: PendingAsk, nodes: list[str]) -> None:
        """Wait for the rosters of ``nodes`` too (a node knows its peers
        before it asks; call this before publishing the ask)."""
        with self._lock:
            pending.expected.update(nodes)

    def message(self, pending: PendingAsk, event: str, args: list[Any], *,
                namespace: str, skip_sid: Any = None) -> dict[str, Any]:
        """The ``ask`` bus message of ``pending``."""
        return {"method": "ask", "host_id": self.host_id, "ask_id": pending.ask_id,
                "event": event, "args": encode_args(list(args)), "namespace": namespace,
                "room": pending.target, "skip_sid": skip_sid,
                "timeout": min(pending.timeout, MAX_ASK_SECONDS)}

    def close(self, pending: PendingAsk) -> None:
        """Forget ``pending`` (answers arriving later are dropped)."""
        with self._lock:
            self._pending.pop(pending.ask_id, None)

    def handle_answer(self, message: dict[str, Any]) -> None:
        """A node's roster and/or answers (its fields checked by
        :func:`cluster.bus.message_schema.check_fields`)."""
        if message["to"] != self.host_id:
            return  # another asker's, read on the common channel
        node = message["host_id"]
        arrived: list[tuple[str, list[Any]]] = []
        with self._lock:
            pending = self._pending.get(message["ask_id"])
            if pending is None:
                return  # too late: the asker gave up already
            if "roster" in message:
                pending.replied.add(node)
                pending.expected.update(message.get("nodes") or ())
                for sid in message["roster"]:
                    pending.roster[sid] = node
            if message.get("error"):
                pending.errors.append(message["error"])
            for sid, entry in (message.get("answers") or {}).items():
                if pending.roster.get(sid) == node and sid not in pending.answers:
                    try:
                        args = decode_args(entry)
                    except (ValueError, TypeError):
                        continue  # a malformed attachment: as if it did not answer
                    pending.answers[sid] = args
                    arrived.append((sid, args))
            settled = pending.settled()
            if settled:
                del self._pending[pending.ask_id]
        if pending.on_answer is not None:
            for sid, args in arrived:
                pending.on_answer(sid, args)
        if settled:
            self._end(pending)

    def node_gone(self, host_id: str) -> None:
        """A node left the cluster: stop waiting for its roster."""
        ended = []
        with self._lock:
            for pending in list(self._pending.values()):
                pending.expected.discard(host_id)
                if pending.settled():
                    del self._pending[pending.ask_id]
                    ended.append(pending)
        for pending in ended:
            self._end(pending)

    def expire(self) -> None:
        """Forget every ask past its deadline: nothing stays behind."""
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._pending.values() if p.deadline <= now]
            for pending in due:
                del self._pending[pending.ask_id]
        for pending in due:
            self._end(pending)

    def cancel_all(self) -> None:
        """Wake every waiter (the process is closing its bus)."""
        with self._lock:
            every, self._pending = list(self._pending.values()), {}
        for pending in every:
            pending.cancelled = True
            pending.event.set()

    @staticmethod
    def _end(pending: PendingAsk) -> None:
        pending.event.set()
        # a rostered client kept silent, or nobody was reached at all
        silent = not (pending.first_answer and pending.answers) and (
            bool(pending.missing()) or not pending.roster)
        if pending.on_silence is not None and silent and not pending.cancelled:
            pending.on_silence()

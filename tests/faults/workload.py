"""The fault workload: clients in rooms, senders at a fixed rate, all recorded.

:class:`Workload` connects ``clients`` :class:`cluster.Client` s (resume and
recovery aware) to the balancer, ``room_size`` to a room, and makes
``senders_per_room`` of each room emit ``say {room, sender, seq}`` at
``rate`` messages per second each (one scheduling thread; acks are awaited
asynchronously, so a slow node never slows the others' senders). Each
client records (:class:`tests.faults.invariants.ClientLog`) the time it
joined, every disconnect and how it came back (``recovered`` as
:class:`cluster.Client` reports it; when not recovered it re-joins its room
as an application would, and its away interval ends once it is back in),
every ``msg`` in arrival order, and ``whoami`` after every (re)connect.
:meth:`Workload.verdict` waits (bounded) for the deliveries in flight and
runs the checker.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import socketio

from cluster import Client
from tests.faults.invariants import Away, ClientLog, Sent, assert_clean, check, summary

__all__ = ["FaultClient", "Workload", "WorkloadConfig"]

CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class WorkloadConfig:
    """The size of a run. The short (CI) form is the default."""

    clients: int = 60
    room_size: int = 10
    senders_per_room: int = 2
    rate: float = 4.0  # messages per second per sender
    ack_timeout: float = 8.0  # an emit not acked by then counts as unacked
    slack: float = 1.0  # see tests.faults.invariants.check


class FaultClient:
    """One recorded client in one room."""

    def __init__(self, workload: Workload, name: str, room: str) -> None:
        self.workload, self.name, self.room = workload, name, room
        self.log = ClientLog(name)
        self.lock = threading.Lock()
        self.nodes: list[str] = []  # node of each (re)connect, from whoami
        self.away_since: float | None = None
        self.connects = 0
        # ordered_events: the checker reads arrival order (python-socketio
        # would run each msg handler in a thread of its own)
        self.client: Any = workload.factory(cls=Client, ordered_events=True,
                                            reconnection_delay=0.2,
                                            reconnection_delay_max=1.0,
                                            randomization_factor=0.5)
        self.client.on("msg", self._on_msg)
        self.client.on("connect", self._on_connect)
        self.client.on("disconnect", self._on_disconnect)

    # -- handlers (the client's read thread) --------------------------------

    def _on_msg(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.log.received.append((message["room"], message["sender"], message["seq"]))

    def _on_connect(self) -> None:
        self.connects += 1
        if self.connects > 1:  # a reconnect: settle it outside the read thread
            self.workload.returns.put((self, self.client.recovered))

    def _on_disconnect(self, *_: Any) -> None:
        with self.lock:
            if self.away_since is None:
                self.away_since = time.monotonic()

    # -- calls (the test's or the returns thread) ---------------------------

    @property
    def connected(self) -> bool:
        return bool(self.client.connected and "/" in self.client.namespaces)

    def connect(self) -> None:
        self.client.connect(self.workload.url, auth={"name": self.name},
                            transports=["websocket"], wait_timeout=CALL_TIMEOUT)

    def join(self) -> None:
        self.client.call("join", self.room, timeout=CALL_TIMEOUT)
        self.log.rooms.setdefault(self.room, time.monotonic())

    def whoami(self) -> dict[str, Any]:
        answer = self.client.call("whoami", timeout=CALL_TIMEOUT)
        with self.lock:
            self.log.whoami.append(answer["name"])
            self.nodes.append(answer["node"])
        return dict(answer)

    def came_back(self, recovered: bool) -> None:
        if not recovered:
            self.join()  # a fresh session is in no room: join again
        with self.lock:
            start = self.away_since if self.away_since is not None else time.monotonic()
            self.log.away.append(Away(start, time.monotonic(), recovered))
            self.away_since = None
        self.whoami()

    def close_log(self) -> None:
        with self.lock:
            if self.away_since is not None:
                self.log.away.append(Away(self.away_since, None, None))
                self.away_since = None


class Workload:
    """Clients and senders against ``url`` (the balancer).

    :param factory: the ``sio_client_factory`` fixture (it shuts clients down).
    """

    def __init__(self, factory: Any, url: str, config: WorkloadConfig | None = None) -> None:
        self.factory, self.url = factory, url
        self.config = config or WorkloadConfig()
        self.clients: list[FaultClient] = []
        self.sent: list[Sent] = []
        self.returns: queue.Queue[tuple[FaultClient, bool] | None] = queue.Queue()
        self.errors: list[str] = []
        self._pending: dict[tuple[str, str, int], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stopped_at: float | None = None

    def start(self) -> Workload:
        """Connect and join every client, then start the senders."""
        cfg = self.config
        for i in range(cfg.clients):
            client = FaultClient(self, f"c{i:03d}", f"room{i // cfg.room_size:02d}")
            client.connect()
            client.join()
            client.whoami()
            self.clients.append(client)
        self._threads = [threading.Thread(target=self._send, daemon=True, name="fault-senders"),
                         threading.Thread(target=self._settle_returns, daemon=True,
                                          name="fault-returns")]
        for thread in self._threads:
            thread.start()
        return self

    @property
    def senders(self) -> list[FaultClient]:
        cfg = self.config
        return [c for i, c in enumerate(self.clients) if i % cfg.room_size < cfg.senders_per_room]

    def on_node(self, node_name: str) -> list[FaultClient]:
        """Clients whose last whoami came from ``node_name``."""
        return [c for c in self.clients if c.nodes and c.nodes[-1] == node_name]

    def sent_count(self) -> int:
        with self._lock:
            return len(self.sent)

    def _send(self) -> None:
        senders = self.senders
        seqs = {c.name: 0 for c in senders}
        period = 1.0 / self.config.rate
        tick = time.monotonic()
        while not self._stop.is_set():
            for client in senders:
                if not client.connected:
                    continue  # nothing is sent, so nothing is expected
                key = (client.room, client.name, seqs[client.name])
                with self._lock:
                    self._pending[key] = time.monotonic()
                try:
                    client.client.emit("say", {"room": key[0], "sender": key[1], "seq": key[2]},
                                       callback=lambda *_, key=key: self._acked(key))
                except socketio.exceptions.SocketIOError:
                    pass  # not connected after all: it stays pending, counted unacked
                seqs[client.name] += 1
            self._expire(time.monotonic())
            tick += period
            self._stop.wait(max(0.0, tick - time.monotonic()))

    def _acked(self, key: tuple[str, str, int]) -> None:
        with self._lock:
            if self._pending.pop(key, None) is not None:
                self.sent.append(Sent(*key, at=time.monotonic()))

    def _expire(self, now: float, everything: bool = False) -> None:
        with self._lock:
            for key, at in list(self._pending.items()):
                if everything or now - at > self.config.ack_timeout:
                    del self._pending[key]
                    self.sent.append(Sent(*key, at=at, acked=False))

    def _settle_returns(self) -> None:
        while True:
            item = self.returns.get()
            if item is None:
                return
            client, recovered = item
            try:
                client.came_back(recovered)
            except Exception as exc:  # recorded: the verdict reports it
                self.errors.append(f"{client.name}: after reconnect: {exc!r}")

    def wait_all_connected(self, timeout: float = 30.0) -> None:
        """Until every client is connected and back in its rooms (or fail)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.connected and c.away_since is None for c in self.clients) \
                    and self.returns.empty():
                return
            time.sleep(0.1)
        away = [c.name for c in self.clients if not c.connected or c.away_since is not None]
        raise AssertionError(f"{len(away)} clients still away after {timeout}s: {away[:10]}")

    def stop(self) -> float:
        """Stop the senders; returns the time they stopped."""
        self._stop.set()
        self._threads[0].join(10)
        self.stopped_at = time.monotonic()
        return self.stopped_at

    def close(self) -> None:
        """Stop the threads (after a failed scenario too); idempotent."""
        self._stop.set()
        self.returns.put(None)
        for thread in self._threads:
            thread.join(10)

    def verdict(self, settle: float = 20.0, quiet: float = 3.0) -> str:
        """Wait for deliveries in flight (until the checker is satisfied, nothing
        arrived for ``quiet`` s, or ``settle`` s), then assert the invariants.

        Returns the checker's one-line summary."""
        until = self.stopped_at if self.stopped_at is not None else self.stop()
        deadline = time.monotonic() + settle
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                pending = bool(self._pending)
            count = sum(len(c.log.received) for c in self.clients)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if not pending and self.returns.empty() and not self._check(until):
                break
            if time.monotonic() - last_change > quiet and not pending:
                break
            time.sleep(0.2)
        self._expire(time.monotonic(), everything=True)
        for client in self.clients:
            if client.connected:
                client.whoami()
        self.returns.put(None)
        self._threads[1].join(10)
        for client in self.clients:
            client.close_log()
        assert not self.errors, "\n".join(self.errors[:10])
        logs = [c.log for c in self.clients]
        with self._lock:
            sent = list(self.sent)
        assert_clean(logs, sent, until=until, slack=self.config.slack)
        return summary(logs, sent)

    def _check(self, until: float) -> bool:
        with self._lock:
            sent = list(self.sent)
        return bool(check([c.log for c in self.clients], sent, until=until,
                          slack=self.config.slack))

"""Clients for integration tests: a peer that records events, and a sender
that streams numbered room messages through node restarts."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import requests
import socketio

from cluster import Client

WAIT = 10


class Peer:
    """A client that queues every event it receives (``(event, data)``, data
    being the one argument or the list of them), answers ``question`` events,
    and waits for its connect handler's ``welcome``.

    ``cls`` defaults to :class:`cluster.Client` with a fast reconnection;
    ``headers`` can pin a node through HAProxy's ``SERVERID`` cookie
    (``SERVERID=<cluster.devtools.haproxy_config.cookie_value(node name)>``).
    """

    def __init__(self, factory: Any, url: str, cls: type = Client, auth: Any = None,
                 http: requests.Session | None = None, transports: list[str] | None = None,
                 headers: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.answers: list[Any] = []
        self.disconnected = threading.Event()
        options: dict[str, Any] = {"reconnection_delay": 0.2, "reconnection_delay_max": 0.5}
        options.update(kwargs)
        if http is not None:
            options["http_session"] = http
        self.client = factory(cls=cls, **options)

        @self.client.on("*")
        def any_event(event: str, *args: Any) -> None:
            self.events.put((event, args[0] if len(args) == 1 else list(args)))

        @self.client.on("question")
        def on_question(question: Any) -> str:
            self.answers.append(question)
            return f"answer to {question}"

        @self.client.on("disconnect")
        def on_disconnect(*_: Any) -> None:
            self.disconnected.set()

        self.client.connect(url, auth=auth, headers=headers or {},
                            transports=transports or ["websocket"], wait_timeout=WAIT)
        self.welcome = self.next("welcome")

    @property
    def sid(self) -> str:
        return self.client.get_sid()

    def next(self, name: str, timeout: float = WAIT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name!r} event within {timeout}s")
            try:
                event, data = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event == name:
                return data

    def none_of(self, name: str, wait: float = 1.0) -> bool:
        """True when no ``name`` event arrives within ``wait`` seconds."""
        try:
            while True:
                if self.events.get(timeout=wait)[0] == name:
                    return False
        except queue.Empty:
            return True

    def call(self, event: str, data: Any = None) -> Any:
        return self.client.call(event, data, timeout=WAIT)

    def get(self, key: str) -> Any:
        return self.call("session_get", key)["value"]


def wait_reconnected(peer: Peer, old_sid: str) -> Any:
    welcome = peer.next("welcome", timeout=20)
    if isinstance(welcome, list) and len(welcome) == 2 and isinstance(welcome[0], dict) \
            and (welcome[1] is None or isinstance(welcome[1], str)):
        # with recovery on, a logged emit ends with its offset (None when its
        # node delivered it while its bus was down): the welcome is the first
        welcome = welcome[0]
    # the welcome follows the CONNECT reply, but the client's own bookkeeping
    # of the namespace may lag the dispatch of the event by a moment
    deadline = time.monotonic() + WAIT
    while "/" not in peer.client.namespaces and time.monotonic() < deadline:
        time.sleep(0.02)
    assert peer.client.get_sid() != old_sid or welcome["resumed"]
    return welcome


def record_room_messages(peer: Peer) -> list[str]:
    """Collect the texts of room messages (kept apart from other events)."""
    texts: list[str] = []
    peer.client.on("room_message", lambda message: texts.append(message["text"]))
    return texts


def wait_for_texts(texts: list[str], count: int, timeout: float = 15) -> list[str]:
    """Wait until ``count`` texts arrived, or none arrived for 1.5 s."""
    deadline = time.monotonic() + timeout
    seen, quiet_since = len(texts), time.monotonic()
    while len(texts) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        if len(texts) != seen:
            seen, quiet_since = len(texts), time.monotonic()
        elif time.monotonic() - quiet_since > 1.5:
            break
    time.sleep(0.2)  # and nothing more (a duplicate) after that
    return list(texts)


def feed_listener_and_sender(factory: Any, listener_url: str, sender_url: str
                             ) -> tuple[Peer, list[str], Peer]:
    """A listener in room ``feed`` that does not reconnect by itself (the
    tests move it), the texts it gets, and a plain client on another node
    whose ``before`` it got already."""
    listener = Peer(factory, listener_url, reconnection=False)
    received = record_room_messages(listener)
    listener.call("join", "feed")
    sender = Peer(factory, sender_url, cls=socketio.Client)
    sender.call("to_room", {"room": "feed", "text": "before"})
    assert wait_for_texts(received, 1) == ["before"]
    return listener, received, sender


class Stream:
    """Emits numbered room messages from a client until stopped."""

    def __init__(self, sender: Peer, room: str) -> None:
        self.sender, self.room, self.sent = sender, room, 0
        # texts whose ack was lost with the sender's node: sent or not, unknown
        self.uncertain: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sender.call("to_room", {"room": self.room, "text": f"m{self.sent:04d}"})
            except socketio.exceptions.BadNamespaceError:
                # the sender's own node is restarting: nothing was sent, retry
                time.sleep(0.05)
                continue
            except socketio.exceptions.TimeoutError:
                self.uncertain.add(f"m{self.sent:04d}")
            self.sent += 1
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.sent

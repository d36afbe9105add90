"""Connection state recovery across nodes with python clients (real nodes, Redis, HAProxy)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import socketio

from tests.cluster.test_session_resume import Peer, _wait_reconnected

RECOVERY = {"RECOVERY_WINDOW": "60"}


def _record(peer: Peer) -> list[str]:
    """Collect the texts of room messages (kept apart from other events)."""
    texts: list[str] = []
    peer.client.on("room_message", lambda message: texts.append(message["text"]))
    return texts


def _texts(texts: list[str], count: int, timeout: float = 15) -> list[str]:
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


def test_sigkilled_node_client_recovers_everything_in_order(
        node_factory: Any, haproxy_factory: Any, sio_client_factory: Any) -> None:
    nodes = node_factory(count=2, env=RECOVERY)
    proxy = haproxy_factory(nodes)
    listener = Peer(sio_client_factory, proxy.url)
    received = _record(listener)
    listener.call("join", "feed")
    listener.call("session_set", {"kept": "yes"})
    doomed = next(n for n in nodes if n.name == listener.welcome["node"])
    survivor = next(n for n in nodes if n is not doomed)
    sender = Peer(sio_client_factory, survivor.url, cls=socketio.Client)
    stream = Stream(sender, "feed")
    time.sleep(0.5)
    old_sid = listener.client.get_sid()
    doomed.kill(signal.SIGKILL)
    welcome = _wait_reconnected(listener, old_sid)
    time.sleep(0.5)
    sent = stream.stop()
    assert welcome["recovered"] is True and welcome["node"] == survivor.name
    assert listener.client.recovered is True
    assert listener.client.get_sid() == old_sid
    assert listener.get("kept") == "yes"
    texts = _texts(received, sent)
    assert texts == [f"m{i:04d}" for i in range(sent)]


def test_drained_node_rolling_restart_misses_nothing(
        node_factory: Any, haproxy_factory: Any, sio_client_factory: Any) -> None:
    nodes = node_factory(count=2, env=RECOVERY)
    proxy = haproxy_factory(nodes)
    listeners = [Peer(sio_client_factory, proxy.url) for _ in range(3)]
    records = [_record(listener) for listener in listeners]
    for listener in listeners:
        listener.call("join", "feed")
    sender = Peer(sio_client_factory, proxy.url, cls=socketio.Client,
                  reconnection_delay=0.2, reconnection_delay_max=0.5)
    stream = Stream(sender, "feed")
    for node in nodes:
        time.sleep(0.5)
        node.stop(grace=10)
        node.start()
        proxy.wait_all_up(timeout=20)
    time.sleep(1.0)
    sent = stream.stop()
    assert sent > 50  # the stream ran through both restarts
    expected = {f"m{i:04d}" for i in range(sent)}
    received = [_texts(record, sent) for record in records]
    for texts in received:
        missing = sorted(expected - set(texts) - stream.uncertain)
        assert not missing, f"missing {missing[:10]}"
        assert texts == sorted(texts)
        assert len(texts) == len(set(texts))
    for text in stream.uncertain:
        # an emit whose ack was lost reached every listener or none
        assert len({text in texts for texts in received}) == 1


def test_recovery_disabled_behaves_as_plain_socketio(
        node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(count=2)
    peer = Peer(sio_client_factory, first.url)
    peer.call("join", "plain")
    old_sid = peer.client.get_sid()
    pid = peer.client.pid()
    first.kill(signal.SIGKILL)
    again = Peer(sio_client_factory, second.url, cls=socketio.Client, auth={"pid": pid})
    assert again.welcome["recovered"] is False
    assert again.client.get_sid() != old_sid
    # no offsets: events carry exactly what the handler emitted
    again.call("to_room", {"room": "plain", "text": "x"})
    event, args = again.events.get(timeout=5)
    while event != "room_message":
        event, args = again.events.get(timeout=5)
    assert len(args) == 1


def test_unknown_offset_gives_a_resumed_but_unrecovered_connection(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(env=RECOVERY)
    peer = Peer(sio_client_factory, node.url)
    peer.call("session_set", {"k": 1})
    pid = peer.client.pid()
    old_sid = peer.client.get_sid()
    peer.client.disconnect()
    raw = Peer(sio_client_factory, node.url, auth={"pid": pid, "offset": "1-0"})
    assert raw.welcome["resumed"] is True
    assert raw.welcome["recovered"] is False
    assert raw.client.get_sid() != old_sid


def test_a_live_connections_pid_cannot_be_taken_over(
        node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(count=2, env=RECOVERY)
    owner = Peer(sio_client_factory, first.url)
    owner.call("session_set", {"secret": "owner"})
    thief = Peer(sio_client_factory, second.url, auth={"pid": owner.client.pid()})
    assert thief.welcome["resumed"] is False
    assert thief.get("secret") is None
    assert owner.get("secret") == "owner"

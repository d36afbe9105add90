"""Issue 24, findings 1 (recovery half) and 10, with real nodes and Redis:
another user's traffic cannot spend a client's replay, and a key of the
wrong type at the recovery stream's name heals without stopping delivery."""

from __future__ import annotations

import signal
import time
from typing import Any

import redis
import requests

from tests.harness.fixtures import BUS_SIGNING_SECRET
from tests.harness.peers import Peer, record_room_messages, wait_for_texts
from workers import Emitter

WINDOW = ["--recovery-window", "60"]
STREAM_KEY = "{flask-socketio}:recovery"
#: more than the old scan bound (SCAN_FACTOR 10 x max_replay_packets 2,000)
NOISE = 21_000


def _metric(node: Any, line_start: str) -> float:
    metrics = requests.get(node.url + "/metrics", timeout=5).text
    lines = [line for line in metrics.splitlines() if line.startswith(line_start)]
    return float(lines[0].split()[-1]) if lines else 0.0


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_another_users_traffic_does_not_spend_a_clients_replay(
        node_factory: Any, sio_client_factory: Any, redis_url: str) -> None:
    first, second = node_factory(count=2, extra_args=WINDOW)
    listener = Peer(sio_client_factory, second.url, reconnection=False)
    texts = record_room_messages(listener)
    listener.call("join", "quiet")
    emitter = Emitter(redis_url, recovery_window=60, signing_secret=BUS_SIGNING_SECRET)
    try:
        emitter.emit("room_message", {"text": "q0"}, to="quiet")
        assert wait_for_texts(texts, 1) == ["q0"]
        old_sid = listener.client.get_sid()
        second.kill(signal.SIGKILL)
        assert listener.disconnected.wait(10)
        # a noisy user's traffic to its 300 rooms, logged while the listener
        # is away; three messages of the listener's own room among it
        started = time.monotonic()
        own = {5_000: "q1", 12_000: "q2", 20_000: "q3"}
        for n in range(NOISE):
            if n in own:
                emitter.emit("room_message", {"text": own[n]}, to="quiet")
            emitter.emit("room_message", {"text": f"noise {n}"}, to=f"noisy-{n % 300}")
            assert time.monotonic() - started < 40, "the noise took too long to log"
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.xlen(STREAM_KEY) > NOISE
        finally:
            client.close()
        listener.client.connect(first.url, transports=["websocket"], wait_timeout=10)
        welcome = listener.next("welcome", timeout=20)
        assert welcome["recovered"] is True, "the replay was refused"
        assert listener.client.get_sid() == old_sid
        # exactly its room's messages, once each, in order
        assert wait_for_texts(texts, 4) == ["q0", "q1", "q2", "q3"]
        events = 'socketio_server_events_total{kind="replay_entries_'
        assert _metric(first, events + 'scanned"}') > NOISE   # Redis looked at all
        assert _metric(first, events + 'checked"}') <= 10     # Python at its own
    finally:
        emitter.close()


def test_a_wrong_typed_stream_key_heals_and_delivery_goes_on(
        node_factory: Any, sio_client_factory: Any, redis_url: str) -> None:
    first, second, third = node_factory(count=3, extra_args=WINDOW)
    receiver = Peer(sio_client_factory, second.url)
    received = record_room_messages(receiver)
    receiver.call("join", "feed")
    away = Peer(sio_client_factory, third.url, reconnection=False)
    away_texts = record_room_messages(away)
    away.call("join", "feed")
    sender = Peer(sio_client_factory, first.url)
    sender.call("to_room", {"room": "feed", "text": "before"})
    assert wait_for_texts(received, 1) == ["before"]
    assert wait_for_texts(away_texts, 1) == ["before"]
    away_sid = away.client.get_sid()
    third.kill(signal.SIGKILL)  # away across the reset
    assert away.disconnected.wait(10)

    client = redis.Redis.from_url(redis_url)
    try:
        client.set(STREAM_KEY, "x")  # Redis access, no bus secret
        sender.call("to_room", {"room": "feed", "text": "after"})
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == ["before", "after"], "delivery stopped"
        assert client.type(STREAM_KEY) == b"stream"
        assert client.get(STREAM_KEY + ":quarantined") == b"x"
    finally:
        client.close()
    for node in (first, second):
        _wait(lambda node=node: node.http_status("/readyz") == 200, 10,  # type: ignore[misc]
              f"{node.name} never became ready again")
    assert _metric(first, 'socketio_bus{kind="recovery_stream_resets"}') == 1
    log = first.log_text()
    assert "a key of the wrong type (string) was at {flask-socketio}:recovery" in log
    assert log.count("a key of the wrong type") == 1

    # its offset predates the reset: resumed, but never a partial replay
    away.client.connect(first.url, transports=["websocket"], wait_timeout=10)
    welcome = away.next("welcome", timeout=20)
    assert welcome["resumed"] is True and welcome["recovered"] is False
    assert away.client.get_sid() != away_sid
    sender.call("to_room", {"room": "feed", "text": "later"})
    assert wait_for_texts(received, 3) == ["before", "after", "later"]

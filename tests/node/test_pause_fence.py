"""cluster.node.pause_fence: a node that was frozen does not act on what it read late."""

from __future__ import annotations

import queue
import signal
import time
from typing import Any

import pytest

from cluster.node.pause_fence import PauseFence
from tests.harness.raw_websocket import metric
from tests.harness.waiting import wait_for

FAULT_APP = "tests.faults.fault_app:socketio"


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fence(clock: _Clock, counters: dict[str, int]) -> PauseFence:
    fence = PauseFence(4.0, spawn=lambda *_: None, sleep=lambda _: None, counters=counters,
                       clock=clock)
    fence.start()
    return fence


def test_a_gap_of_ping_timeout_fences_the_connections_opened_before_it() -> None:
    clock, counters = _Clock(), {}
    fence = _fence(clock, counters)
    before = fence.check()
    clock.now += 3.9  # busy, but within ping_timeout: nothing is fenced
    assert not fence.fenced(before)
    clock.now += 4.0  # frozen: the first packet after it sees the gap itself
    assert fence.fenced(before)
    after = fence.check()
    assert after == before + 1 and not fence.fenced(after)
    assert counters == {"pauses_detected": 1, "connections_fenced": 1}


def test_ticks_keep_the_gap_short_while_the_node_runs() -> None:
    clock, counters = _Clock(), {}
    fence = _fence(clock, counters)
    opened = fence.check()
    for _ in range(100):  # 50 s of ticks, 0.5 s apart
        clock.now += 0.5
        fence.check()
    assert not fence.fenced(opened) and counters["pauses_detected"] == 0


def _client(factory: Any, url: str, name: str) -> tuple[Any, queue.Queue[Any]]:
    client = factory(reconnection=False)
    received: queue.Queue[Any] = queue.Queue()
    client.on("msg", received.put)
    client.connect(url, auth={"name": name}, transports=["websocket"], wait_timeout=10)
    assert client.call("join", "r", timeout=10)
    return client, received


def test_what_a_client_sent_to_a_frozen_node_is_not_acted_on_when_it_wakes(
        node_factory: Any, sio_client_factory: Any) -> None:
    # ping_timeout 2 s: a pause of 3.5 s is one; the websocket read timeout
    # (ping_interval + ping_timeout, 5 s) has not fired when the node wakes,
    # so the node reads the frame its client wrote during the pause
    env = {"FAULT_PING_INTERVAL": "3", "FAULT_PING_TIMEOUT": "2"}
    frozen, other = node_factory(app=FAULT_APP, count=2, env=env)
    listener, heard = _client(sio_client_factory, other.url, "listener")
    sender, _ = _client(sio_client_factory, frozen.url, "sender")
    frozen.kill(signal.SIGSTOP)
    try:
        sender.emit("say", {"room": "r", "sender": "sender", "seq": 1})
        time.sleep(3.5)  # the fault: frozen for longer than ping_timeout
    finally:
        frozen.kill(signal.SIGCONT)
    wait_for(lambda: not sender.connected, timeout=15,
             what="the woken node closes the connection from before its pause")
    assert metric(frozen, "socketio_server_events_total", kind="connections_fenced") >= 1
    assert metric(frozen, "socketio_server_events_total", kind="pauses_detected") >= 1
    # a connection opened after the pause is served as ever; the bus relays
    # in order, so the stale message would have come before this one
    late, _ = _client(sio_client_factory, frozen.url, "late")
    late.emit("say", {"room": "r", "sender": "late", "seq": 1})
    first = heard.get(timeout=10)
    assert first == {"room": "r", "sender": "late", "seq": 1}, \
        f"the frozen node acted on what it read after waking: {first}"
    listener.disconnect()


if __name__ == "__main__":
    pytest.main([__file__])

"""cluster.node.pause_fence: a node that was frozen does not act on what it read late."""

from __future__ import annotations

import json
import queue
import signal
import time
from typing import Any

import pytest
import requests

from cluster.node.pause_fence import PauseFence
from tests.harness.raw_websocket import RawWebSocket, metric
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


def test_a_woken_node_lets_go_of_connections_whose_clients_left_silently(
        node_factory: Any) -> None:
    # python-engineio's client gives up on a frozen node without closing its
    # socket: nothing ever arrives on that connection again. The woken node
    # used to hold it (and its session) until the pong deadline, so the
    # client's resume on another node was refused as "held by a live
    # connection"; a pause now fences and releases such connections at once
    env = {"FAULT_PING_INTERVAL": "2", "FAULT_PING_TIMEOUT": "3"}
    frozen, other = node_factory(app=FAULT_APP, count=2, env=env)
    silent = RawWebSocket(frozen)
    silent.send('40{"name":"quiet"}')
    pid = json.loads(silent.read_until("40")[2:])["pid"]
    peers = metric(other, "socketio_bus", kind="live_nodes")
    frozen.kill(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # the fault: frozen past ping_timeout (3 s), and long enough for the
        # other node to count it gone (so the resume below waits until it is
        # back); its last heartbeat may predate the stop, hence both
        wait_for(lambda: metric(other, "socketio_bus", kind="live_nodes") < peers,
                 timeout=15, what="the frozen node counted gone")
        time.sleep(max(0.0, 4.0 - (time.monotonic() - stopped)))
    finally:
        frozen.kill(signal.SIGCONT)
    wait_for(lambda: frozen.http_status("/readyz") == 200, timeout=10,
             what="the woken node ready")
    # back in the other node's view: the resume asks it whether it holds the session
    wait_for(lambda: metric(other, "socketio_bus", kind="live_nodes") == peers,
             timeout=10, what="the woken node heard again")
    returning = RawWebSocket(other)
    returning.send("40" + json.dumps({"name": "quiet", "pid": pid}))
    reply = json.loads(returning.read_until("40")[2:])
    assert reply.get("pid") == pid, "the resume was refused: the woken node held the session"
    assert metric(frozen, "socketio_server_events_total", kind="connections_fenced") >= 1
    wait_for(lambda: metric_gauge(frozen, "socketio_connections") == 0,
             what="the fenced connection closed")
    silent.close()
    returning.close()


def metric_gauge(node: Any, name: str) -> float:
    for line in requests.get(f"{node.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


if __name__ == "__main__":
    pytest.main([__file__])

"""cluster.node.connect_admission: a node works on at most
max_concurrent_connects CONNECTs at once; the others wait, and one that waits
past connect_timeout has its connection closed and comes back."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import requests
import socketio

from cluster.node.connect_admission import ConnectAdmission
from tests.harness.peers import Peer
from tests.harness.raw_websocket import RawWebSocket, metric
from tests.harness.waiting import wait_for


def _events(node: Any, kind: str) -> float:
    return metric(node, "socketio_server_events_total", kind=kind)


def _running(node: Any) -> dict[str, int]:
    return requests.get(f"{node.url}/connects-running", timeout=5).json()  # type: ignore[no-any-return]


def test_a_full_node_makes_connects_wait_then_gives_up_on_them() -> None:
    counters: dict[str, int] = {}
    admission = ConnectAdmission(1, counters)
    with admission.admitted(1.0) as first:
        assert first
        with admission.admitted(0.05) as second:
            assert not second  # nothing freed up in time: nothing held
        assert counters == {"connects_queued": 1, "connect_queue_timeouts": 1}
        assert admission.waiting == 0
    with admission.admitted(0.05) as third:  # the slot came back
        assert third


def test_connects_past_the_bound_wait_their_turn_and_all_get_in(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(extra_args=["--max-concurrent-connects", "2"])
    peers: list[Peer] = []
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            peers.append(Peer(sio_client_factory, node.url, cls=socketio.Client,
                              auth={"linger": 0.4}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and len(peers) == 6
    assert _running(node)["most"] == 2  # never more connect handlers at once than the bound
    assert _events(node, "connects_queued") >= 4
    assert _events(node, "connect_queue_timeouts") == 0


def test_a_connect_that_waits_past_connect_timeout_is_closed_not_refused(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(extra_args=["--max-concurrent-connects", "1",
                                       "--connect-timeout", "1"])
    holder = RawWebSocket(node)  # takes the only slot for 4 s
    holder.send("40" + json.dumps({"linger": 4}))
    wait_for(lambda: _running(node)["now"] == 1, what="the first CONNECT running")
    late = RawWebSocket(node)
    late.send("40")
    frames: list[str] = []
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        frame = late.read()
        if frame is None:
            break
        frames.append(frame)
    else:
        raise AssertionError("the waiting CONNECT's connection stayed open")
    # closed, with no CONNECT_ERROR: socket.io-client would not retry after one
    assert not [frame for frame in frames if frame.startswith("44")]
    assert _events(node, "connect_queue_timeouts") == 1
    holder.read_until("40")  # the first one got in
    # and once the slot is free a client gets in again
    assert Peer(sio_client_factory, node.url, cls=socketio.Client).welcome["node"]

"""Worker emits are logged for connection state recovery like the nodes' own."""

from __future__ import annotations

import signal
from typing import Any

import requests

from tests.harness.fixtures import BUS_SIGNING_SECRET
from tests.harness.peers import Peer, record_room_messages, wait_for_texts, wait_reconnected
from workers import Emitter


def test_a_client_away_during_worker_emits_gets_them_replayed(
        node_factory: Any, haproxy_factory: Any, sio_client_factory: Any,
        redis_url: str) -> None:
    nodes = node_factory(count=2, extra_args=["--recovery-window", "60"])
    proxy = haproxy_factory(nodes)
    listener = Peer(sio_client_factory, proxy.url)
    texts = record_room_messages(listener)
    listener.call("join", "jobs")
    emitter = Emitter(redis_url, recovery_window=60, signing_secret=BUS_SIGNING_SECRET)
    try:
        emitter.emit("room_message", {"text": "w0"}, to="jobs")
        assert wait_for_texts(texts, 1) == ["w0"]
        doomed = next(node for node in nodes if node.name == listener.welcome["node"])
        old_sid = listener.client.get_sid()
        doomed.kill(signal.SIGKILL)
        # emitted while the listener has no node at all
        for index in range(1, 6):
            emitter.emit("room_message", {"text": f"w{index}"}, to="jobs")
        welcome = wait_reconnected(listener, old_sid)
        assert welcome["recovered"] is True
        emitter.emit("room_message", {"text": "w6"}, to="jobs")
        assert wait_for_texts(texts, 7) == [f"w{index}" for index in range(7)]
        survivor = next(node for node in nodes if node is not doomed)
        metrics = requests.get(survivor.url + "/metrics", timeout=5).text
        replayed = [line for line in metrics.splitlines()
                    if line.startswith('socketio_server_events_total{kind="replayed_packets"}')]
        assert replayed and float(replayed[0].split()[-1]) >= 1  # they came from the log
    finally:
        emitter.close()

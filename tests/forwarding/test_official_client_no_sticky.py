"""The official socket.io-client (Node) through a round-robin HAProxy with
no cookie, polling only and then with the websocket upgrade: it connects,
hears a chat from another node, and comes back after a node SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import Any

import pytest
import requests
import socketio

from tests.forwarding.test_no_sticky_sessions import counter
from tests.harness.peers import Peer
from tests.js.test_official_client import HERE, NodeClient
from tests.js.test_official_client import node_binary as node_binary  # the fixture

CLIENT = HERE / "balanced_client.mjs"


class BalancedClient(NodeClient):
    def __init__(self, node: str, url: str, mode: str) -> None:  # noqa: D107
        self.process = subprocess.Popen(
            [node, str(CLIENT), url, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=HERE)
        import queue

        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()


def chat(sender: Peer, prefix: str, count: int = 5) -> list[str]:
    texts = [f"{prefix}{i}" for i in range(count)]
    for text in texts:
        sender.call("to_room", {"room": "lobby", "text": text})
    return texts


@pytest.mark.parametrize("mode", ["polling", "upgrade"])
def test_official_client_without_sticky_sessions(
        mode: str, node_binary: str, node_factory: Any, haproxy_factory: Any,
        sio_client_factory: Any) -> None:
    nodes = node_factory(count=3)
    proxy = haproxy_factory(nodes, sticky=False)
    clients = [BalancedClient(node_binary, proxy.url, mode) for _ in range(3)]
    try:
        ready = [client.expect("ready") for client in clients]
        # the sessions' requests (or websockets) must cross nodes. Up to its
        # upgrade a client makes 4 requests (handshake, CONNECT, poll,
        # websocket): round robin over 3 nodes sends the upgrade of a client
        # whose requests did not interleave with another's to the node that
        # made its session. When that happened to every client: one more,
        # after one request that moves the round robin on by a node
        kind = "forwarded_polls" if mode == "polling" else "forwarded_upgrades"
        while sum(counter(node, kind) for node in nodes) == 0:
            assert len(clients) < 8, f"no {kind} on any node after {len(clients)} clients"
            requests.get(f"{proxy.url}/socket.io/?EIO=4&transport=polling", timeout=5)
            clients.append(BalancedClient(node_binary, proxy.url, mode))
            ready.append(clients[-1].expect("ready"))
        victim = next(node for node in nodes if node.name == ready[0]["node"])
        sender_node = next(node for node in nodes if node is not victim)
        sender = Peer(sio_client_factory, sender_node.url, cls=socketio.Client)
        before = chat(sender, "a")
        time.sleep(0.5)
        victim.kill(signal.SIGKILL)
        moved = [c for c, r in zip(clients, ready, strict=True) if r["node"] == victim.name]
        for client in moved:
            assert client.expect("reconnected")["node"] != victim.name
        proxy.wait_for_state(victim.name, "DOWN", timeout=10)
        after = chat(sender, "b")
        time.sleep(1.0)
        for client in clients:
            client.send("report")
            report = client.expect("report")
            assert report["texts"][:5] == before, report
            assert report["texts"][-5:] == after, report
            assert not any("Invalid session" in error for error in report["errors"])
            # a client whose poll was passing through the victim when it died
            # (a forward in flight) lost it and reconnected; none had to twice
            assert report["connects"] <= 2, report["errors"]
            if mode == "upgrade":
                assert report["transport"] == "websocket"
    finally:
        for client in clients:
            client.stop()

"""SIGTERM drains a node: not ready, in-flight handlers finish, clients move and resume."""

from __future__ import annotations

import signal
import time
from typing import Any

import requests

from tests.harness.peers import Peer, wait_reconnected


def _refuses_new_clients(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=2).status_code == 503
    except requests.ConnectionError:  # its listening socket is closed: refused too
        return True


def test_sigterm_moves_clients_to_another_node_with_their_sessions(
        node_factory: Any, haproxy_factory: Any, sio_client_factory: Any) -> None:
    nodes = node_factory(count=2, extra_args=["--drain-seconds", "8"])
    proxy = haproxy_factory(nodes)
    peer = Peer(sio_client_factory, proxy.url)
    peer.call("join", "movers")
    peer.call("session_set", {"before": "drain"})
    draining = next(node for node in nodes if node.name == peer.welcome["node"])
    other = next(node for node in nodes if node is not draining)

    # a handler still running when SIGTERM arrives gets to finish its write
    peer.client.emit("slow_set", {"seconds": 1.5, "key": "during", "value": "drain"})
    assert peer.next("slow_started") == "during"
    old_sid = peer.client.get_sid()
    draining.kill(signal.SIGTERM)
    # a draining node takes no new clients: its probe fails or its port is closed
    deadline = time.monotonic() + 5
    while not _refuses_new_clients(draining.url):
        assert time.monotonic() < deadline, "the draining node still reports ready"
        time.sleep(0.05)

    welcome = wait_reconnected(peer, old_sid)
    assert welcome["node"] == other.name
    assert welcome["resumed"] is True
    assert "movers" in welcome["rooms"]
    assert peer.get("before") == "drain"
    assert peer.get("during") == "drain"
    assert draining.wait(timeout=10) == 0
    log = draining.log_text()
    assert "draining the node" in log and "closed 1 connection" in log
    assert "Traceback" not in log

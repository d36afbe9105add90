"""The official socket.io-client (Node) against a 3-node cluster behind HAProxy:
connection state recovery after its node is SIGKILLed."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import socketio

from tests.harness.peers import Peer, Stream
from tests.recovery.test_replay import RECOVERY

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "recovery_client.mjs"


@pytest.fixture(scope="module")
def node_binary() -> str:
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules" / "socket.io-client").is_dir():
        pytest.skip("needs Node.js and `npm install` in tests/js (./dev setup does both)")
    return node


class NodeClient:
    """The JavaScript client process and its JSON lines."""

    def __init__(self, node: str, url: str) -> None:
        self.process = subprocess.Popen(
            [node, str(CLIENT), url, "feed"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=HERE)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"event": "output", "text": line.rstrip()})

    def expect(self, event: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line.get("event") == event:
                return line
            seen.append(line)
        raise AssertionError(f"no {event!r} from the JS client within {timeout}s; saw {seen}")

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)


def test_official_client_recovers_after_its_node_is_sigkilled(
        node_binary: str, node_factory: Any, haproxy_factory: Any,
        sio_client_factory: Any) -> None:
    nodes = node_factory(count=3, env=RECOVERY)
    proxy = haproxy_factory(nodes)
    client = NodeClient(node_binary, proxy.url)
    try:
        ready = client.expect("ready")
        doomed = next(node for node in nodes if node.name == ready["node"])
        sender_node = next(node for node in nodes if node is not doomed)
        sender = Peer(sio_client_factory, sender_node.url, cls=socketio.Client)
        stream = Stream(sender, "feed")
        time.sleep(0.5)
        doomed.kill(signal.SIGKILL)
        back = client.expect("reconnected")
        time.sleep(0.5)
        sent = stream.stop()
        time.sleep(1.0)
        assert back["recovered"] is True
        assert back["sid"] == ready["sid"]
        client.send("session")
        assert client.expect("session")["value"] == "from-js"
        client.send("report")
        report = client.expect("report")
        assert report["connects"] == 2
        assert report["texts"] == [f"m{i:04d}" for i in range(sent)]
        assert not stream.uncertain
    finally:
        client.stop()

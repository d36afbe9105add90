"""The official socket.io-client (Node) connecting to a namespace no node
serves gets socket.io's answer, so its ``connect_error`` says why."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def node_binary() -> str:
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules" / "socket.io-client").is_dir():
        pytest.skip("needs Node.js and `npm install` in tests/js (./dev setup does both)")
    return node


def _connect(node: str, url: str) -> dict[str, Any]:
    done = subprocess.run([node, str(HERE / "namespace_client.mjs"), url], cwd=HERE,
                          capture_output=True, text=True, timeout=30)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_official_client_sees_invalid_namespace(node_binary: str, node_factory: Any) -> None:
    (server,) = node_factory(app="tests.apps.compat_app:socketio", message_queue=None)
    assert _connect(node_binary, server.url + "/nowhere") == {
        "event": "connect_error", "message": "Invalid namespace", "data": None}
    assert _connect(node_binary, server.url + "/") == {"event": "connect"}

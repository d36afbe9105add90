"""async_mode threading for development: socketio.run() on Werkzeug, no eventlet."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import socketio

from cluster.devtools.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def threaded_server() -> Any:
    port = free_port()
    script = ("from tests.apps.chat_app import app, socketio; "
              f"socketio.run(app, host='127.0.0.1', port={port}, allow_unsafe_werkzeug=True)")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("the threaded development server did not start")
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.parametrize("transports", [["polling"], ["websocket"], ["polling", "websocket"]])
def test_development_server_serves_every_transport(threaded_server: str,
                                                   transports: list[str]) -> None:
    client = socketio.Client(reconnection=False)
    try:
        client.connect(threaded_server, transports=transports, wait_timeout=10)
        assert client.call("session_set", {"mode": "threading"}, timeout=10) == ["mode"]
        assert client.call("session_get", "mode", timeout=10) == {"value": "threading"}
        reply = client.call("join", "dev-room", timeout=10)
        assert "dev-room" in reply["rooms"]
        assert client.transport() == transports[-1]
    finally:
        client.disconnect()


def test_run_refuses_werkzeug_in_production_without_the_flag() -> None:
    script = "from tests.apps.chat_app import app, socketio; socketio.run(app, port=1)"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0
    assert "allow_unsafe_werkzeug=True" in result.stderr

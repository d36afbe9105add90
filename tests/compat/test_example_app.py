"""Flask-SocketIO 5.7.0's example application, ported by the one-import
change, served by a real node (``python -m cluster node``).

The example comes from the release's tag archive at test time (the sdist
does not ship it; see :mod:`tests.compat.sources`). Its index page renders
``socketio.async_mode``; its handlers use the session, rooms, the ``'*'``
catch-all, an emit with an ack callback and a background task.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import pytest
import requests
import socketio

from cluster.devtools.local_cluster import NodeProcess
from tests.compat import sources

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0


@pytest.fixture(scope="module")
def example_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        source = sources.example(sources.cache_dir(request.config, tmp_path_factory))
    except sources.SourceUnavailable as exc:
        # GitHub only: a CI machine may reach PyPI and not GitHub
        sources.unavailable(exc, required_in_ci=False)
        raise  # unreachable: unavailable() skips or fails
    ported = tmp_path_factory.mktemp("example")
    (ported / "templates").mkdir()
    for template in (source / "templates").iterdir():
        (ported / "templates" / template.name).write_bytes(template.read_bytes())
    original = (source / "app.py").read_text()
    swapped = sources.swap_import(original)
    assert swapped != original
    (ported / "ported_example.py").write_text(swapped)
    return ported


@pytest.fixture
def example_node(example_dir: Path, tmp_path: Path) -> Any:
    node = NodeProcess("ported_example:socketio", cwd=example_dir,
                       env={"PYTHONPATH": f"{example_dir}:{ROOT}"},
                       log_path=tmp_path / "example-node.log")
    node.start()
    yield node
    node.stop()


def test_example_index_renders_and_its_handlers_answer(example_node: Any,
                                                       sio_client_factory: Any) -> None:
    page = requests.get(example_node.url + "/", timeout=WAIT)
    assert page.status_code == 200
    assert "Async mode is: <b>eventlet</b>" in page.text  # the node runner's mode

    received: queue.Queue[Any] = queue.Queue()
    client = sio_client_factory(cls=socketio.Client)
    client.on("my_response", received.put)
    client.connect(example_node.url, transports=["websocket"], wait_timeout=WAIT)
    assert received.get(timeout=WAIT) == {"data": "Connected", "count": 0}

    client.emit("my_event", {"data": "hello"})
    assert received.get(timeout=WAIT) == {"data": "hello", "count": 1}  # session counter
    client.emit("join", {"room": "lobby"})
    assert received.get(timeout=WAIT)["data"] == f"In rooms: {client.get_sid()}, lobby"
    # the catch-all gets (event, data) and answers the sender, session intact
    client.emit("no_such_handler", {"x": 1})
    assert received.get(timeout=WAIT) == {"data": ["no_such_handler", {"x": 1}], "count": 3}

"""Tasks and serving (cluster.flask_integration.tasks) at its seam: a fake
server, and the extension's own delegation to it."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask

from cluster import SocketIO
from cluster.flask_integration.tasks import TasksAndServing


class FakeServer:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        return ("started", target(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_tasks_run_on_the_server_in_use() -> None:
    servers = [FakeServer()]
    tasks = TasksAndServing(lambda: servers[-1], lambda: None,  # type: ignore[arg-type,return-value]
                            node_state=None, extension=None)  # type: ignore[arg-type]
    assert tasks.start_background_task(lambda a, b=0: a + b, 1, b=2) == ("started", 3)
    servers.append(FakeServer())  # reconfigure() may replace the parts in use
    tasks.sleep(0.5)
    assert servers[0].slept == [] and servers[1].slept == [0.5]


def test_the_extension_delegates_tasks_and_test_clients() -> None:
    app = Flask(__name__)
    app.secret_key = "k"
    socketio = SocketIO(app)
    done = threading.Event()
    socketio.start_background_task(done.set).join()
    assert done.is_set()
    socketio.sleep(0)

    @socketio.on("echo")
    def echo(data: Any) -> Any:
        return data

    client = socketio.test_client(app, auth={"k": 1})
    assert client.is_connected() and client.emit("echo", 7, callback=True) == 7

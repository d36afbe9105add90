"""The runtime seam (cluster.runtime): the same primitives on eventlet and
gevent, on real sockets, and the choice of runtime at start-up."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from cluster import runtime
from cluster.devtools.processes import free_port
from tests.harness.runtimes import require_runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=runtime.MODES)
def green(request: pytest.FixtureRequest) -> Any:
    return require_runtime(request.param)


def _wait_for(green: Any, condition: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        green.sleep(0.005)
    return bool(condition())


def test_spawn_and_sleep_yield_to_each_other(green: Any) -> None:
    order: list[str] = []
    green.spawn(order.append, "spawned")
    assert order == []  # runs once this green thread yields
    green.sleep(0)
    assert order == ["spawned"]


def test_call_later_runs_in_the_hub_and_cancel_stops_it(green: Any) -> None:
    ran: list[bool] = []
    green.call_later(0.02, lambda: ran.append(green.in_hub()))
    cancelled = green.call_later(0.02, ran.append, "cancelled")
    green.cancel_call(cancelled)
    assert not green.in_hub()
    assert _wait_for(green, lambda: ran)
    green.sleep(0.05)
    assert ran == [True]  # in the hub, once; the cancelled one never ran
    fired = green.call_later(0, lambda: None)
    green.sleep(0.01)
    green.cancel_call(fired)  # cancelling what ran already is harmless


def test_call_soon_runs_at_the_end_of_the_turn(green: Any) -> None:
    ran: list[bool] = []
    green.call_soon(lambda: ran.append(green.in_hub()))
    assert ran == []
    assert _wait_for(green, lambda: ran)
    assert ran == [True]


def test_waits_on_file_descriptors(green: Any) -> None:
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    try:
        seen: list[bytes] = []

        def reader() -> None:
            green.wait_readable(right.fileno())
            seen.append(right.recv(16))

        green.spawn(reader)
        green.sleep(0.02)
        assert seen == []  # still waiting: nothing was written
        green.wait_writable(left.fileno())  # an empty buffer: at once
        left.send(b"ping")
        assert _wait_for(green, lambda: seen)
        assert seen == [b"ping"]
    finally:
        left.close()
        right.close()


def test_a_read_watch_fires_once_in_the_hub_until_armed_again(green: Any) -> None:
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    watch = green.watch_readable(right.fileno())
    fired: list[bool] = []
    try:
        watch.arm(lambda: fired.append(green.in_hub()))
        green.sleep(0.02)
        assert fired == []  # nothing to read yet
        left.send(b"one")
        assert _wait_for(green, lambda: fired)
        assert fired == [True]  # once, from the hub
        green.sleep(0.05)
        assert fired == [True]  # unread bytes, but not armed again: silent
        watch.arm(lambda: fired.append(green.in_hub()))
        assert _wait_for(green, lambda: len(fired) == 2)  # level: still readable
        assert right.recv(16) == b"one"
        watch.arm(lambda: fired.append(green.in_hub()))
        watch.cancel()
        left.send(b"two")
        green.sleep(0.05)
        assert len(fired) == 2  # cancelled before the bytes came
    finally:
        watch.cancel()
        left.close()
        right.close()


def test_event_queue_and_semaphore_are_green(green: Any) -> None:
    event, queue, semaphore = green.event(), green.queue(), green.semaphore(1)
    got: list[Any] = []

    def consumer() -> None:
        got.append(queue.get())
        with semaphore:
            got.append("locked")
        event.set()

    semaphore.acquire()
    green.spawn(consumer)
    queue.put("item")
    green.sleep(0.02)
    assert got == ["item"] and not event.is_set()  # waits for the semaphore
    semaphore.release()
    assert event.wait(2)
    assert got == ["item", "locked"]


def _green_socketpair(mode: str) -> tuple[Any, Any]:
    if mode == "eventlet":
        from eventlet.green import socket as green_socket
    else:
        from gevent import socket as green_socket
    return green_socket.socketpair()  # type: ignore[no-any-return]


def test_raw_socket_is_the_non_blocking_one_beneath(green: Any) -> None:
    plain = socket.socket()
    try:
        assert green.raw_socket(plain) is plain  # not green: itself
    finally:
        plain.close()
    left, right = _green_socketpair(green.name)
    try:
        left.settimeout(30)  # a green send would wait that long for room
        raw = green.raw_socket(left)
        assert raw is not left and isinstance(raw, socket.SocketType)  # the C socket
        started = time.monotonic()
        with pytest.raises(BlockingIOError):
            while True:  # nobody reads: the kernel buffer fills up
                raw.send(b"x" * 65536)
        assert time.monotonic() - started < 5
    finally:
        left.close()
        right.close()


def test_load_caches_and_refuses_unknown_modes() -> None:
    assert runtime.load("eventlet") is runtime.load("eventlet")
    assert runtime.load("eventlet").name == "eventlet"
    with pytest.raises(ValueError, match="choose one of eventlet, gevent"):
        runtime.load("asyncio")


def test_nothing_is_patched_in_the_test_process() -> None:
    assert runtime.patched_mode() is None


def _run(code: str, *, pythonpath: str = str(ROOT)) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": pythonpath,
                                                                "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("mode", runtime.MODES)
def test_select_patches_the_process_with_one_library(mode: str) -> None:
    require_runtime(mode)
    other = "gevent" if mode == "eventlet" else "eventlet"
    result = _run(f"""
        import sys
        from cluster import runtime
        assert runtime.patched_mode() is None
        runtime.select({mode!r})
        import socket, threading
        from cluster.node.server_setup import default_async_mode
        print(runtime.patched_mode(), default_async_mode(), {other!r} in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    # the other library is not even imported
    assert result.stdout.split() == [mode, mode, "False"]


def test_the_gevent_runtime_missing_is_one_clear_error(tmp_path: Path) -> None:
    # a gevent that cannot be imported, as on a machine without it
    (tmp_path / "gevent").mkdir()
    (tmp_path / "gevent" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'gevent'\", name='gevent')\n")
    result = subprocess.run(
        [sys.executable, "-m", "cluster", "node", "--app", "tests.apps.chat_app:socketio",
         "--async-mode", "gevent", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: async mode 'gevent' needs gevent")
    assert "pip install 'flask-socketio-cluster[gevent]'" in lines[0]


@pytest.mark.parametrize(("flag", "env"), [(["--async-mode", "asyncio"], {}),
                                           ([], {"CLUSTER_ASYNC_MODE": "tornado"})])
def test_an_unknown_async_mode_is_a_usage_error(flag: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cluster", "node", "--app", "tests.apps.chat_app:socketio",
         *flag], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 2
    assert "is not an async mode: choose eventlet or gevent" in result.stderr


def test_socketio_accepts_async_mode_gevent_as_flask_socketio_does() -> None:
    require_runtime("gevent")
    from flask import Flask

    from cluster import SocketIO

    app = Flask(__name__)
    app.config["SECRET_KEY"] = "gevent-mode"
    socketio = SocketIO(app, async_mode="gevent")

    @socketio.on("echo")
    def echo(data: Any) -> Any:
        return data

    assert socketio.async_mode == "gevent"
    assert socketio.server.eio.runtime.name == "gevent"
    client = socketio.test_client(app)
    assert client.emit("echo", {"n": 1}, callback=True) == {"n": 1}


def test_socketio_async_mode_gevent_without_gevent_says_how_to_install(
        tmp_path: Path) -> None:
    (tmp_path / "gevent").mkdir()
    (tmp_path / "gevent" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'gevent'\", name='gevent')\n")
    result = _run("""
        from flask import Flask
        from cluster import SocketIO
        from cluster.exceptions import ConfigurationError
        try:
            SocketIO(Flask(__name__), async_mode="gevent")
        except ConfigurationError as exc:
            print(exc)
    """, pythonpath=f"{tmp_path}:{ROOT}")
    assert result.returncode == 0, result.stderr
    assert "pip install 'flask-socketio-cluster[gevent]'" in result.stdout


def test_the_async_mode_flag_and_its_environment_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.runner.cli import build_parser

    monkeypatch.delenv("CLUSTER_ASYNC_MODE", raising=False)
    assert build_parser().parse_args(["node", "--app", "a:b"]).async_mode == "eventlet"
    monkeypatch.setenv("CLUSTER_ASYNC_MODE", "gevent")
    assert build_parser().parse_args(["node", "--app", "a:b"]).async_mode == "gevent"
    # the flag wins over the environment; any case
    assert build_parser().parse_args(
        ["node", "--app", "a:b", "--async-mode", "Eventlet"]).async_mode == "eventlet"

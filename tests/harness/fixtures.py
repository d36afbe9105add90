"""Pytest fixtures for integration tests against real processes.

========================  =========  ==============================================
fixture                   scope      gives
========================  =========  ==============================================
``redis_server``          session    a :class:`RedisServerProcess` on a free port
``redis_url``             function   its URL, server (re)started and ``FLUSHALL``-ed
``node_factory``          function   ``node_factory(app=..., count=1, message_queue=
                                     <redis_url>, env=None, extra_args=None)`` ->
                                     ``list[NodeProcess]`` (``node1``, ``node2``...)
``haproxy_factory``       function   ``haproxy_factory(nodes, wait_ready=True,
                                     **config)`` -> :class:`HAProxyProcess` in
                                     front of ``nodes``, all of them ``UP``
``sio_client_factory``    function   ``sio_client_factory(cls=socketio.Client,
                                     **kwargs)`` -> a client, shut down at teardown
========================  =========  ==============================================

Nodes run on eventlet, or on what ``CLUSTER_ASYNC_MODE`` names (they
inherit the environment: ``CLUSTER_ASYNC_MODE=gevent ./dev test tests/cluster``;
see :mod:`tests.harness.runtimes`); the report's header says which.
Everything is started by :mod:`cluster.devtools.local_cluster` and stopped by PID at
teardown. When a test fails, the last lines of the log of every process it
used (nodes, HAProxy, Redis) are attached to the failure report. A missing
``redis-server`` or ``haproxy`` skips the test with the install command.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest

from cluster.devtools.local_cluster import (
    ExecutableNotFoundError,
    HAProxyProcess,
    ManagedProcess,
    NodeProcess,
    RedisServerProcess,
    stop_all,
)
from tests.harness.runtimes import NODE_ASYNC_MODE

__all__ = [
    "BUS_SIGNING_SECRET",
    "DEFAULT_APP",
    "NODE_START_TIMEOUT",
    "haproxy_factory",
    "node_factory",
    "redis_server",
    "redis_url",
    "sio_client_factory",
]

DEFAULT_APP = "tests.apps.chat_app:socketio"
#: the bus signing secret ``node_factory`` gives nodes by default: a node
#: with a message queue refuses to start unsigned (issue 16); tests that
#: publish to the nodes sign with it, or start them with
#: ``env={"CLUSTER_ALLOW_UNSIGNED_BUS": "1"}`` to test unsigned peers
BUS_SIGNING_SECRET = "harness-bus-signing-secret-0123456789abcdef"
# Importing eventlet, Flask and the app takes a few seconds on a loaded 2-core box.
NODE_START_TIMEOUT = 20.0
# How long a node may drain on SIGTERM at teardown before it is killed.
NODE_STOP_GRACE = 5.0
LOG_TAIL_LINES = 60

# Processes a test used, so a failure report can show their logs.
_USED = pytest.StashKey[list[ManagedProcess]]()


class _UseRedisUrl:
    def __repr__(self) -> str:
        return "<the redis_url fixture>"


USE_REDIS_URL: Any = _UseRedisUrl()


class NodeFactory(Protocol):
    def __call__(
        self,
        app: str = DEFAULT_APP,
        count: int = 1,
        message_queue: str | None = USE_REDIS_URL,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] | None = None,
    ) -> list[NodeProcess]: ...


def pytest_report_header(config: pytest.Config) -> str:
    return f"nodes run on: {NODE_ASYNC_MODE} (CLUSTER_ASYNC_MODE; tests/gevent: gevent)"


def _used_by(item: pytest.Item, process: ManagedProcess) -> None:
    used = item.stash.setdefault(_USED, [])
    if process not in used:
        used.append(process)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    # Logs are read now, while the processes still run (teardown comes later).
    if report.failed and report.when in ("setup", "call"):
        for process in item.stash.get(_USED, []):
            tail = process.log_tail(LOG_TAIL_LINES) or "(empty)"
            report.sections.append((f"log of {process.name}: {process.log_path}", tail))
    return report


def _skip_missing(exc: ExecutableNotFoundError) -> NoReturn:
    pytest.skip(f"{exc} (.ci/run and ./dev setup install it)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    """A real redis-server for the whole session, on a free port, no persistence."""
    try:
        server = RedisServerProcess(workdir=tmp_path_factory.mktemp("redis"))
    except ExecutableNotFoundError as exc:
        _skip_missing(exc)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServerProcess, request: pytest.FixtureRequest) -> str:
    """The session Redis's URL, restarted if a test killed it, emptied with FLUSHALL."""
    if redis_server.is_running():
        redis_server.kill(signal.SIGCONT)  # in case a test froze it with SIGSTOP
    else:
        redis_server.start()
    client = redis_server.client(socket_timeout=5)
    try:
        client.flushall()
    finally:
        client.close()
    _used_by(request.node, redis_server)
    return redis_server.url


def with_bus_secret(env: dict[str, str] | None,
                    extra_args: Sequence[str] | None = None) -> dict[str, str]:
    """``env`` plus ``CLUSTER_SIGNING_SECRET=BUS_SIGNING_SECRET`` unless the
    caller chose a secret or the opt-out (in ``env`` or ``extra_args``)."""
    env = dict(env or {})
    chosen = {"--signing-secret", "--allow-unsigned-bus"} & set(extra_args or ())
    if not chosen and not {"CLUSTER_SIGNING_SECRET", "CLUSTER_ALLOW_UNSIGNED_BUS"} & set(env):
        env["CLUSTER_SIGNING_SECRET"] = BUS_SIGNING_SECRET
    return env


@pytest.fixture
def node_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeFactory]:
    """Start socket nodes (``python -m cluster node``) and stop them at teardown.

    ``message_queue`` defaults to the ``redis_url`` fixture (requested only
    then, so single-node tests with ``message_queue=None`` need no Redis).
    Nodes of one call start in parallel; names continue across calls
    (``node1``, ``node2``, ...). Each waits up to 20 s for ``/readyz``.
    Nodes sign the bus with :data:`BUS_SIGNING_SECRET` unless ``env`` or
    ``extra_args`` set a secret or the unsigned opt-out.
    """
    nodes: list[NodeProcess] = []
    rootdir = request.config.rootpath  # nodes import ``tests.apps...`` from here

    def factory(
        app: str = DEFAULT_APP,
        count: int = 1,
        message_queue: str | None = USE_REDIS_URL,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] | None = None,
    ) -> list[NodeProcess]:
        if message_queue is USE_REDIS_URL:
            message_queue = request.getfixturevalue("redis_url")
        env = with_bus_secret(env, extra_args)
        new = []
        for _ in range(count):
            name = f"node{len(nodes) + 1}"
            node = NodeProcess(
                app,
                message_queue=message_queue,
                env=env,
                extra_args=extra_args or (),
                name=name,
                log_path=tmp_path / "logs" / f"{name}.log",
                cwd=rootdir,
                start_timeout=NODE_START_TIMEOUT,
            )
            nodes.append(node)
            new.append(node)
            _used_by(request.node, node)
        for node in new:
            node.spawn()
        for node in new:
            node.wait_ready()
        return new

    yield factory
    stop_all(nodes, grace=NODE_STOP_GRACE)


@pytest.fixture
def haproxy_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., HAProxyProcess]]:
    """Start HAProxy in front of nodes: ``haproxy_factory(nodes, wait_ready=True, **config)``.

    Returns once every node has passed a ``/readyz`` check (``UP`` in
    HAProxy), unless ``wait_ready=False`` (for a test that starts HAProxy in
    front of a node that is not ready on purpose). Backend names are the
    nodes' names (the ``SERVERID`` cookie values are their
    :func:`cluster.devtools.haproxy_config.cookie_value`);
    ``config`` goes to :func:`cluster.devtools.haproxy_config.render_haproxy_config`
    (``check_interval``, ``tunnel_timeout``...). Skips the test when haproxy
    is not installed.
    """
    started: list[HAProxyProcess] = []

    def factory(nodes: Sequence[Any], wait_ready: bool = True, **config: Any) -> HAProxyProcess:
        name = "haproxy" if not started else f"haproxy{len(started) + 1}"
        try:
            proxy = HAProxyProcess(nodes, workdir=tmp_path / name, name=name, **config)
        except ExecutableNotFoundError as exc:
            _skip_missing(exc)
        started.append(proxy)
        _used_by(request.node, proxy)
        proxy.start()
        if wait_ready:
            proxy.wait_all_up(timeout=NODE_START_TIMEOUT)
        return proxy

    yield factory
    stop_all(started, grace=2.0)


@pytest.fixture
def sio_client_factory() -> Iterator[Callable[..., Any]]:
    """Create python-socketio clients: ``sio_client_factory(cls=socketio.Client, **kwargs)``.

    ``kwargs`` go to the client's constructor (``reconnection``,
    ``reconnection_delay``...); ``cls`` may be ``cluster.Client``. Every
    client is shut down (disconnected, reconnection stopped) at teardown.
    """
    import socketio

    clients: list[Any] = []

    def factory(cls: type | None = None, **kwargs: Any) -> Any:
        client = (cls or socketio.Client)(**kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        # A client whose server a test killed must not fail the teardown.
        with contextlib.suppress(Exception):
            client.shutdown()

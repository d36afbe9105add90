"""A whole cluster on one machine: redis-server, N socket nodes, HAProxy.

``python -m cluster local --app MODULE:ATTR --nodes 2 --port 8000`` calls
:func:`run_local_cluster`, which starts (in this order) a throwaway
``redis-server`` on a free port (unless ``--redis-url`` names one), the nodes
on free ports joined to it as their message queue, and HAProxy on ``--port``
with cookie stickiness and ``/readyz`` health checks; then it waits for
Ctrl-C or ``SIGTERM`` and stops everything by PID, in reverse order.

The process classes live in :mod:`cluster.processes` (re-exported here);
this module adds :class:`HAProxyProcess` and :class:`LocalCluster`, which the
test harness reuses.
"""

from __future__ import annotations

import csv
import http.client
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Self

from cluster.haproxy_config import Backend, render_haproxy_config
from cluster.processes import (
    ClusterProcessError,
    ExecutableNotFoundError,
    ManagedProcess,
    NodeProcess,
    ProcessStartError,
    RedisServerProcess,
    find_executable,
    free_port,
    port_accepts,
    stop_all,
)

__all__ = [
    "ClusterProcessError",
    "ExecutableNotFoundError",
    "HAProxyProcess",
    "LocalCluster",
    "ManagedProcess",
    "NodeProcess",
    "ProcessStartError",
    "RedisServerProcess",
    "free_port",
    "run_local_cluster",
    "stop_all",
]


class HAProxyProcess(ManagedProcess):
    """HAProxy in front of ``backends``, from :func:`render_haproxy_config`.

    ``backends`` are :class:`~cluster.haproxy_config.Backend` objects,
    ``(name, host, port)`` tuples, or anything with ``name``, ``host`` and
    ``port`` attributes (a :class:`NodeProcess`). ``port=None`` picks a free
    port. ``stats=True`` (the default) also serves HAProxy's stats page on
    another free port, which :meth:`server_states` reads. ``config`` passes
    further keywords to :func:`render_haproxy_config` (``check_interval``,
    ``tunnel_timeout``...). The config is checked with ``haproxy -c`` before
    starting so a mistake is reported with HAProxy's own message. Runs in the
    foreground (``-db``); ready once its port accepts connections.
    """

    def __init__(
        self,
        backends: Sequence[Any],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        executable: str | None = None,
        stats: bool = True,
        start_timeout: float = 10.0,
        name: str = "haproxy",
        **config: Any,
    ) -> None:
        self.executable = executable or find_executable("haproxy", "haproxy")
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cluster-haproxy-"))
        )
        super().__init__(name, log_path=self.workdir / f"{name}.log", start_timeout=start_timeout)
        self.host = host
        self.port = port or free_port(host)
        self.stats_port = free_port(host) if stats else None
        self.backends = [
            b if isinstance(b, (Backend, tuple)) else Backend(b.name, b.host, b.port)
            for b in backends
        ]
        self.config_path = self.workdir / f"{name}.cfg"
        self.config_text = render_haproxy_config(
            self.backends, self.port, bind_host=host, stats_port=self.stats_port, **config
        )

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [self.executable, "-f", str(self.config_path), "-db"]

    def spawn(self) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        check = subprocess.run(
            [self.executable, "-c", "-q", "-f", str(self.config_path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if check.returncode != 0:
            raise ProcessStartError(
                f"haproxy rejected {self.config_path}:\n{check.stdout}{check.stderr}"
            )
        super().spawn()

    def is_ready(self) -> bool:
        return port_accepts(self.host, self.port)

    def _server_rows(self) -> list[dict[str, str]]:
        if self.stats_port is None:
            raise ClusterProcessError(f"{self.name} was created with stats=False")
        conn = http.client.HTTPConnection(self.host, self.stats_port, timeout=2.0)
        try:
            conn.request("GET", "/;csv")
            text = conn.getresponse().read().decode()
        except (OSError, http.client.HTTPException):
            return []
        finally:
            conn.close()
        rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
        return [
            row
            for row in rows
            if row.get("pxname") == "socket_nodes" and row["svname"] not in ("FRONTEND", "BACKEND")
        ]

    def server_states(self) -> dict[str, str]:
        """Each backend server's status from the stats page: ``UP``, ``DOWN``...

        Transitional states read like ``UP 1/2``; an empty dict means the
        stats page did not answer. Needs ``stats=True``.
        """
        return {row["svname"]: row["status"] for row in self._server_rows()}

    def wait_for_state(self, server: str, state: str, timeout: float = 10.0) -> None:
        """Wait until ``server`` reports ``state`` (``UP``/``DOWN``) on the stats page."""
        deadline = time.monotonic() + timeout
        while (current := self.server_states().get(server)) != state:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"HAProxy server {server!r} is {current!r}, not {state!r}, after {timeout:g} s"
                )
            time.sleep(0.1)

    def wait_all_up(self, timeout: float = 20.0) -> None:
        """Wait until every server has passed a health check and is ``UP``.

        HAProxy starts each server as "up, unchecked" and one failed check
        (a node whose ``/readyz`` is still 503 while its bus connects) takes
        it down; this waits for a real ``L7OK``. Raises
        :class:`ProcessStartError` naming the servers that are not ready.
        """
        deadline = time.monotonic() + timeout
        while True:
            rows = self._server_rows()
            pending = {
                row["svname"]: f"{row['status']} ({row['check_status'] or 'no check yet'})"
                for row in rows
                if row["status"] != "UP" or not row["check_status"].startswith("L7OK")
            }
            if rows and not pending:
                return
            if time.monotonic() >= deadline:
                states = ", ".join(f"{k}: {v}" for k, v in pending.items()) or "no stats"
                raise ProcessStartError(
                    f"not every node behind {self.name} became ready (GET /readyz == 200) "
                    f"within {timeout:g} s: {states}; see the nodes' logs"
                )
            time.sleep(0.1)


class LocalCluster:
    """redis-server (unless ``redis_url`` is given), ``nodes`` socket nodes, HAProxy.

    ``app`` is the ``MODULE:ATTR`` every node serves; ``port`` is where
    HAProxy listens (on ``host``, loopback by default); the nodes and Redis
    take free ports. ``workdir`` (a fresh temporary directory by default)
    receives every log and the HAProxy config. ``node_env`` is added to each
    node's environment; ``node_module`` is the module run as
    ``python -m MODULE node`` (tests swap in a stand-in). :meth:`start`
    either starts everything or stops what it started and raises;
    :meth:`stop` stops by PID in reverse order. Also a context manager.
    """

    def __init__(
        self,
        app: str,
        nodes: int = 2,
        port: int = 8000,
        redis_url: str | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        node_env: Mapping[str, str] | None = None,
        node_module: str = "cluster",
        start_timeout: float = 20.0,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got nodes={nodes}")
        self.app = app
        self.node_count = nodes
        self.port = port
        self.host = host
        self.external_redis_url = redis_url
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cluster-local-"))
        self.node_env = dict(node_env or {})
        self.node_module = node_module
        self.start_timeout = start_timeout
        self.redis: RedisServerProcess | None = None
        self.nodes: list[NodeProcess] = []
        self.haproxy: HAProxyProcess | None = None

    @property
    def url(self) -> str:
        """The balancer's URL, where clients connect."""
        return f"http://{self.host}:{self.port}"

    @property
    def redis_url(self) -> str:
        """The Redis URL the nodes use as their message queue."""
        if self.external_redis_url:
            return self.external_redis_url
        if self.redis is None:
            raise ClusterProcessError("the cluster is not started; call start() first")
        return self.redis.url

    def processes(self) -> list[ManagedProcess]:
        """Every process this cluster started, in start order."""
        started: list[ManagedProcess] = [self.redis] if self.redis else []
        return started + list(self.nodes) + ([self.haproxy] if self.haproxy else [])

    def start(self) -> Self:
        """Start Redis, the nodes (in parallel) and HAProxy; all or nothing."""
        # Fail before starting anything when a program is missing.
        haproxy_exe = find_executable("haproxy", "haproxy")
        redis_exe = (
            None if self.external_redis_url else find_executable("redis-server", "redis-server")
        )
        if port_accepts(self.host, self.port, timeout=0.2):
            raise ProcessStartError(
                f"port {self.port} on {self.host} is already in use; pass another --port"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if redis_exe:
                self.redis = RedisServerProcess(
                    host=self.host, workdir=self.workdir / "redis", executable=redis_exe
                )
                self.redis.start()
            self.nodes = [
                NodeProcess(
                    self.app,
                    host=self.host,
                    message_queue=self.redis_url,
                    env=self.node_env,
                    name=f"node{i}",
                    log_path=self.workdir / f"node{i}.log",
                    module=self.node_module,
                    start_timeout=self.start_timeout,
                )
                for i in range(1, self.node_count + 1)
            ]
            # Spawning all before waiting overlaps the slow imports.
            for node in self.nodes:
                node.spawn()
            for node in self.nodes:
                node.wait_ready()
            self.haproxy = HAProxyProcess(
                self.nodes, port=self.port, host=self.host,
                workdir=self.workdir / "haproxy", executable=haproxy_exe,
            )  # fmt: skip
            self.haproxy.start()
            self.haproxy.wait_all_up(timeout=self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop everything this cluster started, by PID, newest first."""
        # The balancer first so no request reaches a stopping node, Redis last
        # so draining nodes can still flush their sessions.
        if self.haproxy:
            self.haproxy.stop(grace=grace)
        stop_all(self.nodes, grace=grace)
        if self.redis:
            self.redis.stop(grace=grace)

    def describe(self) -> str:
        """A few lines naming every process, its URL, PID and log."""
        lines = [f"cluster   {self.url}   (HAProxy, cookie-sticky; logs in {self.workdir})"]
        if self.haproxy and self.haproxy.stats_port:
            lines.append(f"stats     http://{self.host}:{self.haproxy.stats_port}/")
        for node in self.nodes:
            lines.append(f"{node.name:<9} {node.url}   pid {node.pid}   log {node.log_path}")
        if self.redis:
            lines.append(f"redis     {self.redis.url}   pid {self.redis.pid}")
        else:
            lines.append(f"redis     {self.redis_url}   (external)")
        return "\n".join(lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_local_cluster(
    app: str,
    nodes: int,
    port: int,
    redis_url: str | None,
    *,
    node_module: str = "cluster",
) -> int:
    """Run a :class:`LocalCluster` until SIGINT/SIGTERM; return the exit status.

    Prints the URLs once everything is up, reports a node that dies (HAProxy
    routes around it), and stops everything by PID before returning. Returns
    1, with the reason on stderr, when the cluster cannot start or HAProxy
    dies; 0 after a requested stop.
    """
    stop = threading.Event()
    starting = True

    def on_signal(signum: int, frame: FrameType | None) -> None:
        first = not stop.is_set()
        stop.set()
        if starting and first:  # a second signal must not interrupt the cleanup
            # Interrupt a start that may take seconds; LocalCluster.start
            # stops whatever it had started.
            raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        try:
            cluster = LocalCluster(app, nodes, port, redis_url, node_module=node_module)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            cluster.start()
        except ClusterProcessError as exc:
            print(f"error: {exc}\n(logs in {cluster.workdir})", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted while starting; stopped", file=sys.stderr)
            return 0
        starting = False
        print(cluster.describe(), flush=True)
        print("ready; press Ctrl-C to stop", flush=True)
        status = 0
        reported: set[str] = set()
        try:
            while not stop.wait(0.5):
                for node in cluster.nodes:
                    if not node.is_running() and node.name not in reported:
                        reported.add(node.name)
                        print(
                            f"warning: {node.name} (pid {node.pid}) exited with status "
                            f"{node.returncode}; last lines of its log:\n{node.log_tail(20)}",
                            file=sys.stderr, flush=True,
                        )  # fmt: skip
                if cluster.redis and not cluster.redis.is_running() and "redis" not in reported:
                    reported.add("redis")
                    print("warning: redis-server exited; the nodes lost their bus",
                          file=sys.stderr, flush=True)  # fmt: skip
                if cluster.haproxy and not cluster.haproxy.is_running():
                    print(f"error: haproxy exited; last lines of its log:\n"
                          f"{cluster.haproxy.log_tail(20)}", file=sys.stderr, flush=True)  # fmt: skip
                    status = 1
                    break
        finally:
            print("stopping...", flush=True)
            cluster.stop()
            print("stopped", flush=True)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""A whole cluster on one machine: redis-server, N socket nodes, HAProxy, a worker.

``python -m cluster.devtools up --app MODULE:ATTR --nodes 2 --port 8000`` (what
``./dev up`` runs) calls :func:`run_local_cluster`, which starts (in this
order) a throwaway ``redis-server`` on a free port (unless ``--redis-url``
names one), the nodes on free ports joined to it as their message queue, a
Celery worker whose broker is the same Redis, and HAProxy on ``--port`` with
cookie stickiness and ``/readyz`` health checks; then it waits for Ctrl-C,
``SIGTERM`` or ``SIGHUP`` and stops everything by PID, in reverse order.
Children also die with the runner (see :mod:`cluster.devtools.processes`), and a state
file (:mod:`cluster.devtools.state_file`) names a cluster of ours that still holds
the port.

The process classes live in :mod:`cluster.devtools.processes`,
:mod:`cluster.devtools.haproxy_process` and :mod:`cluster.devtools.worker_process`
(re-exported here); this module composes them into :class:`LocalCluster`,
which the test harness reuses.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Self

from cluster.devtools.haproxy_process import HAProxyProcess
from cluster.devtools.processes import (
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
from cluster.devtools.state_file import StateFile
from cluster.devtools.worker_process import WorkerProcess

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
    "WorkerProcess",
]


class LocalCluster:
    """redis-server (unless ``redis_url`` is given), ``nodes`` socket nodes, HAProxy.

    ``app`` is the ``MODULE:ATTR`` every node serves; ``port`` is where
    HAProxy listens (on ``host``, loopback by default); the nodes and Redis
    take free ports. ``workdir`` receives every log and the HAProxy config;
    by default a fresh temporary directory that :meth:`stop` removes (a given
    one is kept). ``node_env`` is added to the environment of each node and
    of the worker; ``node_module`` is the module run as ``python -m MODULE
    node`` (tests swap in a stand-in). ``worker=True`` adds a Celery worker
    (:class:`WorkerProcess`) on the cluster's Redis; ``log_format`` is the
    nodes' and worker's ``--log-format``. ``state_dir`` is where the state
    file goes (None: no state file; :func:`run_local_cluster` uses the
    default place). :meth:`start` either starts everything or stops what it
    started and raises; :meth:`stop` stops by PID in reverse order. Also a
    context manager.
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
        worker: bool = False,
        log_format: str = "text",
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got nodes={nodes}")
        self.app = app
        self.node_count = nodes
        self.port = port
        self.host = host
        self.external_redis_url = redis_url
        self.own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cluster-local-"))
        self.node_env = dict(node_env or {})
        self.node_module = node_module
        self.start_timeout = start_timeout
        self.with_worker = worker
        self.log_format = log_format
        self.state = None if state_dir is None else StateFile(port, state_dir)
        self.redis: RedisServerProcess | None = None
        self.nodes: list[NodeProcess] = []
        self.worker: WorkerProcess | None = None
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
        started += list(self.nodes) + ([self.worker] if self.worker else [])
        return started + ([self.haproxy] if self.haproxy else [])

    def start(self) -> Self:
        """Start Redis, the nodes (in parallel) and HAProxy; all or nothing."""
        try:
            # Fail before starting anything when a program is missing or the
            # port is taken (stop() then removes the empty temporary workdir).
            haproxy_exe = find_executable("haproxy", "haproxy")
            redis_exe = (
                None if self.external_redis_url
                else find_executable("redis-server", "redis-server")
            )
            ours = self.state.problem() if self.state else None
            if ours:
                raise ProcessStartError(ours)
            if port_accepts(self.host, self.port, timeout=0.2):
                raise ProcessStartError(
                    f"port {self.port} on {self.host} is already in use by another program; "
                    "stop it or pass another --port"
                )
            self.workdir.mkdir(parents=True, exist_ok=True)
            if redis_exe:
                self.redis = RedisServerProcess(
                    host=self.host, workdir=self.workdir / "redis", executable=redis_exe
                )
                self.redis.start()
            node_env = dict(self.node_env)
            if self.with_worker:
                # handlers send their Celery tasks to the worker's broker: this Redis
                node_env.setdefault("CELERY_BROKER_URL", self.redis_url)
            self.nodes = [
                NodeProcess(
                    self.app,
                    host=self.host,
                    message_queue=self.redis_url,
                    env=node_env,
                    name=f"node{i}",
                    log_path=self.workdir / f"node{i}.log",
                    module=self.node_module,
                    start_timeout=self.start_timeout,
                    # only when asked: a stand-in node module need not know the flag
                    extra_args=[] if self.log_format == "text" else ["--log-format",
                                                                      self.log_format],
                )
                for i in range(1, self.node_count + 1)
            ]
            if self.with_worker:
                self.worker = WorkerProcess(
                    self.redis_url, env=self.node_env, log_format=self.log_format,
                    log_path=self.workdir / "worker1.log",
                    start_timeout=max(30.0, self.start_timeout),
                )  # fmt: skip
            # Spawning all before waiting overlaps the slow imports.
            for process in [*self.nodes, *([self.worker] if self.worker else [])]:
                process.spawn()
            for node in self.nodes:
                node.wait_ready()
            if self.worker:
                self.worker.wait_ready()
            # round robin, no cookie: the nodes forward a session's requests
            # to its owner (cluster.node.forwarding), as in compose and the chart
            self.haproxy = HAProxyProcess(
                self.nodes, port=self.port, host=self.host,
                workdir=self.workdir / "haproxy", executable=haproxy_exe, sticky=False,
            )  # fmt: skip
            self.haproxy.start()
            self.haproxy.wait_all_up(timeout=self.start_timeout)
            if self.state:
                self.state.write(self.workdir, self.processes())
        except BaseException:
            # keep the logs of whatever ran, to read why it failed
            self.stop(keep_logs=any(p.pid is not None for p in self.processes()))
            raise
        return self

    def stop(self, grace: float = 5.0, keep_logs: bool = False) -> None:
        """Stop everything this cluster started, by PID, newest first.

        Then removes the state file and, unless ``keep_logs`` (or the workdir
        was given), the temporary workdir with its logs.
        """
        # The balancer first so no request reaches a stopping node, Redis last
        # so draining nodes can still flush their sessions.
        if self.haproxy:
            self.haproxy.stop(grace=grace)
        stop_all([*self.nodes, *([self.worker] if self.worker else [])], grace=grace)
        if self.redis:
            self.redis.stop(grace=grace)
        if self.state:
            self.state.remove()
        if self.own_workdir and not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def describe(self) -> str:
        """A few lines naming every process, its URL, PID and log."""
        lines = [f"cluster   {self.url}   (HAProxy, round robin, no affinity; "
                 f"logs in {self.workdir})"]
        if self.haproxy and self.haproxy.stats_port:
            lines.append(f"stats     http://{self.host}:{self.haproxy.stats_port}/")
        if self.haproxy:
            lines.append(f"haproxy   pid {self.haproxy.pid}   log {self.haproxy.log_path}")
        for node in self.nodes:
            lines.append(f"{node.name:<9} {node.url}   pid {node.pid}   log {node.log_path}")
        if self.worker:
            lines.append(f"{self.worker.name:<9} celery (threads)   pid {self.worker.pid}   "
                         f"log {self.worker.log_path}")
        if self.redis:
            lines.append(f"redis     {self.redis.url}   pid {self.redis.pid}   "
                         f"log {self.redis.log_path}")
        else:
            lines.append(f"redis     {self.redis_url}   (external)")
        return "\n".join(lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _local_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The nodes' and worker's extra environment, and what was generated.

    A local cluster must work on the first try, so the secrets a production
    deployment must set are generated when missing (random, for this run
    only), and connection state recovery is on (the demo shows it).
    """
    env: dict[str, str] = {}
    generated = []
    for name, nbytes in (("SECRET_KEY", 32), ("CLUSTER_SIGNING_SECRET", 32)):
        value = environ.get(name, "")
        if value:
            env[name] = value
        else:
            env[name] = secrets.token_urlsafe(nbytes)
            generated.append(name)
    env["CONNECTION_STATE_RECOVERY"] = environ.get("CONNECTION_STATE_RECOVERY") or "120"
    return env, generated


def run_local_cluster(
    app: str,
    nodes: int,
    port: int,
    redis_url: str | None,
    *,
    node_module: str = "cluster",
    worker: bool = True,
    logs: str | os.PathLike[str] | None = None,
    log_format: str = "text",
    state_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Run a :class:`LocalCluster` until SIGINT/SIGTERM/SIGHUP; return the exit status.

    Prints what runs where once everything is up, reports a node or worker
    that dies (HAProxy routes around a node), and stops everything by PID
    before returning. ``logs`` keeps the logs in that directory (default: a
    temporary one, removed at the end). ``state_dir`` overrides where the
    state file goes (tests). Returns 1, with the reason on stderr, when the
    cluster cannot start or HAProxy dies; 0 after a requested stop.
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
        # SIGHUP: the terminal was closed; stop as for Ctrl-C
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        env, generated = _local_environment(os.environ)
        try:
            cluster = LocalCluster(
                app, nodes, port, redis_url, node_module=node_module, worker=worker,
                workdir=logs, node_env=env, log_format=log_format,
                state_dir=state_dir or StateFile(port).path.parent,
            )  # fmt: skip
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        why = {"SECRET_KEY": "logins then survive a restart",
               "CLUSTER_SIGNING_SECRET": "an emitter outside this run can then sign"}
        for name in generated:
            print(f"{name} is not set: generated a random one for this run "
                  f"(export {name}=... to choose it: {why[name]})", flush=True)
        try:
            cluster.start()
        except ClusterProcessError as exc:
            where = f"\n(logs in {cluster.workdir})" if cluster.workdir.exists() else ""
            print(f"error: {exc}{where}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted while starting; stopped", file=sys.stderr)
            return 0
        starting = False
        print(cluster.describe(), flush=True)
        print(f"try this: open {cluster.url} in two browser windows, sign in with two names, "
              "chat, click 'Start a job'", flush=True)
        print("ready; press Ctrl-C to stop", flush=True)
        return _watch(cluster, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(cluster: LocalCluster, stop: threading.Event) -> int:
    """Report children that exit until ``stop`` is set (or HAProxy dies); then stop all."""
    status = 0
    reported: set[str] = set()
    try:
        while not stop.wait(0.5):
            for process in [*cluster.nodes, *([cluster.worker] if cluster.worker else [])]:
                if not process.is_running() and process.name not in reported:
                    reported.add(process.name)
                    print(
                        f"warning: {process.name} (pid {process.pid}) exited with status "
                        f"{process.returncode}; last lines of its log:\n{process.log_tail(20)}",
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

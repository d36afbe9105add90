"""The soak benchmark's cluster: Redis, N nodes behind HAProxy, and what disturbs them.

:class:`SoakCluster` starts a private ``redis-server`` (free port, no
persistence), N nodes of this project running the chat app with connection
state recovery on, and HAProxy rendered by the project's own
:mod:`cluster.devtools.haproxy_config` (cookie stickiness, ``/readyz`` checks every
500 ms, redispatch). It then restarts them on demand, each on the port it
had (HAProxy's configuration names the ports): a rolling restart of the
nodes (SIGTERM, the node drains, started again, ready, UP in HAProxy, next)
and a Redis restart. Every step is a timestamped entry of
:attr:`SoakCluster.timeline`.

:class:`Sampler` reads every node's VmRSS and ``/metrics`` every few seconds
from a thread, following a node to its new PID after a restart.

All processes go through :class:`~.procs.Procs`, so they are stopped by PID
when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .._common import rss_kib
from .measures import haproxy_states
from .procs import (
    HOST,
    Proc,
    Procs,
    SuiteError,
    child_env,
    free_port,
    http_status,
    redis_command,
    start_redis,
    wait_until,
)
from .targets import PYTHON, ROOT, START_TIMEOUT, haproxy_executable

APP = "tests.apps.chat_app:socketio"
ROOMS_METRIC = 'socketio_rooms{namespace="/"}'


@dataclass
class NodeSlot:
    """One node position behind HAProxy: a fixed name and port, the current process."""

    name: str
    port: int
    proc: Proc
    incarnation: int = 1


@dataclass
class SoakCluster:
    """Redis + nodes + HAProxy for the soak; every restart is logged in ``timeline``."""

    procs: Procs
    nodes: int = 3
    recovery_window: float = 120.0
    drain_seconds: float = 5.0
    node_args: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    slots: list[NodeSlot] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, **data: Any) -> dict[str, Any]:
        entry = {"t": time.time(), "kind": kind, **data}
        self.timeline.append(entry)
        return entry

    # -- start --------------------------------------------------------------------

    def start(self) -> None:
        self.redis, self.redis_url = start_redis(self.procs)
        self.redis_port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        for i in range(self.nodes):
            name = f"n{i + 1}"
            self.slots.append(NodeSlot(name, free_port(), proc=None))  # type: ignore[arg-type]
        for slot in self.slots:  # boot together: the imports take seconds each
            slot.proc = self._spawn_node(slot)
        for slot in self.slots:
            self._wait_ready(slot)
        self._start_haproxy()
        self.note("started", pids={s.name: s.proc.pid for s in self.slots},
                  redis_pid=self.redis.pid)

    def _spawn_node(self, slot: NodeSlot) -> Proc:
        argv = [PYTHON, "-m", "cluster", "node", "--app", APP, "--host", HOST,
                "--port", str(slot.port), "--message-queue", self.redis_url,
                "--name", slot.name, "--recovery-window", f"{self.recovery_window:g}",
                "--drain-seconds", f"{self.drain_seconds:g}", "--log-level", "WARNING",
                *self.node_args]
        # NODE_NAME: the chat app names its node in acks and welcomes
        return self.procs.spawn(f"node-{slot.name}", argv, cwd=str(ROOT), port=slot.port,
                                env=child_env({"PYTHONUNBUFFERED": "1", "NODE_NAME": slot.name}))

    def _wait_ready(self, slot: NodeSlot) -> None:
        wait_until(lambda: http_status(slot.port, "/readyz") == 200, f"{slot.name} /readyz",
                   START_TIMEOUT, [slot.proc])

    def _start_haproxy(self) -> None:
        # the project's own renderer, as a deployment would use it
        from cluster.devtools.haproxy_config import Backend, render_haproxy_config

        self.lb_port, self.stats_port = free_port(), free_port()
        backends = [Backend(s.name, HOST, s.port) for s in self.slots]
        config = self.procs.logdir / "haproxy-soak.cfg"
        # every client runs on this machine, one source address: no per-source limits
        config.write_text(render_haproxy_config(backends, self.lb_port, stats_port=self.stats_port,
                                                max_connections_per_source=None,
                                                max_requests_per_source=None))
        self.haproxy = self.procs.spawn("haproxy", [haproxy_executable(), "-f", str(config), "-db"])
        self._wait_up([s.name for s in self.slots], 30.0)

    def _wait_up(self, names: list[str], timeout: float) -> None:
        def up() -> bool:
            states = haproxy_states(self.stats_port)
            return all(states.get(n, "").startswith("UP") for n in names)
        wait_until(up, f"HAProxy to see {', '.join(names)} UP", timeout, [self.haproxy])

    @property
    def lb_url(self) -> str:
        return f"http://{HOST}:{self.lb_port}"

    # -- disturbances -----------------------------------------------------------------

    def rolling_restart(self, pause_s: float = 2.0) -> None:
        """Each node in turn: SIGTERM (it drains), started again, ready, UP in HAProxy."""
        self.note("rolling_start")
        for slot in self.slots:
            old = slot.proc
            self.note("sigterm", node=slot.name, pid=old.pid)
            # the drain takes --drain-seconds at most, then the bus says goodbye
            self.procs.stop([old], grace=self.drain_seconds + 10.0)
            self.note("exited", node=slot.name, pid=old.pid,
                      code=old.popen.returncode if old.popen else None)
            with self.lock:  # the sampler follows the slot to its new PID
                slot.proc = self._spawn_node(slot)
                slot.incarnation += 1
            self.note("spawned", node=slot.name, pid=slot.proc.pid)
            self._wait_ready(slot)
            self.note("ready", node=slot.name, pid=slot.proc.pid)
            self._wait_up([slot.name], 15.0)
            self.note("up", node=slot.name, pid=slot.proc.pid)
            time.sleep(pause_s)  # the moved clients settle before the next node goes
        self.note("rolling_end")

    def restart_redis(self, down_s: float = 2.0) -> None:
        """SIGKILL Redis (nothing is on disk: it comes back empty), start it on its port."""
        old = self.redis
        self.note("redis_kill", pid=old.pid)
        old.signal_group(signal.SIGKILL)
        self.procs.stop([old], grace=1.0)
        time.sleep(down_s)
        self.redis = self.procs.spawn("redis", old.argv)

        def pong() -> bool:
            try:
                return redis_command(self.redis_url, "PING").startswith(b"+PONG")
            except OSError:
                return False

        wait_until(pong, "redis-server after its restart", 10.0, [self.redis])
        self.note("redis_up", pid=self.redis.pid)
        # the nodes retry with backoff capped at ~1 s; ready again means back on the bus
        wait_until(lambda: all(http_status(s.port, "/readyz") == 200 for s in self.slots),
                   "every node ready after the Redis restart", 30.0,
                   [s.proc for s in self.slots])
        self._wait_up([s.name for s in self.slots], 15.0)
        self.note("redis_nodes_ready")

    def check_alive(self) -> None:
        for proc in [self.redis, self.haproxy, *(s.proc for s in self.slots)]:
            if not proc.running():
                raise SuiteError(f"{proc.name} exited unexpectedly:\n{proc.log_tail()}")


# -- sampling ---------------------------------------------------------------------------

def metric_values(port: int, names: tuple[str, ...], timeout: float = 2.0) -> dict[str, float]:
    """The unlabelled samples named ``names`` from a node's Prometheus ``/metrics``."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return {}
    finally:
        conn.close()
    found: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in names:
            try:
                found[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return found


class Sampler:
    """Every ``every_s``: each node's RSS and connections, and Redis's RSS, into ``samples``."""

    def __init__(self, cluster: SoakCluster, every_s: float = 5.0) -> None:
        self.cluster, self.every_s = cluster, every_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t": time.time(), "nodes": {}}
        with self.cluster.lock:
            slots = [(s.name, s.port, s.proc.pid, s.incarnation) for s in self.cluster.slots]
        for name, port, pid, incarnation in slots:
            metrics = metric_values(port, ("socketio_connections", ROOMS_METRIC))
            # rooms too: each sid has its own room, so a leak under churn shows there first
            row["nodes"][name] = {"pid": pid, "incarnation": incarnation, "rss_kib": rss_kib(pid),
                                  "connections": metrics.get("socketio_connections"),
                                  "rooms": metrics.get(ROOMS_METRIC)}
        row["redis_rss_kib"] = rss_kib(self.cluster.redis.pid)
        return row

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # noqa: BLE001 - one lost sample must not end the soak
                self.samples.append({"t": time.time(), "error": repr(exc)[:200], "nodes": {}})
            self._stop.wait(max(0.1, self.every_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)

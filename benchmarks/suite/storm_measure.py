"""One reconnect storm: 3 nodes behind HAProxy, clients chatting in rooms, one node SIGKILLed.

:func:`run_storm` starts the target's three nodes on the run's Redis, HAProxy
in front of them (the project's :mod:`cluster.devtools.haproxy_config`), and
the load generator (``benchmarks/node/storm_loadgen.mjs``), which does the
counting; this module picks the node to kill (the one with the most
clients), SIGKILLs it when the generator asks, and samples what the
processes and the machine spent around the kill:

- the *before* window: ``before_s`` seconds of steady traffic up to the kill;
- the *storm* window: ``storm_s`` seconds from the kill.

CPU is utime+stime from ``/proc/PID/stat`` per process (the nodes, Redis,
HAProxy, the generator) and the whole machine's busy time from
``/proc/stat``, in cores: on a 2-core machine that says whether a latency
figure measures the target or a saturated machine (other people's processes
included). A thread also polls HAProxy's stats page after the kill to time
when it took the dead node out of rotation.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from .loadgen import Loadgen
from .measures import haproxy_states
from .procs import (
    CLOCK_TICKS,
    HOST,
    Proc,
    Procs,
    SuiteError,
    child_env,
    cpu_seconds,
    free_port,
    wait_until,
)
from .targets import NODE_DIR, PYTHON, Target, haproxy_executable, node_executable, start_nodes

NODES = 3
# HAProxy's connections beyond one per client: health checks, the stats page,
# old and new connections overlapping in the storm. Small on purpose: HAProxy
# needs two descriptors per connection, and 9,000 clients already take 18,000
# of a hard open-file limit (20,000 here) that root cannot raise in a container
HAPROXY_SPARE_CONNECTIONS = 500


@dataclass(frozen=True)
class StormSettings:
    """The knobs of one storm (``python -m benchmarks.storm``'s flags).

    ``interval_s`` is per client: with the defaults 9,000 clients send 900
    room messages/s, each delivered to 10 members. The reconnection settings
    are socket.io-client's own defaults (1 s, at most 5 s, ±50% jitter).
    """

    clients_per_node: int = 3000
    room_size: int = 10
    interval_s: float = 10.0       # each client sends one message to its room this often
    warmup_s: float = 20.0         # traffic before anything is counted
    before_s: float = 10.0         # counted, steady traffic before the kill (latency "before")
    storm_s: float = 10.0          # latency "storm": messages sent this long after the kill
    recover_timeout_s: float = 60.0  # the killed node's clients must be back within this
    tail_s: float = 10.0           # traffic after they are all back (and after storm_s)
    drain_s: float = 3.0           # after the last message, for deliveries and acks
    reconnect_delay_ms: float = 1000.0
    reconnect_delay_max_ms: float = 5000.0
    randomization: float = 0.5
    concurrency: int = 100         # handshakes in flight while the clients connect
    ack_timeout_ms: float = 10_000.0
    open_timeout_s: float = 60.0   # per client, to connect and join at the start

    @property
    def clients(self) -> int:
        return self.clients_per_node * NODES

    def open_budget_s(self) -> float:
        # ~150 handshakes/s is the floor seen through HAProxy on a loaded 2-core box
        return 30.0 + self.clients / 150.0

    def estimate_s(self) -> float:
        """Seconds one storm takes, nodes' start and stop included (a rough upper guess)."""
        return (20.0 + self.clients / 300.0 + self.warmup_s + self.before_s
                + max(self.storm_s, 15.0) + self.tail_s + self.drain_s + 10.0)


def _cluster_argv(port: int, redis_url: str) -> list[str]:
    return [PYTHON, "-m", "cluster", "node", "--app", "benchmarks.storm_app:socketio",
            "--host", HOST, "--port", str(port), "--message-queue", redis_url,
            "--log-level", "WARNING"]


def _cluster_gevent_argv(port: int, redis_url: str) -> list[str]:
    return [*_cluster_argv(port, redis_url), "--async-mode", "gevent"]


def _node_argv(port: int, redis_url: str) -> list[str]:
    return [node_executable(), str(NODE_DIR / "storm_server.mjs"), "--host", HOST,
            "--port", str(port), "--redis", redis_url]


STORM_TARGETS: dict[str, Target] = {t.key: t for t in (
    Target("cluster", "this project (recovery on, 120 s)", _cluster_argv),
    Target("cluster-gevent", "this project on gevent (recovery on, 120 s)",
           _cluster_gevent_argv),
    Target("node", "Node socket.io 4.8 + redis-streams-adapter (recovery on, 120 s)", _node_argv),
)}


class StormLoadgen(Loadgen):
    """:class:`Loadgen`'s reader and commands around ``storm_loadgen.mjs``."""

    def __init__(self, procs: Procs, config: dict[str, Any]) -> None:
        # not super().__init__(): that one starts loadgen.mjs
        self.procs, self.config = procs, config
        self.proc = procs.spawn("storm-loadgen", [node_executable(), "storm_loadgen.mjs",
                                                  json.dumps(config)],
                                cwd=str(NODE_DIR), env=child_env(), pipe=True)
        self.events = queue.Queue()
        self.errors = []
        self._reader = threading.Thread(target=self._read, name="storm-loadgen", daemon=True)
        self._reader.start()


def start_balancer(procs: Procs, nodes: list[Proc], clients: int) -> tuple[Proc, int, int]:
    """HAProxy from the project's renderer in front of ``nodes``; (process, port, stats port).

    Two changes to the rendered text, both because every client is on this
    machine: no per-source limits (one address holds all of them), and
    ``maxconn`` raised from 4,096 to fit ``clients`` (in ``global`` and as the
    frontends' default, which otherwise caps a frontend on its own).
    """
    from cluster.devtools.haproxy_config import Backend, render_haproxy_config

    port, stats = free_port(), free_port()
    backends = [Backend(f"n{i + 1}", HOST, n.port or 0) for i, n in enumerate(nodes)]
    text = render_haproxy_config(backends, port, stats_port=stats,
                                 max_connections_per_source=None, max_requests_per_source=None)
    maxconn = max(4096, clients + HAPROXY_SPARE_CONNECTIONS)
    if "    maxconn 4096\n" not in text or "\ndefaults\n" not in text:
        raise SuiteError("the rendered HAProxy config no longer has 'maxconn 4096' and a "
                         "defaults section; update start_balancer")
    text = text.replace("    maxconn 4096\n", f"    maxconn {maxconn}\n", 1)
    text = text.replace("\ndefaults\n", f"\ndefaults\n    maxconn {maxconn}\n", 1)
    config = procs.logdir / f"haproxy-storm-{port}.cfg"
    config.write_text(text)
    proxy = procs.spawn("haproxy", [haproxy_executable(), "-f", str(config), "-db"])
    wait_until(lambda: len(states := haproxy_states(stats)) == len(nodes)
               and all(s.startswith("UP L7OK") for s in states.values()),
               "HAProxy to see every node UP", 30.0, [proxy])
    return proxy, port, stats


# -- CPU --------------------------------------------------------------------------------

def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (``/proc/stat``; not idle, not iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def cpu_sample(procs: dict[str, Proc]) -> dict[str, Any]:
    return {"t": time.monotonic(), "machine": machine_busy_s(),
            "procs": {name: cpu_seconds(p.pid) for name, p in procs.items()}}


def cores_between(a: dict[str, Any], b: dict[str, Any],
                  skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Cores used per process (and by the machine) between two samples."""
    wall = max(1e-6, b["t"] - a["t"])
    per = {name: round((b["procs"][name] - a["procs"][name]) / wall, 3)
           for name in a["procs"] if name not in skip}
    return {"seconds": round(wall, 2), "machine": round((b["machine"] - a["machine"]) / wall, 3),
            "procs": per}


# -- the storm ---------------------------------------------------------------------------

def _watch_down(stats_port: int, server: str, killed_at: float, into: dict[str, Any]) -> None:
    """Record when HAProxy reports ``server`` DOWN, at most 15 s after the kill."""
    while time.monotonic() < killed_at + 15.0:
        if haproxy_states(stats_port).get(server, "").startswith("DOWN"):
            into["haproxy_down_ms"] = round((time.monotonic() - killed_at) * 1000)
            return
        time.sleep(0.05)


def loadgen_config(s: StormSettings, lb_url: str) -> dict[str, Any]:
    deadline = s.open_budget_s() + s.estimate_s() + s.recover_timeout_s + 60.0
    return {"lb_url": lb_url, "clients": s.clients, "room_size": s.room_size,
            "interval_s": s.interval_s, "warmup_s": s.warmup_s, "before_s": s.before_s,
            "storm_s": s.storm_s, "recover_timeout_s": s.recover_timeout_s, "tail_s": s.tail_s,
            "drain_s": s.drain_s, "reconnect_delay_ms": s.reconnect_delay_ms,
            "reconnect_delay_max_ms": s.reconnect_delay_max_ms,
            "randomization": s.randomization, "concurrency": s.concurrency,
            "ack_timeout_ms": s.ack_timeout_ms, "open_timeout_s": s.open_timeout_s,
            "deadline_s": deadline}


def run_storm(procs: Procs, target: Target, redis: Proc, redis_url: str, s: StormSettings,
              label: str = "") -> dict[str, Any]:
    """One storm on ``target``; returns the generator's result plus what was sampled here."""
    nodes = start_nodes(procs, target, NODES, redis_url)
    by_pid = {str(n.pid): n for n in nodes}
    proxy, port, stats = start_balancer(procs, nodes, s.clients)
    loadgen = StormLoadgen(procs, loadgen_config(s, f"http://{HOST}:{port}"))
    watched = {**{f"node{i + 1}": n for i, n in enumerate(nodes)}, "haproxy": proxy,
               "redis": redis, "loadgen": loadgen.proc}
    out: dict[str, Any] = {"target": target.key, "label": target.label,
                           "settings": asdict(s), "logs": str(procs.logdir)}
    try:
        ready = loadgen.expect("ready", s.open_budget_s())
        out["ready"] = {k: ready[k] for k in ("clients", "failed", "open_s", "nodes")}
        stray = set(ready["nodes"]) - set(by_pid)
        if stray:
            raise SuiteError(f"clients report node PIDs {sorted(stray)}, not the nodes started "
                             f"here ({sorted(by_pid)})")
        victim_pid = max(ready["nodes"], key=lambda pid: ready["nodes"][pid])
        victim = by_pid[victim_pid]
        victim_name = f"n{nodes.index(victim) + 1}"
        print(f"    {label}: {ready['clients']} clients ({ready['failed']} failed) in "
              f"{ready['open_s']:.1f} s, per node {ready['nodes']}; the victim is "
              f"{victim_name} (pid {victim_pid})", flush=True)
        loadgen.expect("before_start", s.warmup_s + 30.0)
        before = cpu_sample(watched)
        loadgen.expect("kill_now", s.before_s + 30.0)
        at_kill = cpu_sample(watched)
        killed_at = time.monotonic()
        victim.signal_group(signal.SIGKILL)  # no drain, no goodbye: a crash
        loadgen.send(f"killed {victim_pid}")
        watcher = threading.Thread(target=_watch_down, args=(stats, victim_name, killed_at, out),
                                   name="haproxy-down", daemon=True)
        watcher.start()
        survivors = {k: v for k, v in watched.items() if v is not victim}
        # "storm_end" (storm_s after the kill) and "all_back" come in either order
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + max(s.storm_s, s.recover_timeout_s) + 30.0
        while len(seen) < 2:
            event = loadgen.expect(("storm_end", "all_back"),
                                   max(1.0, deadline - time.monotonic()))
            seen[event["event"]] = event
            if event["event"] == "storm_end":
                after = cpu_sample(survivors)
        back = seen["all_back"]
        print(f"    {label}: {back['back']}/{back['victims']} of the killed node's clients back "
              f"(timeout {s.recover_timeout_s:g} s)", flush=True)
        # the generator drains until deliveries stop, up to 60 s past drain_s
        result = loadgen.expect("result", s.storm_s + s.tail_s + s.drain_s + 120.0)
        watcher.join(1.0)
        out.update({k: v for k, v in result.items() if k not in ("event", "t")})
        victim_key = next(k for k, v in watched.items() if v is victim)
        out["cpu"] = {"before": cores_between(before, at_kill),
                      "storm": cores_between(at_kill, after, skip=(victim_key,))}
        out["victim"] = {"name": victim_name, "pid": int(victim_pid)}
    finally:
        loadgen.close(grace=5.0)
        procs.stop([proxy, *nodes])
    out["loadgen_errors"] = loadgen.errors[-5:]
    return out


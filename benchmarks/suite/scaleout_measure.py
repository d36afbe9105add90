"""The "uninvolved cost" of a room emit: what a node with no member of the room pays.

Three nodes of a target share one Redis. One room's receivers and its
publisher are all on node 0; nodes 1 and 2 hold no client (each had one
connection, closed before anything is measured, so a server that starts
listening to Redis on its first connection, as python-socketio does, is
listening). The publisher sends at a low rate for a window, then at a high
rate for a window. Over each window the CPU time of every node process
(utime + stime from ``/proc/PID/stat``) and of Redis (``INFO cpu``) is read.

CPU per emit is the slope between the two windows::

    (cpu_high / wall_high - cpu_low / wall_low) / (emits_high / s_high - emits_low / s_low)

CPU and emits are taken *per second* of their own window, so what a process
spends per second regardless of the traffic (timers, heartbeats, presence)
cancels even if the two windows differ slightly in length. ``emits`` is what
the publisher sent in the window; a high window in which fewer than
:data:`BEHIND_FRACTION` of its deliveries arrived within it is flagged,
since the emitting node then fell behind and the uninvolved nodes saw fewer
emits than were sent.

The node targets are those of :mod:`.targets` plus :data:`SHARDED`: Node
socket.io with ``createShardedAdapter`` in ``subscriptionMode: "dynamic"``
(``benchmarks/node/scaleout_server.mjs``).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from .loadgen import Event, Loadgen
from .procs import Proc, Procs, child_env, cpu_seconds
from .targets import NODE_DIR, TARGETS, Target, node_executable, node_url, start_nodes

# nodes per target: the emitting one and two that hold no member of the room
NODES = 3
# a high-rate window in which fewer of its deliveries arrived before it closed is flagged
BEHIND_FRACTION = 0.95


def _sharded(port: int, redis_url: str) -> list[str]:
    return [node_executable(), str(NODE_DIR / "scaleout_server.mjs"), "--host", "127.0.0.1",
            "--port", str(port), "--redis", redis_url]


SHARDED = Target("node-sharded", "Node socket.io 4.8 + sharded redis-adapter, dynamic mode",
                 _sharded)
# the targets this benchmark knows, in their default interleaving order
SCALEOUT_TARGETS: dict[str, Target] = {
    "cluster": TARGETS["cluster"],
    "node": TARGETS["node"],
    "node-sharded": SHARDED,
    "flask-socketio": TARGETS["flask-socketio"],
}
DEFAULT_TARGETS = ("cluster", "node", "node-sharded")


@dataclass(frozen=True)
class ScaleoutSettings:
    """One target's measurement (the knobs of ``python -m benchmarks.scaleout``).

    The defaults follow issue 25: 10 receivers, 1 then 1,000 msgs/s, 10 s
    windows after 2 s of warm-up at the window's rate.
    """

    receivers: int = 10
    low_rate: float = 1.0        # msgs/s of the first window
    high_rate: float = 1000.0    # msgs/s of the second window
    window_s: float = 10.0       # each measured window
    warmup_s: float = 2.0        # publishing at the window's rate before it opens
    drain_s: float = 3.0         # how long after a window its deliveries may still arrive
    settle_s: float = 1.0        # after the clients are ready, before the first window


class JsonLinesProc(Loadgen):
    """:class:`Loadgen`'s driver (JSON lines out, commands in) for any such program.

    The scale-out load generator (:func:`scaleout_loadgen`) and the per-user
    emitter of :mod:`.scaleout_nodes` speak the same line protocol.
    """

    def __init__(self, procs: Procs, name: str, argv: list[str], cwd: str,
                 env: dict[str, str] | None = None, config: dict[str, Any] | None = None) -> None:
        # the parent's __init__ hard-codes its script; the rest is the same driver
        self.procs = procs
        self.config = config or {}
        self.proc: Proc = procs.spawn(name, argv, cwd=cwd, env=env or child_env(), pipe=True)
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.errors: list[str] = []
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()


def scaleout_loadgen(procs: Procs, config: dict[str, Any]) -> JsonLinesProc:
    """``benchmarks/node/scaleout_loadgen.mjs`` with ``config`` (see its header)."""
    return JsonLinesProc(procs, "scaleout-loadgen",
                         [node_executable(), "scaleout_loadgen.mjs", json.dumps(config)],
                         cwd=str(NODE_DIR), config=config)


# -- Redis ---------------------------------------------------------------------------

class RedisProbe:
    """One connection to the run's Redis, for ``INFO`` and ``CLIENT LIST``."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10)

    def cpu_seconds(self) -> float:
        """used_cpu_user + used_cpu_sys of the server, all its threads."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def publishes(self) -> int:
        """PUBLISH + SPUBLISH calls so far (a diagnostic: a node may batch emits)."""
        stats = self.client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                   for name in ("publish", "spublish"))

    def subscribers(self) -> dict[str, int]:
        """Connections with a subscription, and their channels (classic, pattern, sharded)."""
        connections = channels = 0
        for client in self.client.client_list():
            count = sum(int(client.get(key, 0) or 0) for key in ("sub", "psub", "ssub"))
            if count:
                connections += 1
                channels += count
        return {"connections": connections, "channels": channels}

    def close(self) -> None:
        self.client.close()


# -- one target ------------------------------------------------------------------------

@dataclass
class Sample:
    wall: float
    nodes: list[float]
    redis: float
    loadgen: float
    publishes: int
    publisher: float = 0.0  # CPU of a publishing process outside the nodes (an emitter)


def measure_target(procs: Procs, target: Target, redis_url: str,
                   settings: ScaleoutSettings, label: str = "") -> dict[str, Any]:
    """Start :data:`NODES` nodes of ``target``, run the low and high windows, stop them.

    Returns the raw windows and the per-emit slopes (see the module docstring).
    """
    label = label or target.key
    probe = RedisProbe(redis_url)
    nodes = start_nodes(procs, target, NODES, redis_url)
    phases = [(0, settings.low_rate), (1, settings.high_rate)]
    per_phase_s = settings.warmup_s + settings.window_s + settings.drain_s + 20.0
    config = {"urls": [node_url(nodes[0])], "touch_urls": [node_url(n) for n in nodes[1:]],
              "room_size": settings.receivers, "room": "scaleout",
              "deadline_s": 60.0 + len(phases) * per_phase_s + settings.settle_s}
    loadgen = scaleout_loadgen(procs, config)
    starts: dict[int, Sample] = {}
    windows: list[dict[str, Any]] = []

    def sample() -> Sample:
        return Sample(time.monotonic(), [cpu_seconds(n.pid) for n in nodes],
                      probe.cpu_seconds(), cpu_seconds(loadgen.proc.pid), probe.publishes())

    try:
        ready = loadgen.expect("ready", 60.0)
        time.sleep(settings.settle_s)
        subscribed = probe.subscribers()
        print(f"    {label}: {ready['receivers']} receivers on node 0 (synced "
              f"{ready['synced']}), {subscribed['connections']} Redis connections subscribed "
              f"to {subscribed['channels']} channels", flush=True)
        for index, rate in phases:
            loadgen.send(f"phase {index} {rate:g} {settings.warmup_s:g} {settings.window_s:g} "
                         f"{settings.drain_s:g}")
            loadgen.expect("measure_start", settings.warmup_s + 20.0)
            starts[index] = sample()
            end_event = loadgen.expect("measure_end", settings.window_s + 20.0)
            end = sample()
            result = loadgen.expect("phase", settings.drain_s + 20.0)
            windows.append(window_of(index, rate, starts[index], end, end_event, result))
            w = windows[-1]
            print(f"    {label}: {rate:7g} msgs/s: sent {w['sent']}, delivered "
                  f"{w['delivered']}/{w['expected']} ({w['in_window_fraction']:.1%} in the "
                  f"window), node CPU ms/s {' / '.join(f'{c:.1f}' for c in w['node_cpu_ms_per_s'])}"
                  f", Redis {w['redis_cpu_ms_per_s']:.1f}", flush=True)
        loadgen.send("stop")
        loadgen.expect("result", 20.0)
        alive = [n.running() for n in nodes]
    finally:
        loadgen.close()
        procs.stop(nodes)
        probe.close()
    slopes = per_emit(windows[0], windows[1])
    behind = windows[1]["in_window_fraction"] < BEHIND_FRACTION
    print(f"    {label}: µs CPU per emit: uninvolved "
          f"{' / '.join(f'{v:.1f}' for v in slopes['uninvolved_us'])}, emitting "
          f"{slopes['emitting_us']:.1f}, Redis {slopes['redis_us']:.1f}"
          f"{' (the emitting node fell behind)' if behind else ''}", flush=True)
    return {"ready": ready, "subscribed": subscribed, "windows": windows, **slopes,
            "behind": behind, "nodes_alive": alive, "settings": asdict(settings),
            "loadgen_errors": loadgen.errors[-5:]}


def window_of(index: int, rate: float, start: Sample, end: Sample, end_event: Event,
              result: Event) -> dict[str, Any]:
    """One window's counts and CPU, per second of the window."""
    wall = max(1e-6, end.wall - start.wall)
    node_cpu = [b - a for a, b in zip(start.nodes, end.nodes, strict=True)]
    return {
        "phase": index, "rate": rate, "wall_s": wall, "publish_s": end_event["seconds"],
        "sent": end_event["sent"], "emits_per_s": end_event["sent"] / max(1e-6,
                                                                         end_event["seconds"]),
        "expected": result["expected"], "delivered": result["delivered"],
        "in_window": result["in_window"], "duplicates": result["duplicates"],
        "min_per_receiver": result["min_per_receiver"],
        "in_window_fraction": result["in_window"] / result["expected"] if result["expected"]
        else 1.0,
        "node_cpu_s": node_cpu, "node_cpu_ms_per_s": [1000 * c / wall for c in node_cpu],
        "redis_cpu_s": end.redis - start.redis,
        "redis_cpu_ms_per_s": 1000 * (end.redis - start.redis) / wall,
        "loadgen_cpu_util": (end.loadgen - start.loadgen) / wall,
        "publisher_cpu_util": (end.publisher - start.publisher) / wall,
        "redis_publishes": end.publishes - start.publishes,
    }


def per_emit(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """µs of CPU per emit, node by node and for Redis: the slope between the two windows.

    The resolution is one clock tick (10 ms with ``CLK_TCK`` 100) over the
    high window's emits: ``resolution_us``.
    """
    d_emits = float(high["emits_per_s"] - low["emits_per_s"])
    if d_emits <= 0:
        raise ValueError(f"the high window emitted no faster than the low one ({d_emits:g}/s)")

    def slope(lo: float, hi: float) -> float:
        # both in ms of CPU per second of wall time
        return (hi - lo) / 1000 / d_emits * 1e6

    nodes = [slope(lo, hi) for lo, hi in zip(low["node_cpu_ms_per_s"],
                                             high["node_cpu_ms_per_s"], strict=True)]
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    return {"emitting_us": nodes[0], "uninvolved_us": nodes[1:],
            "redis_us": slope(low["redis_cpu_ms_per_s"], high["redis_cpu_ms_per_s"]),
            "resolution_us": tick / max(1, high["sent"]) * 1e6,
            "idle_uninvolved_ms_per_s": low["node_cpu_ms_per_s"][1:]}

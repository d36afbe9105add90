"""Cluster CPU per emit against node count: many small rooms spread over 2, 4, 6 nodes.

For each node count N, N nodes of a target share one Redis. ``rooms`` (30)
rooms of ``room_size`` (10) receivers connect round-robin straight to the
nodes, receiver *k* to node *k* mod N, as a balancer spreads them: every
node holds 300 / N receivers, and every room has members on every node (N ≤
10). One publisher client per room, not a member, sends the room's emits;
all publishers are on node 0, so node 0 pays the cost of emitting and every
other node only the cost of receiving from Redis, which the capacity model
(``benchmarks/capacity_model.py``) needs apart. Three windows, each after a
warm-up at its rate:

0. *low*: the publishers together send ``low_rate`` (2) msgs/s, round-robin
   over the rooms; the baseline;
1. *high*: the same at ``high_rate`` (300) msgs/s;
2. *per-user*: every receiver is also alone in its own room ``u-<k>``, and
   one process outside the nodes sends ``user_rate`` (300) msgs/s, emit *j*
   to room ``u-<j mod receivers>``: for ``cluster``, this project's
   :class:`workers.Emitter` (this module run as ``python -m
   benchmarks.suite.scaleout_nodes``); for the Node targets,
   ``@socket.io/redis-emitter`` inside the load generator when that package
   is installed in ``benchmarks/node`` (it is not a dependency there; without
   it the window is skipped and the run says so).

CPU per emit is a slope, as in :mod:`.scaleout_measure`: for room emits
between windows 0 and 1, node by node, summed over the nodes for the
cluster. The per-user window's baseline is window 0, whose few room emits are
added back at the slope just measured::

    per_user = (cpu_2 - cpu_0 + emits_0 * room_slope) / emits_2     (per second)

Per delivery is per emit over the deliveries per emit that arrived (10 and 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .procs import Proc, Procs, SuiteError, child_env, cpu_seconds
from .scaleout_measure import (
    BEHIND_FRACTION,
    JsonLinesProc,
    RedisProbe,
    Sample,
    scaleout_loadgen,
    window_of,
)
from .targets import PYTHON, ROOT, Target, node_url, start_nodes

# the publisher of the per-user window, by target; others skip that window with a note
EMITTER_TARGETS = ("cluster",)
NODE_EMITTER_TARGETS = ("node", "node-sharded")
USER_PREFIX = "u-"
LOW, HIGH, USER = 0, 1, 2


@dataclass(frozen=True)
class NodesSettings:
    """The "nodes" measurement (the ``--node-counts`` ... knobs of ``benchmarks.scaleout``).

    Defaults: 2, 4 and 6 nodes; 30 rooms of 10 (300 receivers); 2 then 300
    room emits/s in total, 300 per-user emits/s; 8 s windows after 2 s of
    warm-up. At 6 nodes that keeps the whole cluster near half of this 2-core
    machine and one node count of one target near 40 s.
    """

    node_counts: tuple[int, ...] = (2, 4, 6)
    rooms: int = 30
    room_size: int = 10
    low_rate: float = 2.0
    high_rate: float = 300.0
    user_rate: float = 300.0
    #: ``user_rate`` is per node: the emitter sends ``user_rate`` times the
    #: node count, so each node serves the same rate at every count (a node's
    #: CPU per emit falls as its rate rises: see ``benchmarks/README.md``)
    user_rate_per_node: bool = False
    window_s: float = 8.0
    warmup_s: float = 2.0
    drain_s: float = 3.0
    settle_s: float = 1.0
    user_rooms: bool = True

    @property
    def receivers(self) -> int:
        return self.rooms * self.room_size


def estimate_s(s: NodesSettings, count: int) -> float:
    """Seconds for one target at ``count`` nodes: starting and connecting, then the windows."""
    windows = 3 if s.user_rooms else 2
    return 4.0 + 1.0 * count + s.settle_s + windows * (s.warmup_s + s.window_s + 0.5)


def measure_nodes(procs: Procs, target: Target, count: int, redis_url: str,
                  settings: NodesSettings, label: str = "",
                  probe: RedisProbe | None = None) -> dict[str, Any]:
    """Start ``count`` nodes of ``target``, run the three windows, stop everything.

    ``probe``: reads Redis's CPU and commands (default: one connection to
    ``redis_url``; :mod:`.scaleout_shards` passes one for every primary)."""
    label = label or f"{target.key} x{count}"
    probe = probe or RedisProbe(redis_url)
    nodes: list[Proc] = []
    loadgen: JsonLinesProc | None = None
    emitter: JsonLinesProc | None = None
    per_phase_s = settings.warmup_s + settings.window_s + settings.drain_s + 20.0
    bound_s = 60.0 + 3 * per_phase_s + settings.settle_s
    user_via = ("emitter" if target.key in EMITTER_TARGETS else
                "node-emitter" if target.key in NODE_EMITTER_TARGETS else None)
    note = (None if user_via else f"no per-user emitter for {target.key}") \
        if settings.user_rooms else "per-user rooms off (--no-user-rooms)"
    windows: list[dict[str, Any]] = []
    try:
        nodes = start_nodes(procs, target, count, redis_url)
        urls = [node_url(n) for n in nodes]
        loadgen = scaleout_loadgen(procs, {
            "urls": urls, "publisher_url": urls[0], "room": "room", "rooms": settings.rooms,
            "room_size": settings.room_size, "user_rooms": settings.user_rooms,
            "user_prefix": USER_PREFIX, "deadline_s": bound_s,
            "node_emitter": {"redis": redis_url} if user_via == "node-emitter" else None})
        if settings.user_rooms and user_via == "emitter":
            emitter = JsonLinesProc(
                procs, "scaleout-emitter",
                [PYTHON, "-m", "benchmarks.suite.scaleout_nodes", "--users",
                 str(settings.receivers), "--deadline-s", str(bound_s)],
                cwd=str(ROOT), env=child_env({"MESSAGE_QUEUE_URL": redis_url,
                                              "PYTHONUNBUFFERED": "1"}))
        ready = loadgen.expect("ready", 90.0)
        if emitter is not None:
            emitter.expect("ready", 30.0)
        if user_via == "node-emitter" and ready.get("node_emitter") != "ok":
            user_via, note = None, ("@socket.io/redis-emitter is not installed in "
                                    "benchmarks/node/node_modules: per-user window skipped")
        time.sleep(settings.settle_s)
        subscribed = probe.subscribers()
        print(f"    {label}: {ready['receivers']} receivers in {ready['rooms']} rooms over "
              f"{len(ready['per_node'])} nodes ({'/'.join(map(str, ready['per_node'].values()))})"
              f", synced {ready['synced']}; {subscribed['connections']} Redis connections "
              f"subscribed to {subscribed['channels']} channels", flush=True)

        def sample() -> Sample:
            assert loadgen is not None
            return Sample(time.monotonic(), [cpu_seconds(n.pid) for n in nodes],
                          probe.cpu_seconds(), cpu_seconds(loadgen.proc.pid), probe.publishes(),
                          cpu_seconds(emitter.proc.pid) if emitter is not None else 0.0)

        plan = [(LOW, settings.low_rate, "group"), (HIGH, settings.high_rate, "group")]
        if settings.user_rooms and user_via:
            plan.append((USER, settings.user_rate * (count if settings.user_rate_per_node
                                                     else 1), "user"))
        for index, rate, kind in plan:
            if kind == "user" and emitter is not None:
                windows.append(_emitter_window(loadgen, emitter, index, rate, settings, sample))
            else:
                loadgen.send(f"phase {index} {rate:g} {settings.warmup_s:g} "
                             f"{settings.window_s:g} {settings.drain_s:g} {kind}")
                loadgen.expect("measure_start", settings.warmup_s + 20.0)
                start = sample()
                end_event = loadgen.expect("measure_end", settings.window_s + 20.0)
                end = sample()
                result = loadgen.expect("phase", settings.drain_s + 20.0)
                windows.append(window_of(index, rate, start, end, end_event, result))
            w = windows[-1]
            print(f"    {label}: {kind} {rate:7g} msgs/s: sent {w['sent']}, delivered "
                  f"{w['delivered']}/{w['expected']} ({w['in_window_fraction']:.1%} in the "
                  f"window), node CPU ms/s {' / '.join(f'{c:.0f}' for c in w['node_cpu_ms_per_s'])}"
                  f", Redis {w['redis_cpu_ms_per_s']:.1f}", flush=True)
        loadgen.send("stop")
        loadgen.expect("result", 20.0)
        alive = [n.running() for n in nodes]
    finally:
        if emitter is not None:
            with contextlib.suppress(SuiteError):  # it may have died: then it is stopped below
                emitter.send("stop")
            emitter.close()
        if loadgen is not None:
            loadgen.close()
        procs.stop(nodes)
        probe.close()
    figures = slopes(windows, settings.room_size)
    user = figures.get("user")
    print(f"    {label}: µs CPU per room emit: cluster {figures['cluster_us']:.0f} "
          f"(node 0 {figures['publishing_us']:.0f}, others {figures['other_us']:.0f} each), "
          f"per delivery {figures['per_delivery_us']:.1f}, Redis {figures['redis_us']:.1f}"
          + (f"; per-user emit: cluster {user['cluster_us']:.0f}, Redis {user['redis_us']:.1f}"
             if user else f"; per-user: {note}"), flush=True)
    return {"nodes": count, "ready": ready, "subscribed": subscribed, "windows": windows,
            **figures, "user_via": user_via if user else None, "user_note": note,
            "nodes_alive": alive, "settings": asdict(settings),
            "loadgen_errors": loadgen.errors[-5:] if loadgen else []}


def _emitter_window(loadgen: JsonLinesProc, emitter: JsonLinesProc, index: int, rate: float,
                    settings: NodesSettings, sample: Callable[[], Sample]) -> dict[str, Any]:
    """The per-user window with the emitter process publishing and the load generator counting."""
    loadgen.send(f"watch {index}")
    loadgen.expect("watching", 20.0)
    emitter.send(f"phase {index} {rate:g} {settings.warmup_s:g} {settings.window_s:g}")
    emitter.expect("measure_start", settings.warmup_s + 20.0)
    start = sample()
    end_event = emitter.expect("measure_end", settings.window_s + 20.0)
    end = sample()
    loadgen.send(f"settle {index} {end_event['sent']} {settings.drain_s:g}")
    result = loadgen.expect("phase", settings.drain_s + 20.0)
    return window_of(index, rate, start, end, end_event, result)


def slopes(windows: list[dict[str, Any]], room_size: int) -> dict[str, Any]:
    """µs of CPU per emit (see the module docstring); ``user`` only with a per-user window."""
    low, high = windows[LOW], windows[HIGH]
    d_emits = float(high["emits_per_s"] - low["emits_per_s"])
    if d_emits <= 0:
        raise ValueError(f"the high window emitted no faster than the low one ({d_emits:g}/s)")
    per_node = [(hi - lo) / 1000 / d_emits * 1e6
                for lo, hi in zip(low["node_cpu_ms_per_s"], high["node_cpu_ms_per_s"],
                                  strict=True)]
    redis = (high["redis_cpu_ms_per_s"] - low["redis_cpu_ms_per_s"]) / 1000 / d_emits * 1e6
    per_emit = high["delivered"] / high["sent"] if high["sent"] else float(room_size)
    cluster = sum(per_node)
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    out: dict[str, Any] = {
        "cluster_us": cluster, "per_node_us": per_node, "publishing_us": per_node[0],
        "other_us": statistics.fmean(per_node[1:]) if len(per_node) > 1 else 0.0,
        "per_delivery_us": cluster / max(per_emit, 1e-9), "deliveries_per_emit": per_emit,
        "redis_us": redis, "resolution_us": tick / max(1, high["sent"]) * 1e6,
        "behind": high["in_window_fraction"] < BEHIND_FRACTION,
    }
    if len(windows) > USER:
        user = windows[USER]
        rate = max(1e-9, float(user["emits_per_s"]))
        low_rate = float(low["emits_per_s"])

        def added_back(lo: float, hi: float, room_slope_us: float) -> float:
            # (cpu_2 - cpu_0) in cores, plus the baseline's room emits at their slope
            return ((hi - lo) / 1000 + low_rate * room_slope_us / 1e6) / rate * 1e6

        user_nodes = [added_back(lo, hi, g) for lo, hi, g in
                      zip(low["node_cpu_ms_per_s"], user["node_cpu_ms_per_s"], per_node,
                          strict=True)]
        delivered = user["delivered"] / user["sent"] if user["sent"] else 1.0
        out["user"] = {
            "cluster_us": sum(user_nodes), "per_node_us": user_nodes,
            "per_delivery_us": sum(user_nodes) / max(delivered, 1e-9),
            "deliveries_per_emit": delivered,
            "redis_us": added_back(low["redis_cpu_ms_per_s"], user["redis_cpu_ms_per_s"], redis),
            # the emitter process sleeps through window 0: its whole window-2 CPU is the emits
            "publisher_us": (user["publisher_cpu_util"] - low["publisher_cpu_util"]) / rate * 1e6,
            "behind": user["in_window_fraction"] < BEHIND_FRACTION,
        }
    return out


# -- the per-user emitter process --------------------------------------------------------

PAD = "x" * 40


def _say(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, "t": time.time() * 1000, **data}), flush=True)


def publish_for(send: Callable[[int, int], None], rate: float, seconds: float,
                step: int) -> tuple[int, float]:
    """``rate`` emits/s for ``seconds``, catching up after a late wake-up; (sent, seconds)."""
    start = time.monotonic()
    total = int(rate * seconds)
    sent = 0
    while True:
        elapsed = time.monotonic() - start
        due = min(total, int(rate * elapsed))
        while sent < due:
            send(step, sent)
            sent += 1
        if sent >= total and elapsed >= seconds:
            return sent, time.monotonic() - start
        time.sleep(0.002)


def emitter_main(argv: list[str] | None = None) -> int:
    """Emit to per-user rooms through :class:`workers.Emitter`, driven by lines on stdin.

    ``phase <index> <rate> <warmup_s> <window_s>``: warm up (step -1), say
    ``measure_start``, emit for the window (step ``index``), say
    ``measure_end`` with ``sent`` and ``seconds``. Anything else ends it.
    The bus comes from the nodes' environment (``MESSAGE_QUEUE_URL``).
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite.scaleout_nodes")
    parser.add_argument("--users", type=int, required=True, help="receivers, one room each")
    parser.add_argument("--prefix", default=USER_PREFIX, help="of the per-user room names")
    parser.add_argument("--deadline-s", type=float, default=300.0,
                        help="exit past this many seconds, whatever happens (300)")
    args = parser.parse_args(argv)
    # bounded like the load generator: a driver that vanished cannot leave it running
    deadline = threading.Timer(args.deadline_s, lambda: os._exit(3))
    deadline.daemon = True
    deadline.start()
    from workers import Emitter  # after argparse: --help needs no bus

    emitter = Emitter.from_env()

    def send(step: int, seq: int) -> None:
        room = f"{args.prefix}{seq % args.users}"
        emitter.emit("msg", {"r": room, "s": step, "q": seq, "k": "scaleout",
                             "t": time.time() * 1000, "p": PAD}, to=room)

    _say("ready", users=args.users)
    for line in sys.stdin:
        words = line.split()
        if len(words) != 5 or words[0] != "phase":
            break
        index = int(words[1])
        rate, warmup_s, window_s = (float(w) for w in words[2:])
        if warmup_s > 0:
            publish_for(send, rate, warmup_s, -1)
        _say("measure_start", phase=index)
        sent, seconds = publish_for(send, rate, window_s, index)
        _say("measure_end", phase=index, sent=sent, seconds=seconds)
    emitter.close()
    return 0


if __name__ == "__main__":
    sys.exit(emitter_main())

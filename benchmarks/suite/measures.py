"""One function per measurement; each starts what it needs and returns plain data.

- :func:`run_ladder`: the publish-rate ladder on running nodes, then a step at
  half the highest rate that passed; node CPU per delivery per step.
- :func:`measure_memory`: idle RSS per websocket on one node.
- :func:`measure_celery`: task-send-to-client latency through a real worker,
  and through a :class:`workers.Emitter`.
- :func:`measure_failover`: SIGKILL the node behind a balancer that a client is
  on; when does it resume on the other node, and what did it miss.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import statistics
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .._common import rss_kib
from .loadgen import Event, Loadgen
from .procs import (
    HOST,
    Proc,
    Procs,
    SuiteError,
    child_env,
    cpu_seconds,
    free_port,
    segments_between,
    tcp_segments,
    wait_until,
)
from .targets import ROOT, TARGETS, Target, haproxy_executable, node_url, start_nodes


@dataclass(frozen=True)
class LadderSettings:
    """How one ladder is run (the knobs of ``python -m benchmarks.fanout``)."""

    step_s: float = 5.0        # measured window of each step
    warmup_s: float = 1.0      # publishing at the step's rate before the window opens
    drain_s: float = 2.0       # how long after the window messages may still arrive
    max_p99_ms: float = 250.0  # a step passes with p99 at most this...
    max_loss: float = 0.001    # ...and at most this fraction of deliveries missing
    concurrency: int = 100     # websocket handshakes in flight while connecting
    publishers: int = 0        # publishing clients (0: one per node, each on its node)


def rung_rates(start: float, factor: float, maximum: float) -> list[float]:
    """The ladder's rungs in deliveries/s: ``start``, ``start*factor``, ... up to ``maximum``."""
    rungs = [start]
    while rungs[-1] * factor <= maximum * 1.0001:
        rungs.append(rungs[-1] * factor)
    return rungs


def step_timeout(s: LadderSettings) -> float:
    return s.warmup_s + s.step_s + s.drain_s + 20.0


def run_ladder(procs: Procs, nodes: list[Proc], redis: Proc, clients: int,
               rungs: list[float], settings: LadderSettings, *, deflate: bool = False,
               label: str = "") -> dict[str, Any]:
    """Climb ``rungs`` (deliveries/s) with ``clients`` in one room over ``nodes``.

    The publish rate of a rung is rung / clients messages/s (every message
    reaches every client). CPU is sampled from /proc when the generator says
    ``measure_start`` and again when it reports the step, i.e. once the
    window's messages have arrived (or the drain ended): the nodes (summed),
    Redis, and the generator itself (so a saturated generator shows).
    """
    connect_s = 30.0 + clients / 50
    config = {
        "mode": "ladder", "urls": [node_url(n) for n in nodes], "clients": clients,
        "rates": [r / clients for r in rungs], "half": True, "deflate": deflate,
        "step_s": settings.step_s, "warmup_s": settings.warmup_s, "drain_s": settings.drain_s,
        "max_p99_ms": settings.max_p99_ms, "max_loss": settings.max_loss,
        "concurrency": settings.concurrency, "publishers": settings.publishers,
        "deadline_s": connect_s + (len(rungs) + 2) * step_timeout(settings) + 30,
    }
    loadgen = Loadgen(procs, config)
    starts: dict[int, tuple[float, float, float, float, Any]] = {}
    ports = [n.port for n in nodes if n.port is not None]

    def sample() -> tuple[float, float, float, float, Any]:
        return (time.monotonic(), sum(cpu_seconds(n.pid) for n in nodes),
                cpu_seconds(redis.pid), cpu_seconds(loadgen.proc.pid), tcp_segments(ports))

    def on_marker(event: Event) -> None:
        if event["event"] == "measure_start":
            starts[event["step"]] = sample()

    def cpu_of(step: int) -> dict[str, float]:
        if step not in starts:
            return {}
        t0, node0, redis0, gen0, sockets0 = starts[step]
        t1, node1, redis1, gen1, sockets1 = sample()
        segments = segments_between(sockets0, sockets1, clients) or (None, None)
        return {"node_cpu_s": node1 - node0, "redis_cpu_s": redis1 - redis0,
                "loadgen_cpu_s": gen1 - gen0, "cpu_wall_s": max(1e-6, t1 - t0),
                "segs_to_clients": segments[0], "segs_from_clients": segments[1]}

    try:
        ready = loadgen.expect("ready", connect_s)
        print(f"    {label}: {ready['clients']} clients on {len(nodes)} nodes "
              f"{ready['nodes']}, synced {ready['synced']}"
              + (f", permessage-deflate accepted by {ready['deflated']}" if deflate else ""),
              flush=True)
        steps: list[dict[str, Any]] = []
        while True:
            event = loadgen.expect({"step", "result"}, step_timeout(settings) + 15, on_marker)
            if event["event"] == "result":
                break
            step = {k: v for k, v in event.items() if k not in ("event", "t")}
            step.update(cpu_of(step["step"]))
            if step.get("node_cpu_s") is not None and step["delivered"]:
                step["node_cpu_us_per_delivery"] = step["node_cpu_s"] / step["delivered"] * 1e6
                step["loadgen_cpu_util"] = step["loadgen_cpu_s"] / step["cpu_wall_s"]
                # TCP segments per delivery, both ways on the nodes' client
                # sockets: each is a wake-up (and a radio burst) for a client
                if step["segs_to_clients"] is not None:
                    step["segs_out_per_delivery"] = step["segs_to_clients"] / step["delivered"]
                    step["segs_in_per_delivery"] = step["segs_from_clients"] / step["delivered"]
            step["target_delivered_per_s"] = step["rate"] * clients
            # one core is all a Node process gets: past ~90% the generator may be the limit
            step["loadgen_saturated"] = step.get("loadgen_cpu_util", 0.0) >= 0.9
            steps.append(step)
            print(f"    {label}: {step['label']:6} rate {step['rate']:8.1f}/s -> "
                  f"{step['delivered_per_s']:9,.0f} delivered/s, loss {step['loss']:.4f}, "
                  f"p50 {fmt(step['p50_ms'])} p99 {fmt(step['p99_ms'])} ms, "
                  f"node CPU {fmt(step.get('node_cpu_us_per_delivery'))} us/delivery, "
                  f"TCP segments/delivery {fmt(step.get('segs_out_per_delivery'), 2)} out "
                  f"{fmt(step.get('segs_in_per_delivery'), 2)} in, "
                  f"loadgen CPU {fmt(100 * step.get('loadgen_cpu_util', math.nan), 0)}% "
                  f"{'ok' if step['passed'] else 'FAIL'}"
                  f"{' (load generator saturated)' if step['loadgen_saturated'] else ''}"
                  f"{'' if step.get('backlog_drained', True) else ' (backlog still draining)'}",
                  flush=True)
    finally:
        loadgen.close()
    ladder = [s for s in steps if s["label"] == "ladder"]
    passed = [s for s in ladder if s["passed"]]
    half = next((s for s in steps if s["label"] == "half"), None)
    # the step that stopped the climb, and whether the generator was the bottleneck there
    stopped = next((s for s in ladder if not s["passed"]), None)
    return {"clients": clients, "nodes": len(nodes), "deflate": deflate, "ready": ready,
            "steps": steps, "max": passed[-1] if passed else None, "half": half,
            "stopped_by": stopped, "loadgen_errors": loadgen.errors[-5:]}


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


# -- idle memory per connection -------------------------------------------------------

def measure_memory(procs: Procs, target: Target, redis_url: str, counts: list[int],
                   warm: int = 50, settle_s: float = 2.0) -> dict[str, Any]:
    """RSS of one node at each count of idle websockets, per connection past ``warm``.

    The first ``warm`` connections pay one-off costs (lazy imports, the bus
    subscription, allocator arenas), so the delta is taken from there.
    """
    nodes = start_nodes(procs, target, 1, redis_url)
    pid = nodes[0].pid
    checkpoints = [warm, *counts]
    loadgen = Loadgen(procs, {"mode": "idle", "urls": [node_url(nodes[0])],
                              "checkpoints": checkpoints, "concurrency": 200, "settle_s": settle_s,
                              "deadline_s": 60 + max(counts) / 50})
    points: list[dict[str, Any]] = []
    try:
        for _ in checkpoints:
            event = loadgen.expect("checkpoint", 30 + max(counts) / 50)
            points.append({"target": event["target"], "open": event["open"],
                           "failed": event["failed"], "open_seconds": event["open_seconds"],
                           "rss_kib": rss_kib(pid)})
            print(f"    memory {target.key}: {event['open']} open, RSS "
                  f"{(points[-1]['rss_kib'] or 0) / 1024:.1f} MiB", flush=True)
            loadgen.send("next")
        loadgen.expect("result", 30)
    finally:
        loadgen.close()
        procs.stop(nodes)
    base = points[0]
    per: dict[str, float | None] = {}
    for point in points[1:]:
        extra = point["open"] - base["open"]
        ok = extra > 0 and point["rss_kib"] is not None and base["rss_kib"] is not None
        per[str(point["target"])] = (point["rss_kib"] - base["rss_kib"]) / extra if ok else None
    return {"points": points, "kib_per_connection": per}


# -- Celery to client ---------------------------------------------------------------

def measure_celery(procs: Procs, redis_url: str, clients: int, count: int,
                   rate: float) -> dict[str, Any]:
    """p50/p99 from ``apply_async`` to receipt, through a real Celery worker; and via Emitter."""
    broker = redis_url.rsplit("/", 1)[0] + "/1"  # the task queue apart from the bus
    env = child_env({"MESSAGE_QUEUE_URL": redis_url, "CELERY_BROKER_URL": broker})
    # the worker boots while the nodes do
    worker = procs.spawn("celery", [sys.executable, "-m", "workers", "worker", "-c", "1",
                                    "--log-level", "INFO"], cwd=str(ROOT), env=env)
    nodes: list[Proc] = []
    loadgen = None
    try:
        nodes = start_nodes(procs, TARGETS["cluster"], 2, redis_url)
        wait_until(lambda: " ready." in worker.log_tail(200), "the Celery worker", 60.0, [worker])
        loadgen = Loadgen(procs, {"mode": "listen", "urls": [node_url(n) for n in nodes],
                                  "clients": clients, "kinds": ["celery", "emitter"],
                                  "deadline_s": 120 + 2 * count / rate})
        loadgen.expect("ready", 60)
        for kind in ("celery", "emitter"):
            sender = procs.spawn("sender", [sys.executable, "-m", "benchmarks.suite.celery_sender",
                                            "--kind", kind, "--count", str(count),
                                            "--rate", str(rate)], cwd=str(ROOT), env=env)
            wait_until(lambda s=sender: not s.running(), f"the {kind} sender",
                       30 + 2 * count / rate)
            if sender.popen is not None and sender.popen.returncode != 0:
                raise SuiteError(f"the {kind} sender failed:\n{sender.log_tail()}")
            procs.stop([sender])
        time.sleep(2.0)  # the last messages' way through the worker
        loadgen.send("stop")
        result = loadgen.expect("result", 30)
    finally:
        if loadgen is not None:
            loadgen.close()
        procs.stop([worker, *nodes])
    kinds = result["kinds"]
    for kind in ("celery", "emitter"):
        k = kinds.setdefault(kind, {"delivered": 0, "p50_ms": None, "p99_ms": None})
        k["expected"] = count * result["clients"]
        print(f"    celery: {kind}: {k['delivered']}/{k['expected']} delivered, "
              f"p50 {fmt(k['p50_ms'])} p99 {fmt(k['p99_ms'])} ms", flush=True)
    return {"clients": result["clients"], "count": count, "rate": rate, "kinds": kinds}


# -- resume after a SIGKILLed node ------------------------------------------------------

def haproxy_states(stats_port: int) -> dict[str, str]:
    """Backend server -> ``status check_status`` from HAProxy's CSV stats."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{stats_port}/;csv", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
    return {r["svname"]: f"{r['status']} {r['check_status']}" for r in rows
            if r.get("pxname") == "socket_nodes" and r["svname"] not in ("FRONTEND", "BACKEND")}


def start_haproxy(procs: Procs, nodes: list[Proc]) -> tuple[Proc, int]:
    # the project's own renderer: cookie stickiness, /readyz checks every 500 ms, redispatch
    from cluster.devtools.haproxy_config import Backend, render_haproxy_config

    port, stats = free_port(), free_port()
    backends = [Backend(f"n{i + 1}", HOST, n.port or 0) for i, n in enumerate(nodes)]
    config = procs.logdir / f"haproxy-{port}.cfg"
    # every client runs on this machine, one source address: no per-source limits
    config.write_text(render_haproxy_config(backends, port, stats_port=stats,
                                            max_connections_per_source=None,
                                            max_requests_per_source=None))
    proxy = procs.spawn("haproxy", [haproxy_executable(), "-f", str(config), "-db"])
    wait_until(lambda: all(s.startswith("UP L7OK") for s in haproxy_states(stats).values())
               and len(haproxy_states(stats)) == len(nodes), "HAProxy to see every node UP",
               30.0, [proxy])
    return proxy, port


def measure_failover(procs: Procs, target: Target, redis_url: str, subjects: int,
                     rate: float, reconnect_delay_ms: float, tail_s: float = 1.5) -> dict[str, Any]:
    """Clients behind HAProxy; SIGKILL the node most of them are on; time their resume.

    Times are from the SIGKILL: ``reconnect_ms`` to the client's ``connect``
    event on the other node, ``first_message_ms`` to the first room message
    after it. ``missed`` counts room messages (published through the surviving
    node at ``rate``/s) a client never got: recovery replays them, a new
    session cannot.
    """
    nodes = start_nodes(procs, target, 2, redis_url)
    proxy, port = start_haproxy(procs, nodes)
    loadgen = Loadgen(procs, {"mode": "failover", "lb_url": f"http://{HOST}:{port}",
                              "direct_urls": [node_url(n) for n in nodes], "subjects": subjects,
                              "rate": rate, "reconnect_delay_ms": reconnect_delay_ms,
                              "reconnect_delay_max_ms": max(500, reconnect_delay_ms),
                              "randomization": 0, "timeout_s": 20, "tail_s": tail_s,
                              "deadline_s": 90})
    try:
        ready = loadgen.expect("ready", 40)
        on = Counter(str(n) for n in ready["subjects"])
        victim_pid = on.most_common(1)[0][0]
        victim = next(n for n in nodes if str(n.pid) == victim_pid)
        loadgen.send(f"prekill {victim_pid}")
        loadgen.expect("prekill_ok", 10)
        killed_at = time.time() * 1000
        victim.signal_group(signal.SIGKILL)  # SIGKILL: no drain, no goodbye
        loadgen.send(f"killed {killed_at:.3f}")
        result = loadgen.expect("result", 60)
    finally:
        loadgen.close()
        procs.stop([proxy, *nodes])
    victims = result["victims"]

    def stat(key: str, fn: Any) -> float | None:
        values = [v[key] for v in victims if v[key] is not None]
        return fn(values) if values else None

    summary = {
        "subjects": result["subjects"], "on_victim": len(victims),
        "reconnect_ms_p50": stat("reconnect_ms", statistics.median),
        "reconnect_ms_max": stat("reconnect_ms", max),
        "first_message_ms_p50": stat("first_message_ms", statistics.median),
        "first_message_ms_max": stat("first_message_ms", max),
        "resumed": sum(1 for v in victims if v["first_message_ms"] is not None),
        "recovered": sum(1 for v in victims if v["recovered"]),
        "missed_total": sum(v["missed"] for v in victims),
        "published": result["published"], "victims": victims,
        "settings": {"rate": rate, "reconnect_delay_ms": reconnect_delay_ms},
    }
    print(f"    failover {target.key}: {summary['resumed']}/{len(victims)} resumed, "
          f"reconnect p50 {fmt(summary['reconnect_ms_p50'])} ms, first message p50 "
          f"{fmt(summary['first_message_ms_p50'])} ms (max {fmt(summary['first_message_ms_max'])}),"
          f" recovered {summary['recovered']}, missed {summary['missed_total']}", flush=True)
    return summary

"""Scale-out: what a node pays for rooms it does not serve, and cluster CPU against node count.

Two measurements (``--measure uninvolved,nodes``, both by default), each
target by target and round by round (A B C A B C) on one private
``redis-server`` the command starts:

**uninvolved**: three nodes of the target, one room's
receivers and its publisher on node 0 (``benchmarks/node/scaleout_loadgen.mjs``,
the official ``socket.io-client``), nodes 1 and 2 with no client. The
publisher sends at a low rate, then at a high rate; per emit, the CPU of each
node and of Redis is the slope between the two windows (see
:mod:`benchmarks.suite.scaleout_measure`).

**nodes**: for 2, 4 and 6 nodes (``--node-counts``), 30 rooms of 10
receivers connected round-robin to the nodes, their publishers on node 0,
a low and a high total rate of room emits, then one process emitting to a
room per receiver (this project's ``workers.Emitter``); the cluster's CPU
(all nodes) and Redis's per emit and per delivery, each a slope (see
:mod:`benchmarks.suite.scaleout_nodes`). ``benchmarks/capacity_model.py``
turns both measurements into a prediction for 10 to 1,000 nodes.

Targets:

- ``cluster``: this project's node, ``python -m cluster node --app benchmarks.fanout_app:socketio``;
- ``node``: Node socket.io 4.8 + ``@socket.io/redis-adapter`` (one channel), ``server.mjs``;
- ``node-sharded``: the same with ``createShardedAdapter``, ``subscriptionMode: "dynamic"``
  (Redis 7 sharded pub/sub), ``scaleout_server.mjs``;
- ``flask-socketio`` (not by default): Flask-SocketIO 5.7 + RedisManager.

It writes ``benchmarks/results/scaleout.md`` and ``.json``
(``scaleout-nodes.*`` when only ``nodes`` is measured; ``--quick``:
``quick-scaleout*``, a smoke run whose figures mean nothing). Everything
binds to 127.0.0.1, every phase has a timeout, and everything started is
stopped by PID, on errors and Ctrl-C too. Run from the repository root::

    .venv/bin/python -m benchmarks.scaleout                      # ~8 min per round of 3 targets
    .venv/bin/python -m benchmarks.scaleout --measure uninvolved # ~2 min per round
    .venv/bin/python -m benchmarks.scaleout --quick --measure nodes   # ~45 s, every path once
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .suite import report, targets
from .suite.procs import Procs, redis_command, start_redis, stop_on_sigterm_like_ctrl_c
from .suite.scaleout_measure import (
    DEFAULT_TARGETS,
    NODES,
    SCALEOUT_TARGETS,
    ScaleoutSettings,
    measure_target,
)
from .suite.scaleout_nodes import NodesSettings, measure_nodes
from .suite.scaleout_nodes import estimate_s as nodes_estimate_s
from .suite.scaleout_report import markdown

RESULTS = targets.ROOT / "benchmarks" / "results"
MEASURES = ("uninvolved", "nodes")
# a --quick run: one round, short windows, lower rates, 2 and 3 nodes of 6 rooms;
# every target and path once
QUICK: dict[str, Any] = {"rounds": 1, "high_rate": 300.0, "window_seconds": 2.0,
                         "warmup_seconds": 0.5, "drain_seconds": 1.0, "settle_seconds": 0.3,
                         "node_counts": "2,3", "rooms": 6, "nodes_high_rate": 150.0,
                         "user_rate": 150.0, "nodes_window_seconds": 1.5}
# starting three nodes, connecting, stopping: seconds per target and round, roughly
OVERHEAD_S = 8.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one round, short windows, low rates, 2 and 3 nodes")
    p.add_argument("--measure", default=",".join(MEASURES),
                   help=f"comma-separated, of {', '.join(MEASURES)} (default: both)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated, in the order they interleave (default "
                        f"{','.join(DEFAULT_TARGETS)}; known: {','.join(SCALEOUT_TARGETS)})")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the targets (default 3)")
    p.add_argument("--receivers", type=int, default=10,
                   help="members of the room, all on node 0 (default 10)")
    p.add_argument("--low-rate", type=float, default=1.0, help="msgs/s of the first window")
    p.add_argument("--high-rate", type=float, default=1000.0,
                   help="msgs/s of the second window (default 1000)")
    p.add_argument("--window-seconds", type=float, default=10.0, help="each measured window")
    p.add_argument("--warmup-seconds", type=float, default=2.0,
                   help="publishing at a window's rate before it opens (default 2)")
    p.add_argument("--drain-seconds", type=float, default=3.0,
                   help="how long a window's deliveries may still arrive after it (default 3)")
    p.add_argument("--settle-seconds", type=float, default=1.0,
                   help="pause between the clients being ready and the first window")
    n = NodesSettings()
    p.add_argument("--node-counts", default=",".join(map(str, n.node_counts)),
                   help="nodes: the cluster sizes measured (default 2,4,6)")
    p.add_argument("--rooms", type=int, default=n.rooms, help=f"nodes: rooms ({n.rooms})")
    p.add_argument("--room-size", type=int, default=n.room_size,
                   help=f"nodes: receivers per room, round-robin over the nodes ({n.room_size})")
    p.add_argument("--nodes-low-rate", type=float, default=n.low_rate,
                   help=f"nodes: room emits/s of the baseline window ({n.low_rate:g})")
    p.add_argument("--nodes-high-rate", type=float, default=n.high_rate,
                   help=f"nodes: room emits/s of the high window ({n.high_rate:g})")
    p.add_argument("--user-rate", type=float, default=n.user_rate,
                   help=f"nodes: per-user emits/s from the emitter process ({n.user_rate:g})")
    p.add_argument("--user-rate-per-node", action="store_true",
                   help="nodes: --user-rate is per node (the emitter sends it times the node "
                        "count), so each node serves the same rate at every count")
    p.add_argument("--nodes-window-seconds", type=float, default=n.window_s,
                   help=f"nodes: each measured window ({n.window_s:g})")
    p.add_argument("--no-user-rooms", action="store_true",
                   help="nodes: skip the per-user rooms and their window")
    p.add_argument("--out", default=None,
                   help="prefix of the .json and .md (default benchmarks/results/scaleout, "
                        "scaleout-nodes when only nodes is measured, quick-* with --quick)")
    p.add_argument("--logdir", default=None, help="process logs (default: a temporary directory)")
    pre, _ = p.parse_known_args(argv)
    if pre.quick:
        p.set_defaults(**QUICK)
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace) -> ScaleoutSettings:
    return ScaleoutSettings(receivers=args.receivers, low_rate=args.low_rate,
                            high_rate=args.high_rate, window_s=args.window_seconds,
                            warmup_s=args.warmup_seconds, drain_s=args.drain_seconds,
                            settle_s=args.settle_seconds)


def nodes_settings_of(args: argparse.Namespace) -> NodesSettings:
    counts = tuple(int(c) for c in args.node_counts.split(",") if c.strip())
    return NodesSettings(node_counts=counts, rooms=args.rooms, room_size=args.room_size,
                         low_rate=args.nodes_low_rate, high_rate=args.nodes_high_rate,
                         user_rate=args.user_rate,
                         user_rate_per_node=args.user_rate_per_node,
                         window_s=args.nodes_window_seconds,
                         warmup_s=args.warmup_seconds, drain_s=args.drain_seconds,
                         settle_s=args.settle_seconds, user_rooms=not args.no_user_rooms)


def estimate_s(s: ScaleoutSettings, rounds: int, count: int) -> float:
    per_target = OVERHEAD_S + s.settle_s + 2 * (s.warmup_s + s.window_s) + s.drain_s
    return rounds * count * per_target


def out_prefix(args: argparse.Namespace, measures: list[str]) -> Path:
    if args.out:
        return Path(args.out)
    name = ("quick-" if args.quick else "") + "scaleout"
    return RESULTS / (name + ("-nodes" if measures == ["nodes"] else ""))


def measure_round(procs: Procs, results: dict[str, Any], key: str, rnd: int, redis_url: str,
                  settings: ScaleoutSettings | NodesSettings, count: int = 0) -> None:
    """One target in one round (``count`` > 0: the nodes measurement at that many nodes).

    A failure is recorded and the run goes on.
    """
    entry: dict[str, Any] = {"round": rnd, "target": key}
    what = f"round {rnd} {key}" + (f" x{count}" if count else "")
    try:
        if isinstance(settings, NodesSettings):
            entry.update(measure_nodes(procs, SCALEOUT_TARGETS[key], count, redis_url, settings,
                                       label=what))
        else:
            entry.update(measure_target(procs, SCALEOUT_TARGETS[key], redis_url, settings,
                                        label=what))
    except Exception as exc:  # noqa: BLE001 - recorded in the results, the run goes on
        message = f"{type(exc).__name__}: {exc}"
        print(f"  !! {what} failed: {message[:2000]}", flush=True)
        results["errors"].append({"what": what, "error": message[:4000],
                                  "traceback": traceback.format_exc()[-4000:]})
        entry["error"] = message[:500]
        entry["nodes"] = count or NODES
    finally:
        # the next target starts on an empty Redis (sessions, presence, leases)
        redis_command(redis_url, "FLUSHALL")
    results["nodes_runs" if count else "runs"].append(entry)


def write(results: dict[str, Any], prefix: Path) -> list[Path]:
    json_path, md_path = prefix.with_suffix(".json"), prefix.with_suffix(".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(markdown(results))
    return [json_path, md_path]


def run(args: argparse.Namespace) -> int:
    keys = [k.strip() for k in args.targets.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCALEOUT_TARGETS]
    if unknown or not keys:
        print(f"unknown target(s): {unknown}; known: {', '.join(SCALEOUT_TARGETS)}")
        return 2
    measures = [m.strip() for m in args.measure.split(",") if m.strip()]
    if not measures or any(m not in MEASURES for m in measures):
        print(f"--measure {args.measure!r}: pick from {', '.join(MEASURES)}")
        return 2
    settings = settings_of(args)
    nodes = nodes_settings_of(args)
    if not nodes.node_counts or min(nodes.node_counts) < 2:
        print(f"--node-counts {args.node_counts!r}: two nodes or more each")
        return 2
    estimate = 0.0
    if "uninvolved" in measures:
        estimate += estimate_s(settings, args.rounds, len(keys))
        print(f"uninvolved cost: {settings.low_rate:g} then {settings.high_rate:g} msgs/s, "
              f"{settings.window_s:g} s windows", flush=True)
    if "nodes" in measures:
        estimate += args.rounds * len(keys) * sum(nodes_estimate_s(nodes, c)
                                                  for c in nodes.node_counts)
        print(f"cluster CPU against node count: {', '.join(map(str, nodes.node_counts))} nodes; "
              f"{nodes.rooms} rooms of {nodes.room_size}; {nodes.low_rate:g} then "
              f"{nodes.high_rate:g} room emits/s"
              + (f", {nodes.user_rate:g} per-user emits/s"
                 + (" per node" if nodes.user_rate_per_node else "") if nodes.user_rooms else "")
              + f"; {nodes.window_s:g} s windows", flush=True)
    print(f"targets {', '.join(keys)}; {args.rounds} round(s); estimated {estimate / 60:.1f} min",
          flush=True)
    targets.ensure_node_modules()
    if "flask-socketio" in keys:
        targets.ensure_python_bench()
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="bench-scaleout-"))
    prefix = out_prefix(args, measures)
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick, "machine": report.machine(), "versions": report.versions(),
        "measures": measures,
        "settings": {"targets": keys, "rounds": args.rounds, "nodes": NODES,
                     "receivers": settings.receivers, "low_rate": settings.low_rate,
                     "high_rate": settings.high_rate, "window_s": settings.window_s,
                     "warmup_s": settings.warmup_s, "drain_s": settings.drain_s,
                     "argv": sys.argv[1:]},
        "nodes_settings": {**asdict(nodes), "receivers": nodes.receivers},
        "runs": [], "nodes_runs": [], "errors": [], "elapsed_s": 0.0,
    }
    print(f"logs in {logdir}", flush=True)
    started = time.monotonic()
    status = 0

    def progress(text: str) -> None:
        print(f"[{(time.monotonic() - started) / 60:4.1f} min] {text}", flush=True)

    try:
        with Procs(logdir) as procs:
            _, redis_url = start_redis(procs)
            for rnd in range(1, args.rounds + 1):
                if "uninvolved" in measures:
                    for key in keys:
                        progress(f"round {rnd}: uninvolved, {key}")
                        measure_round(procs, results, key, rnd, redis_url, settings)
                if "nodes" in measures:
                    # node counts outside, targets inside: each count's targets interleave
                    for count in nodes.node_counts:
                        for key in keys:
                            progress(f"round {rnd}: {count} nodes, {key}")
                            measure_round(procs, results, key, rnd, redis_url, nodes, count)
    except KeyboardInterrupt:
        print("interrupted: everything started is stopped; writing what was measured", flush=True)
        results["errors"].append({"what": "run", "error": "interrupted"})
        status = 130
    finally:
        results["elapsed_s"] = time.monotonic() - started
        results["resolution_us"] = max((r["resolution_us"] for r in results["runs"]
                                        if "resolution_us" in r), default=0.0)
        paths = write(results, prefix)
    print()
    print(prefix.with_suffix(".md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths) + f" ({results['elapsed_s'] / 60:.1f} min)")
    print("capacity model (both measurements, from one file or two): .venv/bin/python -m "
          f"benchmarks.capacity_model {prefix.with_suffix('.json')}")
    return status or (1 if results["errors"] else 0)


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm_like_ctrl_c()
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

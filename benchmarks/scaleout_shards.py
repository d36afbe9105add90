"""Redis Cluster: how the bus spreads over 3 primaries, and what it costs.

Starts a private 3-master Redis Cluster (``redis-server --cluster-enabled
yes``, ``redis-cli --cluster create``), then, target by target and round by
round (A B C A B C), the "nodes" measurement of ``benchmarks.scaleout``
(:mod:`benchmarks.suite.scaleout_nodes`): ``--nodes`` nodes, 120 rooms of 5
receivers spread round-robin over them, their publishers on node 0, a low
and a high rate of room emits (no per-user window). 120 rooms, not the 30 of
``benchmarks.scaleout``: any hash spreads 30 rooms over 3 shards unevenly by
chance (this project's 30 room names land 5, 12 and 13 on the three
primaries, socket.io's 10, 11 and 9), which would measure luck. Around each target it
reads every primary's ``INFO commandstats``: each primary's share of the
bus's commands (``PUBLISH``, ``SPUBLISH``, ``EVALSHA``) is what issue 25's
"each shard carries 25-42%" is about. The cluster's and Redis's CPU per
emit are the slopes between the two windows, as in ``benchmarks.scaleout``.

Targets:

- ``cluster``: this project's node, ``--redis-partitions 1`` (the default:
  the bus in one slot);
- ``cluster-lanes``: the same with ``--redis-partitions 6`` (``--partitions``);
- ``node-sharded``: Node socket.io 4.8 + ``createShardedAdapter``
  (``subscriptionMode: "dynamic"``) on node-redis's cluster client.

Writes ``benchmarks/results/scaleout-shards.md`` and ``.json``. Everything
binds to 127.0.0.1, every phase has a timeout, and everything started is
stopped by PID. Run from the repository root::

    .venv/bin/python -m benchmarks.scaleout_shards            # ~4 min for 2 rounds
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import redis

from .suite import report
from .suite.procs import (
    HOST,
    Proc,
    Procs,
    SuiteError,
    free_port,
    stop_on_sigterm_like_ctrl_c,
    wait_until,
)
from .suite.scaleout_measure import SHARDED, RedisProbe
from .suite.scaleout_nodes import NodesSettings, measure_nodes
from .suite.targets import ROOT, TARGETS, Target, ensure_node_modules

RESULTS = ROOT / "benchmarks" / "results"
#: the commands that carry the bus (its messages, and the recovery script)
BUS_COMMANDS = ("publish", "spublish", "evalsha", "evalsha_ro")
MASTERS = 3


def _lanes(count: int) -> Target:
    def argv(port: int, redis_url: str) -> list[str]:
        return [*TARGETS["cluster"].argv(port, redis_url), "--redis-partitions", str(count)]
    return Target("cluster-lanes", f"this project, --redis-partitions {count}", argv)


def targets_for(partitions: int) -> dict[str, Target]:
    return {"cluster": TARGETS["cluster"], "cluster-lanes": _lanes(partitions),
            "node-sharded": SHARDED}


class ShardsProbe:
    """:class:`~.suite.scaleout_measure.RedisProbe`'s reads, summed over
    every primary (one ``RedisProbe`` each), and each primary's bus commands."""

    def __init__(self, ports: list[int]) -> None:
        self.probes = [RedisProbe(f"redis://{HOST}:{port}/0") for port in ports]

    def cpu_seconds(self) -> float:
        return sum(probe.cpu_seconds() for probe in self.probes)

    def commands(self) -> list[int]:
        """Bus commands each primary ran so far."""
        counts = []
        for probe in self.probes:
            stats = probe.client.info("commandstats")
            counts.append(sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                              for name in BUS_COMMANDS))
        return counts

    def publishes(self) -> int:
        return sum(self.commands())

    def subscribers(self) -> dict[str, int]:
        each = [probe.subscribers() for probe in self.probes]
        return {key: sum(counts[key] for counts in each) for key in ("connections", "channels")}

    def flush(self) -> None:
        for probe in self.probes:
            probe.client.flushall()

    def close(self) -> None:
        for probe in self.probes:
            probe.close()


def start_redis_cluster(procs: Procs) -> tuple[list[Proc], list[int]]:
    """A private 3-master Redis Cluster on free ports, no persistence."""
    executable, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if executable is None or cli is None:
        raise SuiteError("redis-server and redis-cli are needed (apt-get install redis-server)")
    servers, ports = [], []
    for index in range(MASTERS):
        port = free_port()
        workdir = procs.logdir / f"redis-cluster-{index}"
        workdir.mkdir(parents=True, exist_ok=True)
        servers.append(procs.spawn("redis-cluster", [
            executable, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--maxclients", "20000", "--cluster-enabled", "yes",
            "--cluster-config-file", str(workdir / "nodes.conf"),
            "--cluster-port", str(free_port()), "--cluster-node-timeout", "5000"]))
        ports.append(port)
    for port, proc in zip(ports, servers, strict=True):
        wait_until(lambda p=port: _answers(p), f"redis-server :{port}", 10.0, [proc])
    subprocess.run([cli, "--cluster", "create", *[f"{HOST}:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, capture_output=True, timeout=30)
    wait_until(lambda: all(_state(p) == "ok" for p in ports), "cluster_state:ok", 20.0, servers)
    return servers, ports


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(host=HOST, port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _state(port: int) -> str:
    info = redis.Redis(host=HOST, port=port, socket_timeout=2).cluster("info")
    return str(info.get("cluster_state", "")) if isinstance(info, dict) else ""


def measure_one(procs: Procs, target: Target, ports: list[int], nodes: int,
                settings: NodesSettings, label: str) -> dict[str, Any]:
    url = "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in ports)
    probe = ShardsProbe(ports)
    try:
        probe.flush()  # the lane count's record and every key of the last target
        before = probe.commands()
        figures = measure_nodes(procs, target, nodes, url, settings, label=label,
                                probe=ShardsProbe(ports))
        after = probe.commands()
    finally:
        probe.close()
    per_shard = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(per_shard) or 1
    shares = [count / total for count in per_shard]
    print(f"    {label}: bus commands per primary {per_shard}: "
          f"{' / '.join(f'{s:.0%}' for s in shares)}", flush=True)
    return {**figures, "commands_per_shard": per_shard, "shares": shares}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Redis Cluster: the bus over {MASTERS} primaries ({results['date']})", "",
             f"{results['nodes']} nodes, {results['settings']['rooms']} rooms of "
             f"{results['settings']['room_size']}, {results['settings']['low_rate']:g} then "
             f"{results['settings']['high_rate']:g} room emits/s; shares of the bus commands "
             f"({', '.join(BUS_COMMANDS)}) over each target's whole run; CPU per emit is the "
             f"slope between the two windows.", "",
             "| target | round | share per primary | cluster µs CPU per emit | Redis µs per "
             "emit (all primaries) | µs per delivery |",
             "| --- | ---: | --- | ---: | ---: | ---: |"]
    for run in results["runs"]:
        if "error" in run:
            lines.append(f"| {run['target']} | {run['round']} | failed: {run['error'][:80]} "
                         f"| | | |")
            continue
        shares = " / ".join(f"{s:.0%}" for s in run["shares"])
        lines.append(f"| {run['target']} | {run['round']} | {shares} | {run['cluster_us']:.0f} "
                     f"| {run['redis_us']:.1f} | {run['per_delivery_us']:.1f} |")
    lines += ["", "Machine: " + json.dumps(results["machine"]), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout_shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="cluster,cluster-lanes,node-sharded")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--partitions", type=int, default=6,
                   help="cluster-lanes: --redis-partitions (default 6: two per primary)")
    n = NodesSettings()
    p.add_argument("--rooms", type=int, default=120)
    p.add_argument("--room-size", type=int, default=5)
    p.add_argument("--low-rate", type=float, default=n.low_rate)
    p.add_argument("--high-rate", type=float, default=n.high_rate)
    p.add_argument("--window-seconds", type=float, default=n.window_s)
    p.add_argument("--out", default=str(RESULTS / "scaleout-shards"))
    p.add_argument("--logdir", default=None)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    known = targets_for(args.partitions)
    keys = [k.strip() for k in args.targets.split(",") if k.strip()]
    if not keys or any(k not in known for k in keys):
        print(f"--targets {args.targets!r}: pick from {', '.join(known)}")
        return 2
    settings = NodesSettings(node_counts=(args.nodes,), rooms=args.rooms,
                             room_size=args.room_size, low_rate=args.low_rate,
                             high_rate=args.high_rate, window_s=args.window_seconds,
                             user_rooms=False)
    ensure_node_modules()
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="bench-shards-"))
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": report.machine(), "versions": report.versions(), "nodes": args.nodes,
        "partitions": args.partitions, "settings": vars(args), "runs": [], "errors": []}
    print(f"logs in {logdir}", flush=True)
    started = time.monotonic()
    try:
        with Procs(logdir) as procs:
            _, ports = start_redis_cluster(procs)
            for rnd in range(1, args.rounds + 1):
                for key in keys:
                    label = f"round {rnd} {key}"
                    print(f"[{(time.monotonic() - started) / 60:4.1f} min] {label}", flush=True)
                    entry: dict[str, Any] = {"round": rnd, "target": key}
                    try:
                        entry.update(measure_one(procs, known[key], ports, args.nodes,
                                                 settings, label))
                    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                        message = f"{type(exc).__name__}: {exc}"
                        print(f"  !! {label} failed: {message[:2000]}", flush=True)
                        results["errors"].append({"what": label, "error": message[:4000],
                                                  "traceback": traceback.format_exc()[-4000:]})
                        entry["error"] = message[:500]
                    results["runs"].append(entry)
    except KeyboardInterrupt:
        results["errors"].append({"what": "run", "error": "interrupted"})
    finally:
        results["elapsed_s"] = time.monotonic() - started
        prefix = Path(args.out)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        prefix.with_suffix(".md").write_text(markdown(results))
    print(prefix.with_suffix(".md").read_text())
    return 1 if results["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm_like_ctrl_c()
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

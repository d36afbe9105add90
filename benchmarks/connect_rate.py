"""Connects per second on one node: connect, join a room, get the ack.

Each target of the fan-out suite (:mod:`benchmarks.suite.targets`: this
project on eventlet and on gevent, Flask-SocketIO, Node socket.io, all on
one ``redis-server`` started here) runs as one node. A load generator in
this process (asyncio, raw websockets as in :mod:`benchmarks.many_websockets`)
then opens ``--connections`` clients, ``--concurrency`` at a time: each does
the websocket upgrade, Engine.IO open, Socket.IO CONNECT, then emits
``join`` with an ack and waits for it. It reports connects per second over
the whole batch, the p50 and p99 of one client's connect-to-ack time, the
node's CPU per connect, and the generator's own CPU (when it is near one
core, the generator is what limits the figure). The clients are then
closed and the node stopped; targets interleave, ``--rounds`` rounds.

Bounded: the count, 120 s per batch, 30 s per client; everything on
127.0.0.1; processes stopped by PID.

    .venv/bin/python -m benchmarks.connect_rate [--connections 2000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import encode_frame
from .many_websockets import Connection, close_all, open_connection, read_message
from .suite.procs import (
    Procs,
    cpu_seconds,
    raise_fd_limit,
    redis_command,
    start_redis,
    stop_on_sigterm_like_ctrl_c,
)
from .suite.targets import TARGETS, ensure_node_modules, start_nodes

DEFAULT_TARGETS = "cluster,cluster-gevent,flask-socketio,node"


async def connect_and_join(port: int, index: int) -> tuple[Connection, float]:
    """One client: connected, joined, acked; and how long that took."""
    started = time.perf_counter()
    conn = await open_connection(port)
    conn.writer.write(encode_frame(f'421["join","room-{index % 100}"]'))
    while True:
        message = await read_message(conn.reader, conn.writer)
        if message == "2":
            conn.writer.write(encode_frame("3"))
        elif message.startswith("431"):
            return conn, time.perf_counter() - started


async def batch(port: int, count: int, concurrency: int) -> dict[str, Any]:
    semaphore = asyncio.Semaphore(concurrency)
    conns: list[Connection] = []
    times: list[float] = []
    failed = 0

    async def one(index: int) -> None:
        nonlocal failed
        async with semaphore:
            try:
                conn, took = await asyncio.wait_for(connect_and_join(port, index), 30)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                failed += 1
                return
            conns.append(conn)
            times.append(took)

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 120)
    finally:
        elapsed = time.perf_counter() - started
        await close_all(conns)
    times.sort()
    return {"connected": len(times), "failed": failed, "seconds": elapsed,
            "per_second": len(times) / elapsed if elapsed else 0.0,
            "p50_ms": 1000 * statistics.median(times) if times else None,
            "p99_ms": 1000 * times[int(len(times) * 0.99) - 1] if times else None}


def measure(procs: Procs, key: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    (node,) = start_nodes(procs, TARGETS[key], 1, redis_url)
    assert node.port is not None
    try:
        asyncio.run(batch(node.port, min(200, args.connections), args.concurrency))  # warm-up
        node_cpu, own_cpu = cpu_seconds(node.pid), time.process_time()
        result = asyncio.run(batch(node.port, args.connections, args.concurrency))
        result["node_cpu_us_per_connect"] = (
            1e6 * (cpu_seconds(node.pid) - node_cpu) / max(1, result["connected"]))
        result["generator_cpu_share"] = (time.process_time() - own_cpu) / result["seconds"]
    finally:
        procs.stop([node])
        redis_command(redis_url, "FLUSHALL")
    return result


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| target | connects/s (rounds) | p50 / p99 ms connect to ack | node CPU µs per "
             "connect | generator CPU (cores) | failed |", "| --- | --- | --- | --- | --- | --- |"]
    for key, rounds in results.items():
        rates = [r["per_second"] for r in rounds]
        lines.append(
            f"| {TARGETS[key].label} | {statistics.median(rates):,.0f} "
            f"[{', '.join(f'{x:,.0f}' for x in rates)}] | "
            f"{statistics.median(r['p50_ms'] for r in rounds):.1f} / "
            f"{statistics.median(r['p99_ms'] for r in rounds):.1f} | "
            f"{statistics.median(r['node_cpu_us_per_connect'] for r in rounds):,.0f} | "
            f"{statistics.median(r['generator_cpu_share'] for r in rounds):.2f} | "
            f"{sum(r['failed'] for r in rounds)} |")
    if "node" in results:
        node_rate = statistics.median(r["per_second"] for r in results["node"])
        for key, rounds in results.items():
            if key != "node":
                rate = statistics.median(r["per_second"] for r in rounds)
                lines.append(f"\n{TARGETS[key].label} ÷ Node socket.io, connects/s: "
                             f"{rate / node_rate:.2f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connect_rate",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=DEFAULT_TARGETS)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None, help="prefix of the .json and .md written")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.targets.split(",") if k.strip()]
    if "node" in keys:
        ensure_node_modules()
    raise_fd_limit(args.connections + 1024)
    stop_on_sigterm_like_ctrl_c()
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    with Procs(Path(tempfile.mkdtemp(prefix="bench-connect-rate-"))) as procs:
        _, redis_url = start_redis(procs)
        for rnd in range(args.rounds):
            for key in keys:
                result = measure(procs, key, redis_url, args)
                results[key].append(result)
                print(f"round {rnd + 1} {key}: {result['per_second']:,.0f} connects/s, "
                      f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                      f"node {result['node_cpu_us_per_connect']:,.0f} µs CPU per connect, "
                      f"generator {result['generator_cpu_share']:.2f} core", flush=True)
    table = report(results)
    print("\n" + table)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(results, indent=1))
        Path(args.out + ".md").write_text(
            f"# Connects per second on one node\n\n`python -m benchmarks.connect_rate "
            f"--connections {args.connections} --concurrency {args.concurrency} --rounds "
            f"{args.rounds}`, {time.strftime('%Y-%m-%d')}, this machine.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What one idle websocket costs a node, part by part.

Starts one node of ``tests.apps.chat_app`` (no Redis) under
:mod:`benchmarks.traced_node` (tracemalloc from the first import), opens 50
connections to warm caches and pools, takes a snapshot, opens
``--connections`` more (websocket, Engine.IO open, Socket.IO CONNECT, as
:mod:`benchmarks.many_websockets` does), holds them ``--settle`` seconds,
takes a second snapshot, and prints the difference per connection, grouped
by the part of the stack that allocated it (the source file of each
allocation), with the node's RSS per connection next to it. Each runtime
given in ``--runtimes`` is measured in turn. Bounded: the count, 120 s to
open, 30 s per snapshot; the node is stopped by PID.

    .venv/bin/python -m benchmarks.connection_memory [--connections 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from collections import defaultdict

from cluster.devtools.processes import NodeProcess

from ._common import repo_root, rss_kib
from .many_websockets import Connection, close_all, keep_alive, open_connection

APP = "tests.apps.chat_app:socketio"

#: (part, what in a path marks it), first match wins
PARTS = (
    ("this project: transport (socket, writer, reader)", "/cluster/node/"),
    ("this project: sessions and the rest", "/cluster/"),
    ("python-engineio (Engine.IO socket)", "/engineio/"),
    ("python-socketio (rooms, sids, environ)", "/socketio/"),
    ("Flask and werkzeug", ("/flask/", "/werkzeug/", "/flask_login/")),
    ("eventlet", "/eventlet/"),
    ("gevent", "/gevent/"),
    ("greenlet", "/greenlet/"),
    ("Python sockets", ("/socket.py", "/selectors.py", "/ssl.py")),
)


def part_of(filename: str) -> str:
    for part, marks in PARTS:
        if any(mark in filename for mark in ((marks,) if isinstance(marks, str) else marks)):
            return part
    return "other (" + os.path.basename(filename) + ")"


def snapshot(node: NodeProcess, out: str, number: int) -> dict[str, int]:
    """Bytes allocated per part, from the node's tracemalloc."""
    assert node.pid is not None
    os.kill(node.pid, signal.SIGUSR1)
    path = f"{out}.{number}"
    deadline = time.monotonic() + 30
    while not os.path.exists(path + ".done"):
        if time.monotonic() > deadline:
            raise TimeoutError("no tracemalloc snapshot from the node within 30 s")
        time.sleep(0.1)
    with open(path) as rows:
        sizes: dict[str, int] = defaultdict(int)
        for filename, size, _count in json.load(rows):
            sizes[part_of(filename)] += size
    return sizes


async def open_count(port: int, count: int, conns: list[Connection]) -> None:
    semaphore = asyncio.Semaphore(200)

    async def one() -> None:
        async with semaphore:
            conn = await asyncio.wait_for(open_connection(port), 30)
            conn.keepalive = asyncio.create_task(keep_alive(conn))
            conns.append(conn)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 120)


async def measure(mode: str, count: int, settle: float, workdir: str) -> None:
    out = os.path.join(workdir, f"snapshot-{mode}")
    node = NodeProcess(APP, name=f"traced-{mode}", module="benchmarks.traced_node",
                       extra_args=["--async-mode", mode], cwd=repo_root(),
                       env={"TRACED_NODE_OUT": out},
                       log_path=os.path.join(workdir, f"node-{mode}.log"))
    conns: list[Connection] = []
    try:
        await asyncio.to_thread(node.start)
        assert node.pid is not None
        await open_count(node.port, 50, conns)
        await asyncio.sleep(settle)
        before, rss_before = await asyncio.to_thread(snapshot, node, out, 1), rss_kib(node.pid)
        await open_count(node.port, count, conns)
        await asyncio.sleep(settle)
        after, rss_after = await asyncio.to_thread(snapshot, node, out, 2), rss_kib(node.pid)
    finally:
        await close_all(conns)
        await asyncio.to_thread(node.stop, 10.0)
    parts = set(after) | set(before)
    rows = sorted(((after.get(p, 0) - before.get(p, 0)) / count, p) for p in parts)
    total = sum(size for size, _ in rows)
    print(f"\n{mode}: {count:,} idle websockets, per connection")
    print("| part | bytes traced |\n| --- | ---: |")
    for size, part in reversed(rows):
        if abs(size) >= 16:
            print(f"| {part} | {size:,.0f} |")
    print(f"| **all traced** | **{total:,.0f}** |")
    if rss_before and rss_after:
        print(f"| node RSS (tracing's own overhead included) | "
              f"{(rss_after - rss_before) * 1024 / count:,.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connection_memory",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--runtimes", default="eventlet,gevent")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between the last connection and a snapshot")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="bench-conn-memory-")
    for mode in args.runtimes.split(","):
        asyncio.run(measure(mode.strip(), args.connections, args.settle, workdir))
    print(f"\n(node logs in {workdir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

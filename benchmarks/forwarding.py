"""The cost of session forwarding: a polling request served by the session's
owner directly vs one that lands on another node and is forwarded.

Starts a Redis and two nodes of ``tests.apps.chat_app`` on a signed bus
(session forwarding on). Opens one Engine.IO polling session on node A by
hand, then sends bounded series of polling POSTs carrying a PONG packet
(``3``, what a client answers a ping with): first to A (direct), then to B
(forwarded to A by a direct HTTP hop, :mod:`cluster.node.forwarding`). A
POST is the exchange whose cost forwarding adds to: a forwarded long-poll
GET adds the same hop, plus the time it waits for data anyway.

Measured per request: latency (p50, p99, one keep-alive connection,
sequential requests) and CPU (utime+stime of both node processes from
/proc, divided by the number of requests). Prints a table and the ratios
forwarded / direct. Everything binds to 127.0.0.1; processes are stopped by
PID. Run from the repository root (well under a minute by default)::

    .venv/bin/python -m benchmarks.forwarding [--requests 2000] [--warmup 200]

``--soak SECONDS`` (at most 600; the issue's check is 300) runs the soak
instead: 3 nodes behind a round-robin HAProxy with no cookie, ``--clients``
python-socketio clients (half polling-only, half upgrading to websocket)
chatting in one room every ``--interval`` seconds, one node SIGKILLed at
``--kill-at`` seconds (0: none). It prints what was sent and received, the
clients' disconnects, and the "Invalid session" answers in the nodes' logs
(expected: 0), then exits 1 if there was any::

    .venv/bin/python -m benchmarks.forwarding --soak 300 --kill-at 150
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import requests

from cluster.devtools.processes import ManagedProcess, NodeProcess, RedisServerProcess, stop_all

from ._common import cpu_seconds, percentile, table

SECRET = "benchmark-bus-signing-secret-0123456789abcdef"
APP = "tests.apps.chat_app:socketio"


def open_session(url: str) -> str:
    reply = requests.get(f"{url}/socket.io/", params={"EIO": "4", "transport": "polling"},
                         timeout=5)
    reply.raise_for_status()
    match = re.search(r'"sid":"([^"]+)"', reply.text)
    if match is None:
        raise RuntimeError(f"no sid in the handshake: {reply.text[:200]}")
    return match.group(1)


def series(http: requests.Session, url: str, sid: str, count: int,
           pids: list[int], limit_seconds: float) -> tuple[list[float], float, int]:
    """``count`` sequential PONG POSTs; latencies, CPU seconds of ``pids``, done."""
    target = f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}"
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    latencies: list[float] = []
    deadline = time.monotonic() + limit_seconds
    for _ in range(count):
        start = time.perf_counter()
        reply = http.post(target, data=b"3", timeout=10)
        latencies.append(time.perf_counter() - start)
        if reply.status_code != 200:
            raise RuntimeError(f"POST answered {reply.status_code}: {reply.text[:200]}")
        if time.monotonic() > deadline:
            print(f"  stopped at the time limit ({limit_seconds:g} s)", file=sys.stderr)
            break
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    return latencies, cpu, len(latencies)


def soak(args: argparse.Namespace, workdir: Path, redis: RedisServerProcess,
         processes: list[ManagedProcess]) -> int:
    import socketio

    from cluster.devtools.haproxy_process import HAProxyProcess

    env = {"CLUSTER_SIGNING_SECRET": SECRET}
    nodes = [NodeProcess(APP, message_queue=redis.url, env=env, name=f"node{i + 1}",
                         log_path=workdir / f"node{i + 1}.log", cwd=str(Path.cwd()))
             for i in range(3)]
    processes[:0] = nodes
    for node in nodes:
        node.spawn()
    for node in nodes:
        node.wait_ready()
    proxy = HAProxyProcess(nodes, workdir=workdir / "haproxy", sticky=False,
                           max_connections_per_source=None, max_requests_per_source=None)
    processes.insert(0, proxy)
    proxy.start()
    proxy.wait_all_up(timeout=20)
    received = [0] * args.clients
    disconnects = [0] * args.clients
    clients = []
    for index in range(args.clients):
        client = socketio.Client(reconnection_delay=0.2, reconnection_delay_max=1)

        def count(_message: object, index: int = index) -> None:
            received[index] += 1

        def dropped(*_: object, index: int = index) -> None:
            disconnects[index] += 1

        def rejoin(client: socketio.Client = client) -> None:
            client.start_background_task(client.call, "join", "soak", timeout=10)

        client.on("room_message", count)
        client.on("disconnect", dropped)
        client.on("connect", rejoin)
        transports = ["polling"] if index % 2 == 0 else ["polling", "websocket"]
        client.connect(proxy.url, transports=transports, wait_timeout=10)
        clients.append(client)
    seconds = min(args.soak, 600.0)
    start = time.monotonic()
    sent = failed = 0
    killed = False
    while time.monotonic() - start < seconds:
        if args.kill_at and not killed and time.monotonic() - start >= args.kill_at:
            nodes[0].kill()
            killed = True
        client = clients[sent % len(clients)]
        try:
            client.call("to_room", {"room": "soak", "text": str(sent)}, timeout=5)
            sent += 1
        except Exception:  # the client is reconnecting: counted, not sent
            failed += 1
        time.sleep(args.interval)
    time.sleep(2.0)
    dropped_total = sum(disconnects)  # before the clients' own goodbyes
    for client in clients:
        client.disconnect()
    invalid = sum(node.log_text().count("Invalid session") for node in nodes)
    print(table(["seconds", "clients", "sent", "not sent", "received", "expected",
                 "disconnects", "Invalid session"],
                [[f"{seconds:g}", str(len(clients)), str(sent), str(failed),
                  str(sum(received)), str(sent * len(clients)), str(dropped_total),
                  str(invalid)]]))
    return 1 if invalid else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--limit-seconds", type=float, default=60.0,
                        help="time limit of each series (default 60)")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                        help="run the soak for SECONDS (at most 600) instead")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--kill-at", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.soak:
        workdir = Path(tempfile.mkdtemp(prefix="bench-forwarding-soak-"))
        redis = RedisServerProcess(workdir=workdir / "redis")
        started: list[ManagedProcess] = [redis]
        try:
            redis.start()
            return soak(args, workdir, redis, started)
        finally:
            stop_all(started, grace=5.0)
    workdir = Path(tempfile.mkdtemp(prefix="bench-forwarding-"))
    redis = RedisServerProcess(workdir=workdir / "redis")
    processes: list[ManagedProcess] = [redis]
    try:
        redis.start()
        env = {"CLUSTER_SIGNING_SECRET": SECRET}
        nodes = [NodeProcess(APP, message_queue=redis.url, env=env, name=name,
                             log_path=workdir / f"{name}.log", cwd=str(Path.cwd()))
                 for name in ("owner", "other")]
        processes[:0] = nodes
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_ready()
        owner, other = nodes
        time.sleep(1.5)  # a heartbeat or two: each node knows the other's address
        sid = open_session(owner.url)
        pids = [node.pid for node in nodes if node.pid is not None]
        rows = []
        results = {}
        for label, url in (("direct", owner.url), ("forwarded", other.url)):
            with requests.Session() as http:
                series(http, url, sid, args.warmup, pids, args.limit_seconds)
                latencies, cpu, done = series(http, url, sid, args.requests, pids,
                                              args.limit_seconds)
            results[label] = (percentile(latencies, 0.5), cpu / done)
            rows.append([label, str(done), f"{percentile(latencies, 0.5) * 1e3:.3f}",
                         f"{percentile(latencies, 0.99) * 1e3:.3f}",
                         f"{cpu / done * 1e6:.0f}"])
        print(table(["path", "requests", "p50 ms", "p99 ms", "node CPU us/request"], rows))
        (p50_d, cpu_d), (p50_f, cpu_f) = results["direct"], results["forwarded"]
        print(f"forwarded - direct: +{(p50_f - p50_d) * 1e3:.3f} ms p50, "
              f"+{(cpu_f - cpu_d) * 1e6:.0f} us node CPU per request "
              f"({p50_f / p50_d:.2f}x latency, {cpu_f / cpu_d:.2f}x CPU)")
    finally:
        stop_all(processes, grace=5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

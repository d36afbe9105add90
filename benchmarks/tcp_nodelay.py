"""TCP_NODELAY on vs off: latency of two back-to-back frames, and node CPU per message.

Starts two single nodes of ``tests.apps.chat_app`` (no Redis): one with
``--tcp-nodelay`` (the default), one with ``--no-tcp-nodelay``. For each:

(a) latency: ``to_sid`` to the client's own sid with an ack. The handler
    emits ``direct_message`` and then returns, so the node writes two small
    websocket frames back to back (the event, then the ack). With Nagle's
    algorithm the second frame waits until the client ACKs the first, and
    the client delays that ACK (~40 ms on Linux). Timed until both arrived,
    over a bounded number of sequential round trips. The ``context`` event
    (one frame back: the ack only) is measured the same way as a control:
    Nagle does not delay a lone frame.
(b) CPU: a bounded burst of ``to_sid`` requests, pipelined (a window of
    requests in flight), with the node's utime+stime from /proc/PID/stat
    read before and after; printed per 1,000 requests (each request is one
    frame in and two frames out).

The client is a raw websocket on a blocking socket with TCP_NODELAY always
on, so only the node's setting differs. Prints a table and the ratios
nodelay / no-nodelay. Everything binds to 127.0.0.1; the nodes are stopped
by PID. Run from the repository root::

    .venv/bin/python -m benchmarks.tcp_nodelay [--iterations 200] [--burst 5000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

from cluster.devtools.processes import NodeProcess, stop_all

from ._common import (
    BenchmarkError,
    RawSocketIOClient,
    cpu_seconds,
    parse_message,
    percentile,
    ratio,
    repo_root,
    table,
)

# the burst pipelines thousands of requests on one connection: far past the
# node's default per-connection rate limit, which is not what is measured
NO_RATE_LIMIT = ["--max-events-per-second", "0"]
APP = "tests.apps.chat_app:socketio"
HOST = "127.0.0.1"


@dataclass
class Result:
    label: str
    two_frames_ms: list[float] = field(default_factory=list)
    one_frame_ms: list[float] = field(default_factory=list)
    burst: int = 0
    burst_seconds: float = 0.0
    burst_cpu: float = 0.0


def round_trip_two_frames(client: RawSocketIOClient, text: str) -> float:
    """Seconds from sending ``to_sid`` (to self) until the event and the ack both arrived."""
    start = time.perf_counter()
    ack_id = client.emit("to_sid", {"sid": client.sid, "text": text})
    got_event = got_ack = False
    while not (got_event and got_ack):
        kind, key, args = parse_message(client.recv())
        if kind == "event" and key == "direct_message" and args[0]["text"] == text:
            got_event = True
        elif kind == "ack" and key == ack_id:
            got_ack = True
    return time.perf_counter() - start


def round_trip_one_frame(client: RawSocketIOClient) -> float:
    """Seconds from sending ``context`` until its ack (one frame back) arrived."""
    start = time.perf_counter()
    ack_id = client.emit("context")
    while True:
        kind, key, _args = parse_message(client.recv())
        if kind == "ack" and key == ack_id:
            return time.perf_counter() - start


def burst(client: RawSocketIOClient, count: int, window: int, limit_seconds: float) -> int:
    """Pipelined ``to_sid`` requests; returns how many completed (event and ack in)."""
    sent = acks = events = 0
    deadline = time.monotonic() + limit_seconds
    while acks < count or events < count:
        while sent < count and sent - acks < window:
            client.emit("to_sid", {"sid": client.sid, "text": "b"})
            sent += 1
        kind, key, _args = parse_message(client.recv())
        if kind == "ack":
            acks += 1
        elif kind == "event" and key == "direct_message":
            events += 1
        if time.monotonic() > deadline:
            print(f"  burst stopped at its time limit ({limit_seconds:g} s)", file=sys.stderr)
            break
    return min(acks, events)


def measure(node: NodeProcess, label: str, args: argparse.Namespace) -> Result:
    result = Result(label)
    assert node.pid is not None
    with RawSocketIOClient(HOST, node.port, timeout=10.0) as client:
        for i in range(args.warmup):  # leave TCP's quick-ACK start and warm the code paths
            round_trip_two_frames(client, f"w{i}")
            round_trip_one_frame(client)
        limit = time.monotonic() + args.latency_seconds
        for i in range(args.iterations):
            result.two_frames_ms.append(round_trip_two_frames(client, str(i)) * 1000)
            result.one_frame_ms.append(round_trip_one_frame(client) * 1000)
            if time.monotonic() > limit:
                print(f"  {label}: latency loop stopped at its time limit after {i + 1} "
                      "iterations", file=sys.stderr)
                break
        cpu_before = cpu_seconds(node.pid)
        start = time.perf_counter()
        result.burst = burst(client, args.burst, args.window, args.burst_seconds)
        result.burst_seconds = time.perf_counter() - start
        result.burst_cpu = cpu_seconds(node.pid) - cpu_before
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tcp_nodelay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200,
                        help="sequential round trips per node and kind (default: 200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured round trips first")
    parser.add_argument("--latency-seconds", type=float, default=15.0,
                        help="time limit of each latency loop (default: 15)")
    parser.add_argument("--burst", type=int, default=5000,
                        help="requests in the CPU burst (default: 5000)")
    parser.add_argument("--window", type=int, default=32,
                        help="requests in flight during the burst (default: 32)")
    parser.add_argument("--burst-seconds", type=float, default=15.0,
                        help="time limit of each burst (default: 15)")
    args = parser.parse_args(argv)

    logdir = tempfile.mkdtemp(prefix="bench-nodelay-")
    nodes = {
        "nodelay": NodeProcess(APP, name="nodelay", extra_args=["--tcp-nodelay", *NO_RATE_LIMIT],
                               log_path=os.path.join(logdir, "nodelay.log"), cwd=repo_root()),
        "no-nodelay": NodeProcess(APP, name="no-nodelay",
                                  extra_args=["--no-tcp-nodelay", *NO_RATE_LIMIT],
                                  log_path=os.path.join(logdir, "no-nodelay.log"), cwd=repo_root()),
    }
    started = time.monotonic()
    results: dict[str, Result] = {}
    try:
        for node in nodes.values():
            node.spawn()
        for node in nodes.values():
            node.wait_ready()
        for label, node in nodes.items():
            print(f"measuring {label} (pid {node.pid}, port {node.port}) ...", flush=True)
            results[label] = measure(node, label, args)
    except BenchmarkError as exc:
        print(f"error: {exc}; node logs in {logdir}", file=sys.stderr)
        return 1
    finally:
        stop_all(list(nodes.values()))

    rows = []
    for label, r in results.items():
        per_k = r.burst_cpu / r.burst * 1000 * 1000 if r.burst else None
        rows.append([
            label,
            f"{percentile(r.two_frames_ms, 0.5):.3f}", f"{percentile(r.two_frames_ms, 0.99):.3f}",
            f"{percentile(r.one_frame_ms, 0.5):.3f}", f"{percentile(r.one_frame_ms, 0.99):.3f}",
            f"{r.burst}", f"{r.burst / r.burst_seconds:,.0f}" if r.burst_seconds else "n/a",
            f"{per_k:.1f}" if per_k is not None else "n/a",
        ])
    on, off = results["nodelay"], results["no-nodelay"]

    def cpu_per_k(r: Result) -> float | None:
        return r.burst_cpu / r.burst * 1000 if r.burst else None

    rows.append([
        "ratio nodelay/no-nodelay",
        ratio(percentile(on.two_frames_ms, 0.5), percentile(off.two_frames_ms, 0.5)),
        ratio(percentile(on.two_frames_ms, 0.99), percentile(off.two_frames_ms, 0.99)),
        ratio(percentile(on.one_frame_ms, 0.5), percentile(off.one_frame_ms, 0.5)),
        ratio(percentile(on.one_frame_ms, 0.99), percentile(off.one_frame_ms, 0.99)),
        "",
        ratio(on.burst / on.burst_seconds if on.burst_seconds else None,
              off.burst / off.burst_seconds if off.burst_seconds else None),
        ratio(cpu_per_k(on), cpu_per_k(off)),
    ])
    print()
    print(f"TCP_NODELAY benchmark: single node, websocket, {len(on.two_frames_ms)} round trips "
          f"per kind after {args.warmup} warm-up; burst of {args.burst} requests, "
          f"{args.window} in flight")
    print("latency in ms; 'event+ack' = to_sid to self (two frames back to back), "
          "'ack only' = context (one frame)")
    print(table(
        ["node", "event+ack p50", "event+ack p99", "ack only p50", "ack only p99",
         "burst done", "req/s", "node CPU ms/1k req"],
        rows,
    ))
    print(f"(total {time.monotonic() - started:.1f} s; node logs in {logdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

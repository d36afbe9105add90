"""How many idle websockets one node holds: 10,000 by default, against eventlet's 1,024.

Raises this process's open-file limit, starts one node of
``tests.apps.chat_app`` (no Redis), then opens ``--connections`` Socket.IO
connections from this one process as cheaply as possible: asyncio on raw
TCP sockets, a hand-written websocket upgrade to
``/socket.io/?EIO=4&transport=websocket``, the Engine.IO open packet, a
Socket.IO CONNECT (``40``) and its reply (``40{"sid":...}``). Each open
connection then has one small task that answers Engine.IO pings (``2`` ->
``3``) so the node keeps it. The connections are held for ``--hold``
seconds; then a fresh client must still connect and get an ack (``context``),
and the node's ``/metrics`` ``socketio_connections`` gauge is read. Node RSS
comes from /proc/PID/status (VmRSS).

The baseline runs the same count against a node started with
``--max-connections 1024``, eventlet's own default: it shows where opening
stalls (connection 1,025 is accepted by the kernel and then never answered),
bounded by ``--stall-seconds`` without progress.

Past one loopback address's ephemeral ports (about 28,000 here), the
connections come from several source addresses, 127.0.0.2, 127.0.0.3 and so
on (``--source-addresses``; all of 127.0.0.0/8 is this host's loopback), each
with its own port range. The open-file limit of this process (and so of the
node it starts) is raised here, the hard limit too when running as root.

While the connections are held, ``--probe-seconds`` apart, a fresh client
connects and asks for an ack (its time to the ack is the latency a new user
sees at that load) and ``/readyz`` is asked (its status and time).

Every load is bounded (count, per-phase time limits); everything binds to
127.0.0.0/8; the nodes are stopped by PID. Run from the repository root::

    .venv/bin/python -m benchmarks.many_websockets [--connections 10000] [--hold 30]
    .venv/bin/python -m benchmarks.many_websockets --connections 100000 \
        --skip-baseline --async-mode gevent --open-seconds 600
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from cluster.devtools.processes import NodeProcess

from ._common import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    BenchmarkError,
    RawSocketIOClient,
    check_handshake_response,
    encode_frame,
    handshake_request,
    metrics_gauge,
    open_fds,
    parse_frame_header,
    parse_message,
    repo_root,
    rss_kib,
)

APP = "tests.apps.chat_app:socketio"
HOST = "127.0.0.1"
FD_MARGIN = 1024  # descriptors this process (and its node) need besides the connections


# -- one connection -------------------------------------------------------------

async def read_message(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """The next websocket text message; control frames are handled on the way."""
    while True:
        opcode, masked, length, _fin = parse_frame_header(await reader.readexactly(2))
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await reader.readexactly(8))[0]
        mask = await reader.readexactly(4) if masked else b""
        payload = await reader.readexactly(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if opcode == OP_PING:
            writer.write(encode_frame(payload.decode(errors="replace"), OP_PONG))
            continue
        if opcode == OP_CLOSE:
            raise ConnectionResetError("websocket close frame from the node")
        if opcode != OP_TEXT:
            continue
        return payload.decode()


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sid: str
    keepalive: asyncio.Task[None] | None = None
    dropped: str | None = None


def source_address(index: int, count: int) -> str | None:
    """The loopback address connection ``index`` comes from (``None``: the
    kernel's choice, 127.0.0.1, when ``count`` is 0)."""
    return f"127.0.0.{2 + index % count}" if count else None


async def open_connection(port: int, source: str | None = None) -> Connection:
    reader, writer = await asyncio.open_connection(
        HOST, port, local_addr=(source, 0) if source else None)
    try:
        writer.write(handshake_request(HOST, port))
        check_handshake_response(await reader.readuntil(b"\r\n\r\n"))
        opened = await read_message(reader, writer)
        if not opened.startswith("0"):
            raise BenchmarkError(f"expected the Engine.IO open packet, got {opened[:60]!r}")
        writer.write(encode_frame("40"))
        while True:
            message = await read_message(reader, writer)
            if message == "2":
                writer.write(encode_frame("3"))
            elif message.startswith("40"):
                return Connection(reader, writer, json.loads(message[2:] or "{}").get("sid", ""))
            elif message.startswith("44"):
                raise BenchmarkError(f"CONNECT refused: {message[:80]}")
    except BaseException:
        writer.transport.abort()
        raise


async def keep_alive(conn: Connection) -> None:
    """Answer Engine.IO pings until the connection ends; note why it ended."""
    try:
        while True:
            message = await read_message(conn.reader, conn.writer)
            if message == "2":
                conn.writer.write(encode_frame("3"))
            elif message.startswith("1"):
                conn.dropped = "engine.io close"
                return
    except asyncio.CancelledError:
        raise
    except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
        conn.dropped = type(exc).__name__


# -- one run --------------------------------------------------------------------

@dataclass
class RunResult:
    label: str
    target: int
    opened: int = 0
    failed: int = 0
    hung: int = 0
    not_attempted: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    open_seconds: float = 0.0
    time_to_1024: float | None = None
    stalled: bool = False
    alive_after_hold: int | None = None
    held_seconds: float = 0.0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    fresh_client: str = ""
    probes: list[str] = field(default_factory=list)
    gauge: float | None = None
    rss_idle_kib: int | None = None
    rss_kib: int | None = None
    node_fds: int | None = None
    node_fd_limit: str = ""


def node_fd_limit(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/limits") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return f"{soft}/{hard}"
    except OSError:
        pass
    return "?"


def readiness_check(port: int, timeout: float) -> str:
    """``/readyz``'s status and how long it took."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=timeout) as answer:
            status = answer.status
    except urllib.error.HTTPError as refused:
        status = refused.code
    except OSError as exc:
        return f"/readyz failed: {type(exc).__name__}"
    return f"/readyz {status} in {(time.perf_counter() - start) * 1000:.0f} ms"


def held_probe(port: int, timeout: float) -> str:
    """A fresh client's ack and ``/readyz``, while the connections are held."""
    return f"{fresh_client_check(port, timeout)}; {readiness_check(port, timeout)}"


def fresh_client_check(port: int, timeout: float) -> str:
    """Connect a new client, ask for an ack; a short description of what happened."""
    start = time.perf_counter()
    try:
        with RawSocketIOClient(HOST, port, timeout=timeout) as client:
            ack_id = client.emit("context")
            while True:
                kind, key, _args = parse_message(client.recv())
                if kind == "ack" and key == ack_id:
                    elapsed = (time.perf_counter() - start) * 1000
                    return f"connected and acked in {elapsed:.0f} ms (sid {client.sid})"
    except TimeoutError:
        return f"no answer within {timeout:g} s (hangs)"
    except (OSError, BenchmarkError) as exc:
        return f"failed: {type(exc).__name__}: {exc}"


async def open_many(port: int, result: RunResult, conns: list[Connection],
                    args: argparse.Namespace, stall_seconds: float) -> None:
    """Open ``result.target`` connections, ``args.concurrency`` at a time, bounded in time."""
    semaphore = asyncio.Semaphore(args.concurrency)
    attempted = 0
    sources = args.source_addresses
    last_progress = time.monotonic()
    start = time.monotonic()

    async def attempt(index: int) -> None:
        nonlocal attempted, last_progress
        async with semaphore:
            attempted += 1
            try:
                conn = await asyncio.wait_for(
                    open_connection(port, source_address(index, sources)), args.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - counted and reported
                result.failed += 1
                result.errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                last_progress = time.monotonic()
                return
            conn.keepalive = asyncio.create_task(keep_alive(conn))
            conns.append(conn)
            result.opened += 1
            if result.opened == 1024:
                result.time_to_1024 = time.monotonic() - start
            last_progress = time.monotonic()

    tasks = [asyncio.create_task(attempt(index)) for index in range(result.target)]
    deadline = start + args.open_seconds
    next_report = start + 5
    while True:
        done = sum(t.done() for t in tasks)
        now = time.monotonic()
        if done == len(tasks):
            break
        if now - last_progress > stall_seconds:
            result.stalled = True
            break
        if now > deadline:
            print(f"  open phase stopped at its time limit ({args.open_seconds:g} s)", flush=True)
            break
        if now >= next_report:
            print(f"  {now - start:5.1f} s: {result.opened} open, {result.failed} failed",
                  flush=True)
            next_report += 5
        await asyncio.sleep(0.2)
    result.open_seconds = (last_progress if result.stalled else time.monotonic()) - start
    in_flight = attempted - result.opened - result.failed
    result.hung = max(0, in_flight)
    result.not_attempted = result.target - attempted
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def close_all(conns: list[Connection]) -> None:
    for conn in conns:
        if conn.keepalive is not None:
            conn.keepalive.cancel()
        conn.writer.transport.abort()
    await asyncio.gather(*(c.keepalive for c in conns if c.keepalive), return_exceptions=True)


async def run_one(label: str, extra_args: list[str], args: argparse.Namespace, logdir: str,
                  *, hold: float, stall_seconds: float, probe_timeout: float) -> RunResult:
    result = RunResult(label, args.connections)
    node = NodeProcess(args.app, name=label, extra_args=extra_args, cwd=repo_root(),
                       log_path=os.path.join(logdir, f"{label}.log"))
    conns: list[Connection] = []
    try:
        await asyncio.to_thread(node.start)
        assert node.pid is not None
        result.node_fd_limit = node_fd_limit(node.pid)
        result.rss_idle_kib = rss_kib(node.pid)
        print(f"{label}: node pid {node.pid} port {node.port} (open files "
              f"{result.node_fd_limit}), opening {args.connections} connections ...", flush=True)
        await open_many(node.port, result, conns, args, stall_seconds)
        print(f"  opened {result.opened}, failed {result.failed}, in {result.open_seconds:.1f} s"
              + (f"; stalled (no progress for {stall_seconds:g} s)" if result.stalled else ""),
              flush=True)
        if hold > 0 and conns:
            print(f"  holding {len(conns)} connections for {hold:g} s ...", flush=True)
            started = time.monotonic()
            while time.monotonic() - started < hold:
                await asyncio.sleep(min(args.probe_seconds, max(0.0, hold - (
                    time.monotonic() - started))))
                if time.monotonic() - started >= hold:
                    break
                probe = await asyncio.to_thread(held_probe, node.port, probe_timeout)
                result.probes.append(probe)
                print(f"    {time.monotonic() - started:5.1f} s: {probe}", flush=True)
            result.held_seconds = time.monotonic() - started
        result.alive_after_hold = sum(1 for c in conns if c.dropped is None)
        result.drops.update(c.dropped for c in conns if c.dropped is not None)
        result.rss_kib = rss_kib(node.pid)
        result.node_fds = open_fds(node.pid)
        # blocking probes run in a thread: the loop keeps answering pings meanwhile;
        # the gauge first, so that it counts the held connections only
        result.gauge = await asyncio.to_thread(metrics_gauge, HOST, node.port,
                                               "socketio_connections", probe_timeout)
        result.fresh_client = await asyncio.to_thread(fresh_client_check, node.port, probe_timeout)
    finally:
        await close_all(conns)
        await asyncio.to_thread(node.stop, 10.0)
    return result


def raise_own_fd_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's open-file limit to ``wanted`` (the node started
    from here inherits it): the soft limit up to the hard one, and the hard
    one too where allowed (root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError):
            pass  # not root: the hard limit stays
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY or hard < wanted else max(soft, wanted)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def kib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1024:,.1f} MiB"


def report(r: RunResult) -> None:
    print(f"\n== {r.label} ==")
    print(f"  connections opened:      {r.opened} of {r.target}")
    top_errors = ", ".join(f"{k} x{v}" for k, v in r.errors.most_common(3))
    print(f"  failed:                  {r.failed}"
          + (f"  ({top_errors})" if r.errors else ""))
    if r.stalled or r.hung or r.not_attempted:
        print(f"  stalled:                 {'yes' if r.stalled else 'no'}; {r.hung} hung in the "
              f"handshake, {r.not_attempted} not attempted")
    rate = f"{r.opened / r.open_seconds:,.0f}/s" if r.open_seconds else "n/a"
    print(f"  time to open:            {r.open_seconds:.1f} s ({rate})"
          + (f"; first 1,024 in {r.time_to_1024:.1f} s" if r.time_to_1024 else ""))
    if r.held_seconds:
        print(f"  held for:                {r.held_seconds:.1f} s; still open after: "
              f"{r.alive_after_hold}" + (f"  (dropped: {dict(r.drops)})" if r.drops else ""))
    print(f"  node RSS:                {kib(r.rss_kib)} (idle before: {kib(r.rss_idle_kib)}"
          + (f"; {(r.rss_kib - r.rss_idle_kib) / max(1, r.opened):.1f} KiB per connection)"
             if r.rss_kib and r.rss_idle_kib else ")"))
    print(f"  node open files:         {r.node_fds} (limit soft/hard {r.node_fd_limit})")
    print(f"  /metrics socketio_connections: "
          f"{'no answer' if r.gauge is None else f'{r.gauge:.0f}'}")
    for probe in r.probes:
        print(f"  while held:              {probe}")
    print(f"  fresh client:            {r.fresh_client}")


async def amain(args: argparse.Namespace) -> int:
    logdir = tempfile.mkdtemp(prefix="bench-many-ws-")
    print(f"app: {args.app}")
    results = []
    started = time.monotonic()
    runtime_args = ["--async-mode", args.async_mode] if args.async_mode else []
    if not args.skip_main:
        results.append(await run_one(
            "default", [*runtime_args, "--max-connections", str(args.connections + 1024)],
            args, logdir, hold=args.hold, stall_seconds=args.stall_seconds,
            probe_timeout=10.0))
    if not args.skip_baseline:
        results.append(await run_one(
            "max-connections-1024", [*runtime_args, "--max-connections", "1024"], args, logdir,
            hold=0,
            stall_seconds=args.baseline_stall_seconds, probe_timeout=3.0))
    for r in results:
        report(r)
    if len(results) == 2:
        main_r, base = results
        print(f"\nratio default/baseline, connections opened: "
              f"{main_r.opened}/{base.opened} = {main_r.opened / max(1, base.opened):.2f}")
    print(f"(total {time.monotonic() - started:.1f} s; node logs in {logdir})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.many_websockets",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000,
                        help="websocket connections to open (default: 10000)")
    parser.add_argument("--app", default=APP, metavar="MODULE:ATTR",
                        help=f"the application the nodes serve (default: {APP}; "
                             "benchmarks.idle_app:socketio has an O(1) connect handler)")
    parser.add_argument("--hold", type=float, default=30.0,
                        help="seconds to hold them open (default: 30)")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="handshakes in flight at once (default: 200)")
    parser.add_argument("--connect-timeout", type=float, default=30.0,
                        help="limit of one connection's handshake (default: 30 s)")
    parser.add_argument("--open-seconds", type=float, default=90.0,
                        help="limit of the whole open phase (default: 90 s)")
    parser.add_argument("--stall-seconds", type=float, default=15.0,
                        help="stop opening after this long without progress (default: 15 s)")
    parser.add_argument("--baseline-stall-seconds", type=float, default=5.0,
                        help="the same for the 1,024 baseline (default: 5 s)")
    parser.add_argument("--source-addresses", type=int, default=None, metavar="N",
                        help="loopback source addresses (127.0.0.2 ...) to spread the "
                             "connections over (default: one per 25,000 connections past "
                             "the first 25,000, else 0: 127.0.0.1 only)")
    parser.add_argument("--async-mode", choices=("eventlet", "gevent"), default=None,
                        help="the node's runtime (default: the node's own default)")
    parser.add_argument("--probe-seconds", type=float, default=10.0,
                        help="while holding, a fresh client's ack and /readyz this often "
                             "(default: 10 s)")
    parser.add_argument("--skip-baseline", action="store_true", help="run only the default node")
    parser.add_argument("--skip-main", action="store_true", help="run only the 1,024 baseline")
    args = parser.parse_args(argv)
    if args.source_addresses is None:
        args.source_addresses = 0 if args.connections <= 25_000 else -(-args.connections // 25_000)

    soft, hard = raise_own_fd_limit(args.connections + FD_MARGIN)
    print(f"open-file limit of this process: soft {soft}, hard {hard}")
    if soft < args.connections + FD_MARGIN:
        usable = max(0, soft - FD_MARGIN)
        print(f"cannot open {args.connections} connections from this process: its hard "
              f"open-file limit is {hard} (ulimit -Hn); one connection is one descriptor and "
              f"{FD_MARGIN} are kept for the rest. Using {usable}. Raise the hard limit "
              "(ulimit -Hn, /etc/security/limits.conf, systemd LimitNOFILE) to go further.")
        args.connections = usable
    with open("/proc/sys/net/ipv4/ip_local_port_range") as port_range:
        low, high = (int(x) for x in port_range.read().split())
    if args.connections > (high - low + 1) * max(1, args.source_addresses):
        print(f"note: only {high - low + 1} ephemeral ports ({low}-{high}) for connections to "
              "one 127.0.0.1 port; opening more will fail with EADDRNOTAVAIL")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

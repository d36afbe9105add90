"""Fan-out against the peers: this project, Flask-SocketIO 5.7 and Node socket.io 4.8.

One command starts a private ``redis-server``, then N nodes of each target
on it, then the official ``socket.io-client`` under Node
(``benchmarks/node/loadgen.mjs``), and measures, targets interleaved round
by round (A B C A B C):

- the publish-rate ladder: clients in one room, publishers on every node,
  increasing rates until p99 or loss exceeds its limit; the highest step that
  passed is the max sustained delivered/s; then a step at half that rate
  (p50/p99); node CPU per delivery from /proc;
- the same ladder with clients offering permessage-deflate;
- idle memory per websocket on one node (at 2,000 and 10,000);
- Celery-to-client latency (this project; a real worker) and Emitter latency;
- the time until a client resumes on another node after its node is SIGKILLed.

It writes ``benchmarks/results/latest.json``, ``latest.md`` and
``fanout.png`` (``--quick``: ``quick.*``, a smoke run whose figures mean
nothing). Everything binds to 127.0.0.1, every load is bounded in count and
time, and everything started is stopped by PID, on errors and Ctrl-C too.
Run from the repository root::

    .venv/bin/python -m benchmarks.fanout            # ~20-25 min
    .venv/bin/python -m benchmarks.fanout --quick    # ~1.5-2 min, every path once
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .suite import report, targets
from .suite.measures import (
    LadderSettings,
    measure_celery,
    measure_failover,
    measure_memory,
    run_ladder,
    rung_rates,
)
from .suite.procs import (
    Proc,
    Procs,
    raise_fd_limit,
    redis_command,
    start_redis,
    stop_on_sigterm_like_ctrl_c,
)

RESULTS = targets.ROOT / "benchmarks" / "results"
MEASUREMENTS = ("ladder", "deflate", "memory", "celery", "failover")
# a --quick run: small, short, one round, every target and every measurement once
# (one rung and the half-load step per ladder: the climb itself is the same loop)
QUICK: dict[str, Any] = {
    "rounds": 1, "scenarios": "2x40,3x40", "ladder_start": 3000.0, "ladder_max": 3000.0,
    "deflate_start": 2000.0, "deflate_max": 2000.0, "step_seconds": 1.0, "warmup_seconds": 0.25,
    "drain_seconds": 0.5, "memory_counts": "200,500", "memory_settle_seconds": 0.5,
    "celery_clients": 10, "celery_messages": 20, "celery_rate": 40.0, "failover_subjects": 6,
    "failover_tail_seconds": 0.5, "out": str(RESULTS / "quick"),
    "plot": str(RESULTS / "quick-fanout.png"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: every target and measurement once, small and short "
                        "(~1.5-2 min)")
    p.add_argument("--targets", default=",".join(targets.TARGETS),
                   help=f"comma-separated, in the order they interleave (default: all: "
                        f"{','.join(targets.TARGETS)})")
    p.add_argument("--skip", default="",
                   help=f"measurements to leave out: {','.join(MEASUREMENTS)}")
    p.add_argument("--rounds", type=int, default=2,
                   help="ladder rounds over the targets (default 2)")
    p.add_argument("--scenarios", default="2x200,3x1000",
                   help="NODESxCLIENTS, clients in total over the nodes (default 2x200,3x1000)")
    p.add_argument("--ladder-start", type=float, default=20_000, help="first rung, deliveries/s")
    p.add_argument("--ladder-factor", type=float, default=1.25, help="rung to rung (default 1.25)")
    p.add_argument("--ladder-max", type=float, default=200_000, help="last rung, deliveries/s")
    p.add_argument("--deflate-scenario", default=None,
                   help="scenario of the permessage-deflate ladder (default: the first)")
    p.add_argument("--deflate-start", type=float, default=5_000)
    p.add_argument("--deflate-factor", type=float, default=1.5)
    p.add_argument("--deflate-max", type=float, default=200_000)
    p.add_argument("--deflate-rounds", type=int, default=1,
                   help="rounds that include the deflate ladder (default 1: the first)")
    p.add_argument("--step-seconds", type=float, default=5.0, help="measured window per step")
    p.add_argument("--warmup-seconds", type=float, default=1.0,
                   help="publishing before each window")
    p.add_argument("--drain-seconds", type=float, default=2.0,
                   help="how long late deliveries still count after a window")
    p.add_argument("--max-p99-ms", type=float, default=250.0, help="a step passes below this p99")
    p.add_argument("--max-loss", type=float, default=0.001, help="...and this loss fraction")
    p.add_argument("--publishers", type=int, default=0,
                   help="publishing clients in a ladder (default 0: one per node; 1: every "
                        "publish enters through the first node, as from an admin console)")
    p.add_argument("--memory-counts", default="2000,10000", help="idle websockets on one node")
    p.add_argument("--memory-settle-seconds", type=float, default=2.0,
                   help="wait after opening, before reading RSS")
    p.add_argument("--celery-clients", type=int, default=20)
    p.add_argument("--celery-messages", type=int, default=100)
    p.add_argument("--celery-rate", type=float, default=20.0, help="tasks per second")
    p.add_argument("--failover-subjects", type=int, default=20,
                   help="clients behind HAProxy during the SIGKILL")
    p.add_argument("--failover-rate", type=float, default=50.0, help="room messages per second")
    p.add_argument("--failover-tail-seconds", type=float, default=1.5,
                   help="publishing after every client resumed (late duplicates, replays)")
    p.add_argument("--reconnect-delay-ms", type=float, default=100.0,
                   help="the client's reconnectionDelay (its default is 1000 ± 50%%)")
    p.add_argument("--out", default=str(RESULTS / "latest"), help="prefix of the .json and .md")
    p.add_argument("--plot", default=str(RESULTS / "fanout.png"))
    p.add_argument("--logdir", default=None, help="process logs (default: a temporary directory)")
    pre, _ = p.parse_known_args(argv)
    if pre.quick:
        p.set_defaults(**QUICK)
    return p.parse_args(argv)


def scenario(text: str) -> tuple[int, int]:
    nodes, clients = text.lower().split("x")
    return int(nodes), int(clients)


def estimate(args: argparse.Namespace, keys: list[str], skip: set[str]) -> tuple[float, float]:
    """(typical, worst) seconds: worst if every rung passes, typical if ~60% do."""
    step = args.warmup_seconds + args.step_seconds + 0.5
    rungs = len(rung_rates(args.ladder_start, args.ladder_factor, args.ladder_max))
    drungs = len(rung_rates(args.deflate_start, args.deflate_factor, args.deflate_max))

    def steps(n: int, typical: bool) -> float:  # the climb, its failed step, the half step
        return (min(n, round(0.6 * n) + 1) if typical else n) + 1

    typical = worst = 0.0
    for rnd in range(1, args.rounds + 1):
        for key in keys:
            start = 1.0 if key == "node" else 3.0
            for s in args.scenario_list:
                connect = 1 + scenario(s)[1] / 300
                typical += start + connect + steps(rungs, True) * step
                worst += start + connect + steps(rungs, False) * step + args.drain_seconds
            if ("deflate" not in skip and targets.TARGETS[key].deflate
                    and rnd <= args.deflate_rounds):
                typical += steps(drungs, True) * step
                worst += steps(drungs, False) * step
    extra = 0.0
    if "memory" not in skip:
        extra += sum(4 + max(args.memory_count_list) / 500 for k in keys
                     if targets.TARGETS[k].memory)
    if "failover" not in skip:
        extra += 7 * sum(1 for k in keys if targets.TARGETS[k].failover)
    if "celery" not in skip and any(targets.TARGETS[k].celery for k in keys):
        extra += 10 + 2 * args.celery_messages / args.celery_rate
    return typical + extra, worst + extra


def guarded(results: dict[str, Any], what: str, fn: Callable[..., Any], *args: Any,
            **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``: one measurement; a failure is recorded and the run goes on."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported in the results, the suite continues
        message = f"{type(exc).__name__}: {exc}"
        print(f"  !! {what} failed: {message[:2000]}", flush=True)
        results["errors"].append({"what": what, "error": message[:4000],
                                  "traceback": traceback.format_exc()[-4000:]})
        return None


def ladders_of_target(procs: Procs, results: dict[str, Any], args: argparse.Namespace,
                      key: str, rnd: int, redis: Proc, redis_url: str, skip: set[str]) -> None:
    """One target's ladders of one round: start its nodes, add nodes as the scenarios need."""
    target = targets.TARGETS[key]
    settings = LadderSettings(step_s=args.step_seconds, warmup_s=args.warmup_seconds,
                              drain_s=args.drain_seconds, max_p99_ms=args.max_p99_ms,
                              max_loss=args.max_loss, publishers=args.publishers)
    jobs = [(s, False) for s in args.scenario_list] if "ladder" not in skip else []
    if "deflate" not in skip and target.deflate and rnd <= args.deflate_rounds:
        jobs.append((args.deflate_scenario, True))
    jobs.sort(key=lambda job: scenario(job[0])[0])  # stable: a scenario's plain run first
    nodes: list[Proc] = []
    try:
        for name, deflate in jobs:
            count, clients = scenario(name)
            label = f"{key} {name}{' deflate' if deflate else ''}"
            if len(nodes) < count:
                nodes += targets.start_nodes(procs, target, count - len(nodes), redis_url)
            if deflate:
                rungs = rung_rates(args.deflate_start, args.deflate_factor, args.deflate_max)
            else:
                rungs = rung_rates(args.ladder_start, args.ladder_factor, args.ladder_max)
            run = guarded(results, f"round {rnd} {label}", run_ladder, procs, nodes, redis,
                          clients, rungs, settings, deflate=deflate, label=label)
            entry = {"round": rnd, "target": key,
                     "scenario": f"{name}+deflate" if deflate else name}
            results["ladders"].append({**entry, **run} if run else {**entry, "error": "failed"})
            if run is None or not all(n.running() for n in nodes):
                break  # a node died: this target's other scenarios would measure nothing
    finally:
        procs.stop(nodes)
        redis_command(redis_url, "FLUSHALL")


def run(args: argparse.Namespace) -> int:
    keys = [k.strip() for k in args.targets.split(",") if k.strip()]
    unknown = [k for k in keys if k not in targets.TARGETS]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown or skip - set(MEASUREMENTS):
        print(f"unknown target or measurement: {unknown or sorted(skip - set(MEASUREMENTS))}")
        return 2
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.deflate_scenario = args.deflate_scenario or args.scenario_list[0]
    args.memory_count_list = [int(c) for c in args.memory_counts.split(",") if c.strip()]
    typical, worst = estimate(args, keys, skip)
    print(f"fan-out benchmark: targets {', '.join(keys)}; {args.rounds} round(s); scenarios "
          f"{', '.join(args.scenario_list)}; estimated {typical / 60:.1f} min "
          f"(at most ~{worst / 60:.1f} min)", flush=True)

    targets.ensure_node_modules()
    if "flask-socketio" in keys:
        targets.ensure_python_bench()
    soft, hard = raise_fd_limit(max(args.memory_count_list, default=0) + 2048)
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="bench-fanout-"))
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick, "machine": report.machine(), "versions": report.versions(),
        "settings": {"targets": keys, "rounds": args.rounds, "scenarios": args.scenario_list,
                     "deflate_scenario": f"{args.deflate_scenario}+deflate",
                     "memory_counts": args.memory_count_list,
                     "memory_counts_label": [f"{c:,}" for c in args.memory_count_list],
                     "max_p99_ms": args.max_p99_ms, "max_loss": args.max_loss,
                     "step_s": args.step_seconds, "warmup_s": args.warmup_seconds,
                     "drain_s": args.drain_seconds, "open_files": [soft, hard],
                     "argv": sys.argv[1:]},
        "ladders": [], "memory": {}, "failover": {}, "celery": None, "errors": [],
        "elapsed_s": 0.0,
    }
    print(f"logs in {logdir}; open files {soft}/{hard}", flush=True)
    started = time.monotonic()
    status = 0
    try:
        with Procs(logdir) as procs:
            redis, redis_url = start_redis(procs)
            for rnd in range(1, args.rounds + 1):
                for key in keys:
                    print(f"[{(time.monotonic() - started) / 60:4.1f} min] round {rnd}: {key}",
                          flush=True)
                    guarded(results, f"round {rnd} {key}", ladders_of_target, procs, results,
                            args, key, rnd, redis, redis_url, skip)
            for key in keys:
                t = targets.TARGETS[key]
                if "memory" not in skip and t.memory:
                    print(f"[{(time.monotonic() - started) / 60:4.1f} min] memory: {key}",
                          flush=True)
                    mem = guarded(results, f"memory {key}", measure_memory, procs, t, redis_url,
                                  args.memory_count_list, settle_s=args.memory_settle_seconds)
                    if mem:
                        results["memory"][key] = mem
                if "failover" not in skip and t.failover:
                    print(f"[{(time.monotonic() - started) / 60:4.1f} min] failover: {key}",
                          flush=True)
                    fo = guarded(results, f"failover {key}", measure_failover, procs, t,
                                 redis_url, args.failover_subjects, args.failover_rate,
                                 args.reconnect_delay_ms, tail_s=args.failover_tail_seconds)
                    if fo:
                        results["failover"][key] = fo
                redis_command(redis_url, "FLUSHALL")
            if "celery" not in skip and any(targets.TARGETS[k].celery for k in keys):
                print(f"[{(time.monotonic() - started) / 60:4.1f} min] celery", flush=True)
                results["celery"] = guarded(results, "celery", measure_celery, procs, redis_url,
                                            args.celery_clients, args.celery_messages,
                                            args.celery_rate)
    except KeyboardInterrupt:
        print("interrupted: everything started is stopped; writing what was measured", flush=True)
        results["errors"].append({"what": "run", "error": "interrupted"})
        status = 130
    finally:
        results["elapsed_s"] = time.monotonic() - started
        paths = report.write(results, Path(args.out), Path(args.plot))
    print()
    print(Path(args.out).with_suffix(".md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths) + f" ({results['elapsed_s'] / 60:.1f} min)")
    return status or (1 if results["errors"] else 0)


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm_like_ctrl_c()
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

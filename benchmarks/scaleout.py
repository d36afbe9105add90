"""Scale-out, "uninvolved cost": the CPU a node spends on emits to a room it has no member of.

One command starts a private ``redis-server``, then, target by target and
round by round (A B C A B C), three nodes of the target on it, one room's
receivers and its publisher on node 0 (``benchmarks/node/scaleout_loadgen.mjs``,
the official ``socket.io-client``), nodes 1 and 2 with no client. The
publisher sends at a low rate, then at a high rate; per emit, the CPU of each
node and of Redis is the slope between the two windows (see
:mod:`benchmarks.suite.scaleout_measure`). Targets:

- ``cluster``: this project's node, ``python -m cluster node --app benchmarks.fanout_app:socketio``;
- ``node``: Node socket.io 4.8 + ``@socket.io/redis-adapter`` (one channel), ``server.mjs``;
- ``node-sharded``: the same with ``createShardedAdapter``, ``subscriptionMode: "dynamic"``
  (Redis 7 sharded pub/sub), ``scaleout_server.mjs``;
- ``flask-socketio`` (not by default): Flask-SocketIO 5.7 + RedisManager.

It writes ``benchmarks/results/scaleout.md`` and ``.json`` (``--quick``:
``quick-scaleout.*``, a smoke run whose figures mean nothing). Everything
binds to 127.0.0.1, every phase has a timeout, and everything started is
stopped by PID, on errors and Ctrl-C too. Run from the repository root::

    .venv/bin/python -m benchmarks.scaleout              # ~2 min per round of 3 targets
    .venv/bin/python -m benchmarks.scaleout --quick      # < 1 min, every path once
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .suite import report, targets
from .suite.procs import Procs, redis_command, start_redis
from .suite.scaleout_measure import (
    DEFAULT_TARGETS,
    NODES,
    SCALEOUT_TARGETS,
    ScaleoutSettings,
    measure_target,
)
from .suite.scaleout_report import markdown

RESULTS = targets.ROOT / "benchmarks" / "results"
# a --quick run: one round, short windows, a lower high rate; every target and path once
QUICK: dict[str, Any] = {"rounds": 1, "high_rate": 300.0, "window_seconds": 2.0,
                         "warmup_seconds": 0.5, "drain_seconds": 1.0, "settle_seconds": 0.3,
                         "out": str(RESULTS / "quick-scaleout")}
# starting three nodes, connecting, stopping: seconds per target and round, roughly
OVERHEAD_S = 8.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one round, 2 s windows, 300 msgs/s (< 1 min)")
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
    p.add_argument("--out", default=str(RESULTS / "scaleout"), help="prefix of the .json and .md")
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


def estimate_s(s: ScaleoutSettings, rounds: int, count: int) -> float:
    per_target = OVERHEAD_S + s.settle_s + 2 * (s.warmup_s + s.window_s) + s.drain_s
    return rounds * count * per_target


def measure_round(procs: Procs, results: dict[str, Any], key: str, rnd: int, redis_url: str,
                  settings: ScaleoutSettings) -> None:
    """One target in one round; a failure is recorded and the run goes on."""
    entry: dict[str, Any] = {"round": rnd, "target": key}
    try:
        entry.update(measure_target(procs, SCALEOUT_TARGETS[key], redis_url, settings,
                                    label=f"round {rnd} {key}"))
    except Exception as exc:  # noqa: BLE001 - recorded in the results, the run goes on
        message = f"{type(exc).__name__}: {exc}"
        print(f"  !! round {rnd} {key} failed: {message[:2000]}", flush=True)
        results["errors"].append({"what": f"round {rnd} {key}", "error": message[:4000],
                                  "traceback": traceback.format_exc()[-4000:]})
        entry["error"] = message[:500]
    finally:
        # the next target starts on an empty Redis (sessions, presence, leases)
        redis_command(redis_url, "FLUSHALL")
    results["runs"].append(entry)


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
    settings = settings_of(args)
    print(f"scale-out (uninvolved cost): targets {', '.join(keys)}; {args.rounds} round(s); "
          f"{settings.low_rate:g} then {settings.high_rate:g} msgs/s, "
          f"{settings.window_s:g} s windows; estimated "
          f"{estimate_s(settings, args.rounds, len(keys)) / 60:.1f} min", flush=True)
    targets.ensure_node_modules()
    if "flask-socketio" in keys:
        targets.ensure_python_bench()
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="bench-scaleout-"))
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick, "machine": report.machine(), "versions": report.versions(),
        "settings": {"targets": keys, "rounds": args.rounds, "nodes": NODES,
                     "receivers": settings.receivers, "low_rate": settings.low_rate,
                     "high_rate": settings.high_rate, "window_s": settings.window_s,
                     "warmup_s": settings.warmup_s, "drain_s": settings.drain_s,
                     "argv": sys.argv[1:]},
        "runs": [], "errors": [], "elapsed_s": 0.0,
    }
    print(f"logs in {logdir}", flush=True)
    started = time.monotonic()
    status = 0
    try:
        with Procs(logdir) as procs:
            _, redis_url = start_redis(procs)
            for rnd in range(1, args.rounds + 1):
                for key in keys:
                    print(f"[{(time.monotonic() - started) / 60:4.1f} min] round {rnd}: {key}",
                          flush=True)
                    measure_round(procs, results, key, rnd, redis_url, settings)
    except KeyboardInterrupt:
        print("interrupted: everything started is stopped; writing what was measured", flush=True)
        results["errors"].append({"what": "run", "error": "interrupted"})
        status = 130
    finally:
        results["elapsed_s"] = time.monotonic() - started
        results["resolution_us"] = max((r["resolution_us"] for r in results["runs"]
                                        if "resolution_us" in r), default=0.0)
        paths = write(results, Path(args.out))
    print()
    print(Path(args.out).with_suffix(".md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths) + f" ({results['elapsed_s'] / 60:.1f} min)")
    return status or (1 if results["errors"] else 0)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM ends the run the way Ctrl-C does, so the finally blocks stop the children
    signal.signal(signal.SIGTERM, _interrupt)
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

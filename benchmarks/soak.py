"""Soak: minutes of chat traffic on a cluster that is restarted under it.

One command starts a private ``redis-server`` (free port, nothing on disk),
3 nodes of this project running ``tests/apps/chat_app.py`` with connection
state recovery on (``--recovery-window 120``), HAProxy in front (the
project's config: cookie stickiness, ``/readyz`` checks, redispatch), and the
official ``socket.io-client`` under Node (``benchmarks/node/soak.mjs``), all
through the balancer:

- long-lived listeners in a few rooms, counting every room message by id;
- senders emitting room messages at a bounded total rate, each acked;
- churn loops that connect, join, send, wait for their echo, disconnect.

Meanwhile, every ``--restart-every`` seconds (120) a rolling restart (each
node in turn: SIGTERM, it drains, started again on its port, ready, UP in
HAProxy), and once a Redis restart (SIGKILL, down ``--redis-down-seconds``,
started again empty). Every ``--sample-every`` seconds (5) each node's VmRSS
and ``/metrics`` connections are sampled, following a node to its new PID.

At the end: messages sent, delivered, missed (steady / around node restarts /
around the Redis restart, where the recovery stream is lost with Redis),
duplicates, per-listener figures, churn, and memory per node incarnation.
Written to ``benchmarks/results/soak.json``, ``soak.md`` and ``soak.png``
(``--quick``: ``soak.quick.*``). Everything binds to 127.0.0.1, every wait
has a timeout, and everything started is stopped by PID, on errors, Ctrl-C
and SIGTERM too. Run from the repository root::

    .venv/bin/python -m benchmarks.soak            # 10 min of traffic, ~11 min in all
    .venv/bin/python -m benchmarks.soak --quick    # ~70 s of traffic, every phase once
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .suite import report, soak_report, targets
from .suite.procs import Procs, raise_fd_limit
from .suite.soak_cluster import Sampler, SoakCluster
from .suite.soak_traffic import SoakTraffic, TrafficSettings

RESULTS = targets.ROOT / "benchmarks" / "results"
# --quick: one rolling restart early, the Redis restart once it is over, ~70 s in all
QUICK: dict[str, Any] = {"minutes": 70 / 60, "first_restart": 8.0, "restart_every": 1e9,
                         "redis_restart_at": 45.0, "listeners": 24, "churners": 2,
                         "out": str(RESULTS / "soak.quick")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = TrafficSettings()
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: ~70 s of traffic, one rolling restart, one Redis restart")
    p.add_argument("--minutes", type=float, default=10.0, help="traffic duration (default 10)")
    p.add_argument("--nodes", type=int, default=3, help="nodes behind HAProxy (default 3)")
    p.add_argument("--restart-every", type=float, default=120.0,
                   help="seconds between rolling restarts (default 120)")
    p.add_argument("--first-restart", type=float, default=None,
                   help="seconds into the run of the first rolling restart "
                        "(default: --restart-every)")
    p.add_argument("--redis-restart-at", type=float, default=None,
                   help="seconds into the run of the Redis restart (default: halfway between the "
                        "two rolling restarts around the middle); negative: none")
    p.add_argument("--redis-down-seconds", type=float, default=2.0,
                   help="how long Redis stays down (default 2)")
    p.add_argument("--recovery-window", type=float, default=120.0,
                   help="the nodes' --recovery-window (default 120)")
    p.add_argument("--drain-seconds", type=float, default=5.0,
                   help="the nodes' --drain-seconds (default 5)")
    p.add_argument("--sample-every", type=float, default=5.0,
                   help="seconds between RSS and /metrics samples (default 5)")
    p.add_argument("--rooms", type=int, default=d.rooms, help=f"default {d.rooms}")
    p.add_argument("--listeners", type=int, default=d.listeners,
                   help=f"long-lived clients over the rooms (default {d.listeners})")
    p.add_argument("--senders", type=int, default=d.senders, help=f"default {d.senders}")
    p.add_argument("--rate", type=float, default=d.rate,
                   help=f"room messages/s over all senders (default {d.rate:g})")
    p.add_argument("--churners", type=int, default=d.churners,
                   help=f"concurrent connect/join/send/disconnect loops (default {d.churners})")
    p.add_argument("--churn-messages", type=int, default=d.churn_messages,
                   help=f"messages per churn cycle (default {d.churn_messages})")
    p.add_argument("--churn-pause-ms", type=float, default=d.churn_pause_ms,
                   help=f"pause between a loop's cycles (default {d.churn_pause_ms:g})")
    p.add_argument("--transports", default=",".join(d.transports),
                   help="engine.io transports, in order (default polling,websocket: the upgrade "
                        "needs HAProxy's cookie)")
    p.add_argument("--out", default=str(RESULTS / "soak"),
                   help="prefix of the .json, .md and .png (default benchmarks/results/soak)")
    p.add_argument("--logdir", default=None, help="process logs (default: a temporary directory)")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="start nothing: write the .md and .png again from a run's .json "
                        "(e.g. after a change to the report)")
    pre, _ = p.parse_known_args(argv)
    if pre.quick:
        p.set_defaults(**QUICK)
    return p.parse_args(argv)


def schedule(args: argparse.Namespace) -> tuple[list[float], float | None]:
    """Seconds into the run of each rolling restart, and of the Redis restart."""
    duration, every = args.minutes * 60, args.restart_every
    first = every if args.first_restart is None else args.first_restart
    restarts, at = [], first
    while at < duration - 30:  # a rolling restart must be over before the traffic stops
        restarts.append(at)
        at += every
    redis_at = args.redis_restart_at
    if redis_at is None:
        middle = duration / 2
        redis_at = (middle // every + 0.5) * every if every < duration else middle
    return restarts, (redis_at if redis_at >= 0 else None)


class Run:
    """One soak run: the cluster, the traffic, the schedule; results filled in as it goes."""

    def __init__(self, args: argparse.Namespace, results: dict[str, Any]) -> None:
        self.args, self.results = args, results
        self.last_print = 0.0
        self.last_tick: dict[str, Any] = {}

    def progress(self, traffic: SoakTraffic, cluster: SoakCluster, sampler: Sampler,
                 t0: float) -> None:
        for event in traffic.poll():
            if event.get("event") == "tick":
                self.last_tick = event
        every = 10.0 if self.args.quick else 30.0
        if time.time() - self.last_print < every or not self.last_tick:
            return
        self.last_print = time.time()
        tick = self.last_tick
        rss = sampler.samples[-1]["nodes"] if sampler.samples else {}
        print(f"  [{(time.time() - t0) / 60:4.1f} min] sent {tick['sent']:,}, churn cycles "
              f"{tick['churn_cycles']:,} ({tick['churn_failed']} failed), listeners connected "
              f"{tick['listeners_connected']}; RSS "
              + ", ".join(f"{n} {(v.get('rss_kib') or 0) / 1024:.0f} MiB" for n, v in rss.items()),
              flush=True)

    def wait(self, until: float, traffic: SoakTraffic, cluster: SoakCluster, sampler: Sampler,
             t0: float) -> None:
        """Sleep until the wall-clock time ``until``, reporting and checking the processes."""
        while time.time() < until:
            self.progress(traffic, cluster, sampler, t0)
            cluster.check_alive()
            time.sleep(min(0.5, max(0.0, until - time.time())))

    def disturb(self, what: str, cluster: SoakCluster, t0: float) -> None:
        first = len(cluster.timeline)
        started = time.time()
        print(f"  [{(started - t0) / 60:4.1f} min] {what} ...", flush=True)
        if what == "rolling restart":
            cluster.rolling_restart()
        else:
            cluster.restart_redis(self.args.redis_down_seconds)
        took = time.time() - started
        entries = cluster.timeline[first:]
        detail = ""
        if what == "rolling restart":  # per node: SIGTERM to UP in HAProxy
            term = {e["node"]: e["t"] for e in entries if e["kind"] == "sigterm"}
            up = {e["node"]: e["t"] for e in entries if e["kind"] == "up"}
            detail = ", ".join(f"{n} {up[n] - term[n]:.1f} s" for n in term if n in up)
        else:
            up = next((e["t"] for e in entries if e["kind"] == "redis_up"), started)
            detail = f"Redis back after {up - started:.1f} s"
        self.results["disturbances"].append({"at_s": started - t0, "what": f"{what} ({detail})",
                                             "took_s": took})
        print(f"  [{(time.time() - t0) / 60:4.1f} min] {what} done in {took:.1f} s: {detail}",
              flush=True)

    def execute(self, procs: Procs) -> None:
        args, results = self.args, self.results
        traffic_settings = TrafficSettings(**results["settings"]["traffic_args"])
        cluster = SoakCluster(procs, nodes=args.nodes, recovery_window=args.recovery_window,
                              drain_seconds=args.drain_seconds, timeline=results["timeline"])
        cluster.start()
        print(f"  cluster up: redis {cluster.redis_url}, nodes "
              + ", ".join(f"{s.name}:{s.port} (pid {s.proc.pid})" for s in cluster.slots)
              + f", HAProxy {cluster.lb_url}", flush=True)
        sampler = Sampler(cluster, args.sample_every)
        results["samples"] = sampler.samples  # filled by its thread; written whatever happens
        sampler.start()
        traffic: SoakTraffic | None = None
        try:
            duration = args.minutes * 60
            traffic = SoakTraffic(procs, cluster.lb_url, traffic_settings,
                                  deadline_s=duration + 600)
            ready = traffic.expect("ready", 120)
            t0 = ready["t"] / 1000
            results["t0"] = t0
            print(f"  traffic: {ready['listeners']} listeners (synced {ready['synced']}), "
                  f"{ready['senders']} senders", flush=True)
            restarts = results["settings"]["restarts_at_s"]
            redis_at = results["settings"]["redis_at_s"]
            actions = sorted([(at, "rolling restart") for at in restarts]
                             + ([(redis_at, "Redis restart")] if redis_at is not None else []))
            for at, what in actions:
                self.wait(t0 + at, traffic, cluster, sampler, t0)
                self.disturb(what, cluster, t0)
            self.wait(t0 + duration, traffic, cluster, sampler, t0)
            print(f"  [{(time.time() - t0) / 60:4.1f} min] stopping the traffic; draining "
                  f"(at most {traffic_settings.drain_s:g} s)", flush=True)
            traffic.send("stop")
            bound = traffic_settings.drain_s + traffic_settings.ack_timeout_ms / 1000 + 60
            results["traffic"] = traffic.expect("result", bound)
            traffic.close()
        except Exception:
            # a disturbance failed (a node did not come back, ...): the clients'
            # counts up to here are still worth having, so ask for them, bounded
            if traffic is not None and results["traffic"] is None and traffic.proc.running():
                try:
                    traffic.send("stop")
                    results["traffic"] = traffic.expect("result", traffic_settings.drain_s + 20)
                except Exception as exc:  # noqa: BLE001 - the first error is the one raised
                    print(f"  (no client counts after the failure: {exc})", flush=True)
            raise
        finally:
            sampler.stop()


def run(args: argparse.Namespace) -> int:
    restarts, redis_at = schedule(args)
    traffic_args = {"rooms": args.rooms, "listeners": args.listeners, "senders": args.senders,
                    "rate": args.rate, "churners": args.churners,
                    "churn_messages": args.churn_messages, "churn_pause_ms": args.churn_pause_ms,
                    "transports": tuple(t.strip() for t in args.transports.split(",") if t.strip())}
    print(f"soak: {args.minutes:.3g} min of traffic on {args.nodes} nodes; rolling restarts at "
          f"{', '.join(f'{r:g}' for r in restarts) or 'none'} s, Redis restart at "
          f"{'none' if redis_at is None else f'{redis_at:g}'} s; ~{args.minutes + 1:.0f} min "
          f"in all", flush=True)
    targets.ensure_node_modules()
    soft, hard = raise_fd_limit(4096)
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="bench-soak-"))
    print(f"logs in {logdir}", flush=True)
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick, "machine": report.machine(), "versions": report.versions(),
        "settings": {"minutes": args.minutes, "nodes": args.nodes, "restarts_at_s": restarts,
                     "redis_at_s": redis_at, "redis_down_s": args.redis_down_seconds,
                     "recovery_window": args.recovery_window, "drain_seconds": args.drain_seconds,
                     "sample_every_s": args.sample_every, "traffic_args": traffic_args,
                     "traffic": dataclasses.asdict(TrafficSettings(**traffic_args)),
                     "open_files": [soft, hard], "argv": sys.argv[1:]},
        "timeline": [], "disturbances": [], "samples": [], "traffic": None, "errors": [],
        "interrupted": False, "elapsed_s": 0.0,
    }
    started = time.monotonic()
    status = 0

    def on_sigterm(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # the same path as Ctrl-C: stop everything, write what ran

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with Procs(logdir) as procs:
            Run(args, results).execute(procs)
    except KeyboardInterrupt:
        print("interrupted: everything started is stopped; writing what was measured", flush=True)
        results["interrupted"] = True
        status = 130
    except Exception as exc:  # noqa: BLE001 - recorded; the partial results are still written
        message = f"{type(exc).__name__}: {exc}"
        print(f"  !! the soak failed: {message[:2000]}", flush=True)
        results["errors"].append({"what": "soak", "error": message[:4000],
                                  "traceback": traceback.format_exc()[-4000:]})
        status = 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    results["elapsed_s"] = time.monotonic() - started
    results["samples"] = list(results["samples"])
    if results["traffic"]:
        results["messages"] = soak_report.summarize_messages(
            results["traffic"], results["timeline"], results["t0"])
    results["memory"] = soak_report.memory(results["samples"], results["timeline"])
    paths = soak_report.write(results, Path(args.out))
    print(soak_report.markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    if results["traffic"] is None and status == 0:
        status = 1
    return status


def rerender(path: Path, prefix: Path) -> int:
    """The summaries, Markdown and plot of a finished run, from its raw JSON."""
    results = json.loads(path.read_text())
    if results.get("traffic"):
        results["messages"] = soak_report.summarize_messages(
            results["traffic"], results["timeline"], results["t0"])
    results["memory"] = soak_report.memory(results["samples"], results["timeline"])
    paths = soak_report.write(results, prefix)
    print(soak_report.markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return rerender(Path(args.from_json), Path(args.out))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

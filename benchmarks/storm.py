"""The reconnect storm (issue 29, item 3): one of three nodes SIGKILLed under chat traffic.

Per target, three nodes behind HAProxy (the project's own configuration),
``--clients-per-node`` (3,000) clients through it, chatting in rooms of 10:
each client sends one message to its room every ``--interval`` seconds (10)
with a per-sender sequence number. After a warm-up the node with the most
clients is SIGKILLed; its clients reconnect through HAProxy to the other two.
Measured, from the kill:

- the time until every client of the killed node is back: connected again
  and recovered (``socket.recovered``), or joined to its room again when it
  came back with a new session;
- per client, the messages sent to its room that never arrived (*missed*:
  while it was away, or while it was connected) and those that arrived twice,
  separately for the other nodes' clients, the recovered and the
  not-recovered ones;
- the delivery latency (p50/p99) of the other nodes' clients for messages
  sent in the 10 s after the kill (``--storm``) against the 10 s before
  (``--before``), with the CPU each process and the machine used.

Targets, the same run and the same storm: this project (``benchmarks/
storm_app.py``, connection state recovery on, 120 s) and Node socket.io 4.8
with ``@socket.io/redis-streams-adapter`` and its connection state recovery
on (``benchmarks/node/storm_server.mjs``), which writes a session only when
a socket disconnects, so a crashed server's clients cannot recover.

It writes ``benchmarks/results/storm.json`` and ``storm.md`` (``--quick``:
``quick-storm.*``, which git ignores). Everything listens on 127.0.0.1 and
is stopped by PID, on errors, Ctrl-C and SIGTERM too. Run from the
repository root::

    .venv/bin/python -m benchmarks.storm            # 2 rounds x 3 targets, ~4 min per storm
    .venv/bin/python -m benchmarks.storm --quick    # 100 clients per node, one round, ~1 min
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
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .suite import report, targets
from .suite.procs import (
    Procs,
    SuiteError,
    raise_fd_limit,
    redis_command,
    start_redis,
    stop_on_sigterm_like_ctrl_c,
)
from .suite.storm_measure import NODES, STORM_TARGETS, StormSettings, run_storm

RESULTS = targets.ROOT / "benchmarks" / "results"
NPM_PACKAGES = ("socket.io", "socket.io-client", "@socket.io/redis-streams-adapter", "redis")
# a --quick run: every path once, small and short; its figures mean nothing
QUICK = {"rounds": 1, "clients_per_node": 100, "interval_s": 2.0, "warmup_s": 5.0,
         "before_s": 5.0, "storm_s": 5.0, "recover_timeout_s": 30.0, "tail_s": 3.0,
         "drain_s": 2.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = StormSettings()
    p = argparse.ArgumentParser(prog="python -m benchmarks.storm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 100 clients per node, one round, short windows (~1 min); "
                        "writes quick-storm.*")
    p.add_argument("--targets", default=",".join(STORM_TARGETS),
                   help=f"comma-separated, interleaved in each round (default "
                        f"{','.join(STORM_TARGETS)})")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the targets (default 2)")
    p.add_argument("--clients-per-node", type=int, help=f"default {d.clients_per_node}")
    p.add_argument("--room-size", type=int, help=f"clients per room (default {d.room_size})")
    p.add_argument("--interval", dest="interval_s", type=float,
                   help=f"seconds between one client's messages (default {d.interval_s:g}: "
                        f"900 room messages/s at 9,000 clients)")
    p.add_argument("--warmup", dest="warmup_s", type=float,
                   help=f"seconds of traffic before counting starts (default {d.warmup_s:g})")
    p.add_argument("--before", dest="before_s", type=float,
                   help=f"counted seconds before the kill (default {d.before_s:g})")
    p.add_argument("--storm", dest="storm_s", type=float,
                   help=f"the latency window after the kill, s (default {d.storm_s:g})")
    p.add_argument("--recover-timeout", dest="recover_timeout_s", type=float,
                   help=f"seconds the killed node's clients have to come back "
                        f"(default {d.recover_timeout_s:g})")
    p.add_argument("--tail", dest="tail_s", type=float,
                   help=f"seconds of traffic after they are back (default {d.tail_s:g})")
    p.add_argument("--drain", dest="drain_s", type=float,
                   help=f"seconds for the last deliveries at least, then until none arrived "
                        f"for 1 s, at most 60 s more (default {d.drain_s:g})")
    p.add_argument("--reconnect-delay-ms", type=float,
                   help=f"the client's reconnectionDelay (default {d.reconnect_delay_ms:g}, "
                        f"socket.io-client's)")
    p.add_argument("--reconnect-delay-max-ms", type=float,
                   help=f"reconnectionDelayMax (default {d.reconnect_delay_max_ms:g})")
    p.add_argument("--randomization", type=float,
                   help=f"randomizationFactor (default {d.randomization:g})")
    p.add_argument("--logdir", help="where process logs go (default: a new temporary directory)")
    p.add_argument("--out", help="results path without suffix (default "
                                 "benchmarks/results/storm, --quick: quick-storm)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if key == "rounds" or getattr(args, key, None) is None:
                setattr(args, key, value)
    return args


def settings_of(args: argparse.Namespace) -> StormSettings:
    given = {f.name: getattr(args, f.name) for f in fields(StormSettings)
             if getattr(args, f.name, None) is not None}
    return StormSettings(**given)


def ensure_node_modules() -> None:
    """``npm ci`` in benchmarks/node when a package the storm needs is missing."""
    if all((targets.NODE_DIR / "node_modules" / name / "package.json").exists()
           for name in NPM_PACKAGES):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SuiteError("npm is not installed (apt-get install npm)")
    print("installing the benchmark's Node packages (npm ci in benchmarks/node) ...", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=targets.NODE_DIR, check=True,
                   timeout=600)


# -- the report --------------------------------------------------------------------------

CLASSES = (("survivor", "other nodes' clients"), ("recovered", "killed node's, recovered"),
           ("not_recovered", "killed node's, new session"),
           ("not_back", "killed node's, not back"), ("never_joined", "never joined"))
TARGET_BACK_MS, TARGET_P99_MS = 10_000, 250  # issue 29's targets


def _n(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def _lat(h: dict[str, Any] | None) -> str:
    if not h or not h.get("count"):
        return "—"
    return f"{_n(h['p50_ms'])} / {_n(h['p99_ms'])} / {_n(h['max_ms'])} ({h['count']:,})"


def _cores(c: dict[str, Any] | None) -> str:
    if not c:
        return "—"
    procs = c["procs"]
    nodes = sum(v for k, v in procs.items() if k.startswith("node"))
    return (f"{c['machine']:.2f} / {nodes:.2f} / {procs.get('redis', 0):.2f} / "
            f"{procs.get('haproxy', 0):.2f} / {procs.get('loadgen', 0):.2f}")


def _yes(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def markdown(results: dict[str, Any]) -> str:
    st = results["settings"]
    runs = [r for r in results["runs"] if "storm" in r]
    out = ["# Reconnect storm: one of 3 nodes SIGKILLed", "",
           f"{results['date']}; {results['machine']['cores']} cores ({results['machine']['cpu']}),"
           f" everything on this machine over loopback. {NODES} nodes x "
           f"{st['clients_per_node']:,} clients through HAProxy (websocket only), rooms of "
           f"{st['room_size']}, one message per client every {st['interval_s']:g} s; the node "
           f"with the most clients SIGKILLed after {st['warmup_s']:g} + {st['before_s']:g} s; "
           f"client reconnection {st['reconnect_delay_ms']:g} ms, at most "
           f"{st['reconnect_delay_max_ms']:g} ms, randomization {st['randomization']:g}.", ""]
    if results["quick"]:
        out += ["**A --quick smoke run: the figures mean nothing.**", ""]
    out += ["## Issue 29's targets", "",
            "| target | round | all back ≤ 10 s | all recovered | missed by the other nodes' "
            "clients | missed by the killed node's clients | duplicates | others' p99 in the "
            "storm ≤ 250 ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        sm, cl = r["storm"], r["classes"]
        others = cl.get("survivor", {}).get("missed", 0)
        victims = sum(cl.get(k, {}).get("missed", 0)
                      for k in ("recovered", "not_recovered", "not_back"))
        dups = sum(c.get("duplicates", 0) for c in cl.values())
        p99 = r["latency"]["storm"]["survivors"]["p99_ms"]
        out.append(f"| {r['label']} | {r['round']} | "
                   f"{_yes(sm['all_back_ms'] is not None and sm['all_back_ms'] <= TARGET_BACK_MS)}"
                   f" ({_n(sm['all_back_ms'])} ms) | {_yes(sm['recovered'] == sm['victims'])} "
                   f"({sm['recovered']:,}/{sm['victims']:,}) | {others:,} | {victims:,} | "
                   f"{dups:,} | "
                   f"{_yes(None if p99 is None else p99 <= TARGET_P99_MS)} ({_n(p99)} ms) |")
    out += ["", "## The killed node's clients, from the kill", "",
            "*back*: connected again and recovered, or in its room again with a new session.",
            "", "| target | round | clients per node at the kill | killed node's clients | back "
            "| recovered | reconnect p50 / p99 ms | back p50 / p90 / p99 / max ms | all back ms "
            "| HAProxy saw the node DOWN ms | reconnect attempts |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        sm = r["storm"]
        b, rc = sm["back_ms"], sm["reconnect_ms"]
        per_node = ", ".join(f"{v:,}" for v in r["ready"]["nodes"].values())
        out.append(f"| {r['label']} | {r['round']} | {per_node} | {sm['victims']:,} | "
                   f"{sm['back']:,} | {sm['recovered']:,} | {_n(rc['p50_ms'])} / "
                   f"{_n(rc['p99_ms'])} | {_n(b['p50_ms'])} / {_n(b['p90_ms'])} / "
                   f"{_n(b['p99_ms'])} / {_n(b['max_ms'])} | {_n(sm['all_back_ms'])} | "
                   f"{_n(r.get('haproxy_down_ms'))} | {sm['reconnect_attempts']:,} |")
    out += ["", "## What each client lost", "",
            f"Messages sent to the client's room from {st['before_s']:g} s before the kill to "
            "the end of the traffic that were acked or reached someone. *Away*: sent from 1 s "
            "before the client's disconnect until it was back.", "",
            "| target | round | which clients | clients | messages due | missed while away "
            "| missed while connected | duplicates | foreign room |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        for key, name in CLASSES:
            c = r["classes"].get(key)
            if c is None:
                continue
            out.append(f"| {r['label']} | {r['round']} | {name} | {c['clients']:,} | "
                       f"{c['expected']:,} | {c['missed_while_away']:,} | "
                       f"{c['missed_while_connected']:,} | {c['duplicates']:,} | "
                       f"{c['foreign']:,} |")
    out += ["", "Sends in that window: *unconfirmed* had no ack and reached nobody (sent into "
            "the dying node: not counted above); *acked, lost* had an ack and reached nobody.",
            "", "| target | round | sent | unconfirmed | acked, lost |", "| --- | --- | --- | --- "
            "| --- |"]
    for r in runs:
        lo = r["lost"]
        out.append(f"| {r['label']} | {r['round']} | {lo['sent']:,} | {lo['unconfirmed']:,} | "
                   f"{lo['acked_nobody_received']:,} |")
    out += ["", "## Latency of the other nodes' clients", "",
            f"By send time: *before* = the {st['before_s']:g} s before the kill, *storm* = the "
            f"{st['storm_s']:g} s after it, *after* = the rest. p50 / p99 / max ms (deliveries). "
            "CPU in cores over the before and storm windows: machine (everything running, "
            "others' processes included) / nodes / Redis / HAProxy / load generator.", "",
            "| target | round | before | storm | after | CPU before | CPU storm |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        lat, cpu = r["latency"], r.get("cpu", {})
        out.append(f"| {r['label']} | {r['round']} | {_lat(lat['before']['survivors'])} | "
                   f"{_lat(lat['storm']['survivors'])} | {_lat(lat['after']['survivors'])} | "
                   f"{_cores(cpu.get('before'))} | {_cores(cpu.get('storm'))} |")
    if results["errors"]:
        out += ["", "## Errors", ""]
        out += [f"- {e['what']}: {e['error'][:400]}" for e in results["errors"]]
    v = results["versions"]
    out += ["", "Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v) if v[k]) + ".", ""]
    return "\n".join(out)


def write(results: dict[str, Any], prefix: Path) -> list[Path]:
    json_path, md_path = prefix.with_suffix(".json"), prefix.with_suffix(".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(markdown(results))
    return [json_path, md_path]


def run(args: argparse.Namespace) -> int:
    keys = [k.strip() for k in args.targets.split(",") if k.strip()]
    unknown = [k for k in keys if k not in STORM_TARGETS]
    if unknown or not keys:
        print(f"unknown target(s): {unknown}; known: {', '.join(STORM_TARGETS)}")
        return 2
    s = settings_of(args)
    if s.clients_per_node < s.room_size or s.room_size < 2:
        print("--clients-per-node must hold at least one room, and a room two clients")
        return 2
    ensure_node_modules()
    targets.haproxy_executable()  # fail now, not after the first target
    # the generator holds every client's socket, HAProxy two per client; children inherit
    soft, hard = raise_fd_limit(2 * s.clients + 2000)
    if soft < s.clients + 500:
        print(f"warning: open-file limit {soft} (hard {hard}) is below what {s.clients} "
              f"clients need in one process; expect failed connections", flush=True)
    estimate = args.rounds * len(keys) * s.estimate_s()
    print(f"reconnect storm: {NODES} nodes x {s.clients_per_node} clients, rooms of "
          f"{s.room_size}, one message per client every {s.interval_s:g} s "
          f"({s.clients / s.interval_s:,.0f}/s); targets {', '.join(keys)}; {args.rounds} "
          f"round(s); estimated {estimate / 60:.1f} min", flush=True)
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="bench-storm-"))
    prefix = Path(args.out) if args.out else RESULTS / ("quick-storm" if args.quick else "storm")
    versions = report.versions()
    versions["npm @socket.io/redis-streams-adapter"] = targets.node_package_version(
        "@socket.io/redis-streams-adapter")
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick, "machine": report.machine(), "versions": versions,
        "settings": {**asdict(s), "targets": keys, "rounds": args.rounds, "nodes": NODES,
                     "open_files": [soft, hard], "argv": sys.argv[1:]},
        "runs": [], "errors": [], "elapsed_s": 0.0,
    }
    print(f"logs in {logdir}", flush=True)
    started = time.monotonic()
    status = 0
    try:
        with Procs(logdir) as procs:
            redis, redis_url = start_redis(procs)
            for rnd in range(1, args.rounds + 1):
                for key in keys:
                    what = f"round {rnd} {key}"
                    print(f"[{(time.monotonic() - started) / 60:4.1f} min] {what}", flush=True)
                    entry: dict[str, Any] = {"round": rnd, "target": key}
                    try:
                        entry.update(run_storm(procs, STORM_TARGETS[key], redis, redis_url, s,
                                               label=what))
                    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                        message = f"{type(exc).__name__}: {exc}"
                        print(f"  !! {what} failed: {message[:2000]}", flush=True)
                        results["errors"].append({"what": what, "error": message[:4000],
                                                  "traceback": traceback.format_exc()[-4000:]})
                        entry["error"] = message[:500]
                    finally:
                        # the next storm starts on an empty Redis (sessions, streams, leases)
                        redis_command(redis_url, "FLUSHALL")
                    results["runs"].append(entry)
                    write(results, prefix)  # an interrupted run keeps what it measured
    except KeyboardInterrupt:
        print("interrupted: everything started is stopped; writing what was measured", flush=True)
        results["errors"].append({"what": "run", "error": "interrupted"})
        status = 130
    finally:
        results["elapsed_s"] = time.monotonic() - started
        paths = write(results, prefix)
    print()
    print(prefix.with_suffix(".md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths) + f" ({results['elapsed_s'] / 60:.1f} min)")
    return status or (1 if results["errors"] else 0)


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm_like_ctrl_c()
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

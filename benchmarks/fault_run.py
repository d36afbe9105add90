"""The long form of the fault scenarios: each one, N rounds, more clients, one table.

``tests/faults`` is the short (CI) form: each fault once, tens of clients.
This runs the same scenarios (the real pytest tests, nothing copied: one
``pytest tests/faults/<file>::<test>`` per scenario and round, in a
subprocess) with ``FAULT_CLIENTS`` raised, rounds interleaved (round 1 of
every scenario, then round 2...) so that a slow minute of the machine does
not land on one scenario only. Each run's JUnit XML carries the workload's
verdict line and, on failure, the invariant checker's message; see
:mod:`benchmarks.suite.fault_table` for what is read from it.

Bounds and clean-up: every pytest runs in its own process group with a
timeout (``--timeout``, 360 s; ``--quick`` also has a 235 s budget for the
whole run). On timeout, Ctrl-C or SIGTERM the group gets SIGINT (pytest
then runs its finalizers: nodes stopped, namespaces removed), and SIGKILL
15 s later. The test processes run in sessions of their own (the harness's
``NodeProcess``), so the group does not reach them: their PIDs are
collected from ``/proc`` while pytest runs, and any still alive after it
exited is sent SIGCONT (a frozen node holds a SIGTERM), SIGTERM, then
SIGKILL. The network namespaces and veths named after that pytest's PID
(``cft<pid>...``, :mod:`tests.faults.netns`) are removed if still there.
Both are reported in the round's row. Run from the repository root::

    .venv/bin/python -m benchmarks.fault_run               # 3 rounds, 150 clients, ~15-30 min
    .venv/bin/python -m benchmarks.fault_run --quick       # 1 round, 3 scenarios, < 4 min
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib.metadata
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults.netns import FAMILY, unavailable

from .suite import fault_table
from .suite.fault_table import Round
from .suite.report import machine
from .suite.targets import ROOT

RESULTS = ROOT / "benchmarks" / "results"
FAULTS = "tests/faults"
#: SIGINT lets pytest run its finalizers; SIGKILL follows after this
INTERRUPT_GRACE = 15.0
#: a leftover process gets SIGTERM, then SIGKILL after this
TERM_GRACE = 5.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class Scenario:
    """One fault of ``tests/faults``: its pytest node id and what it injects.

    ``scales``: the scenario takes ``FAULT_CLIENTS``. Two do not: the drain
    scenario counts its own 200 clients (it asserts that number), and the
    full-Redis one paces its fault by a message count that must take over
    5.5 s, which holds at the default 48 messages/s only.
    """

    name: str
    test: str
    injected: str
    scales: bool = True


SCENARIOS = {s.name: s for s in [
    Scenario("latency", "test_network_faults.py::test_latency_and_jitter_lose_duplicate_and_"
             "reorder_nothing", "50 ± 30 ms each way on node1's Redis link (fault proxy)"),
    Scenario("resets", "test_network_faults.py::test_resets_of_the_redis_link_deliver_what_"
             "was_buffered", "node1's Redis connections reset and refused until not ready, twice"),
    Scenario("stall", "test_network_faults.py::test_long_stall_node_not_ready_keeps_clients_"
             "and_delivers_after", "node1's Redis link stalled both ways until not ready"),
    Scenario("partition-redis", "test_netns_faults.py::test_node_partitioned_from_redis_keeps_"
             "its_clients_and_delivers_after_heal",
             "nft drops all between a namespaced node and Redis, then heals"),
    Scenario("partition-balancer", "test_netns_faults.py::test_node_partitioned_from_the_"
             "balancer_its_clients_recover_elsewhere",
             "nft drops all between a namespaced node and HAProxy; its clients move"),
    Scenario("pause", "test_process_faults.py::test_node_frozen_past_its_leases_loses_nothing_"
             "when_it_wakes", "SIGSTOP of node1 for 15 s, past its 10 s leases, then SIGCONT"),
    Scenario("slow-redis", "test_process_faults.py::test_slow_redis_debug_sleep_loses_nothing",
             "`DEBUG SLEEP 3` on Redis under traffic"),
    Scenario("redis-restart", "test_process_faults.py::test_redis_restart_without_persistence_"
             "says_not_recovered",
             "Redis restarted empty; one client per room away across it"),
    Scenario("maxmemory", "test_redis_memory_faults.py::test_full_redis_noeviction_delivers_"
             "each_message_once_in_order",
             "Redis at `maxmemory` with `noeviction` for > 5.5 s", scales=False),
    Scenario("clock-skew", "test_clock_skew.py::test_a_node_whose_clock_is_off_is_refused_at_"
             "start_with_the_fix", "a node started 5 s ahead, 90 s ahead, 5 s behind "
             "(libfaketime): refused with the skew named"),
    Scenario("drain-spread", "test_drain_spread.py::test_sigterm_spreads_disconnects_over_the_"
             "window_and_loses_nothing",
             "SIGTERM with a 3 s disconnect spread, 200 clients on the node", scales=False),
]}
QUICK_SCENARIOS = ["latency", "partition-redis", "redis-restart"]
QUICK_BUDGET = 235.0
DEFAULT_CLIENTS = 150


# -- processes ------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, int, str] | None:
    """``(ppid, start time, state)`` of a live process, None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and ")"
    return int(fields[1]), int(fields[19]), fields[0]


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:120]


def _descendants(root: int) -> dict[int, int]:
    """``{pid: start time}`` of every process below ``root`` right now."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(entry), stat[1]))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            found[pid] = started
            todo.append(pid)
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == started and stat[2] != "Z"


def _stop_leftovers(seen: dict[int, int]) -> list[str]:
    """Stop, by PID, what pytest started and left running; returns what it was."""
    left = {pid: started for pid, started in seen.items() if _alive(pid, started)}
    names = [f"pid {pid} ({_cmdline(pid)})" for pid in left]
    for sig in (signal.SIGCONT, signal.SIGTERM):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + TERM_GRACE
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in left.items()):
        time.sleep(0.1)
    for pid, started in left.items():
        if _alive(pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return names


def _ip(*argv: str) -> str:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10, check=False)
    return done.stdout


def _remove_namespaces(pytest_pid: int) -> list[str]:
    """Namespaces and veths named after ``pytest_pid`` that are still there, removed."""
    if unavailable():
        return []
    owned = re.compile(rf"^{FAMILY}{pytest_pid}[nhv]\d+$")
    spaces = [n for n in (line.split()[0] for line in _ip("netns", "list").splitlines()
                          if line.strip()) if owned.match(n)]
    links = [n for n in re.findall(r"^\d+: ([^:@]+)", _ip("-o", "link", "show"), re.M)
             if owned.match(n)]
    for name in spaces:
        _ip("netns", "delete", name)  # its nft table and the veth's inner end go with it
    for name in links:
        _ip("link", "delete", name)
    return [f"netns {n}" for n in spaces] + [f"link {n}" for n in links]


def _interrupt_when_orphaned() -> None:
    """``preexec_fn`` of pytest: SIGINT from the kernel if this harness dies (even by
    SIGKILL), so that pytest still runs its finalizers. SIGINT rather than the
    SIGTERM the test harness's own children get: a SIGTERM would end pytest
    before its finalizers remove the namespaces."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the timeout and the clean-up after each run still hold


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to pytest's group (its finalizers run), SIGKILL after the grace."""
    for sig, grace in ((signal.SIGINT, INTERRUPT_GRACE), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during a round (which was stopped and cleaned up)."""

    def __init__(self, result: Round) -> None:
        super().__init__("interrupted")
        self.result = result


def run_pytest(scenario: Scenario, number: int, *, clients: int | None, timeout: float,
               workdir: Path) -> Round:
    """One pytest run of ``scenario``, bounded by ``timeout``; never leaves a process behind."""
    stem = workdir / f"{scenario.name}-r{number}"
    junit, log = stem.with_suffix(".xml"), stem.with_suffix(".log")
    argv = [sys.executable, "-m", "pytest", f"{FAULTS}/{scenario.test}", "-q",
            "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "junit_logging=system-out",
            f"--basetemp={stem}"]  # the processes' logs of every round are kept
    env = {k: v for k, v in os.environ.items() if k != "FAULT_CLIENTS"}
    env["PYTHONUNBUFFERED"] = "1"
    if clients and scenario.scales:
        env["FAULT_CLIENTS"] = str(clients)
    started = time.monotonic()
    seen: dict[int, int] = {}
    timed_out = interrupted = False
    with open(log, "wb") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_interrupt_when_orphaned)
        try:
            while True:
                seen.update(_descendants(proc.pid))  # they live in sessions of their own
                left = timeout - (time.monotonic() - started)
                if left <= 0:
                    timed_out = True
                    _interrupt(proc)
                    break
                try:
                    proc.wait(min(1.0, left))
                    break
                except subprocess.TimeoutExpired:
                    continue
        except KeyboardInterrupt:
            interrupted = True
            _interrupt(proc)
    wall = time.monotonic() - started
    leftovers = _stop_leftovers(seen) + _remove_namespaces(proc.pid)
    result = fault_table.read_round(scenario.name, number, returncode=proc.returncode,
                                    wall_s=wall, junit=junit, log=log, timed_out=timed_out)
    result.leftovers = leftovers
    if interrupted:
        result.status = "interrupted"  # neither a pass nor a finding: not counted
        raise Interrupted(result)
    return result


# -- the run --------------------------------------------------------------------------------

def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in ("python-socketio", "python-engineio", "eventlet", "redis", "pytest"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    for name, argv in (("redis-server", ["redis-server", "--version"]),
                       ("haproxy", ["haproxy", "-v"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                 check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        version = re.search(r"(?:v=|version )(\S+)", out)
        found[name] = version.group(1) if version else None
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fault_run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"1 round of {', '.join(QUICK_SCENARIOS)} at the tests' own client "
                        f"counts, within {QUICK_BUDGET:.0f} s")
    p.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default 3)")
    p.add_argument("--clients", type=int, default=None,
                   help=f"FAULT_CLIENTS for the scenarios that scale (default {DEFAULT_CLIENTS}; "
                        "--quick: the tests' own, 60)")
    p.add_argument("--scenarios", default=None,
                   help=f"comma-separated, of: {', '.join(SCENARIOS)} (default all)")
    p.add_argument("--timeout", type=float, default=360.0,
                   help="seconds per pytest run before it is killed (default 360)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run; what would start after it is not run "
                        f"(default none; --quick {QUICK_BUDGET:.0f})")
    p.add_argument("--out", default=None,
                   help="path stem of the .md and .json (default benchmarks/results/faults; "
                        "--quick: quick-faults, which git ignores)")
    p.add_argument("--workdir", default=None,
                   help="pytest logs, JUnit XML and process logs (default: a new temp dir)")
    args = p.parse_args(argv)
    names = (args.scenarios.split(",") if args.scenarios
             else QUICK_SCENARIOS if args.quick else list(SCENARIOS))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    args.scenarios = names
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.clients is None and not args.quick:
        args.clients = DEFAULT_CLIENTS
    if args.budget is None and args.quick:
        args.budget = QUICK_BUDGET
    args.out = Path(args.out) if args.out else RESULTS / ("quick-faults" if args.quick
                                                          else "faults")
    return args


def write(results: dict[str, Any], rounds: list[Round], stem: Path) -> None:
    by_name: dict[str, list[Round]] = {}
    for r in rounds:
        by_name.setdefault(r.scenario, []).append(r)
    results["summary"] = [fault_table.summarize(n, SCENARIOS[n].injected, rs)
                          for n, rs in by_name.items()]
    results["rounds"] = fault_table.to_json(rounds)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    stem.with_suffix(".md").write_text(fault_table.markdown(results, rounds))


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stopped like Ctrl-C: cleaned, written
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fault-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if unavailable() and any(n.startswith("partition") for n in args.scenarios):
        print(f"note: {unavailable()}: the partition scenarios will skip themselves")
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.fault_run" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(), "versions": _versions(), "workdir": str(workdir),
        "settings": {"rounds": args.rounds, "clients": args.clients,
                     "scenarios": args.scenarios, "timeout_s": args.timeout,
                     "budget_s": args.budget},
        "elapsed_s": 0.0,
    }
    plan = [(n, SCENARIOS[name]) for n in range(1, args.rounds + 1) for name in args.scenarios]
    print(f"{len(plan)} pytest runs, each at most {args.timeout:.0f} s"
          + (f", {args.budget:.0f} s in all" if args.budget else "")
          + f"; logs in {workdir}", flush=True)
    rounds: list[Round] = []
    for number, scenario in plan:
        left = None if args.budget is None else args.budget - (time.monotonic() - started)
        if left is not None and left < 30:
            rounds.append(Round(scenario.name, number, "not run"))
            continue
        timeout = args.timeout if left is None else min(args.timeout, left)
        try:
            result = run_pytest(scenario, number, clients=args.clients, timeout=timeout,
                                workdir=workdir)
        except Interrupted as stop:
            rounds.append(stop.result)
            results["interrupted"] = True
            print("interrupted: the round was stopped; writing what ran", flush=True)
            break
        rounds.append(result)
        verdicts = "; ".join(f"{v.clients} clients, {v.sent} sent, {v.received} received, "
                             f"{v.away} away" for v in result.verdicts)
        print(f"[round {number}/{args.rounds}] {scenario.name}: {result.status} in "
              f"{result.wall_s:.1f} s" + (f" ({verdicts})" if verdicts else "")
              + (f" LEFTOVERS {result.leftovers}" if result.leftovers else ""), flush=True)
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        write(results, rounds, args.out)  # a killed run still leaves what it found
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    write(results, rounds, args.out)
    print(fault_table.markdown(results, rounds))
    print(f"wrote {args.out.with_suffix('.md')} and .json", flush=True)
    return 0 if all(r.status in ("pass", "skip") for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())

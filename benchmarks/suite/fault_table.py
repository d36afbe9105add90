"""What a fault run found: one pytest run per scenario and round, read back and tabulated.

:mod:`benchmarks.fault_run` runs each scenario of ``tests/faults`` with
``--junitxml`` and pytest's capture going into the XML (``junit_logging=
system-out``). From each test case this module takes

- its outcome (passed, failed, error, skipped);
- the workload's verdict line, printed by the scenario on success
  (``print(load.verdict())``) and repeated inside the message of an
  :class:`~tests.faults.invariants.InvariantViolation` on failure:
  ``C clients, S sent (U unacked), R received, A away (K recovered, T told
  not recovered)``, followed on success by the scenario's own note (``(not
  ready 3.1s into the partition)``);
- on failure, the kinds the checker counted (``missing: 3, duplicate: 1``)
  and the first lines of the assertion.

:func:`markdown` writes one row per scenario (rounds passed over rounds
run, median wall time, totals over the rounds, violations by kind), then
one row per round, then the first lines of every failure.
"""

from __future__ import annotations

import collections
import re
import statistics
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .report import table

#: the line :func:`tests.faults.invariants.summary` writes
VERDICT = re.compile(
    r"(?P<clients>\d+) clients, (?P<sent>\d+) sent \((?P<unacked>\d+) unacked\), "
    r"(?P<received>\d+) received, (?P<away>\d+) away \((?P<recovered>\d+) recovered, "
    r"(?P<told_not_recovered>\d+) told not recovered\)")
#: the head of :func:`tests.faults.invariants.assert_clean`'s message
VIOLATED = re.compile(r"invariants violated \((?P<kinds>[^;]*);")
COUNTS = ("sent", "unacked", "received", "away", "recovered", "told_not_recovered")
#: how many lines of a failure the JSON keeps (the Markdown shows fewer)
FAILURE_LINES = 8


@dataclass
class Verdict:
    """One workload's verdict line, as numbers, and what the scenario printed after it."""

    clients: int
    sent: int
    unacked: int
    received: int
    away: int
    recovered: int
    told_not_recovered: int
    note: str = ""


@dataclass
class Round:
    """One pytest run of one scenario.

    ``status``: ``pass`` (every test passed), ``fail`` (a test failed or
    errored), ``skip`` (a test skipped itself: a missing tool or no root),
    ``timeout`` (killed by the harness), ``error`` (pytest exited without a
    report, or with a failing status although every test passed), ``not run``
    (the time budget was spent before it), ``interrupted`` (Ctrl-C or SIGTERM).
    """

    scenario: str
    round: int
    status: str
    wall_s: float = 0.0
    returncode: int | None = None
    tests: int = 0
    verdicts: list[Verdict] = field(default_factory=list)
    violations: dict[str, int] = field(default_factory=dict)
    failure: list[str] = field(default_factory=list)
    skipped: str = ""
    leftovers: list[str] = field(default_factory=list)  # processes, namespaces, links
    log: str = ""


def parse_verdict(text: str) -> Verdict | None:
    """The first verdict line in ``text`` (None: there is none)."""
    found = VERDICT.search(text)
    if found is None:
        return None
    rest = text[found.end():].split("\n", 1)[0].strip()
    # in an assertion message the summary is wrapped in "(...)": not a note
    note = "" if rest == ")" else rest
    return Verdict(**{k: int(v) for k, v in found.groupdict().items()}, note=note)


def parse_violations(message: str) -> dict[str, int]:
    """``{"missing": 3, ...}`` from an invariant violation's first line ({} if it is not one)."""
    found = VIOLATED.search(message)
    if found is None:
        return {}
    kinds: dict[str, int] = {}
    for part in found.group("kinds").split(","):
        kind, _, count = part.strip().partition(": ")
        if count.isdigit():
            kinds[kind] = int(count)
    return kinds


def _first_lines(text: str, count: int = FAILURE_LINES) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()[:count]]


def tail(path: Path, count: int = FAILURE_LINES) -> list[str]:
    """The last ``count`` lines of a log (what a killed pytest printed last)."""
    try:
        lines = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return []
    return lines[-count:]


def read_round(scenario: str, number: int, *, returncode: int | None, wall_s: float,
               junit: Path, log: Path, timed_out: bool) -> Round:
    """A :class:`Round` from pytest's JUnit XML (or, without it, its log)."""
    result = Round(scenario, number, "error", round(wall_s, 1), returncode, log=str(log))
    if timed_out:
        result.status = "timeout"
        result.failure = [f"killed after {wall_s:.0f} s; last lines of {log.name}:", *tail(log)]
        return result
    try:
        suite = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        result.failure = [f"pytest exited {returncode} without a report; last lines:", *tail(log)]
        return result
    cases = suite.findall(".//testcase")
    result.tests = len(cases)
    failed = skipped = 0
    for case in cases:
        out = "\n".join(node.text or "" for node in case.findall("system-out"))
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skip = case.find("skipped")
        message = "" if problem is None else problem.get("message") or problem.text or ""
        verdict = parse_verdict(out) or parse_verdict(message)
        if verdict is not None:
            result.verdicts.append(verdict)
        if problem is not None:
            failed += 1
            for kind, count in parse_violations(message).items():
                result.violations[kind] = result.violations.get(kind, 0) + count
            if not result.failure:  # the first failing test's lines
                result.failure = [f"{case.get('name')}: {problem.tag}", *_first_lines(message)]
        elif skip is not None:
            skipped += 1
            result.skipped = result.skipped or (skip.get("message") or "skipped")
    if not cases:
        result.failure = [f"no test ran (pytest exited {returncode})", *tail(log)]
    elif failed:
        result.status = "fail"
    elif skipped:
        result.status = "skip"
    elif returncode == 0:
        result.status = "pass"
    else:
        result.failure = [f"every test passed but pytest exited {returncode}", *tail(log)]
    return result


# -- the summary ---------------------------------------------------------------------------

def summarize(scenario: str, injected: str, rounds: list[Round]) -> dict[str, Any]:
    """One scenario over its rounds: counts, median wall time, totals, violations."""
    ran = [r for r in rounds if r.status in ("pass", "fail", "timeout", "error")]
    verdicts = [v for r in ran for v in r.verdicts]
    violations: collections.Counter[str] = collections.Counter()
    for r in ran:
        violations.update(r.violations)
    other = collections.Counter(r.status for r in ran if r.status != "pass" and not r.violations)
    return {
        "scenario": scenario, "injected": injected,
        "clients": sorted({v.clients for v in verdicts}),
        "passed": sum(r.status == "pass" for r in ran), "run": len(ran),
        "skipped": sum(r.status == "skip" for r in rounds),
        "not_run": sum(r.status == "not run" for r in rounds),
        "median_wall_s": round(statistics.median(r.wall_s for r in ran), 1) if ran else None,
        "totals": {k: sum(getattr(v, k) for v in verdicts) for k in COUNTS},
        "violations": dict(sorted(violations.items())),
        "other_failures": dict(sorted(other.items())),
        "leftovers": sorted({item for r in rounds for item in r.leftovers}),
    }


def to_json(rounds: list[Round]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rounds]


# -- Markdown ------------------------------------------------------------------------------

def _n(value: int) -> str:
    return f"{value:,}"


def _cell(text: str, width: int = 140) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def _violations(summary: dict[str, Any]) -> str:
    parts = [f"{kind} {count}" for kind, count in summary["violations"].items()]
    parts += [f"{count} {status}" for status, count in summary["other_failures"].items()]
    if summary["leftovers"]:
        parts.append(f"leftovers: {', '.join(summary['leftovers'])}")
    return "; ".join(parts) if parts else "none"


def _passed(summary: dict[str, Any]) -> str:
    text = f"{summary['passed']} / {summary['run']}"
    if summary["skipped"]:
        text += f" ({summary['skipped']} skipped)"
    if summary["not_run"]:
        text += f" ({summary['not_run']} not run)"
    return text


def scenario_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for s in summaries:
        t = s["totals"]
        wall = "–" if s["median_wall_s"] is None else f"{s['median_wall_s']:.1f}"
        clients = ", ".join(str(c) for c in s["clients"]) or "–"
        rows.append([f"`{s['scenario']}`", s["injected"], clients, _passed(s), wall,
                     f"{_n(t['sent'])} ({_n(t['unacked'])})", _n(t["received"]), _n(t["away"]),
                     _n(t["recovered"]), _n(t["told_not_recovered"]), _violations(s)])
    return rows


def _note(r: Round) -> str:
    if r.status == "skip":
        return f"skipped: {r.skipped}"
    if r.failure:
        return r.failure[1] if len(r.failure) > 1 and r.status == "fail" else r.failure[0]
    notes = [v.note for v in r.verdicts if v.note]
    if r.leftovers:
        notes.append(f"left behind: {', '.join(r.leftovers)}")
    return "; ".join(notes)


def round_rows(rounds: list[Round]) -> list[list[str]]:
    rows = []
    for r in rounds:
        vs = r.verdicts
        counts = {k: sum(getattr(v, k) for v in vs) for k in COUNTS}
        has = bool(vs)
        rows.append([
            f"`{r.scenario}`", str(r.round), r.status,
            f"{r.wall_s:.1f}" if r.status != "not run" else "–",
            ", ".join(str(v.clients) for v in vs) or "–",
            f"{_n(counts['sent'])} ({_n(counts['unacked'])})" if has else "–",
            _n(counts["received"]) if has else "–",
            (f"{_n(counts['away'])} ({_n(counts['recovered'])} / "
             f"{_n(counts['told_not_recovered'])})") if has else "–",
            _cell(_note(r))])
    return rows


def markdown(results: dict[str, Any], rounds: list[Round]) -> str:
    """The report: header, the scenario table, the round table, the failures."""
    s = results["settings"]
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v)
    clients = (f"FAULT_CLIENTS={s['clients']} where the scenario scales"
               if s["clients"] else "each scenario's own client count")
    lines = [
        "# Fault injection: the scenarios of `tests/faults`, run again and again",
        "",
        f"{results['started']}; {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"kernel {m['kernel']}; {versions}",
        "",
        f"`{results['command']}`",
        "",
        f"{s['rounds']} round(s) of {len(s['scenarios'])} scenario(s), {clients}; "
        f"each run bounded by {s['timeout_s']:.0f} s; elapsed {results['elapsed_s'] / 60:.1f} min"
        + (" (interrupted)" if results.get("interrupted") else "") + ".",
        "",
        "## Per scenario",
        "",
        *table(["scenario", "injected", "clients", "passed / run", "median wall s",
                "sent (unacked)", "received", "away", "recovered", "told not recovered",
                "violations"], scenario_rows(results["summary"])),
        "",
        "*sent*: messages the senders emitted (*unacked*: no ack within 8 s, so they may or "
        "may not have gone out; the checker expects none of them and forbids their "
        "duplicates); *received*: deliveries the clients recorded; *away*: disconnects, "
        "each followed by a resume that *recovered* the session (everything missed is "
        "replayed) or that *told* the client it was not recovered (the one signal that "
        "excuses a gap). *violations*: what the invariant checker found (per client, room "
        "and sender), and rounds that failed or timed out for another reason.",
        "",
        "## Per round",
        "",
        *table(["scenario", "round", "result", "wall s", "clients", "sent (unacked)",
                "received", "away (recovered / told not)", "note"], round_rows(rounds)),
    ]
    failed = [r for r in rounds if r.status in ("fail", "timeout", "error")]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines += [f"`{r.scenario}` round {r.round} ({r.status}, log `{r.log}`):", "",
                      "```", *r.failure, "```", ""]
    return "\n".join(lines).rstrip() + "\n"

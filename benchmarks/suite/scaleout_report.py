"""The scale-out benchmark's Markdown: a section per measurement, ratios, every round.

Figures are µs of CPU per emit (see :mod:`.scaleout_measure` and
:mod:`.scaleout_nodes`). A target's cell shows the median over its rounds
and the spread (lowest–highest of every round); for the uninvolved nodes,
both nodes of every round count; for the nodes measurement, one row per
target and node count.
"""

from __future__ import annotations

import statistics
from typing import Any

from .report import table
from .scaleout_measure import SCALEOUT_TARGETS

NODE, SHARDED = "node", "node-sharded"
# below this many µs per emit a ratio would only show noise
RATIO_FLOOR_US = 1.0
FIGURES = (("uninvolved", "node with no member of the room"),
           ("emitting", "emitting node"),
           ("redis", "Redis"))


def values(results: dict[str, Any], target: str, figure: str) -> list[float]:
    """Every round's value of ``figure`` for ``target`` (both uninvolved nodes per round)."""
    out: list[float] = []
    for run in results["runs"]:
        if run["target"] != target or "emitting_us" not in run:
            continue
        if figure == "uninvolved":
            out += run["uninvolved_us"]
        else:
            out.append(run[f"{figure}_us"])
    return out


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def cell(xs: list[float]) -> str:
    if not xs:
        return "—"
    return f"**{statistics.median(xs):.1f}** ({min(xs):.1f}–{max(xs):.1f})"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    if abs(b) < RATIO_FLOOR_US:
        return f"n/a (÷ {b:.1f} µs)"
    return f"{a / b:.2f}×"


def deliveries(results: dict[str, Any], target: str) -> str:
    runs = [r for r in results["runs"] if r["target"] == target and "windows" in r]
    if not runs:
        return "—"
    delivered = sum(w["delivered"] for r in runs for w in r["windows"])
    expected = sum(w["expected"] for r in runs for w in r["windows"])
    duplicates = sum(w["duplicates"] for r in runs for w in r["windows"])
    return f"{delivered:,}/{expected:,}" + (f", {duplicates:,} duplicates" if duplicates else "")


def markdown(results: dict[str, Any]) -> str:
    """The whole report: the run, then a section per measurement, then the errors."""
    s, m, v = results["settings"], results["machine"], results["versions"]
    quick = " (--quick smoke run, not figures)" if results["quick"] else ""
    measures = results.get("measures", ["uninvolved"])
    out = [f"# Scale-out{quick}",
           "",
           (f"{results['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
            f"Linux {m['kernel']}, Python {m['python']}; load average at start "
            f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}; {s['rounds']} round(s), "
            f"targets interleaved; {results['elapsed_s'] / 60:.1f} min."),
           "",
           "Versions: " + ", ".join(f"{name} {ver}" for name, ver in v.items() if ver) + ".",
           ""]
    if "uninvolved" in measures:
        out += uninvolved_section(results)
    if "nodes" in measures:
        out += nodes_section(results)
    if results["errors"]:
        out += ["", "## Errors", ""] + [f"- {e['what']}: {e['error']}" for e in results["errors"]]
    return "\n".join(out) + "\n"


def uninvolved_section(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    keys = [k for k in s["targets"] if k in SCALEOUT_TARGETS]
    out = ["## Uninvolved cost: a node with no member of the room", "",
           (f"Setup: {s['nodes']} nodes of each target share one Redis. One room's "
            f"{s['receivers']} receivers and its publisher (not a member) are on node 0; the "
            "other nodes hold no client. The publisher sends "
            f"{s['low_rate']:g} msg/s, then {s['high_rate']:g} msgs/s, each for a "
            f"{s['window_s']:g} s window after {s['warmup_s']:g} s of warm-up. CPU per emit is "
            "the slope between the two windows (CPU per second over emits per second), so "
            "idle cost cancels: node processes from /proc/PID/stat (utime+stime), Redis from "
            "INFO cpu. Median over rounds in bold, then the spread (lowest–highest; both "
            "uninvolved nodes of every round count). Resolution: one 10 ms clock tick over "
            f"a high window's emits ≈ {results.get('resolution_us', 0):.1f} µs."),
           ""]
    rows = []
    for key in keys:
        rows.append([SCALEOUT_TARGETS[key].label, cell(values(results, key, "uninvolved")),
                     cell(values(results, key, "emitting")), cell(values(results, key, "redis")),
                     deliveries(results, key)])
    out += table(["target", "each node with no member of the room, µs CPU per emit",
                  f"emitting node, µs CPU per emit ({s['receivers']} local receivers)",
                  "Redis, µs CPU per emit", "delivered / expected (both windows)"], rows)
    out += ["", "### Ratios of medians: target ÷ peer (lower is cheaper)", ""]
    ratio_rows = []
    for key in keys:
        for figure, name in FIGURES:
            a = median(values(results, key, figure))
            ratio_rows.append([f"{SCALEOUT_TARGETS[key].label}: {name}",
                               *("—" if key == peer else ratio(a, median(values(results, peer,
                                                                                figure)))
                                 for peer in (NODE, SHARDED))])
    out += table(["figure", f"÷ {SCALEOUT_TARGETS[NODE].label}",
                  f"÷ {SCALEOUT_TARGETS[SHARDED].label}"], ratio_rows)
    out += ["", "### Every round", ""]
    round_rows = []
    for run in results["runs"]:
        label = SCALEOUT_TARGETS[run["target"]].label
        if "emitting_us" not in run:
            round_rows.append([str(run["round"]), label, "failed", "", "", "", "", "", ""])
            continue
        low, high = run["windows"]
        round_rows.append([
            str(run["round"]), label,
            " / ".join(f"{x:.1f}" for x in run["uninvolved_us"]), f"{run['emitting_us']:.1f}",
            f"{run['redis_us']:.1f}",
            " / ".join(f"{x:.1f}" for x in run["idle_uninvolved_ms_per_s"]),
            f"{high['in_window_fraction']:.1%}" + (" (behind)" if run["behind"] else ""),
            f"{low['delivered']}/{low['expected']}, {high['delivered']}/{high['expected']}"
            + (f", {low['duplicates'] + high['duplicates']} dup." if low["duplicates"]
               + high["duplicates"] else ""),
            f"{run['subscribed']['connections']} ({run['subscribed']['channels']})"])
    out += table(["round", "target", "nodes 1 / 2, µs per emit", "node 0, µs per emit",
                  "Redis, µs per emit", "nodes 1 / 2 at the low rate, ms CPU/s",
                  "high window delivered in the window", "delivered/expected, low, high",
                  "Redis connections subscribed (channels)"], round_rows)
    out += ["", ("\"behind\": fewer than 95% of the high window's deliveries arrived before it "
                 "closed, so the emitting node fell behind and the uninvolved nodes saw fewer "
                 "emits than were sent (their per-emit figure is then too low)."), ""]
    return out


# -- cluster CPU against node count ----------------------------------------------------------

def nodes_values(results: dict[str, Any], target: str, count: int, figure: str,
                 user: bool = False) -> list[float]:
    """Every round's ``figure`` at ``count`` nodes (of the per-user window when ``user``)."""
    out = []
    for run in results.get("nodes_runs", []):
        if run["target"] != target or run["nodes"] != count or "cluster_us" not in run:
            continue
        source = run.get("user") if user else run
        if source is not None and figure in source:
            out.append(float(source[figure]))
    return out


def nodes_deliveries(results: dict[str, Any], target: str, count: int, windows: range) -> str:
    runs = [r for r in results.get("nodes_runs", [])
            if r["target"] == target and r["nodes"] == count and "windows" in r]
    picked = [w for r in runs for w in r["windows"] if w["phase"] in windows]
    if not picked:
        return "—"
    delivered = sum(w["delivered"] for w in picked)
    expected = sum(w["expected"] for w in picked)
    duplicates = sum(w["duplicates"] for w in picked)
    behind = sum(1 for w in picked if w["phase"] > 0 and w["in_window_fraction"] < 0.95)
    return (f"{delivered:,}/{expected:,}" + (f", {duplicates:,} dup." if duplicates else "")
            + (f", {behind} window(s) behind" if behind else ""))


def user_notes(results: dict[str, Any], target: str) -> str:
    notes = {r["user_note"] for r in results.get("nodes_runs", [])
             if r["target"] == target and r.get("user_note")}
    return "; ".join(sorted(notes)) or "not measured"


def nodes_section(results: dict[str, Any]) -> list[str]:
    s, n = results["settings"], results["nodes_settings"]
    keys = [k for k in s["targets"] if k in SCALEOUT_TARGETS]
    counts = n["node_counts"]
    out = ["## Cluster CPU per emit against node count", "",
           (f"Setup: {', '.join(map(str, counts))} nodes of each target share one Redis. "
            f"{n['rooms']} rooms of {n['room_size']} receivers ({n['receivers']} clients) "
            "connect round-robin straight to the nodes, as a balancer spreads them, so every "
            "node holds the same number of receivers and every room has members on every "
            "node. One publisher client per room, not a member, all on node 0. Windows: "
            f"{n['low_rate']:g} then {n['high_rate']:g} room emits/s in total (round-robin "
            f"over the rooms), then {n['user_rate']:g} emits/s"
            + (" per node" if n.get("user_rate_per_node") else "")
            + " from one process to per-user "
            "rooms (each receiver alone in its own room; this project: `workers.Emitter`), "
            f"each {n['window_s']:g} s after {n['warmup_s']:g} s of warm-up. CPU per emit is "
            "a slope against the first window, idle cost cancelling (see "
            "`benchmarks/suite/scaleout_nodes.py`); "
            "*cluster* is the sum over every node process, per delivery is that over the "
            "deliveries per emit. Median over rounds in bold, then the spread."),
           "", "### Room emits (rooms of "
           f"{n['room_size']} spread over every node)", ""]
    rows = []
    for key in keys:
        for count in counts:
            rows.append([SCALEOUT_TARGETS[key].label, str(count),
                         *(cell(nodes_values(results, key, count, figure)) for figure in
                           ("cluster_us", "per_delivery_us", "publishing_us", "other_us",
                            "redis_us")),
                         nodes_deliveries(results, key, count, range(0, 2))])
    out += table(["target", "nodes", "cluster, µs CPU per emit", "cluster, µs CPU per delivery",
                  "node 0 (publishers), µs per emit", "each other node, µs per emit",
                  "Redis, µs CPU per emit", "delivered / expected"], rows)
    out += ["", "### Per-user rooms (one emitting process, one delivery per emit)", ""]
    rows = []
    for key in keys:
        for count in counts:
            cluster = nodes_values(results, key, count, "cluster_us", user=True)
            if not cluster:
                rows.append([SCALEOUT_TARGETS[key].label, str(count), user_notes(results, key),
                             "", "", ""])
                continue
            rows.append([SCALEOUT_TARGETS[key].label, str(count), cell(cluster),
                         cell(nodes_values(results, key, count, "redis_us", user=True)),
                         cell(nodes_values(results, key, count, "publisher_us", user=True)),
                         nodes_deliveries(results, key, count, range(2, 3))])
    out += table(["target", "nodes", "cluster, µs CPU per emit", "Redis, µs CPU per emit",
                  "emitting process, µs CPU per emit", "delivered / expected"], rows)
    out += ["", "### Every round", ""]
    rows = []
    for run in results.get("nodes_runs", []):
        label = SCALEOUT_TARGETS[run["target"]].label
        if "cluster_us" not in run:
            rows.append([str(run["round"]), label, str(run["nodes"]), "failed", "", "", ""])
            continue
        user = run.get("user")
        rows.append([
            str(run["round"]), label, str(run["nodes"]),
            " / ".join(f"{x:.0f}" for x in run["per_node_us"]),
            f"{run['redis_us']:.1f}" + (" (behind)" if run["behind"] else ""),
            (" / ".join(f"{x:.0f}" for x in user["per_node_us"])
             + f", Redis {user['redis_us']:.1f}" + (" (behind)" if user["behind"] else ""))
            if user else "—",
            f"{run['subscribed']['connections']} ({run['subscribed']['channels']})"])
    out += table(["round", "target", "nodes", "room emit, µs per node (node 0 first)",
                  "room emit, Redis µs", "per-user emit, µs per node, Redis",
                  "Redis connections subscribed (channels)"], rows)
    out += ["", ("\"behind\": fewer than 95% of a window's deliveries arrived before it closed "
                 "(the cluster did not keep up with the rate, so its per-emit figures are too "
                 "low). Turn this into a prediction for 10 to 1,000 nodes with "
                 "`python -m benchmarks.capacity_model`."), ""]
    return out

"""What a soak run found: messages by phase, memory per node over time; JSON, Markdown, plot.

A message belongs to the phase of its send time:

- *around the Redis restart*: from 1 s before Redis is killed until 10 s
  after every node is ready again. Redis keeps nothing on disk here, so the
  recovery stream and the sessions are gone with it: losses there may be
  legitimate and are kept apart;
- *around node restarts*: from 1 s before a rolling restart's first SIGTERM
  until 5 s after its last node is UP in HAProxy;
- *steady*: the rest.

A message *counts* once it was emitted (its ack came back, or a listener got
it); each listener of its room then either got it (delivered), got it more
than once (duplicates) or never did (missed). A send with no ack that
nobody received is *unconfirmed*: the node went away under it, the sender
was told nothing; it is reported, not counted as missed.

Memory is judged per node *incarnation* (a rolling restart starts a fresh
process): the slope of VmRSS over the incarnation's steady samples from 20 s
after it was ready (during a restart window a node briefly holds the clients
moved off the others: load, not growth).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .report import write_files

PHASES = ("steady", "node_restarts", "redis_restart")
PHASE_LABELS = {"steady": "steady", "node_restarts": "around node restarts",
                "redis_restart": "around the Redis restart"}
NODE_MARGIN = (1.0, 5.0)    # seconds before the first SIGTERM, after the last node is UP
REDIS_MARGIN = (1.0, 10.0)  # seconds before the kill, after every node is ready again
WARM_S = 20.0               # an incarnation's first seconds (imports, first connections) aside
INTERVAL_S = 10.0


def windows(timeline: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Wall-clock (start, end) windows of the restart phases, from the cluster's timeline."""
    found: dict[str, list[tuple[float, float]]] = {"node_restarts": [], "redis_restart": []}
    start: dict[str, float] = {}
    for entry in timeline:
        kind = entry["kind"]
        if kind in ("rolling_start", "redis_kill"):
            start[kind] = entry["t"]
        elif kind == "rolling_end" and "rolling_start" in start:
            found["node_restarts"].append((start.pop("rolling_start") - NODE_MARGIN[0],
                                           entry["t"] + NODE_MARGIN[1]))
        elif kind == "redis_nodes_ready" and "redis_kill" in start:
            found["redis_restart"].append((start.pop("redis_kill") - REDIS_MARGIN[0],
                                           entry["t"] + REDIS_MARGIN[1]))
    # a phase still open when the run ended (interrupted, failed) lasts until the end
    for kind, phase in (("rolling_start", "node_restarts"), ("redis_kill", "redis_restart")):
        if kind in start:
            found[phase].append((start[kind] - 1.0, float("inf")))
    return found


def phase_of(t: float, wins: dict[str, list[tuple[float, float]]]) -> str:
    for phase in ("redis_restart", "node_restarts"):  # the Redis window wins an overlap
        if any(a <= t <= b for a, b in wins[phase]):
            return phase
    return "steady"


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def summarize_messages(traffic: dict[str, Any], timeline: list[dict[str, Any]],
                       t0: float) -> dict[str, Any]:
    """Per phase and per interval: sent, delivered, missed, duplicates, unconfirmed."""
    m = traffic["messages"]
    wins = windows(timeline)
    members = traffic["members"]
    empty = {"sent": 0, "counted": 0, "expected": 0, "delivered": 0, "missed": 0,
             "messages_with_miss": 0, "duplicates": 0, "unconfirmed": 0, "unacked_delivered": 0}
    phases = {p: dict(empty, slowest_ms=[]) for p in PHASES}
    intervals: dict[int, dict[str, int]] = {}
    for i, t_ms in enumerate(m["t"]):
        t = t_ms / 1000
        ph = phases[phase_of(t, wins)]
        slot = intervals.setdefault(int((t - t0) // INTERVAL_S),
                                    {"sent": 0, "delivered": 0, "missed": 0})
        ph["sent"] += 1
        slot["sent"] += 1
        counted = m["acked"][i] == 1 or m["delivered"][i] > 0
        if not counted:
            ph["unconfirmed"] += 1
            continue
        ph["counted"] += 1
        ph["expected"] += members[m["room"][i]]
        ph["delivered"] += m["delivered"][i]
        ph["missed"] += m["missed"][i]
        ph["messages_with_miss"] += 1 if m["missed"][i] else 0
        ph["duplicates"] += m["dups"][i]
        ph["unacked_delivered"] += 1 if m["acked"][i] != 1 else 0
        slot["delivered"] += m["delivered"][i]
        slot["missed"] += m["missed"][i]
        if m["latency_ms"][i] >= 0:
            ph["slowest_ms"].append(m["latency_ms"][i])
    for ph in phases.values():
        slow = ph.pop("slowest_ms")
        ph["slowest_receipt_p50_ms"] = percentile(slow, 0.5)
        ph["slowest_receipt_p99_ms"] = percentile(slow, 0.99)
        ph["slowest_receipt_max_ms"] = max(slow, default=None)
    total = {k: sum(ph[k] for ph in phases.values()) for k in empty}
    return {"phases": phases, "total": total, "windows": wins,
            "per_window": per_window(traffic, wins, t0),
            "intervals": [{"start_s": k * INTERVAL_S, **v} for k, v in sorted(intervals.items())]}


def per_window(traffic: dict[str, Any], wins: dict[str, list[tuple[float, float]]],
               t0: float) -> list[dict[str, Any]]:
    """Each restart window: listener reconnects (recovered or a new session) and misses.

    After the Redis restart the sessions are gone, so the next rolling
    restart's reconnects may be new sessions: this is where that shows.
    """
    m = traffic["messages"]
    rows = []
    for phase in ("node_restarts", "redis_restart"):
        for a, b in wins[phase]:
            recovered = fresh = 0
            for listener in traffic["listeners"]:
                for t_ms, was_recovered in listener.get("reconnects", []):
                    if a <= t_ms / 1000 <= b:
                        recovered += was_recovered
                        fresh += 1 - was_recovered
            missed = sum(m["missed"][i] for i, t_ms in enumerate(m["t"]) if a <= t_ms / 1000 <= b)
            rows.append({"phase": phase, "start_s": a - t0, "end_s": b - t0,
                         "recovered": recovered, "new_session": fresh, "missed": missed})
    return sorted(rows, key=lambda r: r["start_s"])


def memory(samples: list[dict[str, Any]], timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per node incarnation: RSS after warm-up, at the end, max, slope in MiB/min."""
    ready = {(e["node"], e["pid"]): e["t"] for e in timeline if e["kind"] == "ready"}
    # only steady samples: during a rolling restart a node briefly holds every moved
    # client, which is load, not growth, and would tilt the slope of its last minutes
    wins = windows(timeline)
    started = next((e for e in timeline if e["kind"] == "started"), None)
    first_t = started["t"] if started else 0.0
    series: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for row in samples:
        for name, node in row.get("nodes", {}).items():
            if node.get("rss_kib") is not None:
                series.setdefault((name, node["pid"]), []).append(
                    (row["t"], node["rss_kib"] / 1024))
    rows = []
    for (name, pid), points in sorted(series.items(), key=lambda kv: (kv[0][0], kv[1][0][0])):
        born = ready.get((name, pid), first_t)
        warm = [(t, v) for t, v in points if t >= born + WARM_S and phase_of(t, wins) == "steady"]
        slope = None
        if len(warm) >= 4 and warm[-1][0] - warm[0][0] >= 30:
            mean_t = statistics.fmean(t for t, _ in warm)
            mean_v = statistics.fmean(v for _, v in warm)
            var = sum((t - mean_t) ** 2 for t, _ in warm)
            slope = sum((t - mean_t) * (v - mean_v) for t, v in warm) / var * 60 if var else None
        rows.append({"node": name, "pid": pid, "samples": len(points),
                     "lived_s": points[-1][0] - points[0][0],
                     "rss_warm_mib": warm[0][1] if warm else None,
                     "rss_last_mib": points[-1][1], "rss_max_mib": max(v for _, v in points),
                     "slope_mib_per_min": slope})
    return rows


# -- Markdown ------------------------------------------------------------------------------

def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(results: dict[str, Any]) -> str:
    s, lines = results["settings"], []
    lines += [f"# Soak: {s['minutes']:.3g} min of chat traffic on {s['nodes']} nodes"
              f"{' (--quick: a smoke run)' if results['quick'] else ''}", "",
              f"{results['date']}; {results['machine']['cpu']}, {results['machine']['cores']} "
              f"cores, Python {results['machine']['python']}; "
              + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v), "",
              f"`python -m benchmarks.soak {' '.join(s['argv'])}`".replace(" `", "`"), "",
              f"{s['traffic']['listeners']} listeners in {s['traffic']['rooms']} rooms, "
              f"{s['traffic']['senders']} senders at {s['traffic']['rate']:g} messages/s in total, "
              f"{s['traffic']['churners']} churn loops ({s['traffic']['churn_messages']} messages "
              f"per cycle); all through HAProxy ({'+'.join(s['traffic']['transports'])}); "
              f"recovery window {s['recovery_window']:g} s; a rolling restart at "
              f"{', '.join(f'{x:g}' for x in s['restarts_at_s'])} s, Redis restarted (SIGKILL) at "
              f"{_f(s['redis_at_s'], 0)} s; elapsed {results['elapsed_s'] / 60:.1f} min.", ""]
    if results.get("interrupted"):
        lines += ["**Interrupted**: the figures cover what ran.", ""]
    summary = results.get("messages")
    if summary:
        lines += ["## Messages", "",
                  "| phase | sent | counted | deliveries expected | delivered | missed | "
                  "messages with a miss | duplicates | unconfirmed | slowest receipt p50 / p99 / "
                  "max ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for phase in PHASES:
            ph = summary["phases"][phase]
            lines.append(f"| {PHASE_LABELS[phase]} | {_f(ph['sent'])} | {_f(ph['counted'])} | "
                         f"{_f(ph['expected'])} | {_f(ph['delivered'])} | {_f(ph['missed'])} | "
                         f"{_f(ph['messages_with_miss'])} | {_f(ph['duplicates'])} | "
                         f"{_f(ph['unconfirmed'])} | {_f(ph['slowest_receipt_p50_ms'], 0)} / "
                         f"{_f(ph['slowest_receipt_p99_ms'], 0)} / "
                         f"{_f(ph['slowest_receipt_max_ms'], 0)} |")
        tot = summary["total"]
        lines.append(f"| **total** | {_f(tot['sent'])} | {_f(tot['counted'])} | "
                     f"{_f(tot['expected'])} | {_f(tot['delivered'])} | {_f(tot['missed'])} | "
                     f"{_f(tot['messages_with_miss'])} | {_f(tot['duplicates'])} | "
                     f"{_f(tot['unconfirmed'])} | |")
        lines += ["", "*counted*: emitted (acked, or received by someone); *unconfirmed*: no "
                  "ack and nobody got it; *slowest receipt*: per message, its last listener's "
                  "latency (replays after a reconnect show here).", ""]
        traffic = results["traffic"]
        per = traffic["listeners"]
        delivered = [p["delivered"] for p in per]
        lat = traffic["latency_ms"]
        lines += ["## Clients", "",
                  f"- delivered per listener: min {_f(min(delivered))}, median "
                  f"{_f(statistics.median(delivered))}, max {_f(max(delivered))}; listeners with "
                  f"a miss: {sum(1 for p in per if p['missed'])} of {len(per)}",
                  f"- listener reconnects: {sum(p['connects'] - 1 for p in per)} "
                  f"(recovered {sum(p['recovered'] for p in per)}, new session "
                  f"{sum(p['fresh'] for p in per)}, rejoin failed "
                  f"{sum(p['rejoin_failed'] for p in per)}); connect errors "
                  f"{sum(p['connect_errors'] for p in per)}; connected at the end "
                  f"{sum(1 for p in per if p['connected'])}",
                  f"- delivery latency (every receipt): p50 {_f(lat['p50'], 0)} ms, p99 "
                  f"{_f(lat['p99'], 0)} ms, p99.9 {_f(lat['p999'], 0)} ms",
                  f"- churn: {_f(traffic['churn']['cycles'])} cycles, {_f(traffic['churn']['ok'])} "
                  f"ok, {_f(traffic['churn']['failed'])} failed"
                  + (f" ({'; '.join(f'{k}: {v}' for k, v in traffic['churn']['errors'].items())})"
                     if traffic["churn"]["errors"] else ""),
                  f"- sends skipped while every sender was reconnecting: "
                  f"{_f(traffic['skipped_sends'])}; acks still pending at the end: "
                  f"{_f(traffic['pending_acks'])}; drain after the stop: "
                  f"{_f(traffic['drained_s'])} s", ""]
    lines += ["## Disturbances", "", "| at s | what | took s |", "| ---: | --- | ---: |"]
    for d in results.get("disturbances", []):
        lines.append(f"| {d['at_s']:.0f} | {d['what']} | {_f(d.get('took_s'))} |")
    if summary and summary.get("per_window"):
        lines += ["", "Listener reconnects and misses per window (by send time):", "",
                  "| window s | phase | reconnects recovered | reconnects with a new session | "
                  "missed |", "| --- | --- | ---: | ---: | ---: |"]
        for w in summary["per_window"]:
            end = "end" if w["end_s"] == float("inf") else f"{w['end_s']:.0f}"
            lines.append(f"| {w['start_s']:.0f}-{end} | {PHASE_LABELS[w['phase']]} | "
                         f"{w['recovered']} | {w['new_session']} | {w['missed']} |")
        redis_starts = [w["start_s"] for w in summary["per_window"]
                        if w["phase"] == "redis_restart"]
        after = [w for w in summary["per_window"] if w["phase"] == "node_restarts"
                 and w["new_session"] and any(r < w["start_s"] for r in redis_starts)]
        if after:
            lines += ["", "New sessions in a node restart after the Redis restart ("
                      + ", ".join(f"{w['start_s']:.0f} s: {w['new_session']}, {w['missed']} missed"
                                  for w in after)
                      + "): the resume ids and recovery stream lived in the Redis that was lost, "
                      "so those reconnects could not recover; their misses follow from the Redis "
                      "restart."]
    lines += ["", "## Node memory", "",
              f"VmRSS per node incarnation (a restart starts a fresh process); warm = first "
              f"steady sample {WARM_S:g} s after ready; slope: least squares over the steady "
              f"samples from there (restart windows left out: a node then holds the moved "
              f"clients); last and max: every sample.", "",
              "| node | pid | lived s | RSS warm MiB | RSS last MiB | RSS max MiB "
              "| slope MiB/min |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in results.get("memory", []):
        lines.append(f"| {row['node']} | {row['pid']} | {row['lived_s']:.0f} | "
                     f"{_f(row['rss_warm_mib'])} | {_f(row['rss_last_mib'])} | "
                     f"{_f(row['rss_max_mib'])} | {_f(row['slope_mib_per_min'], 2)} |")
    redis_rss = [r["redis_rss_kib"] for r in results.get("samples", []) if r.get("redis_rss_kib")]
    if redis_rss:
        lines += ["", f"Redis VmRSS: first {redis_rss[0] / 1024:.1f} MiB, last "
                      f"{redis_rss[-1] / 1024:.1f} MiB, max {max(redis_rss) / 1024:.1f} MiB."]
    if results.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e['what']}: {e['error'][:500]}"
                                          for e in results["errors"]]
    return "\n".join(lines) + "\n"


# -- the plot ------------------------------------------------------------------------------

def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = results.get("t0") or (results["samples"][0]["t"] if results.get("samples") else 0.0)
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    names = sorted({n for r in results.get("samples", []) for n in r.get("nodes", {})})
    # more nodes than colours: the rest get matplotlib's own (colors.get below)
    colors = dict(zip(names, ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"),
                      strict=False))
    for name in names:
        pts = [((r["t"] - t0) / 60, r["nodes"][name]) for r in results["samples"]
               if name in r.get("nodes", {})]
        # one line per incarnation: a restart is a new process, not a drop in memory
        for k, pid in enumerate(dict.fromkeys(n["pid"] for _, n in pts)):
            mine = [(x, n["rss_kib"] / 1024) for x, n in pts
                    if n["pid"] == pid and n.get("rss_kib")]
            axes[0].plot([x for x, _ in mine], [v for _, v in mine], label=name if k == 0 else None,
                         color=colors.get(name), linewidth=1.2, marker=".", markersize=3)
        axes[1].plot([x for x, n in pts if n.get("connections") is not None],
                     [n["connections"] for _, n in pts if n.get("connections") is not None],
                     label=name, color=colors.get(name), linewidth=1.0)
    redis = [((r["t"] - t0) / 60, r["redis_rss_kib"] / 1024) for r in results.get("samples", [])
             if r.get("redis_rss_kib")]
    if redis:
        axes[0].plot([x for x, _ in redis], [v for _, v in redis], color="grey", linestyle="--",
                     linewidth=0.8, label="redis-server")
    wins = (results.get("messages") or {}).get("windows") or {}
    for ax in axes:
        for a, b in wins.get("node_restarts", []):
            ax.axvspan((a - t0) / 60, (min(b, a + 3600) - t0) / 60, color="grey", alpha=0.12)
        for a, b in wins.get("redis_restart", []):
            ax.axvspan((a - t0) / 60, (min(b, a + 3600) - t0) / 60, color="red", alpha=0.12)
        for e in results.get("timeline", []):
            if e["kind"] == "sigterm":
                ax.axvline((e["t"] - t0) / 60, color=colors.get(e["node"], "black"),
                           linestyle=":", linewidth=0.9)
            elif e["kind"] == "redis_kill":
                ax.axvline((e["t"] - t0) / 60, color="red", linewidth=1.2)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("node VmRSS (MiB)")
    axes[0].set_title("memory per node (dotted: SIGTERM of that node; grey: rolling restart; "
                      "red: Redis restart)", fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].set_ylabel("socketio_connections")
    intervals = (results.get("messages") or {}).get("intervals") or []
    if intervals:
        xs = [(i["start_s"]) / 60 for i in intervals]
        width = 10 / 60 * 0.8
        axes[2].bar(xs, [i["delivered"] for i in intervals], width=width, align="edge",
                    color="tab:blue", alpha=0.6, label="delivered")
        twin = axes[2].twinx()
        twin.bar(xs, [i["missed"] for i in intervals], width=width, align="edge", color="red",
                 alpha=0.8, label="missed")
        twin.set_ylim(0, max(1, max(i["missed"] for i in intervals)) * 1.15)
        twin.set_ylabel("missed (red)")
        axes[2].legend(fontsize=7, loc="upper left")
    axes[2].set_ylabel("deliveries per 10 s (by send time)")
    axes[2].set_xlabel("minutes since the traffic started")
    fig.suptitle(f"soak, {results['date']}, {results['settings']['nodes']} nodes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], prefix: Path) -> list[Path]:
    """``prefix``.json, .md and .png; the JSON and Markdown even if the plot fails."""
    # appended, not with_suffix: "soak.quick" keeps its dot
    json_path, md_path, png_path = (Path(f"{prefix}{x}") for x in (".json", ".md", ".png"))
    return write_files(results, json_path, md_path, png_path, markdown, plot)

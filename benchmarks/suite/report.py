"""What a run found: the machine, the versions, then JSON, a Markdown table and a plot.

The raw results (every step of every ladder) go to JSON; the Markdown keeps
one row per target and the headline ratios of this project against each peer,
with medians over the rounds (every round's value is shown too).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .targets import TARGETS, haproxy_executable, node_executable, node_package_version

SELF, FSIO, NODE, RECOVERY = "cluster", "flask-socketio", "node", "cluster-recovery"
GEVENT = "cluster-gevent"


# -- where and with what ---------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()}


def _first_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in ("python-socketio", "python-engineio", "eventlet", "Flask-SocketIO", "Flask",
                 "redis", "celery"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    for package in ("socket.io", "socket.io-client", "@socket.io/redis-adapter", "redis"):
        found[f"npm {package}"] = node_package_version(package)
    found["node"] = _first_line([node_executable(), "--version"])
    redis = _first_line(["redis-server", "--version"]) or ""
    found["redis-server"] = next((w[2:] for w in redis.split() if w.startswith("v=")), None)
    haproxy = (_first_line([haproxy_executable(), "-v"]) or "").split()
    found["haproxy"] = haproxy[2] if len(haproxy) > 2 else None
    return found


# -- summaries ---------------------------------------------------------------------------

def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def runs_of(results: dict[str, Any], target: str, scenario: str) -> list[dict[str, Any]]:
    return [r for r in results["ladders"] if r["target"] == target and r["scenario"] == scenario]


def summary(results: dict[str, Any], target: str, scenario: str) -> dict[str, Any]:
    """Per-round and median figures of one target in one scenario."""
    runs = runs_of(results, target, scenario)
    maxima = [r["max"]["delivered_per_s"] if r.get("max") else 0.0 for r in runs if "steps" in r]
    # a ladder whose first rung already failed: below that rung, not zero
    labels = [k(r["max"]["delivered_per_s"]) if r.get("max")
              else f"< {k(r['steps'][0]['target_delivered_per_s'])}" if r.get("steps")
              else "failed" for r in runs]
    cpu = [r["max"]["node_cpu_us_per_delivery"] for r in runs
           if r.get("max") and r["max"].get("node_cpu_us_per_delivery") is not None]
    half = [r["half"] for r in runs if r.get("half")]
    # the first rung has the same rate for every target: segments compare there
    first = [r["steps"][0] for r in runs if r.get("steps")]
    peaks = [r["max"] for r in runs if r.get("max")]

    def segments(steps: list[dict[str, Any]], way: str) -> float | None:
        return median([s[way] for s in steps if s.get(way) is not None])

    return {"rounds": len(runs), "max": maxima, "max_labels": labels,
            "segs_first": (segments(first, "segs_out_per_delivery"),
                           segments(first, "segs_in_per_delivery")),
            "segs_max": (segments(peaks, "segs_out_per_delivery"),
                         segments(peaks, "segs_in_per_delivery")),
            "first_rung": first[0]["target_delivered_per_s"] if first else None,
            "max_median": median(maxima),
            "cpu_us": cpu, "cpu_us_median": median(cpu),
            "half_p50": median([h["p50_ms"] for h in half if h["p50_ms"] is not None]),
            "half_p99": median([h["p99_ms"] for h in half if h["p99_ms"] is not None]),
            "half_loss": median([h["loss"] for h in half]),
            "deflated": [r["ready"].get("deflated") for r in runs if r.get("ready")],
            "failed": [r["error"] for r in runs if r.get("error")]}


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def k(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1000:.1f}k"


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# -- Markdown --------------------------------------------------------------------------

def markdown(results: dict[str, Any]) -> str:
    scenarios: list[str] = results["settings"]["scenarios"]
    deflate = results["settings"]["deflate_scenario"]
    targets = [t for t in results["settings"]["targets"] if t in TARGETS]
    m, v = results["machine"], results["versions"]
    out = [f"# Fan-out benchmark{' (--quick smoke run, not figures)' if results['quick'] else ''}",
           "",
           (f"{results['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
            f"Linux {m['kernel']}, Python {m['python']}; load average at start "
            f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}; "
            f"{results['settings']['rounds']} round(s), targets interleaved; "
            f"{results['elapsed_s'] / 60:.1f} min."),
           "",
           "Versions: " + ", ".join(f"{name} {ver}" for name, ver in v.items() if ver) + ".",
           "",
           (f"Ladder: a step passes with p99 ≤ {results['settings']['max_p99_ms']:g} ms and "
            f"loss ≤ {100 * results['settings']['max_loss']:g}%; steps of "
            f"{results['settings']['step_s']:g} s after {results['settings']['warmup_s']:g} s of "
            "warm-up; N×C = N nodes, C clients in total in one room. Medians over rounds; "
            "each round's value in brackets."),
           ""]
    headers = ["target"] + [f"{s} max delivered/s" for s in scenarios] + [
        f"node CPU µs/delivery at max ({' / '.join(scenarios)})",
        f"p50 / p99 ms at half load ({'; '.join(scenarios)})",
        f"TCP segments per delivery, to / from clients, at the first rung; at max "
        f"({'; '.join(scenarios)})",
        "idle KiB/websocket (" + " / ".join(results["settings"]["memory_counts_label"]) + ")",
        f"{deflate.removesuffix('+deflate')} deflate offered: max delivered/s",
        "SIGKILL → first message, p50 ms (recovered, messages missed)"]
    rows = []
    for t in targets:
        sums = {s: summary(results, t, s) for s in scenarios}
        d = summary(results, t, deflate)
        row = [TARGETS[t].label]
        for s in scenarios:
            x = sums[s]
            row.append(f"{k(x['max_median'])} [{', '.join(x['max_labels'])}]"
                       if x["rounds"] else "not run")
        row.append(" / ".join(num(sums[s]["cpu_us_median"]) for s in scenarios))
        row.append("; ".join(f"{num(sums[s]['half_p50'])} / {num(sums[s]['half_p99'])}"
                             for s in scenarios))
        row.append("; ".join(
            f"{num(sums[s]['segs_first'][0], 2)} / {num(sums[s]['segs_first'][1], 2)}, "
            f"{num(sums[s]['segs_max'][0], 2)} / {num(sums[s]['segs_max'][1], 2)}"
            for s in scenarios))
        mem = results["memory"].get(t)
        row.append(" / ".join(num(mem["kib_per_connection"].get(str(c)))
                              for c in results["settings"]["memory_counts"]) if mem else "—")
        if d["rounds"]:
            accepted = d["deflated"][0] if d["deflated"] else None
            row.append(f"{k(d['max_median'])} (accepted by {accepted} clients)")
        else:
            row.append("—")
        f = results["failover"].get(t)
        row.append(f"{num(f['first_message_ms_p50'], 0)} ({f['recovered']}/{f['on_victim']}, "
                   f"{f['missed_total']})" if f else "—")
        rows.append(row)
    out += table(headers, rows)
    saturated = [f"{TARGETS[r['target']].label} {r['scenario']} round {r['round']}"
                 for r in results["ladders"]
                 if r.get("stopped_by") and r["stopped_by"].get("loadgen_saturated")]
    if saturated:
        out += ["", "The load generator used ≥ 90% of a core on the step that stopped these "
                    "ladders, so it, not the target, may have been the limit: "
                    + "; ".join(saturated) + "."]
    out += ["", "## Headline ratios: this project ÷ peer", ""]
    out += ratio_rows(results, scenarios, deflate)
    celery = results.get("celery")
    if celery:
        out += ["", (f"## Celery to client (this project, 2 nodes, {celery['clients']} clients "
                     f"in the room, {celery['count']} messages at {celery['rate']:g}/s)"), ""]
        out += table(["path", "delivered", "p50 ms", "p99 ms"], [
            [name, f"{x['delivered']}/{x['expected']}", num(x["p50_ms"]), num(x["p99_ms"])]
            for name, x in (("Celery task (apply_async → worker → bus)", celery["kinds"]["celery"]),
                            ("workers.Emitter.emit", celery["kinds"]["emitter"]))])
    if results["failover"]:
        out += ["", "## Resume after the client's node is SIGKILLed (2 nodes behind HAProxy)", ""]
        out += table(["target", "clients on the killed node", "reconnect p50 / max ms",
                      "first message p50 / max ms", "recovered",
                      "messages missed (all its clients)"], [
            [TARGETS[t].label, str(f["on_victim"]),
             f"{num(f['reconnect_ms_p50'], 0)} / {num(f['reconnect_ms_max'], 0)}",
             f"{num(f['first_message_ms_p50'], 0)} / {num(f['first_message_ms_max'], 0)}",
             f"{f['recovered']}/{f['on_victim']}", str(f["missed_total"])]
            for t, f in results["failover"].items()])
    if results["errors"]:
        out += ["", "## Errors", ""] + [f"- {e['what']}: {e['error']}" for e in results["errors"]]
    return "\n".join(out) + "\n"


def ratio_rows(results: dict[str, Any], scenarios: list[str], deflate: str) -> list[str]:
    rows = []
    for s in scenarios:
        a, b, c = (summary(results, t, s) for t in (SELF, FSIO, NODE))
        rows.append([f"max delivered/s, {s} (higher is better)",
                     ratio(a["max_median"], b["max_median"]),
                     ratio(a["max_median"], c["max_median"])])
        rows.append([f"node CPU per delivery at max, {s} (lower is better)",
                     ratio(a["cpu_us_median"], b["cpu_us_median"]),
                     ratio(a["cpu_us_median"], c["cpu_us_median"])])
        rows.append([f"p99 at half load, {s} (lower is better)",
                     ratio(a["half_p99"], b["half_p99"]),
                     ratio(a["half_p99"], c["half_p99"])])
    mem = results["memory"]
    for count in results["settings"]["memory_counts"]:
        per = {t: (mem[t]["kib_per_connection"].get(str(count)) if t in mem else None)
               for t in (SELF, FSIO, NODE)}
        rows.append([f"idle memory per websocket at {count:,} (lower is better)",
                     ratio(per[SELF], per[FSIO]), ratio(per[SELF], per[NODE])])
    a, b, c = (summary(results, t, deflate) for t in (SELF, FSIO, NODE))
    rows.append([f"max delivered/s, deflate offered, {deflate}",
                 ratio(a["max_median"], b["max_median"]),
                 ratio(a["max_median"], c["max_median"])])
    lines = table(["figure", "vs Flask-SocketIO", "vs Node socket.io"], rows)
    for s in scenarios:
        on, off = summary(results, RECOVERY, s), summary(results, SELF, s)
        if on["rounds"] and off["rounds"]:
            lines.append(f"\nConnection state recovery on ÷ off, max delivered/s {s}: "
                         f"{ratio(on['max_median'], off['max_median'])}")
    lines += runtime_lines(results, scenarios)
    return lines


def runtime_lines(results: dict[str, Any], scenarios: list[str]) -> list[str]:
    """gevent ÷ eventlet (the same node on the other runtime), where both ran."""
    lines = []
    for s in scenarios:
        ge, ev = summary(results, GEVENT, s), summary(results, SELF, s)
        if ge["rounds"] and ev["rounds"]:
            lines.append(f"\ngevent ÷ eventlet, {s}: max delivered/s "
                         f"{ratio(ge['max_median'], ev['max_median'])}, node CPU per delivery "
                         f"{ratio(ge['cpu_us_median'], ev['cpu_us_median'])}, p99 at half load "
                         f"{ratio(ge['half_p99'], ev['half_p99'])}")
    mem = results["memory"]
    if GEVENT in mem and SELF in mem:
        for count in results["settings"]["memory_counts"]:
            ge_kib = mem[GEVENT]["kib_per_connection"].get(str(count))
            ev_kib = mem[SELF]["kib_per_connection"].get(str(count))
            lines.append(f"\ngevent ÷ eventlet, idle memory per websocket at {count:,}: "
                         f"{ratio(ge_kib, ev_kib)}")
    return lines


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
            + ["| " + " | ".join(r) + " |" for r in rows])


# -- the plot -----------------------------------------------------------------------------

def plot(results: dict[str, Any], path: Path) -> None:
    """delivered/s and p99 against publish rate, one panel row per scenario."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    scenarios = [*results["settings"]["scenarios"], results["settings"]["deflate_scenario"]]
    scenarios = [s for s in scenarios if any(r["scenario"] == s for r in results["ladders"])]
    if not scenarios:
        return
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(12, 3.6 * len(scenarios)), squeeze=False)
    palette = ("tab:blue", "tab:cyan", "tab:purple", "tab:orange", "tab:green")
    colors = dict(zip(TARGETS, palette, strict=True))  # one per target: add one with a target
    styles = ("-", "--", ":", "-.")
    for row, scenario in zip(axes, scenarios, strict=True):
        for run in results["ladders"]:
            if run["scenario"] != scenario or not run.get("steps"):
                continue
            steps = sorted((s for s in run["steps"] if s["label"] == "ladder"),
                           key=lambda s: s["rate"])
            rates = [s["rate"] for s in steps]
            style: dict[str, Any] = {
                "color": colors.get(run["target"]), "marker": "o", "markersize": 3,
                "linestyle": styles[(run["round"] - 1) % len(styles)],
                "label": f"{TARGETS[run['target']].label} (round {run['round']})"}
            row[0].plot(rates, [s["delivered_per_s"] for s in steps], **style)
            row[1].plot(rates, [s["p99_ms"] if s["p99_ms"] is not None else float("nan")
                                for s in steps], **style)
            failed = [s for s in steps if not s["passed"]]  # the step that ended the climb
            row[0].scatter([s["rate"] for s in failed], [s["delivered_per_s"] for s in failed],
                           marker="x", s=60, color=style["color"], zorder=3)
            top = max(rates, default=0)
            row[0].plot([0, top], [0, top * run["clients"]], color="grey", linewidth=0.6,
                        linestyle=":")  # every message delivered to every client
        row[0].set_title(f"{scenario}: delivered/s (x: failed step; dotted: all delivered)")
        row[1].set_title(f"{scenario}: p99 latency")
        row[1].axhline(results["settings"]["max_p99_ms"], color="grey", linewidth=0.8)
        row[1].set_yscale("log")
        for ax in row:
            ax.set_xlabel("publish rate (messages/s)")
            ax.grid(True, alpha=0.3)
        row[0].set_ylabel("deliveries/s")
        row[1].set_ylabel("ms (log)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"fan-out, {results['date']}, {results['machine']['cpu']} "
                 f"({results['machine']['cores']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], prefix: Path, plot_path: Path) -> list[Path]:
    return write_files(results, prefix.with_suffix(".json"), prefix.with_suffix(".md"),
                       plot_path, markdown, plot)


def write_files(results: dict[str, Any], json_path: Path, md_path: Path, plot_path: Path,
                render: Callable[[dict[str, Any]], str],
                draw: Callable[[dict[str, Any], Path], None]) -> list[Path]:
    """The JSON, the Markdown ``render`` makes and the plot ``draw`` makes;
    the JSON and Markdown are kept even if the plot fails."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(render(results))
    try:
        draw(results, plot_path)
    except Exception as exc:  # noqa: BLE001 - the figures are written already
        print(f"the plot failed: {type(exc).__name__}: {exc}")
        return [json_path, md_path]
    return [json_path, md_path, plot_path]

"""Predict cluster throughput at 10, 100 and 1,000 nodes from the scale-out measurements.

Reads the JSON that ``python -m benchmarks.scaleout`` writes (both
measurements in one file, or ``uninvolved`` and ``nodes`` in two), fits six
costs per target, in µs of CPU, medians over rounds:

=====  ==========================================================================
``e``  the publishing node, per emit, beyond its own local deliveries
``d``  per delivery: one member of the room on a node, per emit
``r``  a node holding ≥ 1 member of the room, per emit it reads from Redis
``u``  a node holding no member, per emit of the cluster (≈ 0 when the target
       routes by room; ~200 µs for this project before it did)
``Re`` Redis, per emit (the PUBLISH)
``Rs`` Redis, per subscribed node the message goes out to
=====  ==========================================================================

Where they come from. In the *nodes* measurement (``m``-member rooms
spread over ``n`` nodes, every publisher on node 0, every node holding
``m / n`` members of an average room), each other node pays ``r + d·m/n``
per emit and node 0 ``e + d·m/n``. A least-squares line through the other
nodes' cost against ``m/n`` over the node counts gives ``r`` (intercept) and
``d`` (slope); ``e`` is node 0's cost less its deliveries, averaged. Redis
pays ``Re + Rs·k`` with ``k`` the nodes subscribed: a line against ``k``.
``u`` is the *uninvolved* measurement's figure. A target routes by room
when ``u`` ≤ 20% of ``r``: then a node holding no member is not subscribed
and Redis sends an emit only to the nodes holding members; otherwise every
node is subscribed to everything.

The model, per emit to a room of ``s`` members spread uniformly over ``N``
nodes, published by a node chosen uniformly::

    k = N · (1 - (1 - 1/N)^s)                 nodes holding ≥ 1 member
    nodes:  e + s·d + r·(k - k/N) + u·(N - 1 - k + k/N)
    Redis:  Re + Rs·(k if it routes else N)

With a share ``p_s`` of the emits going to rooms of ``s``, the cluster
carries ``min(N·B / Σ p_s·nodes_s, R / Σ p_s·Redis_s)`` emits/s at ``B``
cores per node and ``R`` cores of Redis (one: Redis runs commands on one
thread, and this is one Redis, not Redis Cluster); deliveries/s are that
times ``Σ p_s·s``. The load spreads evenly because publishers and members
do.

The check puts the fitted model against what was measured: the room emits at
each node count (with three or more node counts the parameters are fit
without that count's points, so it is a prediction, not a residual), the
per-user window (``r + d``, plus ``(n-1)·u`` when not routed; not used by the
fit) and the uninvolved measurement's emitting node (``e + d·receivers``)
and Redis. Run from the repository root::

    .venv/bin/python -m benchmarks.capacity_model benchmarks/results/scaleout.json
    .venv/bin/python -m benchmarks.capacity_model a.json b.json --rooms 1:50,100:50 --cpu-per-node 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_ROOMS = "1:70,10:25,1000:5"
# a target "routes by room" when a node with no member pays at most this share of a receive
ROUTED_FRACTION = 0.2
# nodes of each target in the uninvolved measurement (benchmarks.suite.scaleout_measure.NODES)
UNINVOLVED_NODES = 3


class ModelError(ValueError):
    """The results lack what a target's parameters need; the message says which run to add."""


@dataclass
class Params:
    """One target's fitted costs (µs of CPU); see the module docstring."""

    target: str
    e: float
    d: float
    r: float
    u: float
    redis_emit: float
    redis_sub: float
    routed: bool
    notes: list[str] = field(default_factory=list)

    def clamped(self) -> Params:
        """The same with negative fits (noise) at 0, as a prediction must use them."""
        values = {k: max(0.0, getattr(self, k)) for k in ("e", "d", "r", "u", "redis_emit",
                                                           "redis_sub")}
        return Params(self.target, routed=self.routed, notes=self.notes, **values)


# -- reading the results -----------------------------------------------------------------

@dataclass
class Measured:
    """What the files hold, by target: medians of the nodes runs per node count, uninvolved."""

    room_size: int = 0
    points: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    uninvolved: dict[str, dict[str, float]] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)


def load(paths: Sequence[Path]) -> Measured:
    runs: list[dict[str, Any]] = []
    nodes_runs: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(path.read_text())
        runs += [r for r in data.get("runs", []) if "emitting_us" in r]
        nodes_runs += [r for r in data.get("nodes_runs", []) if "cluster_us" in r]
    out = Measured()
    sizes = {r["settings"]["room_size"] for r in nodes_runs}
    if len(sizes) > 1:
        raise ModelError(f"the files mix room sizes {sorted(sizes)}: give runs of one size")
    out.room_size = sizes.pop() if sizes else 0
    for run in nodes_runs:
        if run["target"] not in out.targets:
            out.targets.append(run["target"])
    for target in out.targets:
        by_count: dict[int, list[dict[str, Any]]] = {}
        for run in nodes_runs:
            if run["target"] == target:
                by_count.setdefault(run["nodes"], []).append(run)
        out.points[target] = {n: _medians(rs) for n, rs in sorted(by_count.items())}
    for target in {r["target"] for r in runs}:
        mine = [r for r in runs if r["target"] == target]
        out.uninvolved[target] = {
            "u": statistics.median(x for r in mine for x in r["uninvolved_us"]),
            "emitting": statistics.median(r["emitting_us"] for r in mine),
            "redis": statistics.median(r["redis_us"] for r in mine),
            "receivers": mine[0]["settings"]["receivers"]}
    return out


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    point = {key: statistics.median(r[key] for r in runs)
             for key in ("cluster_us", "publishing_us", "other_us", "redis_us")}
    users = [r["user"] for r in runs if r.get("user")]
    if users:
        point["user_cluster_us"] = statistics.median(u["cluster_us"] for u in users)
        point["user_redis_us"] = statistics.median(u["redis_us"] for u in users)
    return point


# -- fitting -----------------------------------------------------------------------------

def line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares ``y = a + b·x``: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ModelError("a line needs two different node counts")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def holders(room_size: int, n: int) -> float:
    """Nodes holding ≥ 1 member of a room in the measured layout: min(m, n).

    Receiver k is on node k mod n and room i holds receivers i·m ... i·m + m - 1,
    ``m`` consecutive numbers, so ``m`` different nodes or all ``n``.
    """
    return float(min(room_size, n))


def fit(measured: Measured, target: str, leave_out: int | None = None) -> Params:
    """``target``'s parameters from its node counts (without ``leave_out``'s)."""
    points = {n: p for n, p in measured.points.get(target, {}).items() if n != leave_out}
    if len({*points}) < 2:
        raise ModelError(f"{target}: needs the nodes measurement at two node counts or more "
                         f"(has {sorted(measured.points.get(target, {}))})")
    if target not in measured.uninvolved:
        raise ModelError(f"{target}: needs the uninvolved measurement too "
                         f"(python -m benchmarks.scaleout --measure uninvolved)")
    m = measured.room_size
    counts = sorted(points)
    if counts[-1] > m:
        # then some nodes hold no member of a room and pay u, not r: not this line
        raise ModelError(f"{target}: the fit needs every room on every node (node counts "
                         f"≤ room size {m}; got {counts[-1]})")
    # members of an average room on each node
    share = {n: m / n for n in counts}
    r, d = line([share[n] for n in counts], [points[n]["other_us"] for n in counts])
    e = statistics.fmean(points[n]["publishing_us"] - d * share[n] for n in counts)
    u = measured.uninvolved[target]["u"]
    routed = u <= ROUTED_FRACTION * max(r, 0.0)
    subs = [holders(m, n) if routed else float(n) for n in counts]
    redis_emit, redis_sub = line(subs, [points[n]["redis_us"] for n in counts])
    notes = [f"fit on {', '.join(map(str, counts))} nodes"]
    return Params(target, e, d, r, u, redis_emit, redis_sub, routed, notes)


# -- the model ---------------------------------------------------------------------------

def per_emit(p: Params, size: int, nodes: int) -> tuple[float, float]:
    """Expected (node CPU, Redis CPU) in µs for one emit to a room of ``size`` members."""
    k = nodes * (1.0 - (1.0 - 1.0 / nodes) ** size)
    others_with = k - k / nodes
    cpu = p.e + size * p.d + p.r * others_with + p.u * (nodes - 1 - others_with)
    redis = p.redis_emit + p.redis_sub * (k if p.routed else nodes)
    return cpu, redis


def throughput(p: Params, rooms: dict[int, float], nodes: int, cpu_per_node: float,
               redis_cores: float) -> dict[str, Any]:
    """Emits/s and deliveries/s the cluster carries; which of nodes or Redis binds."""
    cpu = sum(share * per_emit(p, size, nodes)[0] for size, share in rooms.items())
    redis = sum(share * per_emit(p, size, nodes)[1] for size, share in rooms.items())
    by_nodes = nodes * cpu_per_node * 1e6 / cpu if cpu > 0 else float("inf")
    by_redis = redis_cores * 1e6 / redis if redis > 0 else float("inf")
    emits = min(by_nodes, by_redis)
    mean_size = sum(share * size for size, share in rooms.items())
    return {"nodes": nodes, "cpu_us": cpu, "redis_us": redis, "emits_per_s": emits,
            "deliveries_per_s": emits * mean_size,
            "bound": "nodes" if by_nodes <= by_redis else "Redis"}


def layout_prediction(p: Params, room_size: int, n: int) -> dict[str, float]:
    """The measured layout at ``n`` nodes (publishers on node 0, receiver k on node k mod n)."""
    node0 = other_total = 0.0
    for i in range(n):  # the rooms repeat with period n in their first receiver's node
        members = [0] * n
        for k in range(i * room_size, (i + 1) * room_size):
            members[k % n] += 1
        node0 += p.e + p.d * members[0]
        other_total += sum(p.r + p.d * c if c else p.u for c in members[1:])
    node0, other_total = node0 / n, other_total / n
    subs = holders(room_size, n) if p.routed else n
    return {"cluster_us": node0 + other_total, "publishing_us": node0,
            "other_us": other_total / (n - 1), "redis_us": p.redis_emit + p.redis_sub * subs,
            "user_cluster_us": p.r + p.d + (0.0 if p.routed else (n - 1) * p.u),
            "user_redis_us": p.redis_emit + p.redis_sub * (1 if p.routed else n)}


# -- output ------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def k(value: float) -> str:
    if value == float("inf"):
        return "∞"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e4 \
        else f"{value:,.0f}"


def error(measured: float, predicted: float) -> str:
    return f"{(predicted - measured) / measured:+.0%}" if abs(measured) >= 1.0 else "n/a"


def check_rows(measured: Measured, target: str, params: Params,
               cpu_per_node: float) -> list[list[str]]:
    """Measured against modelled, figure by figure (see the module docstring)."""
    rows = []
    counts = sorted(measured.points[target])
    for n in counts:
        own, how = params, "in the fit"
        if len(counts) >= 3:
            own, how = fit(measured, target, leave_out=n).clamped(), "left out of the fit"
        got, want = measured.points[target][n], layout_prediction(own, measured.room_size, n)
        for key, what in (("cluster_us", f"room emit, cluster ({how})"),
                          ("other_us", f"room emit, each node but 0 ({how})"),
                          ("redis_us", f"room emit, Redis ({how})"),
                          ("user_cluster_us", "per-user emit, cluster"),
                          ("user_redis_us", "per-user emit, Redis")):
            if key not in got:
                continue
            implied = ""
            if key in ("cluster_us", "user_cluster_us"):
                # the emits/s these costs allow n nodes at the budget, Redis aside
                implied = (f"{k(n * cpu_per_node * 1e6 / max(got[key], 1e-9))} / "
                           f"{k(n * cpu_per_node * 1e6 / max(want[key], 1e-9))}")
            rows.append([target, str(n), what, f"{got[key]:.1f}", f"{want[key]:.1f}",
                         error(got[key], want[key]), implied])
    un = measured.uninvolved[target]
    emitting = params.e + params.d * un["receivers"]
    redis = params.redis_emit + params.redis_sub * (1 if params.routed else UNINVOLVED_NODES)
    rows.append([target, str(UNINVOLVED_NODES), f"uninvolved run: emitting node "
                 f"({un['receivers']:g} local receivers)", f"{un['emitting']:.1f}",
                 f"{emitting:.1f}", error(un["emitting"], emitting), ""])
    rows.append([target, str(UNINVOLVED_NODES), "uninvolved run: Redis", f"{un['redis']:.1f}",
                 f"{redis:.1f}", error(un["redis"], redis), ""])
    return rows


def parse_rooms(text: str) -> dict[int, float]:
    """``"1:70,10:25,1000:5"`` -> {1: 0.70, 10: 0.25, 1000: 0.05} (shares of the emits)."""
    rooms: dict[int, float] = {}
    for part in text.split(","):
        size, _, share = part.partition(":")
        rooms[int(size)] = rooms.get(int(size), 0.0) + float(share)
    total = sum(rooms.values())
    if total <= 0 or min(rooms) < 1:
        raise ModelError(f"--rooms {text!r}: sizes ≥ 1 with positive shares, e.g. "
                         f"{DEFAULT_ROOMS}")
    return {size: share / total for size, share in sorted(rooms.items())}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.capacity_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path,
                   help="results JSON (default benchmarks/results/scaleout.json, and "
                        "scaleout-nodes.json when it exists)")
    p.add_argument("--rooms", default=DEFAULT_ROOMS,
                   help=f"room size:share of the emits, comma-separated (default {DEFAULT_ROOMS}:"
                        " 70%% of emits to per-user rooms, 25%% to rooms of 10, 5%% to 1,000)")
    p.add_argument("--nodes", default="10,100,1000", help="cluster sizes to predict")
    p.add_argument("--cpu-per-node", type=float, default=1.0,
                   help="cores each node may spend (1: a node is one eventlet process)")
    p.add_argument("--redis-cores", type=float, default=1.0,
                   help="cores of Redis (1: one Redis executes commands on one thread)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = args.files or [f for f in (RESULTS / "scaleout.json", RESULTS / "scaleout-nodes.json")
                           if f.exists()]
    if not files:
        print("no results: run python -m benchmarks.scaleout first (or name the JSON files)")
        return 2
    try:
        rooms = parse_rooms(args.rooms)
        sizes = [int(n) for n in args.nodes.split(",") if n.strip()]
        measured = load(files)
    except (ModelError, ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    mix = ", ".join(f"{share:.0%} of emits to rooms of {size:,}" for size, share in rooms.items())
    out = [f"# Capacity model ({', '.join(str(f) for f in files)})", "",
           (f"Budget: {args.cpu_per_node:g} core(s) per node, {args.redis_cores:g} core(s) of "
            f"one Redis. Rooms: {mix}; members and publishers spread uniformly over the "
            f"nodes. Costs in µs of CPU (see the docstring of benchmarks/capacity_model.py)."),
           ""]
    fitted: dict[str, Params] = {}
    for target in measured.targets:
        try:
            fitted[target] = fit(measured, target)
        except ModelError as exc:
            out.append(f"- skipped: {exc}")
    if not fitted:
        print("\n".join(out))
        return 1
    out += ([] if out[-1] == "" else [""]) + ["## Parameters", ""]
    out += table(["target", "e: emit", "d: delivery", "r: receive", "u: uninvolved",
                  "routes by room", "Redis per emit", "Redis per subscriber", "from"],
                 [[p.target, *(f"{v:.1f}" for v in (p.e, p.d, p.r, p.u)),
                   "yes" if p.routed else "no", f"{p.redis_emit:.1f}", f"{p.redis_sub:.1f}",
                   "; ".join(p.notes)] for p in fitted.values()])
    predictions: dict[str, list[dict[str, Any]]] = {}
    rows = []
    for target, params in fitted.items():
        predictions[target] = [throughput(params.clamped(), rooms, n, args.cpu_per_node,
                                          args.redis_cores) for n in sizes]
        for t in predictions[target]:
            rows.append([target, f"{t['nodes']:,}", f"{t['cpu_us']:,.0f}", f"{t['redis_us']:,.1f}",
                         k(t["emits_per_s"]), k(t["deliveries_per_s"]), t["bound"]])
    out += ["", "## Predicted throughput", ""]
    out += table(["target", "nodes", "node CPU per emit, µs (all nodes)", "Redis per emit, µs",
                  "emits/s", "deliveries/s", "bound by"], rows)
    out += ["", "## Check against the measured points (µs CPU per emit)", ""]
    rows = []
    for target, params in fitted.items():
        rows += check_rows(measured, target, params.clamped(), args.cpu_per_node)
    out += table(["target", "nodes", "figure", "measured", "model", "model error",
                  f"emits/s at {args.cpu_per_node:g} core/node, measured / model"], rows)
    print("\n".join(out))
    if args.json:
        args.json.write_text(json.dumps({"files": [str(f) for f in files], "rooms": rooms,
                                         "cpu_per_node": args.cpu_per_node,
                                         "redis_cores": args.redis_cores,
                                         "params": {t: asdict(p) for t, p in fitted.items()},
                                         "predictions": predictions}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

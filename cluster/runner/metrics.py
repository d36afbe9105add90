"""Prometheus metrics of a node, read from live counters at scrape time.

A custom collector (instead of incrementing prometheus-client objects on the
hot path) keeps the event loop free of metric bookkeeping: the server, the
bus and the session store keep plain integer counters, and a scrape turns
them into samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cluster import compat
from cluster.bus.features import bus_features

if TYPE_CHECKING:
    from cluster.node.server import ClusterServer
    from cluster.runner.health import NodeState
    from cluster.sessions.connection_sessions import ConnectionSessions

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeCollector:
    """Collects one node's connection, room, event, bus and session figures."""

    def __init__(self, server: ClusterServer, sessions: ConnectionSessions | None,
                 node_state: NodeState) -> None:
        self.server = server
        self.sessions = sessions
        self.node_state = node_state

    def collect(self) -> Iterator[Any]:
        server = self.server
        connections = GaugeMetricFamily(
            "socketio_connections", "Engine.IO connections open on this node")
        connections.add_metric([], len(compat.open_engine_sockets(server.eio)))
        yield connections

        rooms = GaugeMetricFamily(
            "socketio_rooms", "Rooms with members on this node", labels=["namespace"])
        for namespace, count in compat.local_room_counts(server.manager).items():
            rooms.add_metric([namespace], count)
        yield rooms

        if server.admission is not None:
            waiting = GaugeMetricFamily(
                "socketio_connects_waiting",
                "CONNECTs waiting for one of max_concurrent_connects slots")
            waiting.add_metric([], server.admission.waiting)
            yield waiting

        server_counters = CounterMetricFamily(
            "socketio_server_events", "Server event counters", labels=["kind"])
        for name, value in sorted(server.counters.items()):
            server_counters.add_metric([name], value)
        yield server_counters

        transport = CounterMetricFamily(
            "socketio_websocket", "Websocket sends, the frames they carried "
            "(frames/writes is the coalescing ratio) and the sends held for the write "
            "window", labels=["kind"])
        for name, value in sorted(server.eio.transport_stats().items()):
            transport.add_metric([name], value)
        yield transport

        reads = GaugeMetricFamily(
            "socketio_websocket_reads", "Websockets read in turns, holding no green thread "
            "while idle (detached), and their read turns running and waiting", labels=["kind"])
        for name, value in sorted(server.eio.read_stats().items()):
            reads.add_metric([name], value)
        yield reads

        stats = bus_features(server.manager).stats()
        if stats:
            bus = GaugeMetricFamily("socketio_bus", "Cluster bus figures", labels=["kind"])
            for name, figure in sorted(stats.items()):
                if isinstance(figure, (int, float)):
                    bus.add_metric([name], figure)
            yield bus

        sessions = self.sessions
        session_counters = getattr(sessions, "counters", None)
        if session_counters:
            family = CounterMetricFamily(
                "socketio_sessions", "Forked session and resume counters", labels=["kind"])
            for name, value in sorted(session_counters.items()):
                family.add_metric([name], value)
            # stored sessions and resume records that failed their MAC check
            rejected = getattr(getattr(sessions, "store", None), "rejected_records", None)
            state_rejected = getattr(getattr(sessions, "state", None), "rejected_records", 0)
            if isinstance(rejected, int):
                family.add_metric(["rejected_records"], rejected + int(state_rejected))
            # session, record and resume keys found with the wrong type and cleared
            wrong_types = sum(int(getattr(getattr(sessions, part, None), "wrong_type_keys", 0))
                              for part in ("store", "state"))
            family.add_metric(["wrong_type_keys"], wrong_types)
            # the group commit of the sessions' and records' writes
            # (session_store.write_batches): writes / round trips is the batch size
            batches = getattr(getattr(sessions, "state", None), "batches", None)
            if batches is not None:
                family.add_metric(["record_writes"], batches.writes)
                family.add_metric(["record_round_trips"], batches.round_trips)
            yield family

        ready = GaugeMetricFamily("socketio_node_ready", "1 when the node reports ready")
        ready.add_metric([], 1 if self.node_state.is_ready() else 0)
        yield ready


def render_metrics(server: ClusterServer, sessions: ConnectionSessions | None,
                   node_state: NodeState) -> bytes:
    """The Prometheus text exposition of the node's figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(server, sessions, node_state))
    return generate_latest(registry)

"""Prometheus metrics of a node, read from live counters at scrape time.

A custom collector (instead of incrementing prometheus-client objects on the
hot path) keeps the event loop free of metric bookkeeping: the server, the
bus and the session store keep plain integer counters, and a scrape turns
them into samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeCollector:
    """Collects one extension's connection, room, event, bus and session figures."""

    def __init__(self, socketio: "SocketIO", node_state: Any) -> None:
        self.socketio = socketio
        self.node_state = node_state

    def collect(self) -> Iterator[Any]:
        server = self.socketio.server
        connections = GaugeMetricFamily(
            "socketio_connections", "Engine.IO connections open on this node")
        connections.add_metric([], len(getattr(server.eio, "sockets", {})))
        yield connections

        rooms = GaugeMetricFamily(
            "socketio_rooms", "Rooms with members on this node", labels=["namespace"])
        for namespace, namespace_rooms in list(getattr(server.manager, "rooms", {}).items()):
            rooms.add_metric([namespace], len(namespace_rooms))
        yield rooms

        server_counters = CounterMetricFamily(
            "socketio_server_events", "Server event counters", labels=["kind"])
        for name, value in sorted(server.counters.items()):
            server_counters.add_metric([name], value)
        yield server_counters

        transport_stats = getattr(server.eio, "transport_stats", None)
        if callable(transport_stats):
            transport = CounterMetricFamily(
                "socketio_websocket", "Websocket sends and the frames they carried "
                "(frames/writes is the coalescing ratio)", labels=["kind"])
            for name, value in sorted(transport_stats().items()):
                transport.add_metric([name], value)
            yield transport

        stats = getattr(server.manager, "stats", None)
        if callable(stats):
            bus = GaugeMetricFamily("socketio_bus", "Cluster bus figures", labels=["kind"])
            for name, value in sorted(stats().items()):
                if isinstance(value, (int, float)):
                    bus.add_metric([name], value)
            yield bus

        sessions = self.socketio.sessions
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
            yield family

        ready = GaugeMetricFamily("socketio_node_ready", "1 when the node reports ready")
        ready.add_metric([], 1 if self.node_state.is_ready() else 0)
        yield ready


def render_metrics(socketio: "SocketIO", node_state: Any) -> bytes:
    """The Prometheus text exposition of the node's figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(socketio, node_state))
    return generate_latest(registry)

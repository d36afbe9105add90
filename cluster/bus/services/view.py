"""Cluster-wide queries and commands: what socket.io's cluster adapters
offer and python-socketio's managers refuse.

Queries (``room_members``, ``rooms_of``, ``sockets``, ``server_side_call``)
ask every live node over the bus and wait for all answers, at most
``timeout`` seconds (the manager's ``request_timeout``, 5 s, by default). A
node that dies while being asked stops being waited for as soon as its
heartbeat expires; a live node that stays silent makes the query raise
:class:`~cluster.bus.errors.ClusterRequestTimeout`, which carries the partial answers.

Commands (``sockets_join``, ``sockets_leave``, ``disconnect_sockets``,
``server_side_emit`` without callback) are applied here at once and
published once; they do not wait, like their socket.io counterparts.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from cluster import compat
from cluster.bus.errors import BusSerializationError, ClusterRequestError, ClusterRequestTimeout
from cluster.bus.services.link import BusLink
from cluster.bus.services.membership import named_rooms

T = TypeVar("T")


def _retrying(read: Callable[[], T]) -> T:
    # under plain threads another thread may resize the room dicts while we
    # copy them; a copy is cheap, so just try again
    for _ in range(10):
        try:
            return read()
        except RuntimeError:
            continue
    return read()


class _Pending:
    def __init__(self, waiting: set[str], event: Any) -> None:
        self.waiting = waiting
        self.event = event
        self.results: dict[str, Any] = {}


class ClusterView:
    """Queries over every node of the cluster (``manager.cluster``).

    Rooms and sids are those of python-socketio; ``namespace`` defaults to
    ``"/"`` everywhere.
    """

    def __init__(self, link: BusLink, local: Any, request_timeout: float,
                 channel_of: Callable[[str], str | None] = lambda host_id: None) -> None:
        """:param link: publishes the requests and answers.
        :param local: this node's python-socketio manager (its public API
            answers the local part of every query and applies commands).
        :param request_timeout: default seconds a query waits for answers.
        :param channel_of: the channel only node ``host_id`` follows (None:
            the common one, the default, for a backend that does not
            route); an answer travels on the asking node's, so the other
            nodes never read it.
        """
        self.link = link
        self._channel_of = channel_of
        self.local = local
        self.request_timeout = request_timeout
        self._pending: dict[str, _Pending] = {}
        self._handlers: dict[tuple[str, str], Callable[..., Any]] = {}

    # -- queries --------------------------------------------------------------
    def live_nodes(self) -> list[dict[str, Any]]:
        """Nodes heard from within ``node_timeout``, this one included:
        ``[{"id", "name", "age" (s since last heartbeat), "self"}]``."""
        return self.link.nodes.describe()

    def room_members(self, room: Any, namespace: str = "/",
                     timeout: float | None = None) -> list[str]:
        """Sorted sids in ``room`` on every node."""
        answers = self._ask("room_members",
                            {"room": room, "namespace": namespace}, timeout)
        return sorted({sid for sids in answers.values() for sid in sids or ()})

    def room_size(self, room: Any, namespace: str = "/",
                  timeout: float | None = None) -> int:
        """Number of sids in ``room`` across the cluster."""
        return len(self.room_members(room, namespace, timeout))

    def rooms_of(self, sid: str, namespace: str = "/",
                 timeout: float | None = None) -> list[Any]:
        """Rooms of ``sid`` (its own sid room excluded), wherever it is
        connected; ``[]`` when no node knows it."""
        local = self._local_rooms_of(sid, namespace)
        if local is not None:
            return local
        answers = self._ask("rooms_of", {"sid": sid, "namespace": namespace},
                            timeout)
        for rooms in answers.values():
            if rooms is not None:
                return list(rooms)
        return []

    def sockets(self, namespace: str = "/", rooms: Iterable[Any] | None = None,
                timeout: float | None = None) -> list[dict[str, Any]]:
        """Connected sockets, optionally only those in any of ``rooms``:
        ``[{"sid", "namespace", "node", "node_id", "rooms"}]``."""
        args = {"namespace": namespace,
                "to": None if rooms is None else self._rooms_list(rooms)}
        answers = self._ask("sockets", args, timeout)
        out = []
        for node_id, entries in answers.items():
            for entry in entries or ():
                out.append({"sid": entry["sid"], "namespace": namespace,
                            "node": self.link.nodes.name_of(node_id),
                            "node_id": node_id, "rooms": entry["rooms"]})
        return sorted(out, key=lambda e: e["sid"])

    # -- commands -------------------------------------------------------------
    def sockets_join(self, rooms: Any, to: Any = None,
                     namespace: str = "/") -> None:
        """Make every socket in ``to`` (a room or list; all when ``None``)
        join ``rooms`` (a room or list), on every node."""
        self._command("sockets_join", {"rooms": self._rooms_list(rooms),
                                       "to": self._to_list(to),
                                       "namespace": namespace})

    def sockets_leave(self, rooms: Any, to: Any = None,
                      namespace: str = "/") -> None:
        """Make every socket in ``to`` leave ``rooms``, on every node."""
        self._command("sockets_leave", {"rooms": self._rooms_list(rooms),
                                        "to": self._to_list(to),
                                        "namespace": namespace})

    def disconnect_sockets(self, to: Any = None, namespace: str = "/") -> None:
        """Disconnect every socket in ``to`` (all when ``None``)."""
        self._command("disconnect_sockets",
                      {"to": self._to_list(to), "namespace": namespace})

    # -- server-side events ---------------------------------------------------
    def on(self, event: str, handler: Callable[..., Any] | None = None,
           namespace: str = "/") -> Any:
        """Register ``handler(*args)`` for :meth:`server_side_emit` events
        sent by the other nodes; its return value is the ack. Usable as a
        decorator. Handlers run in a background task of the receiving node.
        """
        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            self._handlers[(namespace, event)] = func
            return func
        return register(handler) if handler is not None else register

    def server_side_emit(self, event: str, *args: Any, namespace: str = "/",
                         callback: Callable[[list[Any]], Any] | None = None,
                         timeout: float | None = None) -> None:
        """Send ``event`` to the handlers of the *other* nodes.

        With ``callback``, it is later called with the list of their return
        values (from the nodes that answered within ``timeout``; a warning is
        logged for the others).
        """
        payload = {"event": event, "args": list(args), "namespace": namespace}
        if callback is None:
            self._command("server_side_emit", payload, apply_here=False)
            return

        def wait_and_call() -> None:
            try:
                result = self.server_side_call(event, *args, namespace=namespace,
                                               timeout=timeout)
            except ClusterRequestTimeout as exc:
                self.link.logger.warning("%s", exc)
                result = self._values(exc.partial)
            except ClusterRequestError as exc:
                self.link.logger.warning("%s", exc)
                result = []
            callback(result)
        self.link.dumps(payload)  # raise a bad payload here, not later
        self.link.spawn(wait_and_call)

    def server_side_call(self, event: str, *args: Any, namespace: str = "/",
                         timeout: float | None = None) -> list[Any]:
        """Like :meth:`server_side_emit` with an ack, but blocking: returns
        the other nodes' return values."""
        answers = self._ask("server_side_emit",
                            {"event": event, "args": list(args),
                             "namespace": namespace}, timeout,
                            include_self=False)
        return self._values(answers)

    @staticmethod
    def _values(answers: dict[str, Any]) -> list[Any]:
        return [a["result"] for _, a in sorted(answers.items())
                if isinstance(a, dict) and "result" in a]

    # -- plumbing -------------------------------------------------------------
    @staticmethod
    def _rooms_list(rooms: Any) -> list[Any]:
        if isinstance(rooms, (str, int)):
            return [rooms]
        return list(rooms)

    def _to_list(self, to: Any) -> list[Any] | None:
        return None if to is None else self._rooms_list(to)

    def _ask(self, op: str, args: dict[str, Any], timeout: float | None,
             include_self: bool = True) -> dict[str, Any]:
        link = self.link
        if link.write_only:
            raise ClusterRequestError(
                "A write-only bus manager receives no answers: run cluster "
                "queries on a socket node.")
        answers: dict[str, Any] = {}
        if include_self:
            answers[link.host_id] = self._apply(op, args)
        peers = {h for h in link.nodes.ids() if h != link.host_id}
        if not peers:
            return answers
        if not link.ready():
            raise ClusterRequestError(
                "The cluster bus is disconnected; cluster-wide queries work "
                "again once it reconnects (see /readyz).")
        req_id = uuid.uuid4().hex
        pending = _Pending(peers, link.event())
        self._pending[req_id] = pending
        timeout = self.request_timeout if timeout is None else timeout
        try:
            link.publish({"method": "request", "host_id": link.host_id,
                          "req_id": req_id, "op": op, "args": args,
                          "reply": True}, volatile=True)
            pending.event.wait(timeout)
        finally:
            self._pending.pop(req_id, None)
        answers.update(pending.results)
        if pending.waiting:
            link.stats.incr("requests_timed_out")
            missing = sorted(pending.waiting)
            raise ClusterRequestTimeout(
                f"Cluster query {op!r} timed out after {timeout} s waiting "
                f"for node(s) {', '.join(link.nodes.name_of(h) for h in missing)}",
                dict(answers), missing)
        return answers

    def _command(self, op: str, args: dict[str, Any],
                 apply_here: bool = True) -> None:
        self.link.publish({"method": "request", "host_id": self.link.host_id,
                           "req_id": uuid.uuid4().hex, "op": op, "args": args,
                           "reply": False})
        if apply_here and not self.link.write_only:
            self._apply(op, args)

    def handle_request(self, message: dict[str, Any]) -> None:
        """Another node's query or command."""
        op, args = message["op"], message["args"]
        if op == "server_side_emit":
            # application code: run it off the listener task
            self.link.spawn(self._answer, message)
        elif message.get("reply", False):
            self._answer(message)
        else:
            self._apply(op, args)

    def _answer(self, message: dict[str, Any]) -> None:
        link = self.link
        response = {"method": "response", "host_id": link.host_id,
                    "to": message["host_id"], "req_id": message["req_id"]}
        try:
            result = self._apply(message["op"], message["args"])
        except Exception as exc:
            link.logger.exception("Cluster request %r failed", message["op"])
            result = {"error": f"{type(exc).__name__}: {exc}"}
        if not message.get("reply", False):
            return
        channel = self._channel_of(message["host_id"])
        try:
            link.publish(dict(response, result=result), volatile=True, channel=channel)
        except BusSerializationError as exc:
            link.publish(dict(response, result={"error": str(exc)}), volatile=True,
                         channel=channel)

    def handle_response(self, message: dict[str, Any]) -> None:
        """An answer to one of our queries."""
        if message["to"] != self.link.host_id:
            return
        pending = self._pending.get(message["req_id"])
        if pending is None:
            return  # too late: the caller gave up already
        pending.results[message["host_id"]] = message.get("result")
        pending.waiting.discard(message["host_id"])
        if not pending.waiting:
            pending.event.set()

    def node_gone(self, host_id: str) -> None:
        """Stop waiting for a node that left."""
        for pending in list(self._pending.values()):
            pending.waiting.discard(host_id)
            if not pending.waiting:
                pending.event.set()

    # -- local answers --------------------------------------------------------
    def _apply(self, op: str, args: dict[str, Any]) -> Any:
        ns = args.get("namespace") or "/"
        if op == "room_members":
            return _retrying(lambda: [
                sid for sid in self.local.rooms.get(ns, {}).get(args["room"], {})])
        if op == "rooms_of":
            return self._local_rooms_of(args["sid"], ns)
        if op == "sockets":
            return [{"sid": sid, "rooms": self._local_rooms_of(sid, ns) or []}
                    for sid in self._local_sids(ns, args.get("to"))]
        if op in ("sockets_join", "sockets_leave"):
            sids = self._local_sids(ns, args.get("to"))
            for sid in sids:
                for room in args["rooms"]:
                    if op == "sockets_join":
                        if room != sid and not self.local.is_sid_room(ns, room):
                            self.local.basic_enter_room(sid, ns, room)
                    elif room != sid:
                        self.local.basic_leave_room(sid, ns, room)
            return len(sids)
        if op == "disconnect_sockets":
            sids = self._local_sids(ns, args.get("to"))
            for sid in sids:
                self.local.server.disconnect(sid, namespace=ns, ignore_queue=True)
            return len(sids)
        if op == "server_side_emit":
            handler = self._handlers.get((ns, args["event"]))
            if handler is None:
                return {"nohandler": True}
            return {"result": handler(*args["args"])}
        if op == "presence_sync":
            return named_rooms(self.local.rooms)
        raise ValueError(f"unknown cluster request {op!r}")

    def _local_rooms_of(self, sid: str, ns: str) -> list[Any] | None:
        local = self.local
        if not compat.is_local_connection(local, sid, ns):
            return None
        return _retrying(lambda: [r for r in local.get_rooms(sid, ns) if r != sid])

    def _local_sids(self, ns: str, to: list[Any] | None) -> list[str]:
        rooms = self.local.rooms.get(ns, {})

        def read() -> list[str]:
            if to is None:
                sids = set(rooms.get(None, {}))
            else:
                sids = {sid for room in to for sid in rooms.get(room, {})}
            return sorted(sid for sid in sids if self.local.is_connected(sid, ns))
        return _retrying(read)

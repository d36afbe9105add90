"""Shard failovers of a real Redis Cluster (3 masters, 3 replicas) under
traffic, with real nodes on the ``redis+cluster://`` URL (connection state
recovery on) and real clients in a room across both nodes (issue 25).

A sender on node 1 emits numbered room messages (``m0000``, ``m0001``...)
every 20 ms; members on node 1 and node 2 record them in arrival order
(:class:`cluster.Client` with ``ordered_events``). A "mover" reaches node 1
through a TCP proxy; moving it means pointing the proxy at node 2 and
resetting its connection, as a load balancer would after losing a backend.

What the product promises across a failover, and what each test asserts:

- Graceful (``CLUSTER FAILOVER`` on the replica): the replica catches up
  before it takes over and the master pauses its clients meanwhile; the
  old master unsubscribes the nodes (they resubscribe on the new one within
  about 0.2 s and catch up from the stream) and answers ``MOVED`` to the
  recovery script (the publisher follows at once). Nothing is lost, nothing
  comes twice, all arrive in order; a client that moves afterwards resumes
  and recovers.
- SIGKILL of the bus shard's master (the common channel's slot, where the
  room channels ``{flask-socketio}:room:...`` and the recovery stream live):
  the bus is down for node timeout + election (about 4 s here, 1.5 s node
  timeout). Pub/sub messages in flight are lost, and the recovery stream on
  the promoted replica lacks whatever the master had not yet replicated
  (asynchronous replication). So a message may be lost only between the
  last one every member had received when the master died and the first
  one sent after the cluster promoted the replica; everything sent after
  that arrives, in order. A client that moves during the outage may find
  the session store down too: once the cluster has marked the master
  failed, every shard answers CLUSTERDOWN until the promotion (and its
  resume pointer may sit on the failed shard). Its claim is tried again
  for up to 5 s (the same claim each time: see
  ``cluster.sessions.resume.claim_retrying``); past that it gets a new
  session (``resumed`` False, in no room: the node logs "session store
  unavailable at connect"); when the store answers it gets its session back, and is
  told ``recovered`` only when its replay is exact (the stream cannot be
  read until the promotion, so it is usually told False, and its node's
  catch-up then delivers what the room carried). One that moves after the
  promotion resumes and recovers.
- SIGKILL of the master holding a client's session keys (another shard):
  with ``cluster-require-full-coverage yes`` (Redis's default) the whole
  cluster refuses commands (CLUSTERDOWN) until the replica is promoted, the
  bus included; the bus retries, so nothing is lost. Session writes the
  replica had acknowledged survive: the client resumes with the same data
  and recovers, and its writes go to the promoted replica.

One known gap, allowed for the client that leaves right at the promotion
(``repeats=True``): while its bus is down (even the 0.2 s resubscription of
a graceful failover) a node delivers its own clients its own emits at once
without an offset (:mod:`cluster.bus.ordered_delivery` "abandons" them), and
logs them in the stream once the bus is back. A client of that node that
leaves before any later message brought it a new offset is replayed them
where it recovers, so it gets them twice; each repeat must be such a
message. Every other mover leaves once it holds a fresh offset, and nothing
may come twice to it.
"""
from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest
import redis
from packaging.version import Version

from tests.faults.fault_proxy import FaultProxy
from tests.harness.peers import Peer, Stream, wait_reconnected
from tests.harness.runtimes import NODE_ASYNC_MODE
from tests.harness.waiting import wait_for

if TYPE_CHECKING:
    from tests.harness.redis_cluster_replicas import ReplicatedCluster

RECOVERY = {"RECOVERY_WINDOW": "60"}
ROOM = "traffic"
#: the common channel: its slot carries every room channel and the stream
BUS_KEY = "flask-socketio"
SESSION_DATA = "sio:sess:data:"

#: an open bug, seen only with the dependency floors on gevent (gevent
#: 24.2.1, redis-py 5.0.0; fine on eventlet with the same redis-py, and on
#: gevent with redis-py 8.2): after the bus shard's primary is SIGKILLed,
#: a node's sharded subscription reports restored on the promoted replica
#: but its node receives nothing more (see the issue 25 note)
FLOOR_GAP = NODE_ASYNC_MODE == "gevent" and Version(redis.__version__) < Version("5.1")


class Member:
    """A recovery-aware client in :data:`ROOM` recording the numbers of the
    room messages it gets, in arrival order."""

    def __init__(self, factory: Any, url: str, name: str) -> None:
        self.name = name
        self.peer = Peer(factory, url, ordered_events=True)
        #: (text, the client's offset once it arrived): an offset that did
        #: not change means the message came without one
        self.trace: list[tuple[str, str | None]] = []
        self.peer.client.on("room_message", lambda message: self.trace.append(
            (message["text"], self.peer.client.offset())))
        self.peer.call("join", ROOM)
        self.peer.call("session_set", {"who": name})

    def numbers(self) -> list[int]:
        return [int(text[1:]) for text, _ in list(self.trace)]

    def last(self) -> int:
        got = self.numbers()
        return got[-1] if got else -1


@pytest.fixture
def proxies() -> Iterator[list[FaultProxy]]:
    started: list[FaultProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def port_of(node: Any) -> int:
    port = urlparse(node.url).port
    assert port is not None
    return int(port)


def via_proxy(proxies: list[FaultProxy], node: Any) -> str:
    proxy = FaultProxy("127.0.0.1", port_of(node)).start()
    proxies.append(proxy)
    return f"http://127.0.0.1:{proxy.port}"


def move(member: Member, proxy: FaultProxy, node: Any) -> Any:
    """Cut the member's connection; its reconnect reaches ``node``."""
    old_sid = member.peer.sid
    proxy.target = ("127.0.0.1", port_of(node))
    assert proxy.reset_all() >= 1
    return wait_reconnected(member.peer, old_sid)


def session_key(cluster: ReplicatedCluster, who: str) -> str:
    """The session hash whose ``who`` is ``who``."""
    def find() -> str | None:
        for server in cluster.live():
            client = cluster.client(server)
            try:
                if "master" not in client.info("replication")["role"]:
                    continue
                for key in client.scan_iter(SESSION_DATA + "*", count=1000):
                    if who in str(client.hget(key, "d:who")):
                        return str(key)
            finally:
                client.close()
        return None
    return str(wait_for(find, what=f"{who}'s session in the cluster"))


def wait_past(members: list[Member], number: int, timeout: float = 20) -> None:
    """Until every member's latest message is ``number`` or later."""
    wait_for(lambda: all(m.last() >= number for m in members), timeout=timeout,
             what=f"m{number:04d} at every member")


def wait_fresh_offset(member: Member) -> None:
    """Until the member's last message came with an offset of its own."""
    def fresh() -> bool:
        trace = list(member.trace)
        return len(trace) >= 2 and trace[-1][1] is not None and trace[-1][1] != trace[-2][1]
    wait_for(fresh, what=f"{member.name} to get a message with an offset")


def finish(stream: Stream, members: list[Member]) -> int:
    """Stop sending; wait until every member has the last message."""
    sent = stream.stop()
    last = max(set(range(sent)) - {int(t[1:]) for t in stream.uncertain})
    wait_past(members, last)
    time.sleep(0.3)  # a duplicate would come right behind
    return sent


def check(member: Member, sent: int, stream: Stream, may_lose: range = range(0),
          repeats: bool = False) -> None:
    """Every message in order; only ``may_lose`` may be missing. Nothing
    arrives twice, except with ``repeats``: then a message may come again
    (in a replay) only if it first came without an offset (see the module
    doc); the first arrivals keep their order."""
    fresh: dict[int, bool] = {}  # number -> its first arrival carried an offset
    repeated, previous = [], None
    for text, offset in list(member.trace):
        number = int(text[1:])
        if number in fresh:
            repeated.append(number)
        else:
            fresh[number] = offset is not None and offset != previous
        previous = offset
    firsts = list(fresh)
    assert firsts == sorted(firsts), f"{member.name}: out of order: {firsts}"
    if repeats:
        unexplained = sorted(n for n in repeated if fresh[n])
        assert not unexplained, f"{member.name}: got {unexplained} twice"
    else:
        assert not repeated, f"{member.name}: got {sorted(repeated)} twice"
    uncertain = {int(t[1:]) for t in stream.uncertain}
    missing = set(range(sent)) - set(fresh) - uncertain - set(may_lose)
    assert not missing, f"{member.name} lost {sorted(missing)} (may lose {may_lose})"


def start(cluster: ReplicatedCluster, node_factory: Any, sio_client_factory: Any
          ) -> tuple[Any, Any, Peer, list[Member]]:
    n1, n2 = node_factory(count=2, message_queue=cluster.url, env=RECOVERY)
    sender = Peer(sio_client_factory, n1.url, ordered_events=True)
    sender.call("join", ROOM)
    members = [Member(sio_client_factory, n1.url, "a1"), Member(sio_client_factory, n2.url, "b2")]
    return n1, n2, sender, members


def shard_subscribers(cluster: ReplicatedCluster, port: int) -> int:
    client = cluster.client(cluster.by_port(port))
    try:
        return int(dict(client.pubsub_shardnumsub(BUS_KEY))[BUS_KEY])
    finally:
        client.close()


def test_graceful_failover_of_the_bus_shard_loses_nothing(
        redis_cluster_with_replicas: ReplicatedCluster, node_factory: Any,
        sio_client_factory: Any, proxies: list[FaultProxy]) -> None:
    cluster = redis_cluster_with_replicas
    n1, n2, sender, members = start(cluster, node_factory, sio_client_factory)
    mover = Member(sio_client_factory, via_proxy(proxies, n1), "mover")
    everyone = [*members, mover]
    stream = Stream(sender, ROOM)
    wait_past(everyone, 20)

    shard = cluster.failover(BUS_KEY, "graceful")
    assert shard.replica is not None
    after = stream.sent
    wait_past(everyone, after + 20)
    # both nodes listen on the new master now, none on the old one
    wait_for(lambda: shard_subscribers(cluster, shard.replica.port) == 2,  # type: ignore[union-attr]
             what="both nodes subscribed on the promoted replica")
    assert shard_subscribers(cluster, shard.master.port) == 0

    wait_fresh_offset(mover)
    welcome = move(mover, proxies[0], n2)
    assert welcome["node"] == n2.name
    assert welcome["resumed"] is True and welcome["recovered"] is True
    assert mover.peer.client.recovered is True
    assert mover.peer.get("who") == "mover"
    wait_past(everyone, stream.sent + 20)

    sent = finish(stream, everyone)
    for member in everyone:
        check(member, sent, stream)


@pytest.mark.skipif(FLOOR_GAP, reason="open bug with gevent and redis-py 5.0 (see FLOOR_GAP)")
def test_sigkill_of_the_bus_shard_master_under_traffic(
        redis_cluster_with_replicas: ReplicatedCluster, node_factory: Any,
        sio_client_factory: Any, proxies: list[FaultProxy]) -> None:
    cluster = redis_cluster_with_replicas
    n1, n2, sender, members = start(cluster, node_factory, sio_client_factory)
    bus = cluster.shard_of(BUS_KEY)
    # leaves when the master dies
    during = Member(sio_client_factory, via_proxy(proxies, n1), "during")
    during_proxy = proxies[-1]
    # leaves at the promotion, its offset most likely older than the outage
    right_after = Member(sio_client_factory, via_proxy(proxies, n1), "right_after")
    right_after_proxy = proxies[-1]
    # leaves once its node delivers with offsets again
    after = Member(sio_client_factory, via_proxy(proxies, n1), "after")
    after_proxy = proxies[-1]
    everyone = [*members, during, right_after, after]
    stream = Stream(sender, ROOM)
    wait_past(everyone, 20)

    received = min(m.last() for m in everyone)  # all of 0..received arrived
    bus.master.kill(signal.SIGKILL)
    old_sid = during.peer.sid
    during_proxy.target = ("127.0.0.1", port_of(n2))
    during_proxy.reset_all()
    cluster.wait_promoted(bus)
    promoted = stream.sent  # sent from now on: nothing may be lost
    welcome = move(right_after, right_after_proxy, n2)
    assert welcome["node"] == n2.name
    assert welcome["resumed"] is True and right_after.peer.get("who") == right_after.name
    welcome = wait_reconnected(during.peer, old_sid)
    assert welcome["node"] == n2.name
    if welcome["resumed"]:
        assert during.peer.get("who") == during.name
    else:  # the store was down when it came: a new session, in no room
        assert welcome["recovered"] is False and during.peer.get("who") is None
        everyone.remove(during)
    wait_past(everyone, promoted + 20)

    wait_fresh_offset(after)
    welcome = move(after, after_proxy, n2)
    assert welcome["node"] == n2.name
    assert welcome["resumed"] is True and welcome["recovered"] is True
    assert after.peer.get("who") == "after"
    wait_past(everyone, stream.sent + 20)

    sent = finish(stream, everyone)
    window = range(received + 1, promoted)
    for member in everyone:
        # only right_after may hit the known gap (see the module doc)
        check(member, sent, stream, may_lose=window, repeats=member is right_after)
    if during not in everyone:  # what it got before it left: in order, once
        check(during, sent, stream, may_lose=range(received + 1, sent))


def test_sigkill_of_a_session_shard_master_keeps_the_session(
        redis_cluster_with_replicas: ReplicatedCluster, node_factory: Any,
        sio_client_factory: Any, proxies: list[FaultProxy]) -> None:
    cluster = redis_cluster_with_replicas
    n1, n2, sender, members = start(cluster, node_factory, sio_client_factory)
    bus = cluster.shard_of(BUS_KEY)
    mover: Member | None = None
    for i in range(12):
        candidate = Member(sio_client_factory, via_proxy(proxies, n1), f"mover{i}")
        if cluster.shard_of(session_key(cluster, candidate.name)).master is not bus.master:
            mover = candidate
            break
    assert mover is not None, "no session landed off the bus shard in 12 tries"
    proxy = proxies[-1]
    key = session_key(cluster, mover.name)
    everyone = [*members, mover]
    stream = Stream(sender, ROOM)
    wait_past(everyone, 20)

    sessions = cluster.shard_of(key)
    mover.peer.call("session_set", {"n": 7})
    assert cluster.replicate(sessions.master) == 1  # what the product may promise
    shard = cluster.failover(key, "kill")
    assert shard.master is sessions.master
    wait_past(everyone, stream.sent + 10)

    wait_fresh_offset(mover)  # its node delivered without offsets meanwhile
    welcome = move(mover, proxy, n2)
    assert welcome["node"] == n2.name
    assert welcome["resumed"] is True and welcome["recovered"] is True
    assert ROOM in welcome["rooms"]
    assert mover.peer.get("who") == mover.name and mover.peer.get("n") == 7
    mover.peer.call("session_set", {"n": 8})  # writes go to the promoted replica
    assert mover.peer.get("n") == 8
    wait_past(everyone, stream.sent + 20)

    sent = finish(stream, everyone)
    for member in everyone:
        # the bus's shard kept its master: nothing is lost (CLUSTERDOWN
        # refusals during the outage are retried)
        check(member, sent, stream)


def test_the_publisher_follows_a_graceful_failover_in_the_same_send(
        redis_cluster_with_replicas: ReplicatedCluster) -> None:
    """The demoted master answers MOVED to the recovery script (a write); a
    plain SPUBLISH it still takes and forwards to its shard. The send that
    meets the MOVED goes on to the new primary at once: in order, nothing
    refused, nothing twice. (A batch never puts a plain message behind a
    logged one, see :mod:`cluster.bus.batch`.)"""
    from cluster.bus.backends.redis_connection import RedisConnector
    from cluster.bus.backends.redis_transport import RedisTransport
    from cluster.recovery.stream import RecoveryLog, split_published

    cluster = redis_cluster_with_replicas
    connector = RedisConnector(cluster.url, None, False, BUS_KEY)
    log = RecoveryLog(BUS_KEY, lambda payload: None, 60, sharded=True)
    transport = RedisTransport(connector, log)
    transport.connect()
    shard = cluster.shard_of(BUS_KEY)
    assert shard.replica is not None
    listener = redis.Redis(port=shard.replica.port)

    def payload(n: int) -> bytes:
        return (f'{{"method":"emit","event":"e","data":[{n}],"namespace":"/",'
                f'"room":null,"skip_sid":null,"callback":null,"host_id":"h"}}').encode()

    try:
        assert isinstance(transport.send_each([payload(0)], [True])[0], str)
        cluster.failover(BUS_KEY, "graceful")
        pubsub = listener.pubsub()
        pubsub.ssubscribe(BUS_KEY)  # on the new primary
        assert pubsub.get_message(timeout=2)["type"] == "ssubscribe"
        replies = transport.send_each([payload(1), payload(2), payload(3)], [False, True, True])
        assert replies[0] is None and isinstance(replies[1], str) and isinstance(replies[2], str)
        got = []
        while (message := pubsub.get_message(timeout=1)) is not None:
            got.append(split_published(message["data"]))
        assert got == [(None, payload(1)), (replies[1], payload(2)), (replies[2], payload(3))]
        entries: Any = listener.xrange(log.key)
        assert [entry[b"p"] for _, entry in entries] == [payload(0), payload(2), payload(3)]
        pubsub.close()
    finally:
        listener.close()
        transport.close()

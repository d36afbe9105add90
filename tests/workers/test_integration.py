"""Workers against the real thing: Celery worker processes, two socket nodes
behind HAProxy, Redis (and RabbitMQ when one runs), python-socketio clients.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import socketio

from cluster.devtools.haproxy_config import cookie_value
from tests.harness.peers import Peer
from tests.workers.conftest import CLUSTER_WORKER, SIGNING_SECRET

WAIT = 15  # every wait is bounded; a Celery task round trip takes < 1 s
APP = "tests.apps.worker_app:socketio"
ROOT = str(Path(__file__).resolve().parents[2])


class Client(Peer):
    """A python-socketio client pinned to one node through HAProxy's cookie,
    queueing every event it receives."""

    def __init__(self, factory: Callable[..., Any], url: str, node: str | None = None) -> None:
        super().__init__(factory, url, cls=socketio.Client, reconnection=False,
                         headers={"Cookie": f"SERVERID={cookie_value(node)}"} if node else None,
                         transports=["polling", "websocket"])

    def job_events(self, job_id: str, timeout: float = WAIT) -> list[tuple[str, Any]]:
        """Events of one job, in arrival order, up to its result or error."""
        seen = []
        try:
            while True:
                event, data = self.events.get(timeout=timeout)
                if isinstance(data, dict) and data.get("job_id") == job_id:
                    seen.append((event, data))
                    if event in ("job_result", "job_error"):
                        return seen
        except queue.Empty:
            raise AssertionError(f"job {job_id} incomplete after {timeout} s: {seen}") from None


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def expected_job(job_id: str, steps: int) -> list[tuple[str, Any]]:
    progress = [("job_progress", {"job_id": job_id, "step": step, "steps": steps,
                                  "percent": round(100 * step / steps)})
                for step in range(1, steps + 1)]
    return [*progress, ("job_result", {"job_id": job_id,
                                       "result": sum(s * s for s in range(1, steps + 1))})]


def run_job_scenario(nodes: list[Any], proxy: Any, sio_client_factory: Any) -> None:
    requester = Client(sio_client_factory, proxy.url, node=nodes[0].name)
    teammate = Client(sio_client_factory, proxy.url, node=nodes[1].name)
    outsider = Client(sio_client_factory, proxy.url, node=nodes[1].name)
    assert (requester.welcome["node"], teammate.welcome["node"]) == ("node1", "node2")
    for client in (requester, teammate):
        client.call("join", "team")

    # progress and result to the requesting client's own sid, in order
    started = requester.call("start_job", {"steps": 4, "step_seconds": 0.05})
    assert started["to"] == requester.sid
    assert requester.job_events(started["job_id"]) == expected_job(started["job_id"], 4)

    # the same job reporting to the room: the teammate on the other node
    # sees every event, in the same order; a client outside the room none
    started = requester.call("start_job", {"room": "team", "steps": 3, "step_seconds": 0.05})
    expected = expected_job(started["job_id"], 3)
    assert requester.job_events(started["job_id"]) == expected
    assert teammate.job_events(started["job_id"]) == expected

    # a broadcast task to the room, started by a handler
    assert requester.call("announce", {"room": "team", "text": "standup",
                                       "skip_self": True}) == "node1"
    assert teammate.next("announcement") == {"text": "standup", "from": requester.sid}
    assert requester.none_of("announcement", wait=0.5)
    assert outsider.none_of("job_progress", wait=0.1)
    assert outsider.none_of("announcement", wait=0.1)


def test_celery_job_reports_to_clients_on_both_nodes_over_redis(
        redis_url: str, node_factory: Any, haproxy_factory: Any,
        celery_worker_factory: Any, sio_client_factory: Any) -> None:
    env = {"CELERY_BROKER_URL": redis_url, "CLUSTER_SIGNING_SECRET": SIGNING_SECRET}
    nodes = node_factory(app=APP, count=2, env=env)
    proxy = haproxy_factory(nodes)
    # started as `python -m workers worker`, what compose, the chart and ./dev up run
    # with Celery's default prefork pool: the emitter must survive the fork
    worker = celery_worker_factory({**env, "MESSAGE_QUEUE_URL": redis_url},
                                   command=CLUSTER_WORKER,
                                   extra_args=["--pool", "prefork", "--concurrency", "1"])
    run_job_scenario(nodes, proxy, sio_client_factory)
    assert "workers.tasks.long_job" in worker.log_text()


def test_celery_job_over_rabbitmq(rabbitmq_url: dict[str, str], node_factory: Any,
                                  haproxy_factory: Any, celery_worker_factory: Any,
                                  sio_client_factory: Any) -> None:
    # bus and Celery broker both on RabbitMQ, with names unique to this run
    env = {"CELERY_BROKER_URL": rabbitmq_url["url"], "CELERY_QUEUE": rabbitmq_url["queue"],
           "MESSAGE_QUEUE_CHANNEL": rabbitmq_url["channel"],
           "CLUSTER_SIGNING_SECRET": SIGNING_SECRET}
    nodes = node_factory(app=APP, count=2, message_queue=rabbitmq_url["url"], env=env)
    proxy = haproxy_factory(nodes)
    # started with the documented `celery -A workers.celery_app worker`
    celery_worker_factory({**env, "MESSAGE_QUEUE_URL": rabbitmq_url["url"]})
    run_job_scenario(nodes, proxy, sio_client_factory)


SCRIPT = textwrap.dedent("""\
    from workers import Emitter
    emitter = Emitter.from_env()
    emitter.emit("news", {"title": "from a script"}, to="readers")
""")


def test_plain_script_emits_in_three_lines(redis_url: str, node_factory: Any,
                                           sio_client_factory: Any, tmp_path: Any) -> None:
    env = {"CLUSTER_SIGNING_SECRET": SIGNING_SECRET, "MESSAGE_QUEUE_CHANNEL": "script-test"}
    nodes = node_factory(app=APP, count=2, env={**env, "CELERY_BROKER_URL": redis_url})
    readers = [Client(sio_client_factory, node.url) for node in nodes]
    other = Client(sio_client_factory, nodes[0].url)
    for reader in readers:
        reader.call("join", "readers")
    script = tmp_path / "notify.py"
    script.write_text(SCRIPT)
    assert len(SCRIPT.strip().splitlines()) == 3
    # PYTHONPATH stands for `pip install`: the script finds the package only
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                               "PYTHONPATH": ROOT, "MESSAGE_QUEUE_URL": redis_url, **env})
    assert done.returncode == 0, done.stderr
    for reader in readers:
        assert reader.next("news") == {"title": "from a script"}
    assert other.none_of("news", wait=0.5)


def test_emitter_manages_remote_sids(redis_url: str, node_factory: Any,
                                     sio_client_factory: Any) -> None:
    from workers import Emitter

    nodes = node_factory(app=APP, count=2, env={"CELERY_BROKER_URL": redis_url,
                                                "CLUSTER_SIGNING_SECRET": SIGNING_SECRET})
    near = Client(sio_client_factory, nodes[0].url)
    target = Client(sio_client_factory, nodes[1].url)
    with Emitter.from_env({"REDIS_URL": redis_url,
                           "CLUSTER_SIGNING_SECRET": SIGNING_SECRET}) as emitter:
        emitter.join_room(target.sid, "vip")
        # the bus and the client's own connection race: poll, bounded
        assert eventually(lambda: target.call("rooms") == sorted([target.sid, "vip"]))
        emitter.emit("vip_news", "for vips", 2, to="vip")
        assert target.next("vip_news") == ["for vips", 2]

        emitter.leave_room(target.sid, "vip")
        assert eventually(lambda: target.call("rooms") == [target.sid])
        emitter.emit("vip_news", "gone", to="vip")
        assert target.none_of("vip_news", wait=0.5)

        # cluster-wide commands: everyone into "all", then a send to it
        emitter.sockets_join("all")
        emitter.send("hello all", to="all", skip_sid=near.sid)
        assert target.next("message") == "hello all"
        assert near.none_of("message", wait=0.5)
        emitter.close_room("all")
        assert eventually(lambda: near.call("rooms") == [near.sid])

        emitter.disconnect(target.sid)
        assert target.disconnected.wait(WAIT)
        assert not near.disconnected.is_set()
        assert near.call("rooms") == [near.sid]  # the other client still works

    # an emitter without the nodes' secret is not listened to
    with Emitter(redis_url, allow_unsigned=True) as stranger:
        stranger.emit("vip_news", "forged")
        stranger.disconnect(near.sid)
    assert near.none_of("vip_news", wait=0.5)
    assert not near.disconnected.is_set()


def test_an_emitter_reaches_only_the_node_that_holds_the_user(
        redis_url: str, node_factory: Any, sio_client_factory: Any) -> None:
    from tests.harness.raw_websocket import metric
    from workers import Emitter

    holder, other = node_factory(app=APP, count=2, env={"CELERY_BROKER_URL": redis_url,
                                                        "CLUSTER_SIGNING_SECRET": SIGNING_SECRET})
    user = Client(sio_client_factory, holder.url)
    before = metric(other, "socketio_bus", kind="received")
    with Emitter.from_env({"REDIS_URL": redis_url,
                           "CLUSTER_SIGNING_SECRET": SIGNING_SECRET}) as emitter:
        for i in range(100):  # to the user's sid: its own room
            emitter.emit("note", i, to=user.sid)
        assert [user.next("note") for _ in range(100)] == list(range(100))
    # the other node heard heartbeats only (a few per second), none of the 100
    assert metric(other, "socketio_bus", kind="received") - before < 20

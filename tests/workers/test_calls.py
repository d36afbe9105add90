"""Answers from clients to workers, against the real thing: Celery worker
processes, socket nodes (killed with SIGKILL where the test says so), Redis
(and RabbitMQ when one runs), python-socketio clients that answer, decline
or keep silent.

Celery tasks are sent by name (``send_task``) and their return values read
from a Redis result backend, so the test process imports no task module.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import socketio

from tests.harness.peers import Peer
from tests.workers.conftest import CLUSTER_WORKER, SIGNING_SECRET

APP = "tests.apps.worker_app:socketio"
WAIT = 20


class Asked(Peer):
    """A client that answers the events a worker asks (``job_confirm``,
    ``poll``, ``question``) with ``answer(event, data)``, or, when
    ``answer`` is None, keeps silent: its handler blocks until the test
    ends. ``asked`` is set as soon as it was asked anything."""

    def __init__(self, factory: Callable[..., Any], url: str,
                 answer: Callable[[str, Any], Any] | None, release: threading.Event) -> None:
        self.asked = threading.Event()
        self.questions: list[tuple[str, Any]] = []
        self._answer = answer
        self._release = release
        super().__init__(factory, url, cls=socketio.Client, reconnection=False)
        for event in ("job_confirm", "poll", "question"):
            self.client.on(event, self._handler(event))

    def _handler(self, event: str) -> Callable[..., Any]:
        def handle(data: Any = None) -> Any:
            self.questions.append((event, data))
            self.asked.set()
            if self._answer is None:
                self._release.wait(WAIT)  # silent: no ack before the test ends
                return None
            return self._answer(event, data)
        return handle


@pytest.fixture
def asked_client(sio_client_factory: Any) -> Iterator[Callable[..., Asked]]:
    release = threading.Event()

    def factory(node: Any, answer: Callable[[str, Any], Any] | None = None) -> Asked:
        return Asked(sio_client_factory, node.url, answer, release)

    yield factory
    release.set()  # let the silent handlers return before the clients close


@pytest.fixture
def tasks(redis_url: str) -> Iterator[Any]:
    """A Celery client app sending to the workers' queue, results in Redis."""
    from celery import Celery

    app = Celery("test-client", broker=redis_url, backend=redis_url)
    app.conf.update(task_serializer="json", result_serializer="json",
                    accept_content=["json"])
    yield app
    app.close()


def worker_env(redis_url: str) -> dict[str, str]:
    return {"CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url,
            "MESSAGE_QUEUE_URL": redis_url, "CLUSTER_SIGNING_SECRET": SIGNING_SECRET}


def node_env(redis_url: str) -> dict[str, str]:
    return {"CELERY_BROKER_URL": redis_url, "CLUSTER_SIGNING_SECRET": SIGNING_SECRET}


def run(tasks: Any, name: str, **kwargs: Any) -> tuple[Any, float]:
    """Send task ``name`` with ``kwargs`` and return its result and how
    long it took."""
    started = time.monotonic()
    result = tasks.send_task(f"workers.tasks.{name}", kwargs=kwargs).get(timeout=WAIT)
    return result, time.monotonic() - started


def test_a_celery_task_asks_a_client_on_another_node_and_gets_its_answer(
        redis_url: str, node_factory: Any, celery_worker_factory: Any, asked_client: Any,
        tasks: Any) -> None:
    nodes = node_factory(app=APP, count=2, env=node_env(redis_url))
    # the prefork pool: the emitter's reply channel must be the child's own
    celery_worker_factory(worker_env(redis_url), command=CLUSTER_WORKER,
                          extra_args=["--pool", "prefork", "--concurrency", "1"])
    alice = asked_client(nodes[1], answer=lambda event, data: {"ok": True})
    bob = asked_client(nodes[1], answer=lambda event, data: {"ok": False})

    result, _ = run(tasks, "long_job", to=alice.sid, steps=2, step_seconds=0.01,
                    confirm=True)
    assert result["result"] == 1 + 4  # the job ran: alice said yes
    assert alice.questions == [("job_confirm", {"job_id": result["job_id"], "steps": 2})]
    assert alice.next("job_result") == result

    result, _ = run(tasks, "long_job", to=bob.sid, steps=2, confirm=True)
    assert result["cancelled"] == "declined"
    assert bob.next("job_cancelled") == {"job_id": result["job_id"]}
    assert bob.none_of("job_progress", wait=0.3)

    # a sid connected nowhere: every node says so, the call fails at once
    result, elapsed = run(tasks, "long_job", to="not-a-connected-sid", confirm=True,
                          confirm_timeout=60)
    assert result["cancelled"] == "the client is gone"
    assert elapsed < 10  # one bus round trip, not the 60 s timeout


def test_a_call_times_out_when_the_client_is_silent_or_its_node_dies(
        redis_url: str, node_factory: Any, celery_worker_factory: Any, asked_client: Any,
        tasks: Any) -> None:
    nodes = node_factory(app=APP, count=2, env=node_env(redis_url))
    celery_worker_factory(worker_env(redis_url))
    quiet = asked_client(nodes[0])
    result, elapsed = run(tasks, "long_job", to=quiet.sid, confirm=True, confirm_timeout=2)
    assert result["cancelled"] == "not confirmed within 2 s"
    assert 2 <= elapsed < 2 + 5
    assert quiet.asked.is_set()

    # the client's node is SIGKILLed while the worker waits for the answer
    doomed = asked_client(nodes[1])
    started = time.monotonic()
    pending = tasks.send_task("workers.tasks.long_job",
                              kwargs={"to": doomed.sid, "confirm": True,
                                      "confirm_timeout": 4})
    assert doomed.asked.wait(WAIT)
    nodes[1].kill(signal.SIGKILL)
    result = pending.get(timeout=WAIT)
    elapsed = time.monotonic() - started
    assert result["cancelled"] == "not confirmed within 4 s"
    assert elapsed < 4 + 5  # by its deadline, never hung on the dead node


def test_a_gather_over_three_nodes_returns_every_answer_and_names_the_silent(
        redis_url: str, node_factory: Any, celery_worker_factory: Any, asked_client: Any,
        tasks: Any) -> None:
    nodes = node_factory(app=APP, count=3, env=node_env(redis_url))
    celery_worker_factory(worker_env(redis_url))
    voters = [asked_client(node, answer=lambda event, data, i=i: f"yes {i}")
              for i, node in enumerate(nodes)]
    silent = asked_client(nodes[1])
    outsider = asked_client(nodes[2], answer=lambda event, data: "not asked")
    for client in (*voters, silent):
        client.call("join", "team")
    for client in voters:
        client.call("join", "fast")

    # everyone in the room answers: the task returns as soon as they did
    result, elapsed = run(tasks, "poll", question="lunch?", room="fast", timeout=15)
    assert result == {"question": "lunch?", "missing": [],
                      "answers": {c.sid: f"yes {i}" for i, c in enumerate(voters)}}
    assert elapsed < 15 - 5
    assert voters[2].next("poll_result") == result  # the room is told, on every node

    result, elapsed = run(tasks, "poll", question="dinner?", room="team", timeout=3)
    assert result["answers"] == {c.sid: f"yes {i}" for i, c in enumerate(voters)}
    assert result["missing"] == [silent.sid]
    assert 3 <= elapsed < 3 + 5
    assert voters[0].next("poll_result")["question"] == "lunch?"
    assert voters[0].next("poll_result") == result
    assert outsider.questions == []


def test_a_gather_returns_by_its_deadline_when_a_node_dies_during_it(
        redis_url: str, node_factory: Any, celery_worker_factory: Any, asked_client: Any,
        tasks: Any) -> None:
    nodes = node_factory(app=APP, count=3, env=node_env(redis_url))
    celery_worker_factory(worker_env(redis_url))
    alive = [asked_client(node, answer=lambda event, data: "here") for node in nodes[:2]]
    # on the node that dies: a client still thinking about its answer
    doomed = asked_client(nodes[2])
    for client in (*alive, doomed):
        client.call("join", "team")
    started = time.monotonic()
    pending = tasks.send_task("workers.tasks.poll",
                              kwargs={"question": "still there?", "room": "team",
                                      "timeout": 4})
    assert doomed.asked.wait(WAIT)
    doomed_sid = doomed.sid  # gone with its node
    nodes[2].kill(signal.SIGKILL)
    result = pending.get(timeout=WAIT)
    elapsed = time.monotonic() - started
    assert result["answers"] == {client.sid: "here" for client in alive}
    assert result["missing"] == [doomed_sid]
    assert elapsed < 4 + 5


def test_emit_callbacks_and_a_reply_channel_that_carries_only_this_worker_s_answers(
        redis_url: str, node_factory: Any, asked_client: Any) -> None:
    import redis

    from cluster.bus.channels import node_channel
    from workers import Emitter

    nodes = node_factory(app=APP, count=2, env=node_env(redis_url))
    a = asked_client(nodes[0], answer=lambda event, data: f"a:{data}")
    b = asked_client(nodes[1], answer=lambda event, data: f"b:{data}")
    for client in (a, b):
        client.call("join", "team")
    got: queue.Queue[tuple[Any, ...]] = queue.Queue()
    with Emitter.from_env({"REDIS_URL": redis_url,
                           "CLUSTER_SIGNING_SECRET": SIGNING_SECRET}) as emitter:
        # one sid: the ack's arguments, as a handler's callback gets them
        emitter.emit("question", 1, to=b.sid, callback=lambda *args: got.put(args))
        assert got.get(timeout=WAIT) == ("b:1",)
        # a room: once per answering client, its sid first
        emitter.emit("question", 2, to="team",
                     callback=lambda sid, *args: got.put((sid, *args)))
        assert {got.get(timeout=WAIT), got.get(timeout=WAIT)} == {(a.sid, "a:2"),
                                                                   (b.sid, "b:2")}

        # the emitter listens on its own channel only: the nodes alone read
        # the common one, where every broadcast travels
        client = redis.Redis.from_url(redis_url)
        own = node_channel(emitter.channel, emitter.manager.host_id)
        assert dict(client.pubsub_numsub(own, emitter.channel)) == {
            own.encode(): 1, emitter.channel.encode(): 2}
        client.close()
        inbox = emitter._get_calls().inbox
        before = inbox.received
        for i in range(200):
            emitter.emit("news", i)  # everyone
        result = emitter.gather("question", 3, to="team", timeout=10)
        assert result.answers == {a.sid: "a:3", b.sid: "b:3"}
        assert inbox.received - before == 4  # a roster and an answer per node
        assert b.next("news") == 0


def test_calls_and_gathers_over_rabbitmq(rabbitmq_url: dict[str, str], node_factory: Any,
                                         asked_client: Any) -> None:
    from workers import Emitter, NotConnectedError

    env = {"MESSAGE_QUEUE_CHANNEL": rabbitmq_url["channel"],
           "CLUSTER_SIGNING_SECRET": SIGNING_SECRET,
           "CELERY_BROKER_URL": rabbitmq_url["url"], "CELERY_QUEUE": rabbitmq_url["queue"]}
    nodes = node_factory(app=APP, count=2, message_queue=rabbitmq_url["url"], env=env)
    a = asked_client(nodes[0], answer=lambda event, data: f"a:{data}")
    b = asked_client(nodes[1], answer=lambda event, data: f"b:{data}")
    quiet = asked_client(nodes[1])
    for client in (a, b, quiet):
        client.call("join", "team")
    got: queue.Queue[tuple[Any, ...]] = queue.Queue()
    with Emitter(rabbitmq_url["url"], channel=rabbitmq_url["channel"],
                 signing_secret=SIGNING_SECRET) as emitter:
        assert emitter.call("question", "hi", to=b.sid, timeout=10) == "b:hi"
        started = time.monotonic()
        with pytest.raises(NotConnectedError):
            emitter.call("question", to="not-a-connected-sid", timeout=30)
        assert time.monotonic() - started < 10
        emitter.emit("question", "cb", to=a.sid, callback=lambda *args: got.put(args))
        assert got.get(timeout=WAIT) == ("a:cb",)
        result = emitter.gather("question", "all", to="team", timeout=2)
        assert result.answers == {a.sid: "a:all", b.sid: "b:all"}
        assert result.missing == [quiet.sid]

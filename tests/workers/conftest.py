"""Fixtures for the workers tests: a real Celery worker process, RabbitMQ.

``celery_worker_factory(env, command=...)`` starts a worker (``python -m
celery -A workers.celery_app worker`` by default) with the thread pool,
waits for Celery's ``ready.`` line, and stops it by PID at teardown.
``rabbitmq_url`` skips unless a broker answers on 127.0.0.1:5672, and yields
a unique bus channel and Celery queue for the test (deleted afterwards).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cluster.devtools.local_cluster import ManagedProcess, stop_all
from tests.harness.fixtures import _used_by

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
WORKER_START_TIMEOUT = 30.0
SIGNING_SECRET = "workers-tests-signing-secret-0123456789"

CELERY_WORKER = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker"]
CLUSTER_WORKER = [sys.executable, "-m", "workers", "worker"]
# fast start and a quiet broker: no peer discovery, no events between workers
WORKER_FLAGS = ["--loglevel", "INFO", "--pool", "threads", "--concurrency", "2", "--without-mingle",
                "--without-gossip", "--without-heartbeat"]


class CeleryWorkerProcess(ManagedProcess):
    """One Celery worker; ready once it logged ``ready.``."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.argv = list(argv)
        self.env = dict(env)

    def command(self) -> list[str]:
        return self.argv

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MESSAGE_QUEUE_", "CELERY_", "CLUSTER_"))
               and k != "REDIS_URL"}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        return env

    def is_ready(self) -> bool:
        return " ready." in self.log_text()


@pytest.fixture
def celery_worker_factory(request: pytest.FixtureRequest,
                          tmp_path: Path) -> Iterator[Callable[..., CeleryWorkerProcess]]:
    workers: list[CeleryWorkerProcess] = []

    def factory(env: Mapping[str, str], command: Sequence[str] = CELERY_WORKER,
                extra_args: Sequence[str] = ()) -> CeleryWorkerProcess:
        name = f"worker{len(workers) + 1}"
        hostname = f"{name}-{uuid.uuid4().hex[:6]}@127.0.0.1"
        worker = CeleryWorkerProcess(
            [*command, *(["--"] if command is CLUSTER_WORKER else []), *WORKER_FLAGS,
             "--hostname", hostname, *extra_args],
            env, name=name, log_path=tmp_path / "logs" / f"{name}.log",
            cwd=request.config.rootpath, start_timeout=WORKER_START_TIMEOUT)
        workers.append(worker)
        _used_by(request.node, worker)  # its log joins a failure report
        worker.start()
        return worker

    yield factory
    stop_all(workers, grace=5.0)


@pytest.fixture
def rabbitmq_url() -> Iterator[dict[str, str]]:
    """``{"url", "channel", "queue"}`` for a test on RabbitMQ, or a skip."""
    kombu = pytest.importorskip("kombu")
    conn = kombu.Connection(RABBITMQ_URL, connect_timeout=2)
    try:
        conn.ensure_connection(max_retries=1)
    except Exception as exc:
        conn.release()
        pytest.skip(f"no RabbitMQ reachable at {RABBITMQ_URL} ({type(exc).__name__}: {exc}); "
                    f"start one (e.g. `rabbitmq-server`) to run the AMQP tests")
    run = uuid.uuid4().hex[:10]
    names = {"url": RABBITMQ_URL, "channel": f"fsc-test-bus-{run}",
             "queue": f"fsc-test-tasks-{run}"}
    yield names
    # the bus exchange outlives its nodes and Celery's queue is durable:
    # remove what this run created so the broker does not fill up
    try:
        channel = conn.channel()
        for call, name in ((channel.queue_delete, names["queue"]),
                           (channel.exchange_delete, names["queue"]),
                           (channel.exchange_delete, names["channel"])):
            try:
                call(name)
            except Exception:  # already gone, or the channel closed on error
                channel = conn.channel()
    finally:
        conn.release()


@pytest.fixture(scope="session")
def tasks_module() -> Any:
    """``workers.tasks`` imported in this process with a broker configured
    (its settings are read once, at import); the environment is restored."""
    saved = dict(os.environ)
    os.environ.update({"CELERY_BROKER_URL": "memory://",
                       "MESSAGE_QUEUE_URL": "redis://127.0.0.1:6399/0",
                       "CLUSTER_SIGNING_SECRET": SIGNING_SECRET})
    try:
        import workers.tasks
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return workers.tasks

"""workers.celery_app: configured from the environment, JSON only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from workers import ConfigurationError, Emitter, WorkerSettings

ROOT = str(Path(__file__).resolve().parents[2])


def test_json_only_and_results_off_by_default(tasks_module: Any) -> None:
    from workers.celery_app import create_celery_app

    app = create_celery_app(WorkerSettings(message_queue="redis://r/0", queue="jobs"))
    conf = app.conf
    assert (conf.task_serializer, conf.result_serializer, list(conf.accept_content)) == (
        "json", "json", ["json"])
    assert conf.broker_url == "redis://r/0"
    assert conf.task_default_queue == "jobs"
    assert conf.task_ignore_result is True
    with_results = create_celery_app(WorkerSettings(broker_url="amqp://b//",
                                                    result_backend="redis://r/1"))
    assert with_results.conf.task_ignore_result is False
    assert with_results.conf.broker_url == "amqp://b//"


def test_missing_broker_is_a_configuration_error(tasks_module: Any) -> None:
    from workers.celery_app import create_celery_app

    with pytest.raises(ConfigurationError, match="CELERY_BROKER_URL"):
        create_celery_app(WorkerSettings())


def test_module_registers_the_example_tasks(tasks_module: Any) -> None:
    from workers.celery_app import app

    assert {"workers.tasks.long_job", "workers.tasks.broadcast"} <= set(app.tasks)


def test_get_emitter_is_one_per_process(tasks_module: Any) -> None:
    from workers.celery_app import get_emitter

    first = get_emitter()
    assert isinstance(first, Emitter)
    assert get_emitter() is first
    assert first.channel == "flask-socketio"


def test_import_without_a_broker_says_what_to_set() -> None:
    done = subprocess.run([sys.executable, "-c", "import workers.celery_app"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "CELERY_BROKER_URL" in done.stderr


def test_a_worker_on_an_unsigned_bus_needs_the_opt_out() -> None:
    env = {"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin", "CELERY_BROKER_URL": "memory://",
           "MESSAGE_QUEUE_URL": "redis://127.0.0.1:6399/0"}
    refused = subprocess.run([sys.executable, "-c", "import workers.celery_app"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert refused.returncode != 0
    assert "CLUSTER_SIGNING_SECRET" in refused.stderr
    assert "CLUSTER_ALLOW_UNSIGNED_BUS=1" in refused.stderr
    allowed = subprocess.run([sys.executable, "-c", "import workers.celery_app"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env=dict(env, CLUSTER_ALLOW_UNSIGNED_BUS="1"))
    assert allowed.returncode == 0, allowed.stderr
    assert "UNSIGNED cluster bus" in allowed.stderr

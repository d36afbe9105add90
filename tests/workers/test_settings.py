"""workers.settings: the nodes' environment variables, read once."""

from __future__ import annotations

import pytest

from workers import ConfigurationError, WorkerSettings


def test_defaults_match_the_nodes() -> None:
    settings = WorkerSettings.from_env({})
    assert settings == WorkerSettings(message_queue=None, channel="flask-socketio",
                                      signing_secret=None, broker_url=None,
                                      result_backend=None, queue="celery")


def test_message_queue_url_wins_over_redis_url() -> None:
    env = {"MESSAGE_QUEUE_URL": "amqp://mq//", "REDIS_URL": "redis://r/0"}
    assert WorkerSettings.from_env(env).message_queue == "amqp://mq//"
    assert WorkerSettings.from_env({"REDIS_URL": "redis://r/0"}).message_queue == "redis://r/0"
    # an empty variable counts as unset, as in a compose file's `VAR=`
    env = {"MESSAGE_QUEUE_URL": " ", "REDIS_URL": "redis://r/0"}
    assert WorkerSettings.from_env(env).message_queue == "redis://r/0"


def test_every_variable() -> None:
    settings = WorkerSettings.from_env({
        "REDIS_URL": "redis://r/0", "MESSAGE_QUEUE_CHANNEL": "chan",
        "CLUSTER_SIGNING_SECRET": "s" * 32, "CELERY_BROKER_URL": "amqp://b//",
        "CELERY_RESULT_BACKEND": "redis://r/1", "CELERY_QUEUE": "jobs"})
    assert (settings.channel, settings.signing_secret, settings.celery_broker,
            settings.result_backend, settings.queue) == (
        "chan", "s" * 32, "amqp://b//", "redis://r/1", "jobs")
    assert "s" * 32 not in repr(settings)


def test_broker_defaults_to_the_bus_url() -> None:
    assert WorkerSettings.from_env({"REDIS_URL": "redis://r/0"}).celery_broker == "redis://r/0"
    with pytest.raises(ConfigurationError, match="CELERY_BROKER_URL"):
        _ = WorkerSettings.from_env({}).celery_broker


def test_require_message_queue_names_the_fix() -> None:
    with pytest.raises(ConfigurationError, match="MESSAGE_QUEUE_URL"):
        WorkerSettings.from_env({"CELERY_BROKER_URL": "redis://r/0"}).require_message_queue()


def test_overrides_ignore_none() -> None:
    settings = WorkerSettings.from_env({"REDIS_URL": "redis://r/0"})
    changed = settings.with_overrides(channel="c", broker_url=None)
    assert (changed.channel, changed.broker_url, changed.message_queue) == (
        "c", None, "redis://r/0")


def test_redis_partitions_come_from_the_nodes_variable() -> None:
    settings = WorkerSettings.from_env({"REDIS_URL": "redis+cluster://r:7000",
                                        "CLUSTER_REDIS_PARTITIONS": "6"})
    assert settings.redis_partitions == 6
    assert WorkerSettings.from_env({}).redis_partitions is None
    for bad in ("0", "six", "-2", "1.5"):
        with pytest.raises(ConfigurationError, match="CLUSTER_REDIS_PARTITIONS"):
            WorkerSettings.from_env({"CLUSTER_REDIS_PARTITIONS": bad})

"""Group commit of the sessions' and records' writes (session_store.write_batches):
each caller gets its own replies, concurrent writes share a round trip, a
batch that fails whole fails only the writes that fail alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from session_store import SessionStoreError
from session_store.write_batches import WriteBatches


class HeldSender:
    """A spawn that holds the batch's sender until the test lets it go, so
    that every caller has queued its write first."""

    def __init__(self) -> None:
        self.targets: list[Callable[[], Any]] = []

    def __call__(self, target: Callable[..., Any], *args: Any) -> None:
        self.targets.append(lambda: target(*args))

    def release(self) -> None:
        while self.targets:
            threading.Thread(target=self.targets.pop(0), daemon=True).start()


def _callers(batches: WriteBatches, writes: list[list[Any]]
             ) -> tuple[list[Any], list[Any], list[threading.Thread]]:
    """Run each write from a thread of its own; their replies and errors."""
    replies: list[Any] = [None] * len(writes)
    errors: list[Any] = [None] * len(writes)

    def call(index: int) -> None:
        try:
            replies[index] = batches.execute(writes[index])
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            errors[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(writes))]
    for thread in threads:
        thread.start()
    return replies, errors, threads


def _wait_queued(batches: WriteBatches, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(batches._queued) < count:  # noqa: SLF001 - the test holds the sender
        assert time.monotonic() < deadline, "the callers did not queue their writes"
        time.sleep(0.01)


def test_concurrent_writes_share_one_round_trip_and_get_their_own_replies(
        redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    sender = HeldSender()
    batches = WriteBatches(client, spawn=sender, event=threading.Event)
    writes = [[("set", (f"wb:{i}", f"v{i}"), {}), ("get", (f"wb:{i}",), {})]
              for i in range(20)]
    replies, errors, threads = _callers(batches, writes)
    _wait_queued(batches, 20)
    sender.release()
    for thread in threads:
        thread.join(10)
    assert errors == [None] * 20
    assert replies == [[True, f"v{i}".encode()] for i in range(20)]
    assert batches.round_trips == 1 and batches.writes == 20


def test_an_error_reply_goes_to_its_own_caller_only(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("wb:string", "x")
    sender = HeldSender()
    batches = WriteBatches(client, spawn=sender, event=threading.Event)
    writes = [[("sadd", ("wb:string", "m"), {})], [("sadd", ("wb:set", "m"), {})]]
    replies, errors, threads = _callers(batches, writes)
    _wait_queued(batches, 2)
    sender.release()
    for thread in threads:
        thread.join(10)
    assert errors == [None, None]
    assert isinstance(replies[0][0], redis.ResponseError)
    assert str(replies[0][0]).startswith("WRONGTYPE")
    assert replies[1] == [1]


class _OneBadKeyPipeline:
    """A pipeline whose round trip fails whenever it carries ``bad`` (as a
    shard that is down would fail it); otherwise real Redis answers."""

    def __init__(self, real: Any, bad: str) -> None:
        self.real, self.bad, self.keys = real, bad, []

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> None:
            self.keys.append(args[0])
            getattr(self.real, name)(*args, **kwargs)
        return queue

    def execute(self, raise_on_error: bool = True) -> Any:
        if self.bad in self.keys:
            self.real.reset()
            raise redis.ConnectionError("the shard of that key is down")
        return self.real.execute(raise_on_error=raise_on_error)


class _ShardDown:
    def __init__(self, client: Any, bad: str) -> None:
        self.client, self.bad = client, bad

    def pipeline(self, transaction: bool = True) -> Any:
        return _OneBadKeyPipeline(self.client.pipeline(transaction=transaction), self.bad)


def test_a_batch_that_fails_whole_fails_only_the_writes_that_fail_alone(
        redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    sender = HeldSender()
    batches = WriteBatches(_ShardDown(client, "wb:down"), spawn=sender, event=threading.Event)
    writes = [[("set", ("wb:up1", "a"), {})], [("set", ("wb:down", "b"), {})],
              [("set", ("wb:up2", "c"), {})]]
    replies, errors, threads = _callers(batches, writes)
    _wait_queued(batches, 3)
    sender.release()
    for thread in threads:
        thread.join(10)
    assert replies[0] == [True] and replies[2] == [True]
    assert isinstance(errors[1], redis.ConnectionError)
    assert errors[0] is None and errors[2] is None
    assert client.get("wb:up1") == b"a" and client.get("wb:up2") == b"c"


def test_a_sender_that_never_runs_is_an_error_not_a_hang(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    batches = WriteBatches(client, spawn=lambda *_: None, event=threading.Event,
                           wait_seconds=0.2)
    with pytest.raises(SessionStoreError, match="no reply from Redis"):
        batches.execute([("get", ("wb:any",), {})])


def test_a_lone_write_is_sent_at_once_and_big_bursts_are_split(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    def spawn(target: Callable[..., Any], *args: Any) -> None:
        threading.Thread(target=target, args=args, daemon=True).start()

    batches = WriteBatches(client, spawn=spawn, event=threading.Event, max_commands=4)
    assert batches.execute([("set", ("wb:lone", "1"), {})]) == [True]
    sender = HeldSender()
    batches = WriteBatches(client, spawn=sender, event=threading.Event, max_commands=4)
    writes = [[("set", (f"wb:b{i}", "x"), {}), ("get", (f"wb:b{i}",), {})] for i in range(6)]
    replies, errors, threads = _callers(batches, writes)
    _wait_queued(batches, 6)
    sender.release()
    for thread in threads:
        thread.join(10)
    assert errors == [None] * 6 and replies == [[True, b"x"]] * 6
    assert batches.round_trips == 3  # two writes (four commands) per round trip


def test_the_store_creates_and_renews_sessions_through_the_batches(redis_url: str) -> None:
    from session_store import RedisSessionStore

    client = redis.Redis.from_url(redis_url)
    store = RedisSessionStore(client, key_prefix="wb:sess:", ttl=60)
    sender = HeldSender()
    store.batches = WriteBatches(client, spawn=sender, event=threading.Event)
    created: list[Any] = [None] * 5

    def create(index: int) -> None:
        created[index] = store.create_resumable({"n": index}, f"user{index}")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    _wait_queued(store.batches, 5)
    sender.release()
    for thread in threads:
        thread.join(10)
    assert store.batches.round_trips == 1 and store.batches.writes == 5
    store.batches = WriteBatches(client, spawn=lambda target, *args: threading.Thread(
        target=target, args=args, daemon=True).start(), event=threading.Event)
    for index, (handle, resume_id) in enumerate(created):
        assert store.load(handle.session_id)["n"] == index
        claimed = store.claim_resume(resume_id, f"user{index}")
        assert claimed.granted and claimed.session_id == handle.session_id
    # a load, and a claim's three steps (pointer, claim, the pointer's TTL)
    assert store.batches.writes == 5 * 4
    handle, _ = created[0]
    again = store.reconnected(handle.session_id, "user0")
    assert store.claim_resume(again, "user0").granted
    assert store.batches.writes == 5 * 4 + 1 + 3

"""The Redis-backed session store: what makes a session survive a node.

Key layout (``P`` is ``key_prefix``, default ``sio:sess:``; ``{...}`` is a
Redis Cluster hash tag, so every key of one session is in one slot)::

    P data:{<session id>}            hash, one field per session key (see
                                     session_store.layout), plus the current
                                     resume binding: m:resume (the resume
                                     id's digest) and m:resume_record (JSON
                                     {"s": session id, "i": identity digest,
                                     "m": MAC tag (with a secret)})
    P used:{<session id>}:<digest>   string "<claim token>|<MAC tag>": tombstone
                                     of a claimed resume id (the same claim,
                                     retried, is granted again)
    P resume:{<digest>}              string: the session id, the pointer that
                                     finds a session from a presented resume id

(:mod:`cluster.sessions.connection_state` adds ``P conn:{<session id>}``
and its ``:ns`` and ``:rooms`` keys, in the same slot.) Resume ids are
stored only as SHA-256 digests (:func:`~.resume.stored_form`). Random
session ids and digests spread the keys evenly over the cluster's slots.

Every Lua script declares all its keys in ``KEYS`` and touches one slot
(:mod:`.redis_scripts`), so the same store works on one Redis, behind
Sentinel, and on a Redis Cluster (``redis+cluster://`` URLs, see
:mod:`.redis_client`). A session's own state (its hash, its resume binding,
its tombstones) changes in one script, atomically. Only the pointer lives
in another slot (the digest's), and it is an index, never a proof:

- *claim*: read the pointer (one script on the digest's slot), then run the
  claim on the session's slot, which grants only if the session is bound
  to that digest *now*, identity included, then removes the binding and
  leaves the tombstone. Single use holds because the binding is consumed
  in that one script: of concurrent claims exactly one finds it. A forged
  or stale pointer leads to a session not bound to the digest: refused.
  After a grant the pointer lives on for ``tombstone_ttl`` (so a replay is
  reported as ``REPLAYED``).
- *issue* (rotation): write the new pointer first, then bind the session
  to the new digest (which invalidates the previous one at once, in the
  session's script), then delete the previous pointer. A claim between
  the steps finds either a pointer to a session not (yet, or any more)
  bound to its digest (refused as it would be anyway), never a grant of a
  replaced id. A session that vanished meanwhile gets its new pointer
  deleted.
- *TTLs*: the session's script sets the session's (and so its binding's)
  TTL and names its digest; the pointer then gets the same TTL, set just
  after, so it never expires before the binding it leads to.

A claim costs two round trips (three after a grant), an issue three, a
TTL change two (for any number of sessions); a crash between the steps
leaves at most a pointer that expires on its own.

Every key has a TTL: a session and its resume binding share one, the
connected lease while a connection holds the session (``create``,
``persist``), the shorter ``ttl`` once the connection ended (``expire``).
Tombstones live ``tombstone_ttl``.

A key of the wrong type where a session, pointer or connection record lives
(someone with Redis access ran ``SET`` on a session's hash, say) would make
every command on it fail with ``WRONGTYPE``, for good. The scripts check the
type first: a wrong-typed key is deleted and treated as missing, so the node
writes the session back from its live connection (or a resume gets a fresh
session); it is counted (:attr:`RedisSessionStore.wrong_type_keys`) and
logged once per window with the fix.

Releases before this layout named the keys without hash tags
(``P data:<id>``, ``P resume:<digest>``); their sessions are not read: during
a rolling upgrade a session stored by an old node is treated as missing
once (its client gets a fresh session, a live connection on a new node is
written back under the new names by its lease renewal).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from . import redis_scripts as scripts
from .base import SessionStore
from .exceptions import SessionStoreAccessDenied, SessionStoreUnavailable
from .layout import DEFAULT_KEY_PREFIX, DEFAULT_TTL, META_RESUME, META_RESUME_RECORD
from .quiet_log import QuietLog
from .redis_client import LazyClient, connect, is_cluster
from .redis_errors import access_problem
from .resume import ResumeStatus, is_well_formed_id, redact, stored_form
from .write_batches import Command, WriteBatches, run_pipeline

__all__ = ["WRONG_TYPE_FIX", "RedisSessionStore"]

logger = logging.getLogger("session_store")

#: what an operator reads when a key had the wrong type
WRONG_TYPE_FIX = ("a key of the wrong type was found at %s and deleted (someone with write "
                  "access to Redis wrote it: keep other programs off the store's key prefix "
                  "and give the nodes their own ACL user); the session is written back from "
                  "its live connection, or a resume of it gets a fresh session")

# Fail fast when Redis is unreachable: the node must answer its clients, not
# hang for the OS TCP timeout. Overridable through redis_options.
_DEFAULT_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 5}


def _where(client: Any) -> str:
    """Describe the server for messages, never including the password."""
    if isinstance(client, LazyClient):
        return client.where
    if is_cluster(client):
        return "the Redis Cluster"
    try:
        kw = client.connection_pool.connection_kwargs
    except AttributeError:
        return "the configured Redis"
    if kw.get("path"):
        return f"redis unix socket {kw['path']} db {kw.get('db', 0)}"
    if "host" in kw:
        return f"redis {kw['host']}:{kw.get('port', 6379)} db {kw.get('db', 0)}"
    return "the configured Redis"


class RedisSessionStore(SessionStore):
    """:class:`SessionStore` persisted in Redis, shared by every node.

    :param redis_client_or_url: a ``redis.Redis`` client (use this for
        Sentinel: pass ``sentinel.master_for(...)``), a
        ``redis.cluster.RedisCluster``, or a ``redis://``, ``rediss://``,
        ``unix://``, ``redis+cluster://`` or ``rediss+cluster://`` URL, which
        may carry a password (see :mod:`.redis_client`).
    :param redis_options: extra keyword arguments for ``Redis.from_url`` (or
        ``RedisCluster``) when a URL is given; ``cluster=True`` makes a
        ``redis://`` URL a Redis Cluster. Connect and command timeouts
        default to 5 seconds.

    The other keywords (``key_prefix``, ``ttl``, ``lease_ttl``,
    ``tombstone_ttl``, ``secret``) are described on :class:`SessionStore`;
    give a ``secret`` whenever anyone but the nodes can write to the Redis
    (the extension always does, see :mod:`session_store.record_mac`).

    Every Redis failure (unreachable, timeout, read-only replica, script
    error) is raised as :class:`SessionStoreUnavailable`; the store never
    retries on its own.
    """

    def __init__(
        self,
        redis_client_or_url: redis.Redis | str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl: float = DEFAULT_TTL,
        lease_ttl: float = 86400,
        tombstone_ttl: float = 600,
        redis_options: Mapping[str, Any] | None = None,
        secret: str | bytes | Callable[[], str | bytes | None] | None = None,
    ) -> None:
        super().__init__(
            key_prefix=key_prefix, ttl=ttl, lease_ttl=lease_ttl, tombstone_ttl=tombstone_ttl,
            secret=secret,
        )
        self.redis: Any
        if isinstance(redis_client_or_url, str):
            options = {**_DEFAULT_OPTIONS, **(redis_options or {})}
            self.redis = connect(redis_client_or_url, options)
        else:
            self.redis = redis_client_or_url
        #: the group commit the node shares its connections' writes through
        #: (:class:`~session_store.write_batches.WriteBatches`); ``None``, the
        #: default: each call makes its own round trip
        self.batches: WriteBatches | None = None
        if is_cluster(self.redis) and ("{" in key_prefix or "}" in key_prefix):
            # a brace in the prefix would become every key's hash tag: one slot
            raise ValueError(f"key_prefix {key_prefix!r} holds a brace, which on a Redis "
                             "Cluster would put every session in one slot; use a prefix "
                             "without braces (default 'sio:sess:')")
        self._where = _where(self.redis)
        #: keys found with the wrong type and deleted (see the module doc)
        self.wrong_type_keys = 0
        self._quiet = QuietLog(logger)

    def __repr__(self) -> str:
        return f"RedisSessionStore({self._where}, key_prefix={self.key_prefix!r})"

    def session_key(self, session_id: str) -> str:
        """The Redis key of a session's hash (for operators and tests)."""
        return f"{self.key_prefix}data:{{{session_id}}}"

    def resume_key(self, resume_id: str) -> str:
        """The Redis key of the pointer from a live resume id to its session
        (named by the id's digest, see :func:`~.resume.stored_form`)."""
        return self._pointer(stored_form(resume_id))

    def tombstone_key(self, resume_id: str, session_id: str) -> str:
        """The Redis key remembering that ``session_id``'s resume id was claimed."""
        return self._tombstone(session_id, stored_form(resume_id))

    def _pointer(self, digest: str) -> str:
        return f"{self.key_prefix}resume:{{{digest}}}"

    def _tombstone(self, session_id: str, digest: str) -> str:
        return f"{self.key_prefix}used:{{{session_id}}}:{digest}"

    @contextlib.contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, RedisClusterException) as exc:
            # RedisClusterException: no node of the cluster answered (it is
            # not a RedisError)
            problem = access_problem(exc)
            if problem is not None:
                raise SessionStoreAccessDenied(
                    f"Session store could not {operation} on {self._where}: {problem}"
                ) from exc
            raise SessionStoreUnavailable(
                f"Session store could not {operation}: {self._where} failed "
                f"({type(exc).__name__}: {exc}). Check that Redis is running and "
                "reachable at the configured URL; retry once it is back."
            ) from exc

    def _pipelined(self, commands: list[Command]) -> list[Any]:
        """The replies of ``commands``, sent in one round trip (with other
        connections' writes when :attr:`batches` is set).

        :raises redis.RedisError: the first error reply, or what the round
            trip raised.
        """
        if self.batches is not None:
            replies = self.batches.execute(commands)
        else:
            replies = run_pipeline(self.redis, commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return list(replies)

    def _wrong_type(self, key: str) -> None:
        self.wrong_type_keys += 1
        # the key holds a session id or a resume id's digest: redacted
        head, _, ident = key.partition("{")
        self._quiet.log(logging.WARNING, "wrong-type", WRONG_TYPE_FIX,
                        f"{head}{{{redact(ident)}")

    # -- primitives ------------------------------------------------------------

    def _backend_create(self, session_id: str, fields: dict[str, str], ttl_ms: int) -> None:
        args: list[str | int] = [ttl_ms]
        for name, value in fields.items():
            args += (name, value)
        with self._guard("create a session"):
            scripts.CREATE([self.session_key(session_id)], args, self.redis)

    def _backend_create_issued(self, session_id: str, fields: dict[str, str], ttl_ms: int,
                               resume_id: str, record: str) -> bool:
        # one pipeline: the session with its binding (the fields ISSUE would
        # set), then its pointer with the session's TTL, set after it so the
        # pointer never expires first (on Redis Cluster the two keys are in
        # different slots: redis-py sends one pipeline to each node)
        args: list[str | int] = [ttl_ms]
        for name, value in {**fields, META_RESUME: resume_id, META_RESUME_RECORD: record}.items():
            args += (name, value)
        with self._guard("create a session"):
            self._pipelined([scripts.CREATE.command([self.session_key(session_id)], args),
                             ("set", (self._pointer(resume_id), session_id), {"px": ttl_ms})])
        return True

    def _backend_lease_issued(self, session_id: str, lease_ms: int, resume_id: str,
                              record: str) -> bool:
        # one pipeline: the lease and the binding, then the pointer with the
        # same TTL (the order of create_resumable's); a pointer written for a
        # session that turned out gone, or a replaced binding's pointer, is
        # deleted in a second round trip, which only those rare cases pay
        key, pointer = self.session_key(session_id), self._pointer(resume_id)
        with self._guard("renew a session and issue its resume id"):
            (status, old), _ = self._pipelined([
                scripts.LEASE_ISSUE.command([key], [resume_id, record, lease_ms]),
                ("set", (pointer, session_id), {"px": lease_ms})])
            stale = [] if int(status) > 0 else [pointer]
            if old and _str(old) != resume_id:
                stale.append(self._pointer(_str(old)))  # replaced: its id is dead
            for dead in stale:
                self.redis.delete(dead)
        if int(status) < 0:
            self._wrong_type(key)
        return int(status) > 0

    def _backend_read(self, session_id: str) -> Mapping[str | bytes, str | bytes] | None:
        key = self.session_key(session_id)
        with self._guard("load a session"):
            try:
                (fields,) = self._pipelined([("hgetall", (key,), {})])
            except redis.ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                if scripts.CLEAR_WRONG_TYPE([key], ["hash"], self.redis):
                    self._wrong_type(key)
                return None
        return fields or None

    def _backend_save(
        self, session_id: str, fields: dict[str, str], deleted: list[str], now: str
    ) -> bool:
        args: list[str | int] = [now, self._lease_ms, len(fields)]
        for name, value in fields.items():
            args += (name, value)
        args += deleted
        key = self.session_key(session_id)
        with self._guard("save a session"):
            saved = int(scripts.SAVE([key], args, self.redis))
        if saved < 0:
            self._wrong_type(key)
        return saved > 0

    def _backend_set_ttl(self, session_ids: list[str], ttl_ms: int) -> int:
        with self._guard("set a session TTL"):
            return sum(self._set_ttls(session_ids, ttl_ms))

    def _backend_set_ttl_each(self, session_ids: list[str], ttl_ms: int) -> list[bool]:
        with self._guard("renew session leases"):
            return self._set_ttls(session_ids, ttl_ms)

    def _backend_expire_bound(self, session_id: str, ttl_ms: int, resume_id: str) -> bool:
        # the session's TTL and the likely pointer's in one pipeline; only a
        # binding replaced meanwhile costs a second round trip, for its own
        key = self.session_key(session_id)
        with self._guard("set a session TTL"):
            pipe = self.redis.pipeline(transaction=False)
            scripts.SET_TTL([key], [ttl_ms], pipe)
            pipe.pexpire(self._pointer(resume_id), ttl_ms)
            (status, digest), _ = pipe.execute()
            if digest and _str(digest) != resume_id:
                self.redis.pexpire(self._pointer(_str(digest)), ttl_ms)
        if int(status) < 0:
            self._wrong_type(key)
        return int(status) == 1

    def _set_ttls(self, session_ids: list[str], ttl_ms: int) -> list[bool]:
        """Set the TTL of each session (one pipelined round trip), then move
        their resume pointers along (a second one, only for those bound)."""
        if len(session_ids) == 1:
            replies = [scripts.SET_TTL([self.session_key(session_ids[0])], [ttl_ms],
                                       self.redis)]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for session_id in session_ids:
                scripts.SET_TTL([self.session_key(session_id)], [ttl_ms], pipe)
            replies = pipe.execute()
        found, digests = [], []
        for session_id, (status, digest) in zip(session_ids, replies, strict=True):
            if int(status) < 0:
                self._wrong_type(self.session_key(session_id))
            found.append(int(status) == 1)
            if digest:
                digests.append(_str(digest))
        if digests:
            pipe = self.redis.pipeline(transaction=False)
            for digest in digests:
                pipe.pexpire(self._pointer(digest), ttl_ms)
            pipe.execute()
        return found

    def _backend_delete(self, session_id: str) -> bool:
        with self._guard("delete a session"):
            deleted, digest = scripts.DELETE([self.session_key(session_id)], [], self.redis)
            if digest:
                self.redis.delete(self._pointer(_str(digest)))
        return bool(deleted)

    def _backend_issue(self, session_id: str, resume_id: str, record: str) -> bool:
        key, pointer = self.session_key(session_id), self._pointer(resume_id)
        with self._guard("issue a resume id"):
            # the pointer first: once the session is bound, its id is findable
            self.redis.set(pointer, session_id, px=self._lease_ms + self._tombstone_ms)
            status, old, ttl = scripts.ISSUE([key], [resume_id, record, self._lease_ms],
                                             self.redis)
            if int(status) <= 0:
                self.redis.delete(pointer)
            else:
                pipe = self.redis.pipeline(transaction=False)
                if old and _str(old) != resume_id:
                    pipe.delete(self._pointer(_str(old)))  # replaced: its id is dead
                # the session's TTL (the countdown when issued after expire()),
                # set after the session's: the pointer never expires first
                pipe.pexpire(pointer, int(ttl))
                pipe.execute()
        if int(status) < 0:
            self._wrong_type(key)
        return int(status) > 0

    def _backend_claim(
        self, resume_id: str, digest: str, tombstone_ms: int, token: str
    ) -> tuple[ResumeStatus, str | None, str | None]:
        pointer = self._pointer(resume_id)
        with self._guard("claim a resume id"):
            # each step batched with other connections' (a reconnect storm
            # claims thousands at once), in the order the steps need
            (found,) = self._pipelined([scripts.POINTER.command([pointer], [])])
            if _str(found[0]) == "wrongtype":
                self._wrong_type(pointer)
                return ResumeStatus.UNKNOWN, None, None
            if _str(found[0]) != "ok":
                return ResumeStatus.UNKNOWN, None, None
            session_id = _str(found[1])
            if not is_well_formed_id(session_id):
                return ResumeStatus.MALFORMED, None, None
            key = self.session_key(session_id)
            (reply,) = self._pipelined([scripts.CLAIM.command(
                [key, self._tombstone(session_id, resume_id)],
                [resume_id, digest, tombstone_ms, session_id, token])])
            status = _str(reply[0])
            if status == "granted":
                # the pointer outlives the binding by the tombstone: replays
                # of the id are reported as such, then it goes
                self._pipelined([("pexpire", (pointer, tombstone_ms), {})])
        if status == "wrongtype":
            self._wrong_type(key)
            return ResumeStatus.UNKNOWN, None, None
        granted_id = _str(reply[1]) if len(reply) > 1 else None
        tag = _str(reply[2]) if len(reply) > 2 and reply[2] else None
        return ResumeStatus(status), granted_id, tag


def _str(value: str | bytes) -> str:
    # "replace": a pointer someone overwrote with bytes reads as a bad id
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

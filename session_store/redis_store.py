"""The Redis-backed session store: what makes a session survive a node.

Key layout (``P`` is ``key_prefix``, default ``sio:sess:``)::

    P data:<session id>    hash, one field per session key (see session_store.layout)
    P resume:<resume id>   string, JSON {"s": session id, "i": identity digest,
                           "m": MAC tag (with a secret)}
    P used:<resume id>     string "1": tombstone of a claimed resume id

Every key has a TTL. A session and its current resume id always share one:
the connected lease while a connection holds the session (``create``,
``persist``), the shorter ``ttl`` once the connection ended (``expire``).
Tombstones live ``tombstone_ttl``.

Each operation is one Lua script or one MULTI transaction, so it is atomic
and costs one round trip.

A key of the wrong type where a session or resume id lives (someone with
Redis access ran ``SET`` on a session's hash, say) would make every command
on it fail with ``WRONGTYPE``, for good. The scripts check the type first: a
wrong-typed key is deleted and treated as missing, so the node writes the
session back from its live connection (or a resume gets a fresh session);
it is counted (:attr:`RedisSessionStore.wrong_type_keys`) and logged once
per window with the fix. The scripts build the resume key of a session from
the prefix, which Redis Cluster does not allow; a single Redis, or one behind
Sentinel, is what this store supports.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis

from .base import SessionStore
from .exceptions import SessionStoreAccessDenied, SessionStoreUnavailable
from .layout import DEFAULT_KEY_PREFIX, DEFAULT_TTL
from .quiet_log import QuietLog
from .redis_errors import access_problem
from .resume import ResumeStatus, redact, stored_form

__all__ = ["WRONG_TYPE_FIX", "RedisSessionStore"]

logger = logging.getLogger("session_store")

# KEYS[1] session; ARGV: now, lease ms, number of fields to set, then
# field/value pairs, then the fields to delete.
_SAVE = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return 0 end
if kind ~= 'hash' then redis.call('DEL', KEYS[1]) return -1 end
local n = tonumber(ARGV[3])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + 2 * n)) end
if #ARGV > 3 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 4 + 2 * n)) end
redis.call('HSET', KEYS[1], 'm:updated', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'm:version', 1)
if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS[1] session; ARGV: ttl ms, resume key prefix.
_SET_TTL = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return 0 end
if kind ~= 'hash' then redis.call('DEL', KEYS[1]) return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local rid = redis.call('HGET', KEYS[1], 'm:resume')
if rid then redis.call('PEXPIRE', ARGV[2] .. rid, ARGV[1]) end
return 1
"""

# KEYS[1] session; ARGV: resume key prefix.
_DELETE = """
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local rid = redis.call('HGET', KEYS[1], 'm:resume')
  if rid then redis.call('DEL', ARGV[1] .. rid) end
end
return redis.call('DEL', KEYS[1])
"""

# KEYS[1] session, KEYS[2] new resume key; ARGV: resume id, record,
# resume key prefix, lease ms. The resume id takes the session's TTL.
_ISSUE = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return 0 end
if kind ~= 'hash' then redis.call('DEL', KEYS[1]) return -1 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then
  ttl = tonumber(ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local old = redis.call('HGET', KEYS[1], 'm:resume')
if old then redis.call('DEL', ARGV[3] .. old) end
redis.call('HSET', KEYS[1], 'm:resume', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
return 1
"""

# KEYS[1] resume key, KEYS[2] tombstone key; ARGV: identity digest,
# tombstone ms. A claim with the wrong identity leaves the id in place.
_CLAIM = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'string' then
  redis.call('DEL', KEYS[1])
  return {'wrongtype'}
end
local record = redis.call('GET', KEYS[1])
if not record then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {'replayed'} end
  return {'unknown'}
end
local ok, parsed = pcall(cjson.decode, record)
if not ok or type(parsed) ~= 'table' or type(parsed['s']) ~= 'string' then
  return {'malformed'}
end
if parsed['i'] ~= ARGV[1] then return {'identity_mismatch'} end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
local tag = parsed['m']
if type(tag) ~= 'string' then tag = '' end
return {'granted', parsed['s'], tag}
"""

# KEYS[1] any key; ARGV[1] its type: deleted when it has another one.
_CLEAR_WRONG_TYPE = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

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
        Sentinel: pass ``sentinel.master_for(...)``), or a ``redis://``,
        ``rediss://`` or ``unix://`` URL, which may carry a password.
    :param redis_options: extra keyword arguments for ``Redis.from_url`` when
        a URL is given. Connect and command timeouts default to 5 seconds.

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
        if isinstance(redis_client_or_url, str):
            options = {**_DEFAULT_OPTIONS, **(redis_options or {})}
            self.redis = redis.Redis.from_url(redis_client_or_url, **options)
        else:
            self.redis = redis_client_or_url
        self._where = _where(self.redis)
        self._resume_prefix = key_prefix + "resume:"
        self._tombstone_prefix = key_prefix + "used:"
        self._save = self.redis.register_script(_SAVE)
        self._set_ttl = self.redis.register_script(_SET_TTL)
        self._delete = self.redis.register_script(_DELETE)
        self._issue = self.redis.register_script(_ISSUE)
        self._claim = self.redis.register_script(_CLAIM)
        self._clear_wrong_type = self.redis.register_script(_CLEAR_WRONG_TYPE)
        #: keys found with the wrong type and deleted (see the module doc)
        self.wrong_type_keys = 0
        self._quiet = QuietLog(logger)

    def __repr__(self) -> str:
        return f"RedisSessionStore({self._where}, key_prefix={self.key_prefix!r})"

    def session_key(self, session_id: str) -> str:
        """The Redis key of a session's hash (for operators and tests)."""
        return f"{self.key_prefix}data:{session_id}"

    def resume_key(self, resume_id: str) -> str:
        """The Redis key of a live resume id (named by its digest, see
        :func:`~.resume.stored_form`; for operators and tests)."""
        return self._resume_prefix + stored_form(resume_id)

    def tombstone_key(self, resume_id: str) -> str:
        """The Redis key remembering a claimed resume id (by its digest)."""
        return self._tombstone_prefix + stored_form(resume_id)

    @contextlib.contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
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

    def _wrong_type(self, key: str) -> None:
        self.wrong_type_keys += 1
        # the key ends with a session id or a resume id's digest: redacted
        head, _, ident = key.rpartition(":")
        self._quiet.log(logging.WARNING, "wrong-type", WRONG_TYPE_FIX,
                        f"{head}:{redact(ident)}")

    # -- primitives ------------------------------------------------------------

    def _backend_create(self, session_id: str, fields: dict[str, str], ttl_ms: int) -> None:
        key = self.session_key(session_id)
        with self._guard("create a session"):
            pipe = self.redis.pipeline(transaction=True)
            mapping: dict[Any, Any] = fields  # redis-py's stubs want a wider key type
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, ttl_ms)
            pipe.execute()

    def _backend_read(self, session_id: str) -> Mapping[str | bytes, str | bytes] | None:
        key = self.session_key(session_id)
        with self._guard("load a session"):
            try:
                fields: Mapping[str | bytes, str | bytes] = self.redis.hgetall(key)
            except redis.ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                if self._clear_wrong_type(keys=[key], args=["hash"]):
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
            saved = int(self._save(keys=[key], args=args))
        if saved < 0:
            self._wrong_type(key)
        return saved > 0

    def _backend_set_ttl(self, session_ids: list[str], ttl_ms: int) -> int:
        with self._guard("set a session TTL"):
            if len(session_ids) == 1:
                replies = [self._run_set_ttl(self.redis, session_ids[0], ttl_ms)]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for session_id in session_ids:
                    self._run_set_ttl(pipe, session_id, ttl_ms)
                replies = pipe.execute()
        return sum(self._found(session_ids, replies))

    def _backend_set_ttl_each(self, session_ids: list[str], ttl_ms: int) -> list[bool]:
        with self._guard("renew session leases"):
            pipe = self.redis.pipeline(transaction=False)
            for session_id in session_ids:
                self._run_set_ttl(pipe, session_id, ttl_ms)
            replies = pipe.execute()
        return self._found(session_ids, replies)

    def _found(self, session_ids: list[str], replies: list[Any]) -> list[bool]:
        """Which sessions a TTL script found; a wrong-typed one was deleted."""
        found = []
        for session_id, reply in zip(session_ids, replies, strict=True):
            if int(reply) < 0:
                self._wrong_type(self.session_key(session_id))
            found.append(int(reply) == 1)
        return found

    def _run_set_ttl(self, client: Any, session_id: str, ttl_ms: int) -> Any:
        return self._set_ttl(
            keys=[self.session_key(session_id)],
            args=[ttl_ms, self._resume_prefix],
            client=client,
        )

    def _backend_delete(self, session_id: str) -> bool:
        with self._guard("delete a session"):
            return bool(
                self._delete(keys=[self.session_key(session_id)], args=[self._resume_prefix])
            )

    def _backend_issue(self, session_id: str, resume_id: str, record: str) -> bool:
        key = self.session_key(session_id)
        with self._guard("issue a resume id"):
            issued = int(self._issue(
                keys=[key, self._resume_prefix + resume_id],
                args=[resume_id, record, self._resume_prefix, self._lease_ms],
            ))
        if issued < 0:
            self._wrong_type(key)
        return issued > 0

    def _backend_claim(
        self, resume_id: str, digest: str, tombstone_ms: int
    ) -> tuple[ResumeStatus, str | None, str | None]:
        with self._guard("claim a resume id"):
            reply = self._claim(
                keys=[self._resume_prefix + resume_id, self._tombstone_prefix + resume_id],
                args=[digest, tombstone_ms],
            )
        if _str(reply[0]) == "wrongtype":
            self._wrong_type(self._resume_prefix + resume_id)
            return ResumeStatus.UNKNOWN, None, None
        status = ResumeStatus(_str(reply[0]))
        session_id = _str(reply[1]) if len(reply) > 1 else None
        tag = _str(reply[2]) if len(reply) > 2 and reply[2] else None
        return status, session_id, tag


def _str(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value

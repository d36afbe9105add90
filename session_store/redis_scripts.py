"""The Lua scripts of :mod:`session_store.redis_store`.

Each touches only the keys it is given in ``KEYS``, and those keys share one
hash tag (the session id), so each runs on one Redis Cluster slot. A key of
the wrong type is deleted and reported (``-1`` or ``'wrongtype'``).
"""

from __future__ import annotations

from .redis_client import LuaScript

__all__ = ["CLAIM", "CLEAR_WRONG_TYPE", "CREATE", "DELETE", "ISSUE", "POINTER", "SAVE",
           "SET_TTL"]

# KEYS[1] session; ARGV: ttl ms, then field/value pairs. A wrong-typed key
# is replaced (the fields are the whole session).
CREATE = LuaScript("""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'hash' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
""")

# KEYS[1] session; ARGV: now, lease ms, number of fields to set, then
# field/value pairs, then the fields to delete.
SAVE = LuaScript("""
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
""")

# KEYS[1] session; ARGV: ttl ms. Returns {found, the current resume digest
# or ''}: the caller moves that digest's pointer along.
SET_TTL = LuaScript("""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {0, ''} end
if kind ~= 'hash' then redis.call('DEL', KEYS[1]) return {-1, ''} end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local rid = redis.call('HGET', KEYS[1], 'm:resume')
if not rid then rid = '' end
return {1, rid}
""")

# KEYS[1] session. Returns {deleted, the resume digest or ''}.
DELETE = LuaScript("""
local rid = false
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  rid = redis.call('HGET', KEYS[1], 'm:resume')
end
if not rid then rid = '' end
return {redis.call('DEL', KEYS[1]), rid}
""")

# KEYS[1] session; ARGV: resume digest, resume record, lease ms. Binds the
# digest (and its record) to the session, replacing the previous one.
# Returns {status, previous digest or '', the session's TTL in ms}.
ISSUE = LuaScript("""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {0, '', 0} end
if kind ~= 'hash' then redis.call('DEL', KEYS[1]) return {-1, '', 0} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then
  ttl = tonumber(ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local old = redis.call('HGET', KEYS[1], 'm:resume')
if not old then old = '' end
redis.call('HSET', KEYS[1], 'm:resume', ARGV[1], 'm:resume_record', ARGV[2])
return {1, old, ttl}
""")

# KEYS[1] session; ARGV: resume digest, resume record, lease ms. The lease
# and the binding at once (a connection resumed the session): PEXPIRE to the
# lease, then as ISSUE. Returns {status, previous digest or ''}.
LEASE_ISSUE = LuaScript("""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {0, ''} end
if kind ~= 'hash' then redis.call('DEL', KEYS[1]) return {-1, ''} end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local old = redis.call('HGET', KEYS[1], 'm:resume')
if not old then old = '' end
redis.call('HSET', KEYS[1], 'm:resume', ARGV[1], 'm:resume_record', ARGV[2])
return {1, old}
""")

# KEYS[1] a resume pointer: {'none'}, {'wrongtype'} (deleted) or {'ok', session id}.
POINTER = LuaScript("""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {'none'} end
if kind ~= 'string' then redis.call('DEL', KEYS[1]) return {'wrongtype'} end
return {'ok', redis.call('GET', KEYS[1])}
""")

# KEYS[1] session, KEYS[2] the tombstone of this digest for this session;
# ARGV: resume digest, identity digest, tombstone ms, session id, claim
# token. Grants only if the session is bound to this digest now (the
# pointer that led here is an index, not a proof); consumes the binding and
# leaves the tombstone, "<token>|<MAC tag>", so that the same claim run
# again (its answer lost to a broken connection or a failover) is granted
# again, and any other is told "replayed". A claim with the wrong identity
# leaves the binding in place.
CLAIM = LuaScript("""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'hash' then
  redis.call('DEL', KEYS[1])
  return {'wrongtype'}
end
local current = false
if kind == 'hash' then current = redis.call('HGET', KEYS[1], 'm:resume') end
if current ~= ARGV[1] then
  local stone = redis.call('TYPE', KEYS[2]).ok
  if stone == 'none' then return {'unknown'} end
  if stone == 'string' then
    -- the same claim again (its answer was lost): granted as before
    local seen = redis.call('GET', KEYS[2])
    local prefix = ARGV[5] .. '|'
    if string.sub(seen, 1, #prefix) == prefix then
      return {'granted', ARGV[4], string.sub(seen, #prefix + 1)}
    end
  end
  return {'replayed'}
end
local record = redis.call('HGET', KEYS[1], 'm:resume_record')
local ok, parsed = pcall(cjson.decode, record or '')
if not ok or type(parsed) ~= 'table' or type(parsed['s']) ~= 'string' then
  return {'malformed'}
end
if parsed['s'] ~= ARGV[4] then return {'unknown'} end
if parsed['i'] ~= ARGV[2] then return {'identity_mismatch'} end
redis.call('HDEL', KEYS[1], 'm:resume', 'm:resume_record')
local tag = parsed['m']
if type(tag) ~= 'string' then tag = '' end
redis.call('SET', KEYS[2], ARGV[5] .. '|' .. tag, 'PX', ARGV[3])
return {'granted', parsed['s'], tag}
""")

# KEYS[1] any key; ARGV[1] its type: deleted when it has another one.
CLEAR_WRONG_TYPE = LuaScript("""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
""")

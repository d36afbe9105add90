"""The Lua scripts of the recovery stream (see :mod:`.stream`).

Each script touches one stream and, when it heals, that stream's
quarantine key; both carry the channel's hash tag, so on Redis Cluster
they live in one slot and every script names its keys in ``KEYS``.

Healing: a key of another type at the stream's name (someone ran ``SET``
on it, with Redis access but without the bus secret) would make every
append fail, and with it cross-node delivery. The scripts check ``TYPE``
first, atomically; a wrong-typed key is renamed to the quarantine key
(kept ``QUARANTINE_SECONDS``, for whoever investigates) and the stream
starts anew. Its first id is a millisecond past Redis's clock and past
the previous reset's first id (kept in a third key of the same slot, since
the stream a ``SET`` overwrote took its own ids with it, and ids after a
reset may run ahead of the clock), so no id of an earlier stream can exist
in it, and it is marked as trimmed (that
first entry, a marker, is deleted at once, which sets the stream's
``max-deleted-entry-id``), so no offset from before the reset, ``0-0``
included, is ever taken as the start of a complete replay: clients away
across the reset resume without recovery.
"""
from __future__ import annotations

#: seconds a wrong-typed key moved aside is kept (one hour)
QUARANTINE_SECONDS = 3600

# the TYPE check, shared by the scripts: sets ``healed`` to the old type
# when a wrong-typed key was moved aside (KEYS[1] stream, KEYS[2] quarantine,
# KEYS[3] the last reset's first millisecond; ``quarantine_ms`` and
# ``stream_ms``, the new stream's idle expiry, set by the script before)
_HEAL = """
local healed = false
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PEXPIRE', KEYS[2], quarantine_ms)
  -- a millisecond past now and past the previous reset's start: every id
  -- of an earlier stream is below it, so none can be found again here
  local clock = redis.call('TIME')
  local next_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + 1
  if redis.call('TYPE', KEYS[3])['ok'] == 'string' then
    local previous = tonumber(redis.call('GET', KEYS[3]))
    if previous and previous >= next_ms then next_ms = previous + 1 end
  else
    redis.call('DEL', KEYS[3])
  end
  redis.call('SET', KEYS[3], string.format('%.0f', next_ms), 'PX', stream_ms)
  local marker = redis.call('XADD', KEYS[1], string.format('%.0f-0', next_ms), 'h', '1')
  redis.call('XDEL', KEYS[1], marker)
  redis.call('PEXPIRE', KEYS[1], stream_ms)
  healed = kind
end
"""

#: KEYS: stream, quarantine, reset mark; ARGV: channel, payload, window ms, max entries,
#: publish command, quarantine ms, then routing fields (name, value, ...).
#: Returns the entry id, or ``{id, old type}`` when it healed the key.
APPEND = """
local quarantine_ms = tonumber(ARGV[6])
local window = tonumber(ARGV[3])
local stream_ms = window * 2
""" + _HEAL + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = redis.call('XADD', KEYS[1], 'MINID', '~', now - window, '*', 'p', ARGV[2],
                      unpack(ARGV, 7))
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[4])
redis.call('PEXPIRE', KEYS[1], window * 2)
redis.call(ARGV[5], ARGV[1], '@' .. id .. '@' .. ARGV[2])
if healed then
  return {id, healed}
end
return id
"""

#: KEYS: stream, quarantine, reset mark; ARGV: quarantine ms, stream idle expiry ms.
#: Returns the old type, or false (nil) when the key was a stream or absent.
HEAL = """
local quarantine_ms = tonumber(ARGV[1])
local stream_ms = tonumber(ARGV[2])
""" + _HEAL + """
return healed
"""

#: KEYS: stream; ARGV: after (an id, exclusive), entries to scan at most,
#: bytes to return at most (one entry always), namespace, sid, rooms...
#: Returns ``{last id scanned, scanned, stream length, done, id1, payload1,
#: id2, payload2, ...}``: the entries that may reach the client (see
#: :mod:`.routing`; entries without routing fields always may), payload nil
#: for an entry without one. ``done`` is 1 when the end was reached.
SCAN = """
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local budget = tonumber(ARGV[3])
local ns, sid = ARGV[4], ARGV[5]
local member = {[sid] = true}
for i = 6, #ARGV do member[ARGV[i]] = true end
local function listed(list, set)
  local pos = 2
  while true do
    local stop = string.find(list, '\\0', pos, true)
    if set[string.sub(list, pos, (stop or 0) - 1)] then return true end
    if not stop then return false end
    pos = stop + 1
  end
end
local out = {ARGV[1], 0, redis.call('XLEN', KEYS[1]), 0}
local scanned, bytes = 0, 0
local done = #entries < tonumber(ARGV[2])
for _, entry in ipairs(entries) do
  local f = entry[2]
  local p, ens, to, skip
  for i = 1, #f, 2 do
    local k = f[i]
    if k == 'p' then p = f[i + 1]
    elseif k == 'ns' then ens = f[i + 1]
    elseif k == 'to' then to = f[i + 1]
    elseif k == 'sk' then skip = f[i + 1] end
  end
  local may = true
  if ens ~= nil and to ~= nil then
    may = ens == ns and (to == '*' or (string.sub(to, 1, 1) == '=' and listed(to, member)))
    if may and skip ~= nil and listed(skip, {[sid] = true}) then may = false end
  end
  if may then
    local size = p and #p or 0
    if bytes > 0 and bytes + size > budget then
      done = false
      break
    end
    bytes = bytes + size
    out[#out + 1] = entry[1]
    out[#out + 1] = p or false
  end
  scanned = scanned + 1
  out[1] = entry[1]
end
out[2] = scanned
out[4] = done and 1 or 0
return out
"""

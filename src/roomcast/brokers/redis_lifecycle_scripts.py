"""The Lua scripts of the Redis lifecycle store: the rules of ``LifecycleState``, cluster-wide.

Each script runs atomically, so the counts, the waiting departures, the sequence numbers and
the events written to the stream never disagree: an event is in the stream in the same step
that changes what it reports.  Every script starts with ``PRELUDE`` (the keys, Redis' clock,
and the shared functions), and all of them take the same first keys and arguments:

    KEYS[1] counts   hash  subject -> number of instances holding it
    KEYS[2] due      zset  subject -> when its departure is due (µs, made strictly increasing
                           so that the order of the scores is the order of the causes)
    KEYS[3] pending  hash  subject -> "kind\\ntime\\nJSON members" of that departure
    KEYS[4] seqs     hash  sequence subject (user:U, room:R) -> last seq
    KEYS[5] idle     zset  sequence subject -> its last seq, once it went idle
    KEYS[6] meta     hash  epoch, n (events numbered so far), order (last due score)
    KEYS[7] stream   the outbox (field ``e``: the event's JSON)
    KEYS[8] alive    zset  instance -> when its liveness expires (ms)
    ARGV[1] MAXLEN ~ of the stream, ARGV[2] the debounce window (µs), ARGV[3] an epoch to use
    if there is none yet, ARGV[4] the calling instance.

Subjects are ``user:U``, ``member:R\\0U`` and ``room:R``, as in ``LifecycleState``.  An
instance *holds* a subject (a field in its own hash, KEYS[9]) while it has at least one
connection for it; ``counts`` counts the instances, so only an instance's first arrival and
last departure of a subject cost a script any work.
"""

from __future__ import annotations

__all__ = ["APPLY", "PRELUDE", "PURGE", "RESTORE", "TICK", "lifecycle_keys"]


def lifecycle_keys(prefix: str) -> dict[str, str]:
    """The store's shared keys (``{prefix:life}:...``, one hash slot)."""
    base = "{" + prefix + ":life}"
    names = ("counts", "due", "pending", "seqs", "idle", "meta", "events", "alive")
    return {name: f"{base}:{name}" for name in names} | {"base": base}


PRELUDE = r"""
local counts, due, pend, seqs, idle, meta, stream, alive =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local maxlen, debounce_us, me = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local clock = redis.call('TIME')
local now_s, now_frac = tonumber(clock[1]), tonumber(clock[2])
local now_us = now_s * 1000000 + now_frac
local now_ms = now_s * 1000 + math.floor(now_frac / 1000)
local floor = now_ms * 1000
local now_text = string.format('%d.%06d', now_s, now_frac)
local epoch, last_id, order
local emitted, departures = 0, 0

local function num(n) return string.format('%d', n) end

local function load_meta()
  if last_id then return end
  local m = redis.call('HMGET', meta, 'epoch', 'n', 'order')
  epoch = m[1]
  if not epoch then
    epoch = ARGV[3]
    redis.call('HSET', meta, 'epoch', epoch)
  end
  last_id = tonumber(m[2]) or 0
  order = tonumber(m[3]) or 0
end

local function save_meta()
  if last_id then redis.call('HSET', meta, 'n', num(last_id), 'order', num(order)) end
end

local function field(name, value)
  if not value or value == '' then return '' end
  return ',"' .. name .. '":' .. cjson.encode(value)
end

-- The JSON members after "seq", in LifecycleEvent.as_dict's order.
local function body(user, room, conn, reason, code, data, inst, synthetic)
  local b = field('user', user) .. field('room', room) .. field('connection', conn)
    .. field('reason', reason)
  if code and code ~= '' then b = b .. ',"code":' .. code end
  if data and data ~= '' then b = b .. ',"data":' .. data end
  b = b .. field('instance', inst)
  if synthetic then b = b .. ',"synthetic":true' end
  return b
end

-- seq = max(last + 1, now in ms * 1000); a subject that went idle is forgotten by the sweep.
local function next_seq(subject, forget)
  local last = tonumber(redis.call('HGET', seqs, subject))
  local s = floor
  if last and last >= floor then s = last + 1 end
  local text = num(s)
  redis.call('HSET', seqs, subject, text)
  if forget then redis.call('ZADD', idle, text, subject) end
  return text
end

local function emit(kind, seq_subject, forget, time_text, members)
  load_meta()
  last_id = last_id + 1
  local json = '{"type":"' .. kind .. '","id":"' .. epoch .. '-' .. num(last_id)
    .. '","time":' .. time_text .. ',"seq":' .. next_seq(seq_subject, forget) .. members .. '}'
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', json)
  emitted = emitted + 1
end

-- "member:R\0U" -> R, U; "user:U" -> nil, U; "room:R" -> R, nil
local function parts(subject)
  local head = string.sub(subject, 1, 1)
  if head == 'u' then return nil, string.sub(subject, 6) end
  if head == 'r' then return string.sub(subject, 6), nil end
  local zero = string.find(subject, '\0', 8, true)
  return string.sub(subject, 8, zero - 1), string.sub(subject, zero + 1)
end

local ARRIVAL = {u = 'connect', m = 'join', r = 'occupied'}
local DEPARTURE = {u = 'disconnect', m = 'leave', r = 'vacated'}

local function seq_subject(subject)
  if string.sub(subject, 1, 1) == 'm' then
    local _, user = parts(subject)
    return 'user:' .. user
  end
  return subject
end

-- A first arrival cancels the departure still waiting for the window, if there is one.
local function cancelled(subject)
  if redis.call('ZREM', due, subject) == 1 then
    redis.call('HDEL', pend, subject)
    return true
  end
  return false
end

local function depart(kind, subject, members)
  departures = departures + 1
  if debounce_us <= 0 then
    emit(kind, seq_subject(subject), kind ~= 'leave', now_text, members)
    return
  end
  load_meta()
  local score = now_us + debounce_us
  if score <= order then score = order + 1 end
  order = score
  redis.call('ZADD', due, num(score), subject)
  redis.call('HSET', pend, subject, kind .. '\n' .. now_text .. '\n' .. members)
end

-- This instance holds `subject` now; true if it is the first instance to.
local function up(mine, subject)
  if redis.call('HSETNX', mine, subject, '1') == 0 then return false end
  return redis.call('HINCRBY', counts, subject, 1) == 1
end

-- This instance holds `subject` no more; true if it was the last one to.
local function down(mine, subject)
  if redis.call('HDEL', mine, subject) == 0 then return false end
  local c = redis.call('HINCRBY', counts, subject, -1)
  if c <= 0 then redis.call('HDEL', counts, subject) end
  return c == 0
end

-- Arrival or departure of a whole subject (restore, purge): the event's fields come from it.
local function subject_up(mine, subject)
  if up(mine, subject) and not cancelled(subject) then
    local room, user = parts(subject)
    local head = string.sub(subject, 1, 1)
    if head == 'r' then user = nil end
    local members = body(user, room, nil, nil, nil, nil, me)
    emit(ARRIVAL[head], seq_subject(subject), false, now_text, members)
  end
end

local function subject_gone(subject, inst, reason)
  local head = string.sub(subject, 1, 1)
  local room, user = parts(subject)
  if head == 'u' then
    depart('disconnect', subject, body(user, nil, nil, reason, '1006', nil, inst, true))
  else
    depart(DEPARTURE[head], subject, body(user, room, nil, nil, nil, nil, inst, true))
  end
end
"""

APPLY = (
    PRELUDE
    + r"""
-- KEYS[9] this instance's hash.  ARGV[5] batch number, then 7 per change:
-- op (c, j, l, d, p; join/leave followed by r and/or m: which subjects change here),
-- connection, user ('' = none), room, reason, code, data (JSON, '' = none).
-- Returns {status, events}: status -1 = this instance's state is gone (restore it first),
-- 0 = this batch was applied already (a retry), 1 = applied.
local mine = KEYS[9]
local marker = redis.call('HGET', mine, '#')
if not marker then return {-1, 0} end
if tonumber(marker) >= tonumber(ARGV[5]) then return {0, 0} end
for i = 6, #ARGV, 7 do
  local op, conn, user, room = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local kind = string.sub(op, 1, 1)
  if kind == 'c' then
    local subject = 'user:' .. user
    if up(mine, subject) and not cancelled(subject) then
      emit('connect', subject, false, now_text, body(user, nil, conn, nil, nil, ARGV[i + 6], me))
    end
  elseif kind == 'j' then
    local subject = 'room:' .. room
    if string.find(op, 'r', 2, true) and up(mine, subject) and not cancelled(subject) then
      emit('occupied', subject, false, now_text, body(nil, room, conn, nil, nil, nil, me))
    end
    subject = 'member:' .. room .. '\0' .. user
    if string.find(op, 'm', 2, true) and up(mine, subject) and not cancelled(subject) then
      emit('join', 'user:' .. user, false, now_text, body(user, room, conn, nil, nil, nil, me))
    end
  elseif kind == 'l' then
    local subject = 'member:' .. room .. '\0' .. user
    if string.find(op, 'm', 2, true) and down(mine, subject) then
      depart('leave', subject, body(user, room, conn, nil, nil, nil, me))
    end
    subject = 'room:' .. room
    if string.find(op, 'r', 2, true) and down(mine, subject) then
      depart('vacated', subject, body(nil, room, conn, nil, nil, nil, me))
    end
  elseif kind == 'd' then
    local subject = 'user:' .. user
    if down(mine, subject) then
      depart('disconnect', subject, body(user, nil, conn, ARGV[i + 4], ARGV[i + 5], nil, me))
    end
  else
    local subject = 'room:' .. room
    if user ~= '' then subject = 'user:' .. user end
    emit('publish', subject, false, now_text, body(user, room, conn, nil, nil, ARGV[i + 6], me))
  end
end
redis.call('HSET', mine, '#', ARGV[5])
save_meta()
return {1, emitted}
"""
)

TICK = (
    PRELUDE
    + r"""
-- KEYS[9] this instance's hash.  ARGV[5] liveness TTL (ms), ARGV[6] most entries per step.
-- Refreshes this instance's liveness, forgets idle sequence subjects, emits due departures.
-- Returns {held (0: this instance's state is gone), events, more due (0/1), dead...}.
local mine, limit = KEYS[9], tonumber(ARGV[6])
redis.call('ZADD', alive, num(now_ms + tonumber(ARGV[5])), me)
local held = redis.call('HEXISTS', mine, '#')
local old = redis.call('ZRANGEBYSCORE', idle, '-inf', '(' .. num(floor), 'WITHSCORES',
  'LIMIT', 0, limit)
if #old > 0 then
  local gone = {}
  for i = 1, #old, 2 do
    gone[#gone + 1] = old[i]
    if tonumber(redis.call('HGET', seqs, old[i])) == tonumber(old[i + 1]) then
      redis.call('HDEL', seqs, old[i])
    end
  end
  redis.call('ZREM', idle, unpack(gone))
end
local ready = redis.call('ZRANGEBYSCORE', due, '-inf', num(now_us), 'LIMIT', 0, limit)
if #ready > 0 then
  local details = redis.call('HMGET', pend, unpack(ready))
  redis.call('ZREM', due, unpack(ready))
  redis.call('HDEL', pend, unpack(ready))
  for i, subject in ipairs(ready) do
    local detail = details[i]
    if detail then
      local a = string.find(detail, '\n', 1, true)
      local b = string.find(detail, '\n', a + 1, true)
      local kind = string.sub(detail, 1, a - 1)
      emit(kind, seq_subject(subject), kind ~= 'leave', string.sub(detail, a + 1, b - 1),
        string.sub(detail, b + 1))
    end
  end
end
local more = 0
if #ready == limit then more = 1 end
save_meta()
local out = {held, emitted, more}
local dead = redis.call('ZRANGEBYSCORE', alive, '-inf', '(' .. num(now_ms), 'LIMIT', 0, 16)
for _, instance in ipairs(dead) do out[#out + 1] = instance end
return out
"""
)

PURGE = (
    PRELUDE
    + r"""
-- KEYS[9] the dead instance's hash, KEYS[10] the purge lock.  ARGV[5] the dead instance,
-- ARGV[6] phase (0: start, 1-3: its members, rooms, users), ARGV[7] HSCAN cursor, ARGV[8] count.
-- Subtracts a chunk of its subjects from the counts; those reaching 0 depart (synthetic).
-- Returns {status, phase, cursor, departures}: status 'more', 'done', 'busy' (another
-- survivor purges it), 'alive' (it refreshed its liveness: not dead after all), 'gone'
-- (not listed: purged already).
local theirs, lock, dead = KEYS[9], KEYS[10], ARGV[5]
local phase = tonumber(ARGV[6])
local holder = redis.call('GET', lock)
if holder and holder ~= me then return {'busy', phase, '0', 0} end
local expires = tonumber(redis.call('ZSCORE', alive, dead))
if not expires then return {'gone', phase, '0', 0} end
if expires >= now_ms then
  redis.call('DEL', lock)
  return {'alive', phase, '0', 0}
end
redis.call('SET', lock, me, 'PX', 10000)
if phase == 0 then
  redis.call('HDEL', theirs, '#')  -- if it is alive after all, it sees that it must restore
  phase = 1
end
local patterns = {'member:*', 'room:*', 'user:*'}
local found = redis.call('HSCAN', theirs, ARGV[7], 'MATCH', patterns[phase], 'COUNT', ARGV[8])
local cursor, items = found[1], found[2]
for i = 1, #items, 2 do
  local subject = items[i]
  -- HSCAN may return a field twice: only the call that deletes it subtracts it.
  if redis.call('HDEL', theirs, subject) == 1 then
    local c = redis.call('HINCRBY', counts, subject, -1)
    if c <= 0 then redis.call('HDEL', counts, subject) end
    if c == 0 then subject_gone(subject, dead, 'instance lost') end
  end
end
save_meta()
if cursor == '0' then phase = phase + 1 end
if phase > 3 then
  redis.call('DEL', theirs, lock)
  redis.call('ZREM', alive, dead)
  return {'done', phase, '0', departures}
end
return {'more', phase, cursor, departures}
"""
)

RESTORE = (
    PRELUDE
    + r"""
-- KEYS[9] this instance's hash.  ARGV[5] liveness TTL (ms), ARGV[6] the end: '' (more
-- follows), 'held' (set the marker to ARGV[7]), 'retire' (remove this instance),
-- ARGV[8] the reason of departures, then subjects, each followed by '1' (held) or '0'.
-- Makes this instance's part what it has in memory: a subject it holds again counts as an
-- arrival (cancelling a departure still waiting), one it no longer holds departs.
local mine, finish = KEYS[9], ARGV[6]
redis.call('ZADD', alive, num(now_ms + tonumber(ARGV[5])), me)
for i = 9, #ARGV, 2 do
  local subject = ARGV[i]
  if ARGV[i + 1] == '1' then
    subject_up(mine, subject)
  elseif down(mine, subject) then
    subject_gone(subject, me, ARGV[8])
  end
end
if finish == 'held' then
  redis.call('HSET', mine, '#', ARGV[7])
elseif finish == 'retire' then
  redis.call('DEL', mine)
  redis.call('ZREM', alive, me)
end
save_meta()
return {emitted, departures}
"""
)

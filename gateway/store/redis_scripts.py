"""The Lua scripts of the Redis store (gateway/store/redis.py), one constant each, with what
its KEYS and ARGV are and what it returns. Each runs atomically in Redis: that is what lets a
create, a finish or a lease change be one step that no other replica sees half done.

Pure text: registered by the store on its client (`register_script`), run by SHA thereafter.
"""

from __future__ import annotations

# Lua the scripts share: Redis's clock in ms (`now`), and the tokens a bucket holds now (a hash of
# `t` tokens and `at` ms; full when missing, so a bucket forgotten once full changes nothing).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_BUCKET = """
local function tokens_in(key, rate, burst)
  local bucket = redis.call('HMGET', key, 't', 'at')
  if not bucket[1] then
    return burst
  end
  return math.min(burst, tonumber(bucket[1]) + (now - tonumber(bucket[2])) * rate)
end
"""

# KEYS: index, session, lease, token's sessions. ARGV: ttl ms, lease ms, max sessions, owner,
# guid, the token's quota of live sessions (0: not counted), field, value, ...
# Returns {created (1), full (0) or the token's quota reached (2), sessions removed from the
# index as expired, live sessions, ms until the token's oldest live session expires}.
# Reads come first and the first write is ZADD, which Redis refuses when it is at maxmemory: an
# out-of-memory Redis answers OOM before anything is written, never a half-made session that
# was answered 200 (a script's first write decides; after it Redis lets the script finish).
CREATE = (
    _NOW
    + """
local live = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
if live >= tonumber(ARGV[3]) then
  return {0, 0, live, 0}
end
local quota = tonumber(ARGV[6])
if quota > 0 and redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf') >= quota then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return {2, 0, live, tonumber(oldest[2]) - now}
end
local ttl = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[5])
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl)
if quota > 0 then
  redis.call('ZADD', KEYS[4], now + ttl, ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
for i = 7, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
return {1, expired, live + 1, 0}
"""
)

# KEYS: token's sessions, token's create bucket. ARGV: quota of live sessions, refill per ms,
# burst, session ttl ms (the bucket outlives neither its refill nor the sessions).
# Returns {0 (admitted), 1 (live quota reached) or 2 (rate spent), ms to wait}. A refused
# create spends nothing, so the wait is true.
ADMIT = (
    _NOW
    + _BUCKET
    + """
local reason, wait = 0, 0
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  reason, wait = 1, tonumber(oldest[2]) - now
end
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tokens_in(KEYS[2], rate, burst)
if tokens < 1 then
  local refill = math.ceil((1 - tokens) / rate)
  if refill > wait then
    reason, wait = 2, refill
  end
end
if reason > 0 then
  return {reason, wait}
end
redis.call('HSET', KEYS[2], 't', tostring(tokens - 1), 'at', now)
redis.call('PEXPIRE', KEYS[2], math.min(math.ceil(burst / rate), tonumber(ARGV[4])))
return {0, 0}
"""
)

# KEYS: session, the session's poll bucket, its lease. ARGV: "1" when the poll has credentials,
# then the hash they must match to be counted; refill per ms; burst.
# Returns {Redis's TIME seconds, microseconds, the session exists (1) or not (0), its lease is
# held (1) or not, the ms until the bucket holds a poll when this one is over the limit, else 0}.
# A poll's read in one round trip: this script, then (pipelined behind it) the session's results
# alone when the replica already holds its unchanging fields, else the whole hash. The script
# returns numbers only and the read stays outside it, so a big session is not copied through Lua;
# TIME comes first, as in `load`, so the read is rendered by a clock no later write precedes.
# The same token bucket as the in-process one (limits.poll_rate, poll_burst), shared by every
# replica. Its write is a pcall: Redis out of memory refuses the count, not the poll, and a
# missing session or another token's poll counts nothing.
POLL_READ = (
    _NOW
    + _BUCKET
    + """
local h = redis.call('HGET', KEYS[1], 'h')
if not h then
  return {t[1], t[2], 0, 0, 0}
end
local leased = redis.call('EXISTS', KEYS[3])
if ARGV[1] == '1' and h ~= ARGV[2] then
  return {t[1], t[2], 1, leased, 0}
end
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tokens_in(KEYS[2], rate, burst)
if tokens < 1 then
  return {t[1], t[2], 1, leased, math.ceil((1 - tokens) / rate)}
end
local written = redis.pcall('HSET', KEYS[2], 't', tostring(tokens - 1), 'at', now)
if type(written) == 'number' then
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst / rate))
end
return {t[1], t[2], 1, leased, 0}
"""
)

# KEYS: session. ARGV: field, entry, "1" if the entry is Complete. HSETNX on a missing key would
# create a hash with no TTL. A Complete is refused from the session's deadline on, by Redis's
# clock: the clock `load` reads with (TIME in the same pipeline), so a reader that rendered the
# LPU Failed never sees it Complete afterwards.
FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  if now >= tonumber(redis.call('HGET', KEYS[1], 'd')) then
    return 0
  end
end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
"""

# KEYS: lease, session. ARGV: owner, lease ms. Only a free lease of a live session can be taken.
ACQUIRE = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""

# KEYS: lease, session. ARGV: owner, lease ms. A lease that lapsed with nobody taking it over is
# taken back; one held by another replica, or of a session that is gone, is lost (0).
RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if holder == false and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: owner.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

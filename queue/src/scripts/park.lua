-- park: a scheduler found no node for a task it claimed, judging from the cluster as it was
-- at capacity epoch ARGV[5]. The task waits, with its reason, until the capacity epoch moves
-- past that (a reservation released, a node added or changed: see claim.lua), or, whatever
-- happens, until its max wait has passed. If the epoch has already moved since the judgement,
-- the task goes straight back to ready: capacity may have freed while it was being judged.
-- There is no backoff: when capacity frees, every tenant's parked tasks must be back in the
-- race at once, or fair share would favour whoever was parked least recently.
-- KEYS[1] task hash  KEYS[2] leases zset  KEYS[3] parked zset (by deadline)
-- KEYS[4] parked-by-epoch zset  KEYS[5] capacity epoch counter  KEYS[6] tenants set
-- ARGV[1] task id  ARGV[2] owner  ARGV[3] reason  ARGV[4] max wait ms  ARGV[5] judged epoch
-- ARGV[6] prefix
-- Returns 1 parked, 2 made ready (the epoch had moved), 0 when the lease was no longer ours.
local f = redis.call('HMGET', KEYS[1], 'state', 'owner', 'tenant', 'prio', 'seq')
if f[1] ~= 'leased' or f[2] ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('HSET', KEYS[1], 'reason', ARGV[3])
local judged = tonumber(ARGV[5])
if tonumber(redis.call('GET', KEYS[5]) or '0') > judged then
  redis.call('ZADD', ARGV[6] .. 'ready:' .. f[3], (100 - tonumber(f[4])) * 17592186044416 + tonumber(f[5]), ARGV[1])
  redis.call('SADD', KEYS[6], f[3])
  redis.call('HSET', KEYS[1], 'state', 'ready')
  return 2
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'state', 'parked', 'parked_until', due)
redis.call('ZADD', KEYS[3], due, ARGV[1])
redis.call('ZADD', KEYS[4], judged, ARGV[1])
return 1

-- park: a scheduler found no node for a task it claimed. The task waits, with its reason,
-- until the cluster's capacity changes (a reservation released, a node added or changed:
-- claim.lua watches the capacity epoch), or, whatever happens, until `max` has passed.
-- There is no backoff: when capacity frees, every tenant's parked tasks must be back in the
-- race at once, or fair share would favour whoever was parked least recently.
-- KEYS[1] task hash  KEYS[2] leases zset  KEYS[3] parked zset
-- ARGV[1] task id  ARGV[2] owner  ARGV[3] reason  ARGV[4] max wait ms
-- Returns 1, or 0 when the lease was no longer ours.
local f = redis.call('HMGET', KEYS[1], 'state', 'owner')
if f[1] ~= 'leased' or f[2] ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('HSET', KEYS[1], 'state', 'parked', 'reason', ARGV[3], 'parked_until', due)
redis.call('ZADD', KEYS[3], due, ARGV[1])
return 1

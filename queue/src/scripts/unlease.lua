-- unlease: a scheduler hands back a task it claimed but did not bind, either to ready now
-- (it lost every race for a node) or to the delayed set with the reason it fits nowhere.
-- KEYS[1] task hash  KEYS[2] leases zset  KEYS[3] delayed zset  KEYS[4] tenants set
-- ARGV[1] task id  ARGV[2] owner  ARGV[3] delay ms  ARGV[4] reason ('' = none)  ARGV[5] prefix
-- Returns 1, or 0 when the lease was no longer ours.
local f = redis.call('HMGET', KEYS[1], 'state', 'owner', 'tenant', 'prio', 'seq')
if f[1] ~= 'leased' or f[2] ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], 'owner')
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'reason', ARGV[4])
else
  redis.call('HDEL', KEYS[1], 'reason')
end
local delay = tonumber(ARGV[3])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[3], now + delay, ARGV[1])
  redis.call('HSET', KEYS[1], 'state', 'delayed')
else
  redis.call('ZADD', ARGV[5] .. 'ready:' .. f[3], (100 - tonumber(f[4])) * 17592186044416 + tonumber(f[5]), ARGV[1])
  redis.call('SADD', KEYS[4], f[3])
  redis.call('HSET', KEYS[1], 'state', 'ready')
end
return 1

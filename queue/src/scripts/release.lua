-- release: an attempt ended. Give back its node reservation and tenant usage, then either
-- forget the task (finished: succeeded, failed for good, cancelled) or queue its next attempt
-- in the delayed set (retry). Idempotent: repeating it changes nothing.
-- KEYS[1] task hash  KEYS[2] nodes version counter  KEYS[3] delayed zset  KEYS[4] leases zset
-- ARGV[1] task id  ARGV[2] prefix  ARGV[3] 'finish' | 'retry'  ARGV[4] attempt that ended
-- ARGV[5] retry delay ms
-- Returns 1 if anything changed, 0 if the task was unknown or the attempt already handled.
local f = redis.call('HMGET', KEYS[1], 'state', 'node', 'tenant', 'cpu', 'mem', 'gpu', 'attempt', 'prio', 'seq', 'ext')
if not f[1] then
  return 0
end
if ARGV[3] == 'retry' and f[7] ~= ARGV[4] then
  return 0
end
-- Decrement by a stored amount string. "-0" is not an integer to HINCRBY, so zero is skipped.
local function dec(key, field, amount)
  if amount ~= '0' then
    redis.call('HINCRBY', key, field, '-' .. amount)
  end
end
if f[1] == 'bound' and f[2] then
  local node = ARGV[2] .. 'node:' .. f[2]
  local usage = ARGV[2] .. 'usage:' .. f[3]
  dec(node, 'res_cpu', f[4])
  dec(node, 'res_mem', f[5])
  dec(node, 'res_gpu', f[6])
  dec(usage, 'cpu', f[4])
  dec(usage, 'mem', f[5])
  dec(usage, 'gpu', f[6])
  if f[10] then
    for name, amount in string.gmatch(f[10], '([^,=]+)=(%d+)') do
      dec(node, 'res:' .. name, amount)
      dec(usage, name, amount)
    end
  end
  redis.call('ZADD', ARGV[2] .. 'nodes:changed', redis.call('INCR', KEYS[2]), f[2])
  -- Capacity freed: parked tasks get another look (claim.lua).
  redis.call('INCR', ARGV[2] .. 'capacity_epoch')
end
-- Wherever else the task may be waiting (cancelled while queued), take it out.
redis.call('ZREM', ARGV[2] .. 'ready:' .. f[3], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', ARGV[2] .. 'parked', ARGV[1])
redis.call('ZREM', ARGV[2] .. 'parked_epoch', ARGV[1])
if ARGV[3] == 'finish' then
  redis.call('DEL', KEYS[1])
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'delayed')
redis.call('HDEL', KEYS[1], 'node', 'owner', 'reason')
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[1])
return 1

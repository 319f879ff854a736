-- reserve: bind a leased task to a node if the node still has room, atomically.
-- This re-check is what makes over-commit impossible with any number of schedulers.
-- KEYS[1] task hash  KEYS[2] node hash  KEYS[3] tenant usage hash  KEYS[4] leases zset
-- KEYS[5] bindings stream  KEYS[6] nodes version counter  KEYS[7] changed-nodes zset
-- ARGV[1] task id  ARGV[2] owner  ARGV[3] node name
-- Returns {1} bound; {-1} lease lost; {-2} node gone or unschedulable;
-- {0, node hash as HGETALL gives it} no room (the node's fresh state).
-- Other extended resources: the task's `ext` ("name=amount,..."); the node's fields
-- alloc:<name> and res:<name>; the usage field <name>.
local f = redis.call('HMGET', KEYS[1], 'state', 'owner', 'cpu', 'mem', 'gpu', 'attempt', 'ext')
if f[1] ~= 'leased' or f[2] ~= ARGV[2] then
  return { -1 }
end
local n = redis.call('HMGET', KEYS[2], 'alloc_cpu', 'alloc_mem', 'alloc_gpu', 'res_cpu', 'res_mem', 'res_gpu', 'schedulable')
if not n[1] or n[7] ~= '1' then
  return { -2 }
end
local cpu, mem, gpu = tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
local ac, am, ag = tonumber(n[1]), tonumber(n[2]), tonumber(n[3])
local rc, rm, rg = tonumber(n[4]) or 0, tonumber(n[5]) or 0, tonumber(n[6]) or 0
local ext = {}
-- A resource the task asks none of never stops it, even on a node over-committed on it.
local short = rc + cpu > ac or rm + mem > am or (gpu > 0 and rg + gpu > ag)
if f[7] then
  for name, amount in string.gmatch(f[7], '([^,=]+)=(%d+)') do
    local e = redis.call('HMGET', KEYS[2], 'alloc:' .. name, 'res:' .. name)
    if (tonumber(e[2]) or 0) + tonumber(amount) > (tonumber(e[1]) or 0) then short = true end
    ext[#ext + 1] = { name, amount }
  end
end
if short then
  return { 0, redis.call('HGETALL', KEYS[2]) }
end
-- Amounts go to HINCRBY as the strings they were stored as: no Lua number formatting.
redis.call('HINCRBY', KEYS[2], 'res_cpu', f[3])
redis.call('HINCRBY', KEYS[2], 'res_mem', f[4])
redis.call('HINCRBY', KEYS[2], 'res_gpu', f[5])
redis.call('HINCRBY', KEYS[3], 'cpu', f[3])
redis.call('HINCRBY', KEYS[3], 'mem', f[4])
redis.call('HINCRBY', KEYS[3], 'gpu', f[5])
for _, e in ipairs(ext) do
  redis.call('HINCRBY', KEYS[2], 'res:' .. e[1], e[2])
  redis.call('HINCRBY', KEYS[3], e[1], e[2])
end
redis.call('HSET', KEYS[1], 'state', 'bound', 'node', ARGV[3])
redis.call('HDEL', KEYS[1], 'owner', 'reason', 'parked_until')
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('XADD', KEYS[5], '*', 'task', ARGV[1], 'node', ARGV[3], 'attempt', f[6])
redis.call('ZADD', KEYS[7], redis.call('INCR', KEYS[6]), ARGV[3])
return { 1 }

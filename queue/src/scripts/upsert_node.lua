-- upsert_node: publish a node's allocatable capacity and scheduling facts, keeping what
-- berth has reserved on it.
-- KEYS[1] nodes set  KEYS[2] node hash  KEYS[3] nodes version counter  KEYS[4] capacity hash
-- KEYS[5] capacity epoch counter  KEYS[6] changed-nodes zset
-- ARGV[1] name  ARGV[2] alloc cpu  ARGV[3] alloc mem  ARGV[4] alloc gpu  ARGV[5] schedulable 0|1
-- ARGV[6] labels+taints JSON  ARGV[7] other extended resources, "name=amount,..." ('' none)
-- Other extended resources live on the node as alloc:<name> (and res:<name>, see reserve),
-- with the whole list in `ext`.
-- Keeps the cluster's schedulable capacity (`capacity`: cpu, mem, gpu and each extended
-- resource by name; what fair share divides by) as the sum of each node's contribution,
-- recorded on the node as cap_* and cap:<name>.
-- Returns 1 if anything changed.
local cur = redis.call('HMGET', KEYS[2], 'alloc_cpu', 'alloc_mem', 'alloc_gpu', 'schedulable', 'meta',
  'cap_cpu', 'cap_mem', 'cap_gpu', 'ext')
local old_ext = cur[9] or ''
if cur[1] == ARGV[2] and cur[2] == ARGV[3] and cur[3] == ARGV[4] and cur[4] == ARGV[5] and cur[5] == ARGV[6]
  and cur[6] and old_ext == ARGV[7] then
  return 0
end
local counted = ARGV[5] == '1'
local function contribute(cap_field, total_field, amount, keep_zero)
  local new = 0
  if counted then new = amount end
  local old = tonumber(redis.call('HGET', KEYS[2], cap_field)) or 0
  if new ~= old then
    redis.call('HINCRBY', KEYS[4], total_field, new - old)
  end
  if new == 0 and not keep_zero then
    redis.call('HDEL', KEYS[2], cap_field)
  else
    redis.call('HSET', KEYS[2], cap_field, new)
  end
end
local fields = { 'cpu', 'mem', 'gpu' }
for i = 1, 3 do
  contribute('cap_' .. fields[i], fields[i], tonumber(ARGV[i + 1]), true)
end
-- Extended resources: the new amounts, and zero for any the node no longer offers.
local seen = {}
for name, amount in string.gmatch(ARGV[7], '([^,=]+)=(%d+)') do
  seen[name] = true
  redis.call('HSET', KEYS[2], 'alloc:' .. name, amount)
  contribute('cap:' .. name, name, tonumber(amount))
end
for name in string.gmatch(old_ext, '([^,=]+)=%d+') do
  if not seen[name] then
    redis.call('HDEL', KEYS[2], 'alloc:' .. name)
    contribute('cap:' .. name, name, 0)
  end
end
redis.call('HSET', KEYS[2], 'alloc_cpu', ARGV[2], 'alloc_mem', ARGV[3], 'alloc_gpu', ARGV[4],
  'schedulable', ARGV[5], 'meta', ARGV[6], 'ext', ARGV[7])
redis.call('HSETNX', KEYS[2], 'res_cpu', 0)
redis.call('HSETNX', KEYS[2], 'res_mem', 0)
redis.call('HSETNX', KEYS[2], 'res_gpu', 0)
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[6], redis.call('INCR', KEYS[3]), ARGV[1])
-- A node appeared or changed (capacity, schedulability, labels, taints): parked tasks get
-- another look (claim.lua).
redis.call('INCR', KEYS[5])
return 1

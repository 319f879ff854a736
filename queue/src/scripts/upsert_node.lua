-- upsert_node: publish a node's allocatable capacity and scheduling facts, keeping what
-- berth has reserved on it.
-- KEYS[1] nodes set  KEYS[2] node hash  KEYS[3] nodes version counter  KEYS[4] capacity hash
-- KEYS[5] capacity epoch counter  KEYS[6] changed-nodes zset
-- ARGV[1] name  ARGV[2] alloc cpu  ARGV[3] alloc mem  ARGV[4] alloc gpu  ARGV[5] schedulable 0|1
-- ARGV[6] labels+taints JSON
-- Keeps the cluster's schedulable capacity (`capacity`: cpu, mem, gpu; what fair share
-- divides by) as the sum of each node's contribution, recorded on the node as cap_*.
-- Returns 1 if anything changed.
local cur = redis.call('HMGET', KEYS[2], 'alloc_cpu', 'alloc_mem', 'alloc_gpu', 'schedulable', 'meta',
  'cap_cpu', 'cap_mem', 'cap_gpu')
if cur[1] == ARGV[2] and cur[2] == ARGV[3] and cur[3] == ARGV[4] and cur[4] == ARGV[5] and cur[5] == ARGV[6]
  and cur[6] then
  return 0
end
local counted = ARGV[5] == '1'
local fields = { 'cpu', 'mem', 'gpu' }
for i = 1, 3 do
  local new = 0
  if counted then new = tonumber(ARGV[i + 1]) end
  local old = tonumber(cur[i + 5]) or 0
  if new ~= old then
    redis.call('HINCRBY', KEYS[4], fields[i], new - old)
  end
  redis.call('HSET', KEYS[2], 'cap_' .. fields[i], new)
end
redis.call('HSET', KEYS[2], 'alloc_cpu', ARGV[2], 'alloc_mem', ARGV[3], 'alloc_gpu', ARGV[4],
  'schedulable', ARGV[5], 'meta', ARGV[6])
redis.call('HSETNX', KEYS[2], 'res_cpu', 0)
redis.call('HSETNX', KEYS[2], 'res_mem', 0)
redis.call('HSETNX', KEYS[2], 'res_gpu', 0)
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[6], redis.call('INCR', KEYS[3]), ARGV[1])
-- A node appeared or changed (capacity, schedulability, labels, taints): parked tasks get
-- another look (claim.lua).
redis.call('INCR', KEYS[5])
return 1

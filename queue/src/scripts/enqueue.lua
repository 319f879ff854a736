-- enqueue: add a task to its tenant's ready queue (or the delayed set), once.
-- Idempotent on task id: a task already known is left as it is.
-- KEYS[1] task hash   KEYS[2] seq counter   KEYS[3] ready zset of the tenant
-- KEYS[4] tenants-with-ready-work set       KEYS[5] delayed zset
-- ARGV[1] task id  ARGV[2] placement constraints JSON (node selector, tolerations; opaque
-- here, '' for none)  ARGV[3] tenant  ARGV[4] priority 0..100
-- ARGV[5] reservation cpu millis  ARGV[6] memory bytes  ARGV[7] gpus
-- ARGV[8] delay in ms (0 = ready now)  ARGV[9] attempt
-- ARGV[10] other extended resources, "name=amount,..." ('' for none)
-- ARGV[11] which reservation amounts are kube-scheduler's defaults rather than requests
-- (bit 1 cpu, bit 2 memory; '0' for neither)
-- The task is its fields: no JSON blob unless it has constraints, and optional fields only
-- when set, so a typical task hash keeps Redis's compact small-hash encoding.
-- Returns the task's sequence number, or 0 if it was already queued.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local seq = redis.call('INCR', KEYS[2])
local delay = tonumber(ARGV[8])
local state = 'ready'
if delay > 0 then state = 'delayed' end
redis.call('HSET', KEYS[1], 'tenant', ARGV[3], 'prio', ARGV[4],
  'cpu', ARGV[5], 'mem', ARGV[6], 'gpu', ARGV[7], 'seq', seq, 'attempt', ARGV[9], 'state', state)
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'place', ARGV[2]) end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'ext', ARGV[10]) end
if ARGV[11] ~= '0' then redis.call('HSET', KEYS[1], 'raw', ARGV[11]) end
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[5], now + delay, ARGV[1])
else
  -- (100 - priority) * 2^44 + seq: higher priority first, FIFO within a priority. Exact in a
  -- double while seq < 2^44.
  redis.call('ZADD', KEYS[3], (100 - tonumber(ARGV[4])) * 17592186044416 + seq, ARGV[1])
  redis.call('SADD', KEYS[4], ARGV[3])
end
return seq

-- claim: promote due work, then lease the best `batch` ready tasks across tenants.
-- Promotion first returns due delayed tasks and expired leases (a dead scheduler's claims)
-- to ready, so no separate timer process is needed.
-- Suspended tenants' tasks stay queued: they are skipped, not removed.
-- KEYS[1] tenants set  KEYS[2] leases zset  KEYS[3] delayed zset  KEYS[4] suspended tenants set
-- ARGV[1] key prefix ("berth:{p}:")  ARGV[2] batch size  ARGV[3] lease ms  ARGV[4] owner
-- ARGV[5] max promotions this call
-- Returns a flat array: id, spec, seq, attempt, id, spec, seq, attempt, ...
local prefix = ARGV[1]
local batch = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function make_ready(id)
  local task = prefix .. 'task:' .. id
  local f = redis.call('HMGET', task, 'tenant', 'prio', 'seq')
  if not f[1] then return end
  redis.call('ZADD', prefix .. 'ready:' .. f[1], (100 - tonumber(f[2])) * 17592186044416 + tonumber(f[3]), id)
  redis.call('SADD', KEYS[1], f[1])
  redis.call('HSET', task, 'state', 'ready')
  redis.call('HDEL', task, 'owner')
end

local limit = tonumber(ARGV[5])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', KEYS[3], id)
  make_ready(id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', KEYS[2], id)
  if redis.call('HGET', prefix .. 'task:' .. id, 'state') == 'leased' then
    make_ready(id)
  end
end

-- Take up to `batch` heads from every tenant, then the best `batch` of those by score.
local heads = {}
for _, tenant in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('SISMEMBER', KEYS[4], tenant) == 0 then
    local r = redis.call('ZRANGE', prefix .. 'ready:' .. tenant, 0, batch - 1, 'WITHSCORES')
    if #r == 0 then
      redis.call('SREM', KEYS[1], tenant)
    end
    for i = 1, #r, 2 do
      heads[#heads + 1] = { id = r[i], score = tonumber(r[i + 1]), tenant = tenant }
    end
  end
end
table.sort(heads, function(a, b)
  if a.score ~= b.score then return a.score < b.score end
  return a.id < b.id
end)

local out = {}
local taken = 0
for i = 1, #heads do
  if taken >= batch then break end
  local h = heads[i]
  local ready = prefix .. 'ready:' .. h.tenant
  local task = prefix .. 'task:' .. h.id
  redis.call('ZREM', ready, h.id)
  if redis.call('ZCARD', ready) == 0 then
    redis.call('SREM', KEYS[1], h.tenant)
  end
  local f = redis.call('HMGET', task, 'spec', 'seq', 'attempt')
  -- A ready entry whose hash is gone (partial data loss) is dropped, not leased: leasing
  -- would create a partial hash that blocks the reconciler's re-enqueue.
  if f[1] then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), h.id)
    redis.call('HSET', task, 'state', 'leased', 'owner', ARGV[4])
    out[#out + 1] = h.id
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
    taken = taken + 1
  end
end
return out

-- claim: promote due work, then lease the best `batch` ready tasks across tenants.
-- Promotion first returns due delayed tasks and expired leases (a dead scheduler's claims)
-- to ready, so no separate timer process is needed.
-- Suspended tenants' tasks stay queued: they are skipped, not removed.
-- KEYS[1] tenants set  KEYS[2] leases zset  KEYS[3] delayed zset  KEYS[4] suspended tenants set
-- ARGV[1] key prefix ("berth:{p}:")  ARGV[2] batch size  ARGV[3] lease ms  ARGV[4] owner
-- ARGV[5] max promotions this call
-- ARGV[6] cross-tenant order: 'priority' | 'drf' | 'priority_drf' (see ClaimOrder)
-- Reads (derived from the prefix): ready:<tenant>, task:<id>, and for fair share capacity,
-- usage:<tenant> and weights.
-- Returns a flat array in claim order, 12 strings per task ('' for an absent field): id,
-- tenant, prio, seq, attempt, cpu, mem, gpu, ext, place, raw (see enqueue.lua), and the
-- whole-spec JSON that tasks queued by earlier versions carry instead of place and raw.
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
  redis.call('HDEL', task, 'owner', 'parked_until')
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

-- Parked tasks (no node fitted; see park.lua) go back to ready once the capacity epoch has
-- moved past the one they were judged at, and each at its max wait. Each is judged again at
-- most once per epoch, however many are parked.
local parked, by_epoch = prefix .. 'parked', prefix .. 'parked_epoch'
local epoch = tonumber(redis.call('GET', prefix .. 'capacity_epoch') or '0')
local function unpark(id)
  redis.call('ZREM', parked, id)
  redis.call('ZREM', by_epoch, id)
  if redis.call('HGET', prefix .. 'task:' .. id, 'state') == 'parked' then make_ready(id) end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', by_epoch, '-inf', '(' .. epoch, 'LIMIT', 0, limit)) do unpark(id) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', parked, '-inf', now, 'LIMIT', 0, limit)) do unpark(id) end

-- Up to `batch` heads from every claimable tenant, in the tenant's own (priority, seq) order.
local tenants = {}
for _, tenant in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('SISMEMBER', KEYS[4], tenant) == 0 then
    local r = redis.call('ZRANGE', prefix .. 'ready:' .. tenant, 0, batch - 1, 'WITHSCORES')
    if #r == 0 then
      redis.call('SREM', KEYS[1], tenant)
    else
      local heads = {}
      for i = 1, #r, 2 do
        heads[#heads + 1] = { id = r[i], score = tonumber(r[i + 1]) }
      end
      tenants[#tenants + 1] = { name = tenant, heads = heads, next = 1 }
    end
  end
end
table.sort(tenants, function(a, b) return a.name < b.name end)

-- Fair share (DRF): a tenant's dominant share is the largest, over resources, of what it
-- holds over the cluster's capacity, divided by its weight. Progressive filling: each pick
-- goes to the lowest share, and the pick's reservation counts towards its tenant's share
-- for the next pick.
local mode = ARGV[6]
-- Resource name -> amount, from a hash as HGETALL gives it (cpu, mem, gpu and each
-- extended resource by name).
local function amounts(flat)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = tonumber(flat[i + 1]) or 0 end
  return m
end
local cap = {}
if mode ~= 'priority' then
  cap = amounts(redis.call('HGETALL', prefix .. 'capacity'))
  for _, t in ipairs(tenants) do
    t.used = amounts(redis.call('HGETALL', prefix .. 'usage:' .. t.name))
    local w = tonumber(redis.call('HGET', prefix .. 'weights', t.name))
    if not w or w <= 0 then w = 1 end
    t.weight = w
  end
end
local function share(t)
  local s = 0
  for name, c in pairs(cap) do
    if c > 0 then
      local x = (t.used[name] or 0) / c
      if x > s then s = x end
    end
  end
  return s / t.weight
end
-- Whether tenant a's next head goes before tenant b's.
local function before(a, b)
  local ha, hb = a.heads[a.next], b.heads[b.next]
  if mode == 'priority' then
    if ha.score ~= hb.score then return ha.score < hb.score end
    return ha.id < hb.id
  end
  if mode == 'priority_drf' then
    -- The score's high part is 100 - priority (see enqueue).
    local pa, pb = math.floor(ha.score / 17592186044416), math.floor(hb.score / 17592186044416)
    if pa ~= pb then return pa < pb end
  end
  local sa, sb = share(a), share(b)
  if sa ~= sb then return sa < sb end
  if ha.score ~= hb.score then return ha.score < hb.score end
  return a.name < b.name
end

local out = {}
local taken = 0
while taken < batch do
  local best = nil
  for _, t in ipairs(tenants) do
    if t.heads[t.next] and (best == nil or before(t, best)) then best = t end
  end
  if best == nil then break end
  local h = best.heads[best.next]
  best.next = best.next + 1
  local ready = prefix .. 'ready:' .. best.name
  local task = prefix .. 'task:' .. h.id
  redis.call('ZREM', ready, h.id)
  if redis.call('ZCARD', ready) == 0 then
    redis.call('SREM', KEYS[1], best.name)
  end
  local f = redis.call('HMGET', task, 'tenant', 'prio', 'seq', 'attempt', 'cpu', 'mem', 'gpu', 'ext', 'place', 'raw',
    'spec')
  -- A ready entry whose hash is gone (partial data loss) is dropped, not leased: leasing
  -- would create a partial hash that blocks the reconciler's re-enqueue.
  if f[1] then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), h.id)
    redis.call('HSET', task, 'state', 'leased', 'owner', ARGV[4])
    out[#out + 1] = h.id
    for i = 1, 11 do out[#out + 1] = f[i] or '' end
    taken = taken + 1
    if best.used then
      local u = best.used
      u.cpu = (u.cpu or 0) + (tonumber(f[5]) or 0)
      u.mem = (u.mem or 0) + (tonumber(f[6]) or 0)
      u.gpu = (u.gpu or 0) + (tonumber(f[7]) or 0)
      if f[8] then
        for name, amount in string.gmatch(f[8], '([^,=]+)=(%d+)') do
          u[name] = (u[name] or 0) + tonumber(amount)
        end
      end
    end
  end
end
return out

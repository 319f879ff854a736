-- Appends an attempt's log lines to its task's log stream, each line once: a line is known by
-- its index in the attempt's output, so a log follower that restarts from the beginning (an
-- executor restarted mid-run) adds only what is new.
--
-- KEYS[1] the task's log stream
-- KEYS[2] hash: attempt -> lines of it written so far
-- ARGV[1] attempt, ARGV[2] index of the first line given, ARGV[3] stream MAXLEN (approximate),
-- ARGV[4] TTL in seconds, ARGV[5..] the lines
-- Returns how many lines were added.
local have = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local first = tonumber(ARGV[2])
local added = 0
for i = 5, #ARGV do
  local index = first + (i - 5)
  if index >= have then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'attempt', ARGV[1], 'line', ARGV[i])
    have = index + 1
    added = added + 1
  end
end
redis.call('HSET', KEYS[2], ARGV[1], have)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return added

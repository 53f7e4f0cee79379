-- Forget a delayed syscall once it is back on its queue (aios.worker.delayed.Delayed.move_due), unless it was
-- put off again meanwhile (its score is no longer the lease it was taken with).
-- KEYS[1] delayed zset   KEYS[2] hash: syscall id -> message JSON
-- ARGV[1] syscall id   ARGV[2] the lease expiry it was taken with
-- Returns 1 if forgotten, 0 if kept.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0

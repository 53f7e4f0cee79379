-- Keep one dead letter within both caps (aios.worker.refusals.Refusals.reject): push it, count its code, then drop
-- the oldest entries while the list holds more than the count cap or more than the byte cap.
-- KEYS[1] dead-letter list (newest first)   KEYS[2] the list's total bytes   KEYS[3] rejected-codes hash
-- ARGV[1] entry JSON   ARGV[2] most entries   ARGV[3] most bytes   ARGV[4] rejection code
-- Returns the number of entries kept.
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SET', KEYS[2], 0) end
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('LPUSH', KEYS[1], ARGV[1])
local total = redis.call('INCRBY', KEYS[2], string.len(ARGV[1]))
local n = redis.call('LLEN', KEYS[1])
local most, most_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
while n > 0 and (n > most or total > most_bytes) do
  local old = redis.call('RPOP', KEYS[1])
  total = redis.call('INCRBY', KEYS[2], -string.len(old))
  n = n - 1
end
if n == 0 then redis.call('SET', KEYS[2], 0) end
return n

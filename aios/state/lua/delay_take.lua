-- Take the delayed syscalls that are due on a queue (aios.worker.delayed.Delayed.move_due). Each stays in the
-- set with its score moved to a lease expiry until the worker that took it has published it (delay_done.lua): a
-- worker that dies in between leaves it to be taken again when the lease ends.
-- KEYS[1] delayed zset (syscall id by due time)   KEYS[2] hash: syscall id -> message JSON
-- ARGV[1] now (Unix time)   ARGV[2] lease expiry (Unix time)   ARGV[3] most to take
-- Returns a flat list: id, message (nil if it is gone), id, message, ...
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id)
end
return out

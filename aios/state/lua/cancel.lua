-- Record a cancel (aios.worker.cancels.Cancels.record): under the requester's name, unless the syscall is answered.
-- KEYS[1] result key (the stored answer)   KEYS[2] cancel key (hash: requester -> when)
-- ARGV[1] requester (a verified agent id, or '*' for an operator)   ARGV[2] now (unix seconds)   ARGV[3] TTL (s)
-- Returns 1 recorded (the syscall had no answer yet), 0 answered already (nothing to cancel).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1

-- Renew a concurrency lease, only if it is still held (aios.policy.governor.Governor's renewer thread): a lease
-- that expired, or was released, is not brought back.
-- KEYS[1] lease zset (syscall id by expiry)
-- ARGV[1] new expiry (Unix time)   ARGV[2] syscall id
-- Returns 1 if the lease was renewed, 0 if it is not held.
return redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[2])

-- Claim a syscall id for one delivery before it starts (aios.worker.claims.Claims.take): at most one delivery
-- holds an id at a time, and none once it is answered. The claim is a lease its holder renews while it runs.
-- KEYS[1] claim key   KEYS[2] result key (the stored answer)
-- ARGV[1] this delivery's token   ARGV[2] lease (milliseconds)
-- Returns {1, 0} claimed; {0, 0} answered already; {2, ms, token} held by another delivery (its token) for ms more
-- milliseconds.
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 0} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0} end
-- Held by this very delivery: a retry of this script after a reply lost with a dropped connection.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return {1, 0} end
return {2, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1])}

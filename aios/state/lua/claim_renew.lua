-- Renew a claim's lease (aios.worker.claims.Claims' renewer thread), only while this token still holds it.
-- KEYS[1] claim key
-- ARGV[1] the holder's token   ARGV[2] lease (milliseconds)
-- Returns 1 if renewed, 0 if it is not held by this token any more.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0

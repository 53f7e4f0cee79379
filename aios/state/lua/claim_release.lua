-- Give a claim up (aios.worker.claims.Claims.release): only the delivery holding it may, so a holder whose lease
-- lapsed cannot free the claim of the delivery that took it over.
-- KEYS[1] claim key
-- ARGV[1] the holder's token
-- Returns 1 if released, 0 if this token did not hold it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0

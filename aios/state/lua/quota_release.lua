-- The end of an admitted syscall (aios.policy.governor.Governor.release): free its leases, correct its token
-- reservation to the real usage, charge the agent's token budget, and count the request in the rpm/tpm windows
-- from the moment it ended, not from its admission: a provider counts it when it arrives, some time after the
-- kernel admitted it, and the kernel must not free its slot before the provider does (measured by
-- `aios bench ratelimit`: counted from admission, requests that reached the provider late in a burst still filled
-- its window when the kernel admitted the next ones, and got 429s).
-- KEYS[3i+1] scope i's request window zset   KEYS[3i+2] scope i's token hash   KEYS[3i+3] scope i's lease zset,
-- for scopes i = 0..n-1   KEYS[3n+1] tokens-used hash (agent -> tokens)
-- ARGV[1] syscall id   ARGV[2] actual tokens (-1: keep the reservation)   ARGV[3] agent id
-- ARGV[4] account tokens to the agent ('1' | '0')   ARGV[5] n (number of scopes)   ARGV[6] now
-- ARGV[7] window seconds
-- Returns 0.
local id, actual, agent, account, n = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local now, window = tonumber(ARGV[6]), tonumber(ARGV[7])
for i = 0, n - 1 do
  local req, tok, lease = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  redis.call('ZREM', lease, id)
  local at = redis.call('ZSCORE', req, id)
  if at and tonumber(at) > now - window and tonumber(at) < now then redis.call('ZADD', req, 'XX', now, id) end
  if actual >= 0 then
    local reserved = redis.call('HGET', tok, id)
    if reserved then
      redis.call('HSET', tok, id, actual)
      local delta = actual - tonumber(reserved)
      if delta ~= 0 then redis.call('HINCRBY', tok, '_sum', delta) end
    end
  end
end
if account == '1' and actual > 0 then redis.call('HINCRBY', KEYS[3 * n + 1], agent, actual) end
return 0

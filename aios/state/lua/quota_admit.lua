-- Admission under quotas (aios.policy.governor.Governor.admit): every scope that applies must have room in its
-- rpm/tpm sliding window, its concurrency leases and the agent's token budget; the syscall is then recorded in
-- all of them at once (all or nothing). A redelivered syscall (its id already in a window) is not counted twice.
-- KEYS[3i+1] scope i's request window zset (id by time)   KEYS[3i+2] scope i's token hash (id -> tokens, '_sum')
-- KEYS[3i+3] scope i's lease zset (id by expiry), for scopes i = 0..n-1
-- KEYS[3n+1] tokens-used hash (agent -> tokens)   KEYS[3n+2] quota scopes set
-- ARGV[1] now   ARGV[2] window seconds   ARGV[3] syscall id   ARGV[4] tokens reserved   ARGV[5] lease TTL seconds
-- ARGV[6] n (number of scopes)   ARGV[7] agent id
-- ARGV[8+5i..12+5i] scope i: name, rpm, tpm, concurrency, token budget (-1: no limit)
-- Returns {0} when admitted, else {scope index (1-based), limit name, retry-after seconds or -1 for never}.
local now, window, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local tokens, ttl, n, agent = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local used_key, scopes_key = KEYS[3 * n + 1], KEYS[3 * n + 2]
local function spec(i)
  local b = 8 + 5 * i
  return ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
end
for i = 0, n - 1 do
  local req, tok, lease = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local name, rpm, tpm, conc, budget = spec(i)
  local old = redis.call('ZRANGEBYSCORE', req, '-inf', now - window)
  if #old > 0 then
    local freed = 0
    for _, t in ipairs(redis.call('HMGET', tok, unpack(old))) do freed = freed + (tonumber(t) or 0) end
    redis.call('ZREMRANGEBYSCORE', req, '-inf', now - window)
    redis.call('HDEL', tok, unpack(old))
    if freed ~= 0 then redis.call('HINCRBY', tok, '_sum', -freed) end
  end
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
  local known = redis.call('ZSCORE', req, id) ~= false  -- a redelivered syscall is not counted twice
  if rpm >= 0 and not known and redis.call('ZCARD', req) >= rpm then
    local first = redis.call('ZRANGE', req, 0, 0, 'WITHSCORES')
    return {i + 1, 'rpm', tostring(tonumber(first[2]) + window - now)}
  end
  if tpm >= 0 and tokens > 0 and not known then
    if tokens > tpm then return {i + 1, 'tpm', '-1'} end
    local sum = tonumber(redis.call('HGET', tok, '_sum') or '0')
    if sum + tokens > tpm then
      local entries = redis.call('ZRANGE', req, 0, -1, 'WITHSCORES')
      local wait = window
      for j = 1, #entries, 2 do
        sum = sum - (tonumber(redis.call('HGET', tok, entries[j])) or 0)
        if sum + tokens <= tpm then wait = tonumber(entries[j + 1]) + window - now; break end
      end
      return {i + 1, 'tpm', tostring(wait)}
    end
  end
  if conc >= 0 and redis.call('ZSCORE', lease, id) == false and redis.call('ZCARD', lease) >= conc then
    return {i + 1, 'concurrency', '0'}
  end
  if budget >= 0 then
    local used = tonumber(redis.call('HGET', used_key, agent) or '0')
    if used + tokens > budget then return {i + 1, 'token_budget', '-1'} end
  end
end
for i = 0, n - 1 do
  local req, tok, lease = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local name, rpm, tpm, conc, budget = spec(i)
  if (rpm >= 0 or tpm >= 0) and redis.call('ZSCORE', req, id) == false then
    redis.call('ZADD', req, now, id)
    if tpm >= 0 then
      redis.call('HSET', tok, id, tokens)
      if tokens ~= 0 then redis.call('HINCRBY', tok, '_sum', tokens) end
    end
    redis.call('PEXPIRE', req, math.ceil(window * 2000))
    redis.call('PEXPIRE', tok, math.ceil(window * 2000))
  end
  if conc >= 0 then
    redis.call('ZADD', lease, now + ttl, id)
    redis.call('PEXPIRE', lease, math.ceil(ttl * 2000))
  end
  redis.call('SADD', scopes_key, name)
end
return {0}

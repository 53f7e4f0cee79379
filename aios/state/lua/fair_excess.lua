-- The ``fair`` policy's measure (aios.policy.governor.FairState.excess, called by the SDK per submission): the
-- agent's attained service above the least-served agent active within the window (itself included). An agent
-- new or back from a pause longer than the window starts level with that least-served one. Marks the agent
-- active now.
-- KEYS[1] attained-service zset (agent by worker seconds)   KEYS[2] active zset (agent by last submission time)
-- ARGV[1] agent id   ARGV[2] now   ARGV[3] window seconds
-- Returns the excess in seconds, as a string ('0' when it is the least served).
local agent, now, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local last = redis.call('ZSCORE', KEYS[2], agent)
local least = nil
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now - window, '+inf')) do
  if m ~= agent then
    local a = tonumber(redis.call('ZSCORE', KEYS[1], m) or '0')
    if least == nil or a < least then least = a end
  end
end
local mine = tonumber(redis.call('ZSCORE', KEYS[1], agent) or '0')
if least ~= nil and (not last or tonumber(last) < now - window) then
  mine = least
  redis.call('ZADD', KEYS[1], mine, agent)
end
redis.call('ZADD', KEYS[2], now, agent)
if math.random() < 0.01 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 10 * window) end
if least == nil or mine < least then return '0' end
return tostring(mine - least)

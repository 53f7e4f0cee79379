-- Add a syscall's attained service and queue wait to its agent's record (aios.policy.governor.Governor.account
-- and account_slice). A time slice of a syscall that goes on later adds service only: its wait is counted when
-- it is finally answered.
-- KEYS[1] attained-service zset (agent by worker seconds)   KEYS[2] per-agent stats hash
-- KEYS[3] recent-waits list
-- ARGV[1] agent id   ARGV[2] service seconds   ARGV[3] wait seconds   ARGV[4] waits kept   ARGV[5] 'slice' | ''
-- Returns 0.
local agent, service, wait, kept = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZINCRBY', KEYS[1], service, agent)
if ARGV[5] == 'slice' then  -- a time slice of a syscall that goes on later: service only
  redis.call('HINCRBYFLOAT', KEYS[2], agent .. ':service_s', service)
  return 0
end
redis.call('HINCRBY', KEYS[2], agent .. ':n', 1)
redis.call('HINCRBYFLOAT', KEYS[2], agent .. ':wait_s', wait)
redis.call('HINCRBYFLOAT', KEYS[2], agent .. ':service_s', service)
redis.call('LPUSH', KEYS[3], string.format('%.6f', wait))
redis.call('LTRIM', KEYS[3], 0, kept - 1)
return 0

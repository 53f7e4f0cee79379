-- Decide an approval request (aios.policy.approvals): move it from pending to another state only if it is still
-- pending and, for an approval, not past its deadline (then it becomes 'expired'): one operator's approval and
-- the caller's time-out can never both win.
-- KEYS[1] approval request hash   KEYS[2] pending approvals zset
-- ARGV[1] new status ('approved' | 'denied' | 'expired')   ARGV[2] now   ARGV[3] syscall id   ARGV[4] reason
-- Returns 'ok' if this call decided it, 'expired' if an approval came past the deadline, 'missing' if there is
-- no such request, else the status it already had.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'pending' then return status end
if ARGV[1] == 'approved' and tonumber(redis.call('HGET', KEYS[1], 'deadline')) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'status', 'expired', 'decided_at', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 'expired'
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decided_at', ARGV[2], 'reason', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[3])
return 'ok'

-- Decide an approval request (aios.policy.approvals): move it from pending to another state only if it is still
-- pending and, for an approval, not past its deadline (then it becomes 'expired') and, if the operator pinned a
-- digest, only if the parked payload has it: one operator's approval and the deadline can never both win.
-- The kernel's reason stays; the operator's words go to 'note'.
-- KEYS[1] approval request hash   KEYS[2] pending approvals zset
-- ARGV[1] new status ('approved' | 'denied' | 'expired')   ARGV[2] now   ARGV[3] syscall id   ARGV[4] note
-- ARGV[5] digest prefix the operator approves ('' for whatever is parked)
-- Returns 'ok' if this call decided it, 'expired' if an approval came past the deadline, 'digest' if the parked
-- payload's digest does not start with ARGV[5] (nothing decided), 'missing' if there is no such request, else
-- the status it already had.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'pending' then return status end
if ARGV[1] == 'approved' then
  if tonumber(redis.call('HGET', KEYS[1], 'deadline')) < tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'status', 'expired', 'decided_at', ARGV[2], 'note', 'deadline passed without approval')
    redis.call('ZREM', KEYS[2], ARGV[3])
    return 'expired'
  end
  local digest = redis.call('HGET', KEYS[1], 'digest') or ''
  if ARGV[5] ~= '' and string.sub(digest, 1, #ARGV[5]) ~= ARGV[5] then return 'digest' end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decided_at', ARGV[2], 'note', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[3])
return 'ok'

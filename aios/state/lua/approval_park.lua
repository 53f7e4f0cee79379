-- Park an irreversible syscall for an operator (aios.policy.approvals.Approvals.park), bound to its content: the
-- first park stores the signed payload with its digest; any later delivery under the same id changes nothing and
-- learns whether it carries that same payload (a redelivery, or the approved message republished) or another.
-- KEYS[1] approval request hash   KEYS[2] pending approvals zset (score: deadline)
-- ARGV[1] digest of the payload   ARGV[2] signed payload JSON   ARGV[3] agent id   ARGV[4] kind   ARGV[5] reason
-- ARGV[6] summary   ARGV[7] created_at   ARGV[8] deadline   ARGV[9] TTL seconds   ARGV[10] syscall id
-- Returns {status, same}: status 'parked' if this call parked it, else the request's status ('pending',
-- 'approved', 'denied', 'expired'); same 1 if the request's digest is ARGV[1], else 0.
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  return {status, redis.call('HGET', KEYS[1], 'digest') == ARGV[1] and 1 or 0}
end
redis.call('HSET', KEYS[1], 'status', 'pending', 'digest', ARGV[1], 'payload', ARGV[2], 'agent_id', ARGV[3],
           'kind', ARGV[4], 'reason', ARGV[5], 'summary', ARGV[6], 'created_at', ARGV[7], 'deadline', ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[10])
return {'parked', 1}

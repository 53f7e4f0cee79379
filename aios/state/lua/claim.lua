-- Claim a syscall id for one delivery before it starts (aios.worker.claims.Claims): at most one delivery holds an
-- id at a time, and none once it is answered. The claim is a lease its holder renews while it runs.
-- Given KEYS[3..5] too, it also reads what the worker's next steps need, so that a delivery costs the load step
-- (aios.worker.steps.load) one command: the agent's credential record, the syscall's snapshot, its cancels.
-- KEYS[1] claim key   KEYS[2] result key (the stored answer)
-- KEYS[3] the agent's credential hash   KEYS[4] the syscall's snapshot hash   KEYS[5] the syscall's cancel hash
-- ARGV[1] this delivery's token   ARGV[2] lease (milliseconds)
-- ARGV[3] '1' to read KEYS[3]   ARGV[4] '1' to read KEYS[4]   ARGV[5] the agent id (its cancel field)
-- ARGV[6] the operators' cancel field
-- Returns {1, 0} claimed; {0, 0} answered already; {2, ms, token} held by another delivery (its token) for ms more
-- milliseconds.
-- With KEYS[3..5]: {that, credential fields and values, snapshot fields and values, {cancel by the agent, cancel by
-- an operator}} (a hash not asked for is an empty list).
local function take()
  if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 0} end
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0} end
  -- Held by this very delivery: a retry of this script after a reply lost with a dropped connection.
  if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return {1, 0} end
  return {2, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1])}
end
local claimed = take()
if #KEYS < 5 then return claimed end
local credential, snapshot = {}, {}
if ARGV[3] == '1' then credential = redis.call('HGETALL', KEYS[3]) end
if ARGV[4] == '1' then snapshot = redis.call('HGETALL', KEYS[4]) end
return {claimed, credential, snapshot, redis.call('HMGET', KEYS[5], ARGV[5], ARGV[6])}

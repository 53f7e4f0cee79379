-- The kernel's one way to answer a syscall (aios.state.replies.write_reply).
-- Mode 'once': store the answer (the idempotency record) and hand it to the waiting caller, unless an answer is
-- stored already; drop the syscall's snapshot, retry count and claim (the stored answer stops every later copy);
-- count it; add its service and wait to its agent's record. Two copies of a requeued syscall never both answer.
-- Mode 'notify': hand an answer to the caller without storing it (a refusal of a verified caller's message that
-- must neither overwrite nor pre-empt that syscall's own answer).
-- KEYS[1] result key   KEYS[2] reply list of the caller (aios:reply:<agent>:<id>, the caller BLPOPs it)
-- KEYS[3] answered-syscalls counter hash   KEYS[4] snapshot hash   KEYS[5] retry-attempts counter
-- KEYS[6] attained-service zset   KEYS[7] per-agent stats hash   KEYS[8] recent-waits list   KEYS[9] claim key
-- KEYS[10] recent-syscalls list (the operator console's)
-- KEYS[11], KEYS[12] the Redis broker's unacknowledged-messages hash and index (kombu's), when it shares this
-- server and database: the delivery ARGV[12] is acknowledged here, in the same step as its answer
-- ARGV[1] mode ('once' | 'notify')   ARGV[2] the answer: the response JSON, or the response sealed with the
-- agent's key ('<64 hex digits of its HMAC>.<response JSON>')   ARGV[3] what ARGV[2] is, and whether to hand it
-- over here: 'sealed' or 'plain' (pushed onto KEYS[2]), 'keep' (the response JSON, handed over elsewhere)
-- ARGV[4] TTL seconds
-- ARGV[5] counter field ('<kind>:<status>', '' for none)
-- ARGV[6] agent id ('' for no accounting)   ARGV[7] service seconds   ARGV[8] wait seconds   ARGV[9] waits kept
-- ARGV[10] the syscall's record for the recent-syscalls list (JSON, no payload)   ARGV[11] records kept
-- ARGV[12] the delivery tag of the message answered, to acknowledge ('' for none; a copy answered already is
-- acknowledged too: nothing is left to run for it)
-- Returns 1 if this call answered, 0 if an answer was stored already.
local mode, answer, how, ttl, field = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local body = answer  -- what is stored: the response JSON, without the seal (sent once, not twice)
if how == 'sealed' then body = string.sub(answer, 66) end
local tag = ARGV[12]
if tag ~= nil and tag ~= '' then
  redis.call('HDEL', KEYS[11], tag)
  redis.call('ZREM', KEYS[12], tag)
end
if mode == 'once' then
  if not redis.call('SET', KEYS[1], body, 'NX', 'EX', ttl) then return 0 end
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[9])
end
if how ~= 'keep' then
  redis.call('RPUSH', KEYS[2], answer)
  redis.call('EXPIRE', KEYS[2], ttl)
end
if field ~= '' then redis.call('HINCRBY', KEYS[3], field, 1) end
local agent = ARGV[6]
if agent ~= '' then
  local service, wait = tonumber(ARGV[7]), tonumber(ARGV[8])
  redis.call('ZINCRBY', KEYS[6], service, agent)
  redis.call('HINCRBY', KEYS[7], agent .. ':n', 1)
  redis.call('HINCRBYFLOAT', KEYS[7], agent .. ':wait_s', wait)
  redis.call('HINCRBYFLOAT', KEYS[7], agent .. ':service_s', service)
  redis.call('LPUSH', KEYS[8], string.format('%.6f', wait))
  redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[9]) - 1)
  redis.call('LPUSH', KEYS[10], ARGV[10])
  redis.call('LTRIM', KEYS[10], 0, tonumber(ARGV[11]) - 1)
end
return 1

-- Aging on a Redis broker (aios.policy.governor.Ager, ``priority`` policy): move each syscall that has waited
-- to the list of its aged priority, base + floor(waited / aging_s), at most 9: the rule of
-- aios.policy.scheduler.aged_priority (tests/test_lua.py holds the two together). Scans each list from
-- its oldest message (kombu pops from the tail) and stops at the first that need not move.
-- A message carries the headers named by ARGV[4] (Unix time it entered its queue) and ARGV[5] (its kernel
-- priority at publication); one without them is left where it is.
-- KEYS[p+1] the queue's kombu list for kernel priority p, p = 0..9 (aios.broker.queues.priority_lists)
-- ARGV[1] now   ARGV[2] aging seconds   ARGV[3] most moves in this call
-- ARGV[4] enqueued-time header name   ARGV[5] base-priority header name
-- Returns the number of messages moved.
local now, aging, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h_enqueued, h_priority = ARGV[4], ARGV[5]
local moved = 0
for p = 8, 0, -1 do
  while moved < budget do
    local raw = redis.call('LINDEX', KEYS[p + 1], -1)
    if not raw then break end
    local ok, msg = pcall(cjson.decode, raw)
    local h = ok and type(msg) == 'table' and msg['headers'] or nil
    local enq = h and tonumber(h[h_enqueued])
    local base = h and tonumber(h[h_priority])
    if not enq or not base then break end
    base = math.min(base, p)  -- a base above the list it waits in is a publisher's claim, not the kernel's
    local target = math.min(9, base + math.floor(math.max(0, now - enq) / aging))
    if target <= p then break end
    redis.call('RPOP', KEYS[p + 1])
    redis.call('RPUSH', KEYS[target + 1], raw)
    moved = moved + 1
  end
end
return moved

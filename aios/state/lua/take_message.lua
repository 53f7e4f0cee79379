-- Take the next message off a worker's queue and record it as unacknowledged, in one step
-- (aios.broker.kombu_client): kombu's BRPOP, then its record in a second command, lost the message of a worker
-- killed between the two.
-- KEYS[1..n-2] the queue's lists, highest priority first   KEYS[n-1] kombu's unacked hash   KEYS[n] its
-- unacked_index (sorted by when taken)
-- ARGV[1] now (seconds since the epoch, the worker's clock: kombu's own records use it)
-- Returns nil when every list is empty, else {list, message} (the message as it was stored). A message with a
-- delivery tag is recorded as kombu's QoS.append records it: unacked[tag] = [message, exchange, routing key].
local function str(v)
  if type(v) == 'string' then return cjson.encode(v) end
  return 'null'
end
local n = #KEYS
for i = 1, n - 2 do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, message = pcall(cjson.decode, item)
    local props = ok and type(message) == 'table' and message['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    if type(tag) == 'string' then
      local info = props['delivery_info']
      if type(info) ~= 'table' then info = {} end
      -- The stored text is kept as it is (a decode and encode would turn cjson's empty tables into objects).
      redis.call('ZADD', KEYS[n], ARGV[1], tag)
      redis.call('HSET', KEYS[n - 1], tag, '[' .. item .. ',' .. str(info['exchange']) .. ',' ..
        str(info['routing_key']) .. ']')
    end
    return {KEYS[i], item}
  end
end
return nil

-- Append one entry to the audit log (aios.policy.audit.AuditLog.record) as the next link of its hash chain: the
-- entry's position n, the previous entry's hash and its own, sha256(prev .. ns('n') .. ns(n) .. ns(name) ..
-- ns(value) ..., in the order given), where ns(s) = #s .. ':' .. s .. ',' (a netstring). The stream is then cut
-- to about its cap (MAXLEN ~), and the chain state counts what the cut removed, so that verification tells
-- trimming from deletion. Redis' Lua has no sha256: it is computed below (bit ops, 32-bit words).
-- KEYS[1] audit stream   KEYS[2] chain state hash (n: last position, head: last hash, trimmed: entries cut)
-- ARGV[1] approximate length cap   ARGV[2..] the entry: name, value, name, value... (aios.policy.audit.CHAINED)
-- Returns the new entry's stream id.
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit, tohex = bit.rshift, bit.lshift, bit.ror, bit.tobit, bit.tohex
local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local function sha256(msg)
  local bits = #msg * 8
  local hi, lo = math.floor(bits / 4294967296), bits % 4294967296
  msg = msg .. '\128' .. string.rep('\0', (64 - (#msg + 9) % 64) % 64)
    .. string.char(band(rshift(hi, 24), 255), band(rshift(hi, 16), 255), band(rshift(hi, 8), 255), band(hi, 255),
                   band(rshift(lo, 24), 255), band(rshift(lo, 16), 255), band(rshift(lo, 8), 255), band(lo, 255))
  local H = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}
  local w = {}
  for i = 1, #msg, 64 do
    for j = 0, 15 do
      local b1, b2, b3, b4 = string.byte(msg, i + j * 4, i + j * 4 + 3)
      w[j] = bor(lshift(b1, 24), lshift(b2, 16), lshift(b3, 8), b4)
    end
    for j = 16, 63 do
      local v, u = w[j - 15], w[j - 2]
      local s0 = bxor(ror(v, 7), ror(v, 18), rshift(v, 3))
      local s1 = bxor(ror(u, 17), ror(u, 19), rshift(u, 10))
      w[j] = tobit(w[j - 16] + s0 + w[j - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
    for j = 0, 63 do
      local t1 = tobit(h + bxor(ror(e, 6), ror(e, 11), ror(e, 25)) + bxor(band(e, f), band(bnot(e), g)) + K[j + 1] + w[j])
      local t2 = tobit(bxor(ror(a, 2), ror(a, 13), ror(a, 22)) + bxor(band(a, b), band(a, c), band(b, c)))
      h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
    end
    H[1], H[2], H[3], H[4] = tobit(H[1] + a), tobit(H[2] + b), tobit(H[3] + c), tobit(H[4] + d)
    H[5], H[6], H[7], H[8] = tobit(H[5] + e), tobit(H[6] + f), tobit(H[7] + g), tobit(H[8] + h)
  end
  local out = {}
  for i = 1, 8 do out[i] = tohex(H[i], 8) end
  return table.concat(out)
end

local function ns(s)
  return #s .. ':' .. s .. ','
end

local state = redis.call('HMGET', KEYS[2], 'n', 'head')
local n = (tonumber(state[1]) or 0) + 1
local prev = state[2] or string.rep('0', 64)
local parts = {prev, ns('n'), ns(tostring(n))}
for i = 2, #ARGV do parts[#parts + 1] = ns(ARGV[i]) end
local hash = sha256(table.concat(parts))
local id = redis.call('XADD', KEYS[1], '*', 'n', n, 'prev', prev, 'hash', hash, unpack(ARGV, 2))
redis.call('HSET', KEYS[2], 'n', n, 'head', hash)  -- only once the entry is in
local cut = redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1])
if cut > 0 then redis.call('HINCRBY', KEYS[2], 'trimmed', cut) end
return id

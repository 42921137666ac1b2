-- keygate (fleet.exact_limits): claim a signed request's nonce and decide its admission
-- against its site's windows, atomically, in the round trip the nonce already needs.
--
-- KEYS[1]          the nonce key
-- KEYS[2..]        per budget, then per request window: current window's key, previous's
-- ARGV[1]          the nonce's EXAT
-- ARGV[2], ARGV[3] number of budgets B, of request windows R
-- per budget:      limit, weight of the previous window, this node's uncounted charges
--                  in the current and in the previous window (4 values)
-- per window:      quota, weight of the previous window, TTL of a new count (3 values)
--
-- Returns {0} for a replay (nothing counted); else {1 admitted | 2 refused, then the
-- (previous, current) totals of every budget and window as read, before this request}.
-- A budget refuses once `prev × weight + curr ≥ limit`; a window when counting this
-- request makes `prev × weight + curr + 1 > quota`: the limiter's arithmetic, so the
-- node reaches the same decision from the totals. Only an admitted request is counted.
-- Every count is read with one MGET (the keys share a hash tag: one slot in a cluster), and
-- a count gets its TTL when this script creates it (the sync's pushes refresh it): fewer
-- calls into Redis per request than a GET per key and an EXPIRE per count.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EXAT', ARGV[1]) then
  return {0}
end
local nb, nr = tonumber(ARGV[2]), tonumber(ARGV[3])
if nb + nr == 0 then
  -- A tier without request windows or budgets: nothing to read (MGET of no key is an error).
  return {1}
end
local counts = redis.call('MGET', unpack(KEYS, 2))
local out, ok, k, a = {1}, true, 1, 4
for i = 1, nb + nr do
  local c = tonumber(counts[k] or '0')
  local p = tonumber(counts[k + 1] or '0')
  local limit, w = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  out[#out + 1] = p
  out[#out + 1] = c
  if i <= nb then
    local used = math.max(p + tonumber(ARGV[a + 3]), 0) * w + math.max(c + tonumber(ARGV[a + 2]), 0)
    if used >= limit then ok = false end
    a = a + 4
  else
    if math.max(p, 0) * w + math.max(c + 1, 0) > limit then ok = false end
    a = a + 3
  end
  k = k + 2
end
if not ok then
  out[1] = 2
  return out
end
k, a = 2 + 2 * nb, 4 + 4 * nb
for i = 1, nr do
  if redis.call('INCR', KEYS[k]) == 1 then
    redis.call('EXPIRE', KEYS[k], ARGV[a + 2])
  end
  k, a = k + 2, a + 3
end
return out

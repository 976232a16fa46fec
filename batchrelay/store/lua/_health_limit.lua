-- Fragment (included by the health scripts, after `H`, `name`, `now` and `recovery` are set): a
-- field of provider `name`, and the limit on its calls in flight, dropped once it has lapsed.
local function num(key, f) return tonumber(redis.call('HGET', key, name .. ':' .. f) or '0') or 0 end
local function unlimit()
  redis.call('HDEL', H, name .. ':cl', name .. ':cl_n', name .. ':cl_t', name .. ':cl_ss', name .. ':cl_go', name .. ':cl_k')
end
local function current_limit()
  local cl = num(H, 'cl')
  if cl > 0 and now - num(H, 'cl_t') > recovery then
    unlimit()
    return 0
  end
  return cl
end

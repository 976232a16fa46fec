-- A block's custom_ids: each id not yet in the batch's custom_id -> line hash is recorded; returns
-- {index (1-based), first line, ...} for each id already taken, by an earlier block or earlier in
-- this one. Two arguments, not two per line: redis-py packs each argument in Python. HMGET and
-- HSET take 1000 ids at a time (Lua's `unpack` has a limit): a redis.call per line would cost
-- Redis ~3 µs a line.
-- KEYS: custom_ids
-- ARGV: ids, lines
-- ids, lines: JSON arrays of the block's custom_ids and of their line numbers.
local ids, lines = cjson.decode(ARGV[1]), cjson.decode(ARGV[2])
local taken, seen, new = {}, {}, {}
for s = 1, #ids, 1000 do
  local e = math.min(s + 999, #ids)
  local firsts = redis.call('HMGET', KEYS[1], unpack(ids, s, e))
  for i = s, e do
    local first = firsts[i - s + 1] or seen[ids[i]]
    if first then
      taken[#taken + 1] = i
      taken[#taken + 1] = first
    else
      seen[ids[i]] = lines[i]
      new[#new + 1] = ids[i]
      new[#new + 1] = lines[i]
    end
  end
end
for s = 1, #new, 2000 do
  redis.call('HSET', KEYS[1], unpack(new, s, math.min(s + 1999, #new)))
end
return taken

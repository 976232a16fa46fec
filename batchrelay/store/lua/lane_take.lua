-- Hand lines of chunk `job` to a lane, in one step: each line still pending, not held by a parcel
-- and still in the chunk's map entry goes into the lane's gathering parcel of this batch, becomes
-- held (lane_held: line -> pid) and leaves the chunk's entry, so the sweeper and a reclaim never
-- run it again (the entry is rewritten without it, or removed when nothing is left). A parcel that
-- a line would take past max_lines / max_bytes is sealed (due now) and the line opens the next one;
-- a parcel that reaches either cap is sealed at once. A new parcel is gathering, due at
-- now + gather_s; its id is `{batch}-p{n}`, n from the meta field `lane_parcels`. A line larger than
-- max_bytes alone is not taken. Nothing is taken unless the batch is in progress. Returns the lines
-- taken. A parcel's keys are made here from `parcel_prefix` (Keys.lane_parcel('')) because a new
-- parcel's id is known only inside this step: a standalone Redis (or a sentinel's master) allows it,
-- and batchrelay does not run on Redis Cluster (arq does not support it).
-- KEYS: meta, chunks, pending, lane_held, lane_gather, lane_parcels
-- ARGV: lane, batch, job, now, deadline, must_end_by, max_lines, max_bytes, gather_s, parcel_prefix, ...lines
-- lines: for each line its line number, custom_id and request bytes.
local lane, now = ARGV[1], tonumber(ARGV[4])
local max_lines, max_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local taken = {}
if redis.call('HGET', KEYS[1], 'status') ~= STATUS.in_progress then return taken end
local raw = redis.call('HGET', KEYS[2], ARGV[3])
if not raw then return taken end
local entry, order = {}, {}
for n in string.gmatch(raw, '[^,]+') do
  entry[n] = true
  order[#order + 1] = n
end

local function ms(t) return string.format('%d', math.floor(t * 1000)) end
local pid = redis.call('HGET', KEYS[5], lane)
local n, size = 0, 0
if pid then
  local state, count, bytes = unpack(redis.call('HMGET', ARGV[10] .. pid, 'state', 'n', 'bytes'))
  if state == 'gathering' then n, size = tonumber(count), tonumber(bytes) else pid = nil end
end

local function seal()
  redis.call('HSET', ARGV[10] .. pid, 'state', 'sealed', 'sealed_at', ARGV[4])
  redis.call('ZADD', KEYS[6], ms(now), pid)
  redis.call('HDEL', KEYS[5], lane)
  pid = nil
end

local function open()
  pid = ARGV[2] .. '-p' .. redis.call('HINCRBY', KEYS[1], 'lane_parcels', 1)
  redis.call('HSET', ARGV[10] .. pid, 'lane', lane, 'batch', ARGV[2], 'state', 'gathering', 'n', 0, 'bytes', 0,
             'deadline', ARGV[5], 'must_end_by', ARGV[6], 'first_at', ARGV[4], 'polls', 0, 'next_poll_s', 0,
             'collected', 0)
  redis.call('HSET', KEYS[5], lane, pid)
  redis.call('ZADD', KEYS[6], ms(now + tonumber(ARGV[9])), pid)
  n, size = 0, 0
end

for i = 11, #ARGV, 3 do
  local line, bytes = ARGV[i], tonumber(ARGV[i + 2])
  if entry[line] and bytes <= max_bytes and redis.call('SISMEMBER', KEYS[3], line) == 1
      and redis.call('HEXISTS', KEYS[4], line) == 0 then
    if pid and (n + 1 > max_lines or size + bytes > max_bytes) then seal() end
    if not pid then open() end
    redis.call('HSET', ARGV[10] .. pid .. ':lines', ARGV[i + 1], line)
    redis.call('HINCRBY', ARGV[10] .. pid, 'n', 1)
    redis.call('HINCRBY', ARGV[10] .. pid, 'bytes', bytes)
    redis.call('HSET', KEYS[4], line, pid)
    entry[line] = nil
    n, size = n + 1, size + bytes
    taken[#taken + 1] = line
    if n >= max_lines or size >= max_bytes then seal() end
  end
end

if #taken > 0 then
  local rest = {}
  for _, line in ipairs(order) do
    if entry[line] then rest[#rest + 1] = line end
  end
  if #rest > 0 then redis.call('HSET', KEYS[2], ARGV[3], table.concat(rest, ','))
  else redis.call('HDEL', KEYS[2], ARGV[3]) end
end
return taken

-- Change a parcel's fields, and its state when `state` is not '': only when the parcel exists (a
-- forgotten batch's parcel is not made again) and, when `expect` is not '', its state is `expect`
-- (a compare-and-set: of two workers moving it on, one wins). A parcel leaving `gathering` is no
-- longer its lane's gathering parcel (lane_take also checks the state). With `done` = 1 it leaves
-- the due set (collected). Returns 1, or 0 when nothing was changed.
-- KEYS: lane_parcel, lane_gather, lane_parcels
-- ARGV: pid, expect, state, done, ...fields
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if ARGV[2] ~= '' and state ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' then
  if state == 'gathering' and ARGV[3] ~= 'gathering' then
    local lane = redis.call('HGET', KEYS[1], 'lane')
    if lane and redis.call('HGET', KEYS[2], lane) == ARGV[1] then redis.call('HDEL', KEYS[2], lane) end
  end
  redis.call('HSET', KEYS[1], 'state', ARGV[3])
end
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
if ARGV[4] == '1' then redis.call('ZREM', KEYS[3], ARGV[1]) end
return 1

-- Record the upstream batch a parcel's create made: only while the parcel is `creating` and has no
-- upstream id, so a parcel has at most one, ever (a second create's id, or a repeat, is refused).
-- The id joins the lane's recorded set (a lost create is looked for among the ids not in it), the
-- parcel becomes `created` and is due at `due_ms`. Returns 1, or 0 when refused.
-- KEYS: lane_parcel, lane_recorded, lane_parcels
-- ARGV: pid, upstream_id, due_ms
local state, upstream = unpack(redis.call('HMGET', KEYS[1], 'state', 'upstream_id'))
if state ~= 'creating' or (upstream and upstream ~= '') then return 0 end
redis.call('HSET', KEYS[1], 'upstream_id', ARGV[2], 'state', 'created')
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1

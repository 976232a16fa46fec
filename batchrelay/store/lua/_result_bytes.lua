-- Fragment (included by the scripts that write or remove a result): the batch's meta keeps the
-- size of its stored results of each kind (`ok_bytes` for answers, `error_bytes` for the rest),
-- each record counted as its line in an export (its JSON and a newline: as long as the stored
-- record with its one-byte kind). A batch made before these sizes were kept has neither field:
-- its sizes are not started half way.
local function add_bytes(meta, record, sign)
  local field = string.sub(record, 1, 1) == '1' and 'ok_bytes' or 'error_bytes'
  if redis.call('HEXISTS', meta, field) == 1 then redis.call('HINCRBY', meta, field, sign * #record) end
end

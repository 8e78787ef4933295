-- Deletes one thread's keys.
--
-- KEYS: head, log, mids. Returns {'deleted', kind, parent} (empty strings
-- when unknown), or {'missing'}.

local head = KEYS[1]
local head_type = key_type(head)
local kind, parent = '', ''
if head_type == 'hash' then
  local cur = redis.call('HMGET', head, 'kind', 'parent')
  kind = cur[1] or ''
  parent = cur[2] or ''
end
local removed = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if head_type == 'none' and removed == 0 then return {'missing'} end
return {'deleted', kind, parent}

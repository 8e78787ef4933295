-- Deletes one thread's keys and its entries in the open index (its other
-- index entries are pruned by the caller, conditionally). Open-index keys
-- of the wrong type are left alone: the thread is deleted all the same.
--
-- KEYS: head, log, mids, the open-by-kind and the open-by-parent index.
-- ARGV: 1 the thread id. Returns {'deleted', kind, parent} (empty strings
-- when unknown), or {'missing'}.

local head = KEYS[1]
local head_type = key_type(head)
local kind, parent = '', ''
if head_type == 'hash' then
  local cur = redis.call('HMGET', head, 'kind', 'parent')
  kind = cur[1] or ''
  parent = cur[2] or ''
  if not not_zset(KEYS[4]) and not not_zset(KEYS[5]) then
    note_open(KEYS[4], KEYS[5], kind, parent, ARGV[1], false)
    flush_notes('', 0)
  end
end
local removed = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if head_type == 'none' and removed == 0 then return {'missing'} end
return {'deleted', kind, parent}

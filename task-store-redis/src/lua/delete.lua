-- Deletes one thread: its key and its entries in the shard's sorted sets,
-- in one script. Sorted sets of the wrong type are left alone: the thread
-- is deleted all the same.
--
-- KEYS: 1..5 the shard's sorted sets (see the prelude); 6 the thread key.
-- ARGV: 1 the thread id. Returns 'deleted' or 'missing'.

local key = KEYS[6]
local t = key_type(key)
if t == 'none' then return 'missing' end
if t == 'hash' and not bad_index() then
  local cur = redis.call('HMGET', key, 'kind', 'parent')
  local kind, parent = cur[1] or '', cur[2] or ''
  note_listed(kind, parent, ARGV[1], false)
  note_open(kind, parent, ARGV[1], false)
  note(EXPIRING, expiry_entry(ARGV[1], kind, parent), false)
  flush_notes(0)
end
redis.call('DEL', key)
return 'deleted'

-- Drops index entries that point at no live thread of the index's kind and
-- parent. Conditional, so it never removes the entry of a thread recreated
-- in the meantime.
--
-- KEYS: 1 the index, then one head key per id. ARGV: 1 the index's kind
-- ('' for any), 2 its parent ('' for any), then the ids. Returns how many
-- entries were removed.

local index, want_kind, want_parent = KEYS[1], ARGV[1], ARGV[2]
local removed = 0
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  local t = key_type(KEYS[i])
  local stale = t == 'none'
  if t == 'hash' then
    local cur = redis.call('HMGET', KEYS[i], 'kind', 'parent')
    if want_kind ~= '' and (cur[1] or '') ~= want_kind then stale = true end
    if want_parent ~= '' and (cur[2] or '') ~= want_parent then stale = true end
  end
  if stale then removed = removed + redis.call('ZREM', index, id) end
end
return removed

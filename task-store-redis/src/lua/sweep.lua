-- Sweeps the index entries of a shard's finished threads whose retention
-- ran out: for each due entry of the expiry set, by the server's clock,
-- whose thread key is gone, its entries in the indexes go, and the entry
-- itself. A due entry whose key still lives (the server expires keys a
-- little late, or a later write extended it) is scored again by the key's
-- remaining TTL; one whose key has no TTL any more goes alone. A key
-- recreated with another kind or parent keeps its new entries; only the
-- old ones go.
--
-- KEYS: 1..5 the shard's sorted sets (see the prelude). ARGV: 1 the start
-- of the shard's thread keys; 2 the most entries to handle. Returns
-- {swept, handled}: the threads whose entries were removed, and the due
-- entries handled (fewer than ARGV[2] when no more are due).

if bad_index() then return redis.error_reply('a sorted set of the shard ' .. KEYS[1] .. ' holds another type') end
local thread_prefix, max = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[EXPIRING], '-inf', now, 'LIMIT', 0, max)
local swept = 0
for _, entry in ipairs(due) do
  local id, kind, parent = string.match(entry, '^([^\n]*)\n([^\n]*)\n(.*)$')
  if id == nil then
    redis.call('ZREM', KEYS[EXPIRING], entry)
  else
    local key = thread_prefix .. encode(id)
    local left = redis.call('PTTL', key)
    if left == -2 then
      note_listed(kind, parent, id, false)
      note_open(kind, parent, id, false)
      redis.call('ZREM', KEYS[EXPIRING], entry)
      swept = swept + 1
    else
      local cur = redis.pcall('HMGET', key, 'kind', 'parent')
      local now_kind, now_parent = kind, parent
      if not cur['err'] then now_kind, now_parent = cur[1] or '', cur[2] or '' end
      if now_kind ~= kind then note(IDX_KIND, kind .. '\0' .. id, false) end
      if parent ~= '' and (now_kind ~= kind or now_parent ~= parent) then
        note(IDX_PARENT, parent .. '\0' .. kind .. '\0' .. id, false)
      end
      if left > 0 and now_kind == kind and now_parent == parent then
        redis.call('ZADD', KEYS[EXPIRING], now + left, entry)
      else
        redis.call('ZREM', KEYS[EXPIRING], entry)
      end
    end
  end
end
flush_notes(0)
return {swept, #due}

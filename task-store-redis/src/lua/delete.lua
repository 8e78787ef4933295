-- Deletes one thread: its key and its entries in the shard's sorted sets,
-- in one script. Sorted sets of the wrong type are left alone: the thread
-- is deleted all the same.
--
-- A sound thread names its kind and parent, so its entries are removed
-- directly. A corrupt one (its key another type, or a hash without its
-- head) does not: its entries are found by scanning the shard's sets,
-- which costs a pass over them, on this rare path only.
--
-- KEYS: 1..5 the shard's sorted sets (see the prelude); 6 the thread key.
-- ARGV: 1 the thread id. Returns 'deleted' or 'missing'.

local key, id = KEYS[6], ARGV[1]

-- Removes from the sorted set `which` every member that `matches`.
local function remove_matching(which, matches)
  local cursor = '0'
  repeat
    local reply = redis.call('ZSCAN', KEYS[which], cursor, 'COUNT', 1000)
    cursor = reply[1]
    local gone = {}
    for j = 1, #reply[2], 2 do
      if matches(reply[2][j]) then gone[#gone + 1] = reply[2][j] end
    end
    call_in_slices('ZREM', KEYS[which], gone)
  until cursor == '0'
end

local t = key_type(key)
if t == 'none' then return 'missing' end
if not bad_index() then
  local kind, parent
  if t == 'hash' then
    local cur = redis.call('HMGET', key, 'kind', 'parent')
    kind, parent = cur[1], cur[2] or ''
  end
  if kind then
    note_listed(kind, parent, id, false)
    note_open(kind, parent, id, false)
    note(EXPIRING, expiry_entry(id, kind, parent), false)
    flush_notes(0)
  else
    -- Ids hold no control characters: an index entry of this thread ends
    -- with \0 and the id, an expiry entry starts with the id and \n.
    local tail, head = '\0' .. id, id .. '\n'
    for which = IDX_KIND, OPEN_PARENT do
      remove_matching(which, function(m) return string.sub(m, -#tail) == tail end)
    end
    remove_matching(EXPIRING, function(m) return string.sub(m, 1, #head) == head end)
  end
end
redis.call('DEL', key)
return 'deleted'

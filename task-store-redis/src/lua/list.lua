-- A page of one shard's index (see the prelude), as lists of ids in
-- ascending byte order: one list for a flat range, one per kind when the
-- range spans kinds. The caller merges the lists of every shard (Lua
-- compares strings by the server's locale, not by bytes) and keeps the
-- first `limit`.
--
-- KEYS: 1 the index. ARGV: 1 the prefix of the range's members ('kind\0'
-- or 'parent\0kind\0' for a flat range; 'parent\0', or '' for every
-- member, for a range whose members go on with 'kind\0id'); 2 'flat' or
-- 'kinds'; 3 the cursor (the last id seen, '' for none); 4 how many ids
-- each list may hold at most; 5 the start of the shard's thread keys, to
-- check each listed thread ('' for no check: the open indexes are exact,
-- as open threads carry no TTL); 6 'parent' when the index is a parent
-- index. An entry whose thread expired, or was created again with another
-- kind or parent after it expired, is not listed, and is removed from the
-- index as the listing passes it.

local index, prefix, mode, after = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local limit = tonumber(ARGV[4])
local thread_prefix = ARGV[5]
local by_parent = ARGV[6] == 'parent'

-- Whether `member`, the entry of thread `id`, is the thread's own entry
-- now: its key lives, with the kind (and parent) the entry names.
local function current(member, id)
  local key = thread_prefix .. encode(id)
  local cur = redis.pcall('HMGET', key, 'kind', 'parent')
  if cur['err'] then return true end -- not a hash: listed, and loading it says so
  -- No kind: expired (not listed), or a hash that lost its head (listed,
  -- and loading it says it is corrupt).
  if cur[1] == false then return redis.call('EXISTS', key) == 1 end
  local own = cur[1] .. '\0' .. id
  if by_parent then own = (cur[2] or '') .. '\0' .. own end
  return own == member
end

-- The members of `index` under `under` (which ends with \0), after the
-- cursor, without the prefix, live threads only.
local function range(under)
  local min = '[' .. under
  if after ~= '' then min = '(' .. under .. after end
  local max = '(' .. string.sub(under, 1, -2) .. '\1'
  local ids = {}
  while #ids < limit do
    local want = limit - #ids
    local members = redis.call('ZRANGEBYLEX', index, min, max, 'LIMIT', 0, want)
    for i = 1, #members do
      local id = string.sub(members[i], #under + 1)
      if thread_prefix == '' or current(members[i], id) then
        ids[#ids + 1] = id
      else
        redis.call('ZREM', index, members[i])
      end
    end
    if #members < want then break end
    min = '(' .. members[#members]
  end
  return ids
end

if mode == 'flat' then return {range(prefix)} end

-- Every kind under the prefix, one jump each: after kind K, the next
-- member at or after prefix .. K .. '\1'.
local out = {}
local min = '[' .. prefix
local max = '+'
if prefix ~= '' then max = '(' .. string.sub(prefix, 1, -2) .. '\1' end
while true do
  local first = redis.call('ZRANGEBYLEX', index, min, max, 'LIMIT', 0, 1)[1]
  if first == nil then break end
  local cut = string.find(first, '\0', #prefix + 1, true)
  if cut == nil then break end
  local kind = string.sub(first, #prefix + 1, cut - 1)
  out[#out + 1] = range(prefix .. kind .. '\0')
  min = '[' .. prefix .. kind .. '\1'
end
return out

-- A page of an open index (see note_open in the prelude), as lists of ids
-- in ascending byte order: one list for a flat range, one per kind when
-- the range spans kinds. The caller merges the lists (Lua compares strings
-- by the server's locale, not by bytes) and keeps the first `limit`.
--
-- KEYS: 1 the index. ARGV: 1 the prefix of the range's members ('kind\0'
-- or 'parent\0kind\0' for a flat range; 'parent\0', or '' for every
-- member, for a range whose members go on with 'kind\0id'); 2 'flat' or
-- 'kinds'; 3 the cursor (the last id seen, '' for none); 4 how many ids
-- each list may hold at most.

local index, prefix, mode, after = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local limit = tonumber(ARGV[4])

-- The members of `index` under `under` (which ends with \0), after the
-- cursor, without the prefix.
local function range(under)
  local min = '[' .. under
  if after ~= '' then min = '(' .. under .. after end
  local max = '(' .. string.sub(under, 1, -2) .. '\1'
  local members = redis.call('ZRANGEBYLEX', index, min, max, 'LIMIT', 0, limit)
  local ids = {}
  for i = 1, #members do ids[i] = string.sub(members[i], #under + 1) end
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

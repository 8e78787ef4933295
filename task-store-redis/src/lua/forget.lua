-- Removes swept entries from the expiry set, unless a later write pushed
-- their expiry past ARGV[1] (the time they were found due).
--
-- KEYS: the expiry set. ARGV: 1 that time, then the entries. Returns how
-- many went.

local removed = 0
local due_at = tonumber(ARGV[1])
for i = 2, #ARGV do
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  if score ~= nil and score <= due_at then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed

-- The entries of the expiry set that are due, by the server's clock.
--
-- KEYS: the expiry set. ARGV: 1 the most to return. Returns {now_ms,
-- entry...}, each entry 'id\nkind\nparent'.

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {now}
for i = 1, #due do out[#out + 1] = due[i] end
return out

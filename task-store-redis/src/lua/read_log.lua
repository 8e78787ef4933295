-- A page of one thread's log; with a limit of 0, whether the thread is
-- there and sound (what `load` asks when it found no head).
--
-- KEYS: the thread key. ARGV: 1 after (the last sequence number seen),
-- 2 limit. Returns {'ok', last_seq, message...} (false for a message
-- missing from the log), or {'notfound'}, {'corrupt', reason}.

local key = KEYS[1]
local cur = redis.pcall('HMGET', key, 'seq', 'v')
if cur['err'] then return not_a_thread(key, cur) end
if cur[1] == false and cur[2] == false and redis.call('EXISTS', key) == 0 then
  return {'notfound'}
end
local last_seq = tonumber(cur[1])
if last_seq == nil then return {'corrupt', 'the head has no valid sequence number'} end
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {'ok', last_seq}
if after >= last_seq or limit < 1 then return out end
local upto = math.min(last_seq, after + limit)
local fields = {}
for seq = after + 1, upto do fields[#fields + 1] = 'm:' .. fmt(seq) end
local bodies = redis.call('HMGET', key, unpack(fields))
for i = 1, #fields do out[#out + 1] = bodies[i] end
return out

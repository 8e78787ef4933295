-- A page of one thread's log.
--
-- KEYS: head, log. ARGV: 1 after (the last sequence number seen), 2 limit.
-- Returns {'ok', last_seq, message...} (false for a message missing from
-- the log), or {'notfound'}, {'corrupt', reason}.

local head, log = KEYS[1], KEYS[2]
local head_type = key_type(head)
if head_type == 'none' then return {'notfound'} end
if head_type ~= 'hash' then
  return {'corrupt', 'the head key holds a ' .. head_type .. ', not a hash'}
end
local bad = not_hash(log, 'the log key')
if bad then return bad end
local last_seq = tonumber(redis.call('HGET', head, 'seq'))
if last_seq == nil then return {'corrupt', 'the head has no valid sequence number'} end
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {'ok', last_seq}
if after >= last_seq then return out end
local upto = math.min(last_seq, after + limit)
local fields = {}
for seq = after + 1, upto do fields[#fields + 1] = fmt(seq) end
local bodies = redis.call('HMGET', log, unpack(fields))
for i = 1, #fields do out[#out + 1] = bodies[i] end
return out

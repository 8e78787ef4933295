-- append_batch (and append, as a batch of one): applies appends in order,
-- each to its own thread and all or nothing on its own (an item reads
-- what the earlier items of the run wrote, so two appends to one thread
-- apply in order).
--
-- The caller has done everything that does not need the server: ids are
-- valid, and each item's messages hold no message id twice (a repeat is
-- skipped, and counted, by the caller).
--
-- KEYS: 1 the expiry set; 2 the open-by-kind and 3 the open-by-parent
-- index; then head, log, mids of each item, in order.
--
-- ARGV: 1 retention in ms ('0' for none); 2 the number of items n; then
-- per item: thread id; expected version ('' for any); state JSON ('' for
-- none); finished mark ('', '0', '1'); the message count c; then c pairs of
-- message id ('' for none) and message JSON.
--
-- Returns one reply per item, in order: {'ok', version, last_seq,
-- appended, skipped}, {'notfound'}, {'conflict', actual}, {'corrupt',
-- reason} or {'badindex', key}.
--
-- Cost per item: one HMGET of the head; for one message with an id (the
-- task layer's finish) one HEXISTS of it in mids, otherwise one HMGET of
-- the item's ids; one HSET each of log, mids and head; and the retention's
-- PEXPIREs (or PTTL copy, or PERSISTs). The types of head and mids are
-- checked by those reads (a type error is caught with pcall and is that
-- item's corruption) and the log's by the item's first write; a TYPE is
-- asked only where no read or write of the item covers the key. Per run:
-- one TYPE of each sorted set, one TIME, and one ZADD and one ZREM on each
-- that changed.

local expiring, open_kind, open_parent = KEYS[1], KEYS[2], KEYS[3]
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local shared_bad
for i = 1, 3 do
  if not_zset(KEYS[i]) then shared_bad = KEYS[i]; break end
end

local function apply(head, log, mids, id, expected, state, mark, first, c)
  local cur = redis.pcall('HMGET', head, 'v', 'seq', 'term', 'kind', 'parent')
  if cur['err'] then return type_error(head, 'the head key', cur) end
  local version, last_seq = tonumber(cur[1]), tonumber(cur[2])
  if cur[1] == false and redis.call('EXISTS', head) == 0 then return {'notfound'} end
  if version == nil or version < 1 or last_seq == nil or last_seq < 0 then
    return {'corrupt', 'the head has no valid version or sequence number'}
  end
  if expected ~= '' and tonumber(expected) ~= version then return {'conflict', version} end

  local bad, plan = plan_messages(mids, first, c, last_seq)
  if bad then return bad end
  if shared_bad then
    bad = not_hash(log, 'the key ' .. log)
    return bad or {'badindex', shared_bad}
  end
  bad = write_messages(log, mids, first, plan)
  if bad then return bad end
  local appended, skipped = plan[1], plan[2]
  last_seq = plan[3]
  if appended == 0 and state == '' and mark == '' then
    return {'ok', version, last_seq, appended, skipped}
  end

  version = version + 1
  local term = cur[3] or '0'
  if mark ~= '' then term = mark end
  if state ~= '' then
    redis.call('HSET', head, 'v', fmt(version), 'seq', fmt(last_seq), 'term', term, 'state', state)
  else
    redis.call('HSET', head, 'v', fmt(version), 'seq', fmt(last_seq), 'term', term)
  end
  local kind, parent = cur[4] or '', cur[5] or ''
  if mark ~= '' then note_open(open_kind, open_parent, kind, parent, id, term == '0') end
  retain(head, log, mids, expiring, ttl, term, mark, id .. '\n' .. kind .. '\n' .. parent, false)
  return {'ok', version, last_seq, appended, skipped}
end

local out = {}
local p = 3
for i = 1, n do
  local at = 4 + 3 * (i - 1)
  local c = tonumber(ARGV[p + 4])
  out[i] = apply(KEYS[at], KEYS[at + 1], KEYS[at + 2],
    ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3], p + 5, c)
  p = p + 5 + 2 * c
end
flush_notes(expiring, ttl)
return out

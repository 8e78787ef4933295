-- save: creates or replaces one thread without a precondition. Kind,
-- parent, metadata, state and finished mark are replaced, the messages
-- appended (skipping known ids), the version goes up by one (or is 1 for
-- a new thread), and the thread moves between index entries when its kind
-- or parent changes.
--
-- KEYS: 1 head, 2 log, 3 mids, 4 the expiry set, 5 the open-by-kind and
-- 6 the open-by-parent index; then the index keys of the new kind and parent (all, kind, and parent, parent+kind when ARGV[4] is
-- not ''); then those of the kind and parent the caller assumes are stored
-- (kind when ARGV[8] is not ''; parent, parent+kind when ARGV[9] is not '').
--
-- ARGV: 1 retention in ms ('0' for none); 2 thread id; 3 kind; 4 parent
-- ('' for none); 5 metadata JSON; 6 state JSON; 7 finished mark ('0'/'1');
-- 8 the stored kind the caller assumes; 9 the stored parent it assumes;
-- 10 the message count c; then c pairs of message id ('' for none) and
-- message JSON, with no id twice (the caller drops repeats).
--
-- Returns {'ok', version, last_seq, appended, skipped}, {'moved', kind,
-- parent} (the stored kind or parent is not the one assumed: the caller
-- runs again with the right old index keys), {'corrupt', reason} or
-- {'badindex', key}.

local head, log, mids, expiring = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local open_kind, open_parent = KEYS[5], KEYS[6]
local ttl = tonumber(ARGV[1])
local id, kind, parent, meta, state, term = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local old_kind, old_parent = ARGV[8], ARGV[9]
local c = tonumber(ARGV[10])
local first = 11

local cur = redis.pcall('HMGET', head, 'v', 'seq', 'kind', 'parent')
if cur['err'] then return type_error(head, 'the head key', cur) end
local exists = cur[1] ~= false or redis.call('EXISTS', head) == 1
local version, last_seq = 0, 0
if exists then
  version, last_seq = tonumber(cur[1]), tonumber(cur[2])
  if version == nil or version < 1 or last_seq == nil or last_seq < 0 then
    return {'corrupt', 'the head has no valid version or sequence number'}
  end
  if (cur[3] or '') ~= old_kind or (cur[4] or '') ~= old_parent then
    return {'moved', cur[3] or '', cur[4] or ''}
  end
end

local k = 7
local idx_all, idx_kind = KEYS[k], KEYS[k + 1]
k = k + 2
local idx_parent, idx_pk
if parent ~= '' then idx_parent = KEYS[k]; idx_pk = KEYS[k + 1]; k = k + 2 end
local old_idx_kind, old_idx_parent, old_idx_pk
if old_kind ~= '' then
  old_idx_kind = KEYS[k]; k = k + 1
  if old_parent ~= '' then old_idx_parent = KEYS[k]; old_idx_pk = KEYS[k + 1] end
end
for i = 4, #KEYS do
  if not_zset(KEYS[i]) then return {'badindex', KEYS[i]} end
end

local appended, skipped = c, 0
if exists then
  local bad, plan = plan_messages(mids, first, c, last_seq)
  if bad then return bad end
  bad = write_messages(log, mids, first, plan)
  if bad then return bad end
  appended, skipped, last_seq = plan[1], plan[2], plan[3]
  version = version + 1
  redis.call('HSET', head, 'v', fmt(version), 'seq', fmt(last_seq), 'term', term,
    'state', state, 'id', id, 'kind', kind, 'meta', meta)
  if parent ~= '' then
    redis.call('HSET', head, 'parent', parent)
  else
    redis.call('HDEL', head, 'parent')
  end
else
  -- A missing head means a fresh thread: drop anything left behind.
  redis.call('DEL', log, mids)
  write_fresh(head, log, mids, id, term, state, kind, meta, parent, first, c)
  version, last_seq = 1, c
end

-- The old entries go (where the new ones differ), the new ones come.
if old_idx_kind then note(old_idx_kind, id, false) end
if old_idx_parent then note(old_idx_parent, id, false) end
if old_idx_pk then note(old_idx_pk, id, false) end
if exists then note_open(open_kind, open_parent, old_kind, old_parent, id, false) end
note(idx_all, id, true)
note(idx_kind, id, true)
if idx_parent then
  note(idx_parent, id, true)
  note(idx_pk, id, true)
end
note_open(open_kind, open_parent, kind, parent, id, term == '0')

retain(head, log, mids, expiring, ttl, term, term, id .. '\n' .. kind .. '\n' .. parent, not exists)
flush_notes(expiring, ttl)
return {'ok', version, last_seq, appended, skipped}

-- save: creates or replaces one thread without a precondition. Kind,
-- parent, metadata, state and finished mark are replaced, the messages
-- appended (skipping known ids), the version goes up by one (or is 1 for
-- a new thread), and the thread's index entries move with its kind,
-- parent and mark, all in this one script (they share its shard's slot).
--
-- KEYS: 1..5 the shard's sorted sets (see the prelude); 6 the thread key.
--
-- ARGV: 1 retention in ms ('0' for none); 2 thread id; 3 kind; 4 parent
-- ('' for none); 5 metadata JSON; 6 state JSON; 7 finished mark ('0'/'1');
-- 8 the message count c; then c pairs of message id ('' for none) and
-- message JSON, with no id twice (the caller drops repeats).
--
-- Returns {'ok', version, last_seq, appended, skipped}, {'corrupt',
-- reason} or {'badindex', key}.

local key = KEYS[6]
local ttl = tonumber(ARGV[1])
local id, kind, parent, meta, state, term = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local c = tonumber(ARGV[8])
local first = 9

local err, cur, known = read_thread(key, {'v', 'seq', 'kind', 'parent'}, first, c)
if err then return err end
local exists = cur[1] ~= false or redis.call('EXISTS', key) == 1
if exists then
  err = invalid_head(cur[1], cur[2])
  if err then return err end
end
local bad = bad_index()
if bad then return {'badindex', bad} end

local entry = expiry_entry(id, kind, parent)
local version, last_seq, appended, skipped
if exists then
  local old_kind, old_parent = cur[3] or '', cur[4] or ''
  local fields = {}
  appended, skipped, last_seq = add_messages(fields, known, first, c, tonumber(cur[2]))
  version = tonumber(cur[1]) + 1
  for _, pair in ipairs({{'v', fmt(version)}, {'seq', fmt(last_seq)}, {'term', term},
      {'state', state}, {'id', id}, {'kind', kind}, {'meta', meta}}) do
    fields[#fields + 1] = pair[1]
    fields[#fields + 1] = pair[2]
  end
  if parent ~= '' then
    fields[#fields + 1] = 'parent'
    fields[#fields + 1] = parent
  else
    redis.call('HDEL', key, 'parent')
  end
  call_in_slices('HSET', key, fields)
  -- The old entries go (where the new ones differ), the new ones come.
  note_listed(old_kind, old_parent, id, false)
  note_open(old_kind, old_parent, id, false)
  local old_entry = expiry_entry(id, old_kind, old_parent)
  if old_entry ~= entry then note(EXPIRING, old_entry, false) end
else
  write_fresh(key, id, term, state, kind, meta, parent, first, c)
  version, last_seq, appended, skipped = 1, c, c, 0
end
note_listed(kind, parent, id, true)
note_open(kind, parent, id, term == '0')
-- A save always sets the mark, so a thread saved open drops its expiry.
retain(key, ttl, term, term, entry, not exists)
flush_notes(ttl)
return {'ok', version, last_seq, appended, skipped}

-- append_batch (and append, as a batch of one): applies appends to
-- threads of one shard, in order, each all or nothing on its own (an item
-- reads what the earlier items of the run wrote, so two appends to one
-- thread apply in order).
--
-- The caller has done everything that does not need the server: ids are
-- valid and of this shard, and each item's messages hold no message id
-- twice (a repeat is skipped, and counted, by the caller).
--
-- KEYS: 1..5 the shard's sorted sets (see the prelude); then the thread
-- key of each item, in order.
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
-- Cost per item: one HMGET (the head fields and the ids of the item's
-- messages, so the task layer's finish reads once) and one HSET (head,
-- messages and their ids), and with a retention one PEXPIRE. Per run: five
-- TYPEs, one TIME, and one ZADD or ZREM on each sorted set that changed.

local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local bad = bad_index()
local HEAD = {'v', 'seq', 'term', 'kind', 'parent'}

local function apply(key, id, expected, state, mark, first, c)
  local err, cur, known = read_thread(key, HEAD, first, c)
  if err then return err end
  if cur[1] == false and redis.call('EXISTS', key) == 0 then return {'notfound'} end
  err = invalid_head(cur[1], cur[2])
  if err then return err end
  local version, last_seq = tonumber(cur[1]), tonumber(cur[2])
  if expected ~= '' and tonumber(expected) ~= version then return {'conflict', version} end
  if bad then return {'badindex', bad} end

  local fields = {}
  local appended, skipped
  appended, skipped, last_seq = add_messages(fields, known, first, c, last_seq)
  if appended == 0 and state == '' and mark == '' then
    return {'ok', version, last_seq, appended, skipped}
  end
  version = version + 1
  local term = cur[3] or '0'
  if mark ~= '' then term = mark end
  fields[#fields + 1] = 'v'
  fields[#fields + 1] = fmt(version)
  fields[#fields + 1] = 'seq'
  fields[#fields + 1] = fmt(last_seq)
  fields[#fields + 1] = 'term'
  fields[#fields + 1] = term
  if state ~= '' then
    fields[#fields + 1] = 'state'
    fields[#fields + 1] = state
  end
  call_in_slices('HSET', key, fields)
  local kind, parent = cur[4] or '', cur[5] or ''
  if mark ~= '' then note_open(kind, parent, id, term == '0') end
  retain(key, ttl, term, mark, expiry_entry(id, kind, parent), false)
  return {'ok', version, last_seq, appended, skipped}
end

local out = {}
local p = 3
for i = 1, n do
  local c = tonumber(ARGV[p + 4])
  out[i] = apply(KEYS[5 + i], ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3], p + 5, c)
  p = p + 5 + 2 * c
end
flush_notes(ttl)
return out

//! The Lua scripts. Each write of a thread is one script on the thread's own
//! keys (one hash tag, one slot); on a single node the same script also
//! maintains the indexes. The exceptions are [`CREATE_BATCH`], which creates
//! many fresh threads in one run (each still all or nothing) to share its
//! checks and index updates among them, and [`APPEND_BATCH`], which applies
//! many appends in one run (each still all or nothing) to share the cost of
//! a script run and the expiry-set updates. All data comes in through
//! `ARGV`, never into the script source, so the scripts are loaded once and
//! run by SHA1.
//!
//! Scripts check every key's type before their first write: a Redis script is
//! not rolled back when a command fails half-way, so they must not fail after
//! writing.

use std::sync::LazyLock;

use redis::Script;

/// `create`, `append` and `save` of one thread.
///
/// `KEYS`: head, log, mids, the expiry set; for `create` and `save` then the
/// index keys of the
/// new kind and parent (all, kind, and parent, parent+kind when `ARGV[8]` is
/// not empty), then those of the old kind and parent (kind when `ARGV[10]` is
/// not empty; parent, parent+kind when `ARGV[11]` is not empty; all is shared).
///
/// `ARGV`: 1 mode (`create`, `append`, `save`); 2 expected version (`''` for
/// any); 3 state JSON (`''` for none); 4 finished mark (`''`, `'0'`, `'1'`);
/// 5 retention in ms (`'0'` for none); 6 thread id; 7 kind; 8 parent (`''` for
/// none); 9 metadata JSON; 10 old kind the caller assumes (`''` for none);
/// 11 old parent it assumes (for `append` the thread's own kind and parent
/// are read from its head); 12 message count n; then n pairs of message id
/// (`''` for none) and message JSON.
///
/// Returns `{'ok', version, last_seq, appended, skipped}`, or
/// `{'notfound'}`, `{'exists'}`, `{'conflict', actual}`,
/// `{'moved', kind, parent}` (the stored kind or parent differs from the one
/// assumed: the caller retries with the right old index keys),
/// `{'corrupt', reason}`, `{'badindex', key}`.
pub(crate) static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE_LUA));

const WRITE_LUA: &str = r#"
local head, log, mids, expiring = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode = ARGV[1]
local kind, parent = ARGV[7], ARGV[8]
local old_kind, old_parent = ARGV[10], ARGV[11]

local function fmt(n) return string.format('%d', n) end

local head_type = redis.call('TYPE', head)['ok']
if head_type ~= 'none' and head_type ~= 'hash' then
  if mode == 'create' then return {'exists'} end
  return {'corrupt', 'the head key holds a ' .. head_type .. ', not a hash'}
end
local exists = head_type == 'hash'

local version, last_seq, term = 0, 0, '0'
local cur_kind, cur_parent = '', ''
if exists then
  local cur = redis.call('HMGET', head, 'v', 'seq', 'term', 'kind', 'parent')
  version = tonumber(cur[1])
  last_seq = tonumber(cur[2])
  if version == nil or version < 1 or last_seq == nil or last_seq < 0 then
    return {'corrupt', 'the head has no valid version or sequence number'}
  end
  term = cur[3] or '0'
  cur_kind = cur[4] or ''
  cur_parent = cur[5] or ''
end

if mode == 'create' and exists then return {'exists'} end
if mode == 'append' then
  if not exists then return {'notfound'} end
  if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= version then return {'conflict', version} end
end

if exists then
  for _, key in ipairs({log, mids}) do
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'none' and t ~= 'hash' then
      return {'corrupt', 'the key ' .. key .. ' holds a ' .. t .. ', not a hash'}
    end
  end
end

-- Index keys (create and save only).
local idx_all, idx_kind, idx_parent, idx_pk
local old_idx_kind, old_idx_parent, old_idx_pk
if mode ~= 'append' then
  if exists and (cur_kind ~= old_kind or cur_parent ~= old_parent) then
    return {'moved', cur_kind, cur_parent}
  end
  local k = 5
  idx_all = KEYS[k]; idx_kind = KEYS[k + 1]; k = k + 2
  if parent ~= '' then idx_parent = KEYS[k]; idx_pk = KEYS[k + 1]; k = k + 2 end
  if old_kind ~= '' then
    old_idx_kind = KEYS[k]; k = k + 1
    if old_parent ~= '' then old_idx_parent = KEYS[k]; old_idx_pk = KEYS[k + 1]; k = k + 2 end
  end
  for i = 5, #KEYS do
    local t = redis.call('TYPE', KEYS[i])['ok']
    if t ~= 'none' and t ~= 'zset' then return {'badindex', KEYS[i]} end
  end
end

local expiring_type = redis.call('TYPE', expiring)['ok']
if expiring_type ~= 'none' and expiring_type ~= 'zset' then return {'badindex', expiring} end

-- Every check is done: from here on nothing fails. A missing head means a
-- fresh thread: drop anything left behind under its tag.
if not exists then redis.call('DEL', log, mids) end

-- Messages, skipping ids already in the log.
local appended, skipped = 0, 0
local n = tonumber(ARGV[12])
for i = 0, n - 1 do
  local mid, body = ARGV[13 + 2 * i], ARGV[14 + 2 * i]
  local fresh = true
  if mid ~= '' then fresh = redis.call('HSETNX', mids, mid, fmt(last_seq + 1)) == 1 end
  if fresh then
    last_seq = last_seq + 1
    redis.call('HSET', log, fmt(last_seq), body)
    appended = appended + 1
  else
    skipped = skipped + 1
  end
end

local changed = mode ~= 'append' or ARGV[3] ~= '' or ARGV[4] ~= '' or appended > 0
if not changed then return {'ok', version, last_seq, appended, skipped} end

version = version + 1
if ARGV[4] ~= '' then term = ARGV[4] end
redis.call('HSET', head, 'v', fmt(version), 'seq', fmt(last_seq), 'term', term)
if ARGV[3] ~= '' then redis.call('HSET', head, 'state', ARGV[3]) end
if mode ~= 'append' then
  redis.call('HSET', head, 'id', ARGV[6], 'kind', kind, 'meta', ARGV[9])
  if parent ~= '' then
    redis.call('HSET', head, 'parent', parent)
  else
    redis.call('HDEL', head, 'parent')
  end
  local member = ARGV[6]
  if old_idx_kind and old_idx_kind ~= idx_kind then redis.call('ZREM', old_idx_kind, member) end
  if old_idx_parent and old_idx_parent ~= idx_parent then redis.call('ZREM', old_idx_parent, member) end
  if old_idx_pk and old_idx_pk ~= idx_pk then redis.call('ZREM', old_idx_pk, member) end
  redis.call('ZADD', idx_all, 0, member)
  redis.call('ZADD', idx_kind, 0, member)
  if idx_parent then
    redis.call('ZADD', idx_parent, 0, member)
    redis.call('ZADD', idx_pk, 0, member)
  end
end

-- Retention: a finished thread expires, all its keys at the same moment,
-- and the expiry set remembers which index entries to sweep then.
local ttl = tonumber(ARGV[5])
local final_kind, final_parent = cur_kind, cur_parent
if mode ~= 'append' then final_kind, final_parent = kind, parent end
local entry = ARGV[6] .. '\n' .. final_kind .. '\n' .. final_parent
if term == '1' then
  if ttl > 0 then
    redis.call('PEXPIRE', head, ttl)
    redis.call('PEXPIRE', log, ttl)
    redis.call('PEXPIRE', mids, ttl)
    local now = redis.call('TIME')
    local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    redis.call('ZADD', expiring, now_ms + ttl, entry)
  else
    local left = redis.call('PTTL', head)
    if left > 0 then
      redis.call('PEXPIRE', log, left)
      redis.call('PEXPIRE', mids, left)
    end
  end
elseif ARGV[4] ~= '' then
  redis.call('PERSIST', head)
  redis.call('PERSIST', log)
  redis.call('PERSIST', mids)
  redis.call('ZREM', expiring, entry)
end

return {'ok', version, last_seq, appended, skipped}
"#;

/// `create_batch`: creates many fresh threads in one run, each on its own
/// (all or nothing per thread), sharing the type checks of the index keys
/// and the index updates across the run.
///
/// The caller has done everything that does not need the server: ids are
/// valid and distinct within the run, and each thread's messages are those
/// a fresh log appends (repeated ids dropped), numbered from 1 in order.
///
/// `KEYS`: 1 the expiry set; 2 the index of all threads; 3..m+1 the other
/// index keys of the run's threads: one per kind, and per pair of parent and
/// kind the parent's index followed by the parent+kind index; then head,
/// log, mids of each thread, in order.
///
/// `ARGV`: 1 retention in ms (`'0'` for none); 2 m; 3 the number of threads
/// n; then per thread: id; finished mark (`'0'`/`'1'`); the position in
/// `KEYS` of its kind's index; the position of its parent's index (`'0'` for
/// no parent; its parent+kind index follows it); state JSON; kind; metadata
/// JSON; parent (`''` for none); the message count c; then c pairs of
/// message id (`''` for none) and message JSON.
///
/// Returns one status per thread, in order: `1` created, `0` the id is taken
/// (its head key exists, whatever its type), or the name of a key that is
/// not a sorted set (an index key of the thread, or the expiry set; nothing
/// was written for that thread).
///
/// Cost: per run, one `TYPE` per index key and one `EXISTS` over every
/// thread key (when none exists, which is the common case, no thread needs
/// an `EXISTS` or a `DEL` of its own); per thread, one `HSET` each of head,
/// log and mids (and with a retention one `PEXPIRE` each); per run again,
/// one `ZADD` per index key and one `ZADD` or `ZREM` on the expiry set.
/// Fresh keys have no TTL, so nothing is `PERSIST`ed or copied. Field names
/// and sequence numbers are made in the script, to keep the arguments few:
/// each argument costs the server time to receive and to turn into a Lua
/// string.
pub(crate) static CREATE_BATCH: LazyLock<Script> = LazyLock::new(|| Script::new(CREATE_BATCH_LUA));

const CREATE_BATCH_LUA: &str = r#"
local expiring = KEYS[1]
local ttl = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local n = tonumber(ARGV[3])

local function not_zset(key)
  local t = redis.call('TYPE', key)['ok']
  return t ~= 'none' and t ~= 'zset'
end

-- unpack has a limit on the values it returns (about 8000): a long log
-- goes in slices (of field/value pairs, so SLICE is even).
local SLICE = 1000
local function hset_in_slices(key, list)
  for from = 1, #list, SLICE do
    redis.call('HSET', key, unpack(list, from, math.min(from + SLICE - 1, #list)))
  end
end

-- Every check comes before the first write: a script is not rolled back.
local expiring_bad = not_zset(expiring)
local bad = {}
for i = 2, m + 1 do
  if not_zset(KEYS[i]) then bad[i] = true end
end
local base = m + 2
-- No key of any thread exists (the common case): every thread is fresh
-- and nothing was left behind, so none needs an EXISTS or a DEL of its own.
local clean = redis.call('EXISTS', unpack(KEYS, base, base + 3 * n - 1)) == 0

local out, members, expire_add, expire_rem = {}, {}, {}, {}
local function member(pos, id)
  local list = members[pos]
  if list == nil then list = {}; members[pos] = list end
  list[#list + 1] = '0'
  list[#list + 1] = id
end

local p = 4
for i = 1, n do
  local id, term, kind_pos, parent_pos = ARGV[p], ARGV[p + 1], tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
  local state, kind, meta, parent, seq = ARGV[p + 4], ARGV[p + 5], ARGV[p + 6], ARGV[p + 7], ARGV[p + 8]
  local c = tonumber(seq)
  local first = p + 9
  p = first + 2 * c
  local at = base + 3 * (i - 1)
  local head, log, mids = KEYS[at], KEYS[at + 1], KEYS[at + 2]

  local status = 1
  if not clean and redis.call('EXISTS', head) == 1 then status = 0
  elseif bad[2] then status = KEYS[2]
  elseif bad[kind_pos] then status = KEYS[kind_pos]
  elseif parent_pos > 0 and bad[parent_pos] then status = KEYS[parent_pos]
  elseif parent_pos > 0 and bad[parent_pos + 1] then status = KEYS[parent_pos + 1]
  elseif expiring_bad then status = expiring end

  if status == 1 then
    -- A missing head means a fresh thread: drop anything left behind.
    if not clean then redis.call('DEL', log, mids) end
    if parent ~= '' then
      redis.call('HSET', head, 'v', '1', 'seq', seq, 'term', term, 'state', state,
        'id', id, 'kind', kind, 'meta', meta, 'parent', parent)
    else
      redis.call('HSET', head, 'v', '1', 'seq', seq, 'term', term, 'state', state,
        'id', id, 'kind', kind, 'meta', meta)
    end
    local has_mids = false
    if c > 0 then
      local entries, ids = {}, {}
      for j = 1, c do
        local s = tostring(j)
        local mid = ARGV[first + 2 * (j - 1)]
        entries[2 * j - 1] = s
        entries[2 * j] = ARGV[first + 2 * j - 1]
        if mid ~= '' then ids[#ids + 1] = mid; ids[#ids + 1] = s end
      end
      hset_in_slices(log, entries)
      if #ids > 0 then hset_in_slices(mids, ids); has_mids = true end
    end
    member(2, id)
    member(kind_pos, id)
    if parent_pos > 0 then member(parent_pos, id); member(parent_pos + 1, id) end
    -- Retention as in the write script; fresh keys have no TTL to copy or drop.
    local entry = id .. '\n' .. kind .. '\n' .. parent
    if term == '1' then
      if ttl > 0 then
        redis.call('PEXPIRE', head, ttl)
        if c > 0 then redis.call('PEXPIRE', log, ttl) end
        if has_mids then redis.call('PEXPIRE', mids, ttl) end
        expire_add[#expire_add + 1] = entry
      end
    else
      expire_rem[#expire_rem + 1] = entry
    end
  end
  out[i] = status
end

for pos = 2, m + 1 do
  local list = members[pos]
  if list ~= nil then redis.call('ZADD', KEYS[pos], unpack(list)) end
end
if #expire_add > 0 then
  local now = redis.call('TIME')
  local until_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl
  local args = {}
  for i = 1, #expire_add do
    args[#args + 1] = until_ms
    args[#args + 1] = expire_add[i]
  end
  redis.call('ZADD', expiring, unpack(args))
end
if #expire_rem > 0 then redis.call('ZREM', expiring, unpack(expire_rem)) end
return out
"#;

/// `append_batch`: applies many appends in one run, each on its own thread
/// and each all or nothing, in order, with the semantics of the write
/// script's `append` mode item by item (an item reads what the earlier
/// items of the run wrote, so two appends to one thread apply in order).
///
/// The caller has done everything that does not need the server: ids are
/// valid, and each item's messages hold no message id twice (a repeat is
/// skipped, and counted, by the caller).
///
/// `KEYS`: 1 the expiry set; then head, log, mids of each item, in order.
///
/// `ARGV`: 1 retention in ms (`'0'` for none); 2 the number of items n;
/// then per item: thread id; expected version (`''` for any); state JSON
/// (`''` for none); finished mark (`''`, `'0'`, `'1'`); the message count
/// c; then c pairs of message id (`''` for none) and message JSON.
///
/// Returns one reply per item, in order, each as the write script's:
/// `{'ok', version, last_seq, appended, skipped}`, `{'notfound'}`,
/// `{'conflict', actual}`, `{'corrupt', reason}`, `{'badindex', key}`.
///
/// Cost per item: one `HMGET` of the head; for one message with an id (the
/// task layer's finish) one `HEXISTS` of it in mids, otherwise one `HMGET`
/// of the item's ids; one `HSET` each of log, mids and head; and the
/// retention's `PEXPIRE`s (or `PTTL` copy, or `PERSIST`s) of the write
/// script. The types of head and mids are checked by those reads (a type
/// error is caught with `pcall` and is that item's corruption) and the
/// log's by the item's first write, its `HSET`, which a type error refuses
/// whole; a `TYPE` is asked only where no read or write of the item covers
/// the key (no message, only known ids, a damaged expiry set). Per run: one
/// `TYPE` of the expiry set, one `TIME`, and one `ZADD` and one `ZREM` on it
/// for all the run's items (for one entry, the last item's wish counts, as
/// if they had run one after another). Every Redis call from a script costs
/// the server about as much as a small command, so calls are what this
/// script saves: a finish with one message takes 6 (its `PTTL` included)
/// without a retention and 8 with one, against 10 and 13 and an `EVALSHA`
/// each for the write script.
pub(crate) static APPEND_BATCH: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_BATCH_LUA));

const APPEND_BATCH_LUA: &str = r#"
local expiring = KEYS[1]
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])

-- unpack has a limit on the values it returns: long lists go in slices.
local SLICE = 1000
local function fmt(x) return string.format('%d', x) end
local function call_in_slices(cmd, key, list)
  for from = 1, #list, SLICE do
    redis.call(cmd, key, unpack(list, from, math.min(from + SLICE - 1, #list)))
  end
end

-- The reply of a key that holds something other than a hash (or nothing),
-- or nil: the write script's words for it.
local function not_hash(key, what)
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' or t == 'hash' then return nil end
  return {'corrupt', what .. ' holds a ' .. t .. ', not a hash'}
end

-- A command's error that is not about the key's type is the run's error.
local function type_error(key, what, reply)
  local bad = not_hash(key, what)
  if bad == nil then error(reply['err']) end
  return bad
end

local expiring_type = redis.call('TYPE', expiring)['ok']
local expiring_bad = expiring_type ~= 'none' and expiring_type ~= 'zset'

-- The expiry-set entries the run touches: entry -> true to add, false to remove.
local expiry, expiry_order = {}, {}

local function apply(head, log, mids, id, expected, state, mark, first, c)
  -- Every check comes before the first write: a script is not rolled back.
  -- Reads check their key's type as they go (a type error is caught); the
  -- log's type is checked by the item's first write, which a type error
  -- refuses whole.
  local cur = redis.pcall('HMGET', head, 'v', 'seq', 'term', 'kind', 'parent')
  if cur['err'] then return type_error(head, 'the head key', cur) end
  local version, last_seq = tonumber(cur[1]), tonumber(cur[2])
  if cur[1] == false and redis.call('EXISTS', head) == 0 then return {'notfound'} end
  if version == nil or version < 1 or last_seq == nil or last_seq < 0 then
    return {'corrupt', 'the head has no valid version or sequence number'}
  end
  if expected ~= '' and tonumber(expected) ~= version then return {'conflict', version} end

  -- Messages, skipping ids already in the log. One message (the common
  -- case) is handled without building lists.
  local appended, skipped = 0, 0
  local seq = cur[2]
  local entries, new_ids
  if c == 1 then
    local mid = ARGV[first]
    local fresh = true
    if mid ~= '' then
      local found = redis.pcall('HEXISTS', mids, mid)
      if type(found) == 'table' then return type_error(mids, 'the key ' .. mids, found) end
      fresh = found == 0
    else
      local bad = not_hash(mids, 'the key ' .. mids)
      if bad then return bad end
    end
    if fresh then
      last_seq = last_seq + 1
      seq = fmt(last_seq)
      appended = 1
    else
      skipped = 1
    end
  elseif c > 1 then
    local ids = {}
    for j = first, first + 2 * c - 2, 2 do
      if ARGV[j] ~= '' then ids[#ids + 1] = ARGV[j] end
    end
    local known = {}
    if #ids > 0 then
      for from = 1, #ids, SLICE do
        local found = redis.pcall('HMGET', mids, unpack(ids, from, math.min(from + SLICE - 1, #ids)))
        if found['err'] then return type_error(mids, 'the key ' .. mids, found) end
        for k = 1, #found do
          if found[k] then known[ids[from + k - 1]] = true end
        end
      end
    else
      local bad = not_hash(mids, 'the key ' .. mids)
      if bad then return bad end
    end
    entries, new_ids = {}, {}
    for j = first, first + 2 * c - 2, 2 do
      local mid = ARGV[j]
      if mid ~= '' and known[mid] then
        skipped = skipped + 1
      else
        last_seq = last_seq + 1
        seq = fmt(last_seq)
        entries[#entries + 1] = seq
        entries[#entries + 1] = ARGV[j + 1]
        if mid ~= '' then new_ids[#new_ids + 1] = mid; new_ids[#new_ids + 1] = seq end
        appended = appended + 1
      end
    end
  else
    local bad = not_hash(mids, 'the key ' .. mids)
    if bad then return bad end
  end
  if appended == 0 or expiring_bad then
    local bad = not_hash(log, 'the key ' .. log)
    if bad then return bad end
  end
  if expiring_bad then return {'badindex', expiring} end

  if appended > 0 then
    local written
    if entries == nil then
      written = redis.pcall('HSET', log, seq, ARGV[first + 1])
    else
      written = redis.pcall('HSET', log, unpack(entries, 1, math.min(SLICE, #entries)))
    end
    if type(written) == 'table' and written['err'] then
      return type_error(log, 'the key ' .. log, written)
    end
    if entries == nil then
      if ARGV[first] ~= '' then redis.call('HSET', mids, ARGV[first], seq) end
    else
      for from = SLICE + 1, #entries, SLICE do
        redis.call('HSET', log, unpack(entries, from, math.min(from + SLICE - 1, #entries)))
      end
      call_in_slices('HSET', mids, new_ids)
    end
  elseif state == '' and mark == '' then
    return {'ok', version, last_seq, appended, skipped}
  end

  version = version + 1
  local term = cur[3] or '0'
  if mark ~= '' then term = mark end
  if state ~= '' then
    redis.call('HSET', head, 'v', fmt(version), 'seq', seq, 'term', term, 'state', state)
  else
    redis.call('HSET', head, 'v', fmt(version), 'seq', seq, 'term', term)
  end

  -- Retention, as in the write script; the expiry set is written once per run.
  if term == '1' then
    if ttl > 0 then
      redis.call('PEXPIRE', head, ttl)
      redis.call('PEXPIRE', log, ttl)
      redis.call('PEXPIRE', mids, ttl)
      local e = id .. '\n' .. (cur[4] or '') .. '\n' .. (cur[5] or '')
      if expiry[e] == nil then expiry_order[#expiry_order + 1] = e end
      expiry[e] = true
    else
      local left = redis.call('PTTL', head)
      if left > 0 then
        redis.call('PEXPIRE', log, left)
        redis.call('PEXPIRE', mids, left)
      end
    end
  elseif mark ~= '' then
    redis.call('PERSIST', head)
    redis.call('PERSIST', log)
    redis.call('PERSIST', mids)
    local e = id .. '\n' .. (cur[4] or '') .. '\n' .. (cur[5] or '')
    if expiry[e] == nil then expiry_order[#expiry_order + 1] = e end
    expiry[e] = false
  end
  return {'ok', version, last_seq, appended, skipped}
end

local out = {}
local p = 3
for i = 1, n do
  local at = 2 + 3 * (i - 1)
  local c = tonumber(ARGV[p + 4])
  out[i] = apply(KEYS[at], KEYS[at + 1], KEYS[at + 2],
    ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3], p + 5, c)
  p = p + 5 + 2 * c
end

-- Last, so that every expiry recorded is at or after its keys' own.
local add, remove = {}, {}
for _, entry in ipairs(expiry_order) do
  if expiry[entry] then
    add[#add + 1] = 0
    add[#add + 1] = entry
  else
    remove[#remove + 1] = entry
  end
end
if #add > 0 then
  local now = redis.call('TIME')
  local until_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl
  for k = 1, #add, 2 do add[k] = until_ms end
  call_in_slices('ZADD', expiring, add)
end
call_in_slices('ZREM', expiring, remove)
return out
"#;

/// A page of one thread's log.
///
/// `KEYS`: head, log. `ARGV`: 1 after (the last sequence number seen),
/// 2 limit. Returns `{'ok', last_seq, message...}` (`false` for a message
/// missing from the log), or `{'notfound'}`, `{'corrupt', reason}`.
pub(crate) static READ_LOG: LazyLock<Script> = LazyLock::new(|| Script::new(READ_LOG_LUA));

const READ_LOG_LUA: &str = r#"
local head, log = KEYS[1], KEYS[2]
local head_type = redis.call('TYPE', head)['ok']
if head_type == 'none' then return {'notfound'} end
if head_type ~= 'hash' then
  return {'corrupt', 'the head key holds a ' .. head_type .. ', not a hash'}
end
local log_type = redis.call('TYPE', log)['ok']
if log_type ~= 'none' and log_type ~= 'hash' then
  return {'corrupt', 'the log key holds a ' .. log_type .. ', not a hash'}
end
local last_seq = tonumber(redis.call('HGET', head, 'seq'))
if last_seq == nil then return {'corrupt', 'the head has no valid sequence number'} end
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {'ok', last_seq}
if after >= last_seq then return out end
local upto = math.min(last_seq, after + limit)
local fields = {}
for seq = after + 1, upto do fields[#fields + 1] = string.format('%d', seq) end
local bodies = redis.call('HMGET', log, unpack(fields))
for i = 1, #fields do out[#out + 1] = bodies[i] end
return out
"#;

/// Deletes one thread's keys.
///
/// `KEYS`: head, log, mids. Returns `{'deleted', kind, parent}` (empty
/// strings when unknown), or `{'missing'}`.
pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_LUA));

const DELETE_LUA: &str = r#"
local head = KEYS[1]
local head_type = redis.call('TYPE', head)['ok']
local kind, parent = '', ''
if head_type == 'hash' then
  local cur = redis.call('HMGET', head, 'kind', 'parent')
  kind = cur[1] or ''
  parent = cur[2] or ''
end
local removed = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if head_type == 'none' and removed == 0 then return {'missing'} end
return {'deleted', kind, parent}
"#;

/// Drops index entries that point at no live thread of the index's kind and
/// parent. Conditional, so it never removes the entry of a thread recreated
/// in the meantime.
///
/// `KEYS`: 1 the index, then one head key per id. `ARGV`: 1 the index's kind
/// (`''` for any), 2 its parent (`''` for any), then the ids. Returns how many
/// entries were removed.
pub(crate) static PRUNE: LazyLock<Script> = LazyLock::new(|| Script::new(PRUNE_LUA));

const PRUNE_LUA: &str = r#"
local index, want_kind, want_parent = KEYS[1], ARGV[1], ARGV[2]
local removed = 0
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  local t = redis.call('TYPE', KEYS[i])['ok']
  local stale = t == 'none'
  if t == 'hash' then
    local cur = redis.call('HMGET', KEYS[i], 'kind', 'parent')
    if want_kind ~= '' and (cur[1] or '') ~= want_kind then stale = true end
    if want_parent ~= '' and (cur[2] or '') ~= want_parent then stale = true end
  end
  if stale then removed = removed + redis.call('ZREM', index, id) end
end
return removed
"#;

/// The entries of the expiry set that are due: `KEYS`: the expiry set;
/// `ARGV`: 1 the most to return. Uses the server's clock. Returns
/// `{now_ms, entry...}`, each entry `id\nkind\nparent`.
pub(crate) static DUE: LazyLock<Script> = LazyLock::new(|| Script::new(DUE_LUA));

const DUE_LUA: &str = r#"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {now_ms}
for i = 1, #due do out[#out + 1] = due[i] end
return out
"#;

/// Removes swept entries from the expiry set, unless a later write pushed
/// their expiry past `ARGV[1]` (the time they were found due). `KEYS`: the
/// expiry set; `ARGV`: 1 that time, then the entries. Returns how many went.
pub(crate) static FORGET: LazyLock<Script> = LazyLock::new(|| Script::new(FORGET_LUA));

const FORGET_LUA: &str = r#"
local removed = 0
local due_at = tonumber(ARGV[1])
for i = 2, #ARGV do
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  if score ~= nil and score <= due_at then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"#;

/// Every script with its source, for loading them up front.
pub(crate) fn all() -> [(&'static Script, &'static str); 8] {
    [
        (&WRITE, WRITE_LUA),
        (&CREATE_BATCH, CREATE_BATCH_LUA),
        (&APPEND_BATCH, APPEND_BATCH_LUA),
        (&DUE, DUE_LUA),
        (&FORGET, FORGET_LUA),
        (&READ_LOG, READ_LOG_LUA),
        (&DELETE, DELETE_LUA),
        (&PRUNE, PRUNE_LUA),
    ]
}

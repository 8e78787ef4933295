-- The prelude of every script of task-store-redis, prepended to each
-- script's own source: formatting, the server's clock, calls in slices,
-- key type checks, and the rules that every write shares (retention and
-- the expiry set). Data comes in through ARGV only, never into the source.
--
-- Every script checks what it can before its first write: Redis does not
-- roll a script back when a command fails half-way.

-- unpack returns at most about 8000 values: long lists go to Redis in
-- slices (of pairs, so SLICE is even).
local SLICE = 1000

local function fmt(n) return string.format('%d', n) end

-- The server's clock, in milliseconds.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function call_in_slices(cmd, key, list)
  for from = 1, #list, SLICE do
    redis.call(cmd, key, unpack(list, from, math.min(from + SLICE - 1, #list)))
  end
end

local function key_type(key) return redis.call('TYPE', key)['ok'] end

-- The reply for a key that holds something other than a hash (or
-- nothing), or nil when it is fine.
local function not_hash(key, what)
  local t = key_type(key)
  if t == 'none' or t == 'hash' then return nil end
  return {'corrupt', what .. ' holds a ' .. t .. ', not a hash'}
end

local function not_zset(key)
  local t = key_type(key)
  return t ~= 'none' and t ~= 'zset'
end

-- The reply for a command that failed on `key` (caught with pcall): the
-- key's corruption when it holds the wrong type; any other error is the
-- run's error.
local function type_error(key, what, reply)
  local bad = not_hash(key, what)
  if bad == nil then error(reply['err']) end
  return bad
end

-- Sorted-set entries a run adds or removes, written once per key at its
-- end (for one member the last wish counts, as if the items had run one
-- after another): index entries (score 0) and expiry-set entries (scored
-- by the time they expire).
local notes, noted_keys = {}, {}

local function note(key, member, add)
  local of_key = notes[key]
  if of_key == nil then
    of_key = {order = {}, want = {}}
    notes[key] = of_key
    noted_keys[#noted_keys + 1] = key
  end
  if of_key.want[member] == nil then of_key.order[#of_key.order + 1] = member end
  of_key.want[member] = add
end

-- Writes the noted entries, last, so that every expiry recorded is at or
-- after its keys' own: the entries of `expiring` are scored now + ttl, the
-- others 0.
local function flush_notes(expiring, ttl)
  local until_ms
  for _, key in ipairs(noted_keys) do
    local of_key = notes[key]
    local add, remove = {}, {}
    for _, member in ipairs(of_key.order) do
      if of_key.want[member] then
        add[#add + 1] = 0
        add[#add + 1] = member
      else
        remove[#remove + 1] = member
      end
    end
    if key == expiring and #add > 0 then
      until_ms = until_ms or now_ms() + ttl
      for k = 1, #add, 2 do add[k] = until_ms end
    end
    call_in_slices('ZADD', key, add)
    call_in_slices('ZREM', key, remove)
  end
end

-- The open index: a thread whose finished mark is not set has an entry
-- 'kind\0id' in the open-by-kind set and, when it has a parent,
-- 'parent\0kind\0id' in the open-by-parent set (ids, kinds and parents
-- hold no control characters, so \0 separates them and sorts before any
-- of their bytes: one kind's or one parent's entries are one range).
local function note_open(by_kind, by_parent, kind, parent, id, open)
  note(by_kind, kind .. '\0' .. id, open)
  if parent ~= '' then note(by_parent, parent .. '\0' .. kind .. '\0' .. id, open) end
end

-- Applies the retention to a thread that a write leaves with the finished
-- mark `term`, having set the mark to `mark` ('' when it left it alone).
-- A finished thread's keys all expire `ttl` ms after this write, at the
-- same instant, and the expiry set records `entry`; a write without a
-- retention of its own keeps an expiry set earlier, copying it to keys
-- created since; clearing the mark removes the expiry. `fresh`: the keys
-- were created by this write (no expiry to copy or drop).
local function retain(head, log, mids, expiring, ttl, term, mark, entry, fresh)
  if term == '1' then
    if ttl > 0 then
      redis.call('PEXPIRE', head, ttl)
      redis.call('PEXPIRE', log, ttl)
      redis.call('PEXPIRE', mids, ttl)
      note(expiring, entry, true)
    elseif not fresh then
      local left = redis.call('PTTL', head)
      if left > 0 then
        redis.call('PEXPIRE', log, left)
        redis.call('PEXPIRE', mids, left)
      end
    end
  elseif mark ~= '' then
    if not fresh then
      redis.call('PERSIST', head)
      redis.call('PERSIST', log)
      redis.call('PERSIST', mids)
    end
    note(expiring, entry, false)
  end
end

-- The messages of a write to an existing thread whose log ends at
-- `last_seq`: ARGV[first..] holds c pairs of message id ('' for none) and
-- message JSON, with no id twice (the caller drops repeats). Ids already
-- in `mids` are skipped. Reads only: returns a reply when a key holds the
-- wrong type, else the plan {appended, skipped, last_seq, entries,
-- new_ids} for write_messages (entries nil for the single message of the
-- common case, which builds no lists).
local function plan_messages(mids, first, c, last_seq)
  local appended, skipped = 0, 0
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
    if fresh then return nil, {1, 0, last_seq + 1} end
    return nil, {0, 1, last_seq}
  end
  if c == 0 then
    local bad = not_hash(mids, 'the key ' .. mids)
    if bad then return bad end
    return nil, {0, 0, last_seq}
  end
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
  local entries, new_ids = {}, {}
  for j = first, first + 2 * c - 2, 2 do
    local mid = ARGV[j]
    if mid ~= '' and known[mid] then
      skipped = skipped + 1
    else
      last_seq = last_seq + 1
      local seq = fmt(last_seq)
      entries[#entries + 1] = seq
      entries[#entries + 1] = ARGV[j + 1]
      if mid ~= '' then new_ids[#new_ids + 1] = mid; new_ids[#new_ids + 1] = seq end
      appended = appended + 1
    end
  end
  return nil, {appended, skipped, last_seq, entries, new_ids}
end

-- Writes a plan of plan_messages. Its first write, to the log, checks the
-- log's type (a type error refuses that write whole and returns the
-- reply); nothing else can fail after it. A plan that appends nothing
-- checks the log's type without writing.
local function write_messages(log, mids, first, plan)
  local appended, entries = plan[1], plan[4]
  if appended == 0 then return not_hash(log, 'the key ' .. log) end
  local written
  if entries == nil then
    written = redis.pcall('HSET', log, fmt(plan[3]), ARGV[first + 1])
  else
    written = redis.pcall('HSET', log, unpack(entries, 1, math.min(SLICE, #entries)))
  end
  if type(written) == 'table' and written['err'] then
    return type_error(log, 'the key ' .. log, written)
  end
  if entries == nil then
    if ARGV[first] ~= '' then redis.call('HSET', mids, ARGV[first], fmt(plan[3])) end
  else
    for from = SLICE + 1, #entries, SLICE do
      redis.call('HSET', log, unpack(entries, from, math.min(from + SLICE - 1, #entries)))
    end
    call_in_slices('HSET', mids, plan[5])
  end
  return nil
end

-- Writes the head, log and message ids of a fresh thread (its head key is
-- absent): version 1, ARGV[first..] holding c pairs of message id and JSON
-- numbered from 1 (no id twice).
local function write_fresh(head, log, mids, id, term, state, kind, meta, parent, first, c)
  if parent ~= '' then
    redis.call('HSET', head, 'v', '1', 'seq', fmt(c), 'term', term, 'state', state,
      'id', id, 'kind', kind, 'meta', meta, 'parent', parent)
  else
    redis.call('HSET', head, 'v', '1', 'seq', fmt(c), 'term', term, 'state', state,
      'id', id, 'kind', kind, 'meta', meta)
  end
  if c > 0 then
    local entries, ids = {}, {}
    for j = 1, c do
      local s = fmt(j)
      local mid = ARGV[first + 2 * (j - 1)]
      entries[2 * j - 1] = s
      entries[2 * j] = ARGV[first + 2 * j - 1]
      if mid ~= '' then ids[#ids + 1] = mid; ids[#ids + 1] = s end
    end
    call_in_slices('HSET', log, entries)
    call_in_slices('HSET', mids, ids)
  end
end

-- The prelude of every script of task-store-redis, prepended to each
-- script's own source: formatting, the server's clock, calls in slices,
-- key type checks, the index entries, and the rules that every write
-- shares (retention and the expiry set). Data comes in through ARGV only,
-- never into the source.
--
-- Layout 2: a thread is one hash (its head fields; 'm:<seq>' for each
-- message; 'i:<message id>' for each message id, holding its sequence
-- number), and each shard has five sorted sets, which every write script
-- takes as KEYS[1..5], all in the shard's hash tag (one slot):
--
--   KEYS[1] kind         'kind\0id' of every thread
--   KEYS[2] parent       'parent\0kind\0id' of every thread with a parent
--   KEYS[3] open:kind    the same as 1, for open threads only
--   KEYS[4] open:parent  the same as 2, for open threads only
--   KEYS[5] expiring     'id\nkind\nparent' of finished threads with a
--                        TTL, scored by the time they expire (ms)
--
-- Ids, kinds and parents hold no control characters, so \0 separates them
-- and sorts before any of their bytes: one kind's (or one parent's, or one
-- parent and kind's) entries are one range, in id order.
--
-- Every script checks what it can before its first write: Redis does not
-- roll a script back when a command fails half-way.

-- unpack returns at most about 8000 values: long lists go to Redis in
-- slices (of pairs, so SLICE is even).
local SLICE = 1000

local IDX_KIND, IDX_PARENT, OPEN_KIND, OPEN_PARENT, EXPIRING = 1, 2, 3, 4, 5

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

-- The id as it appears in key names: the bytes %{}*?[]\: percent-encoded
-- (the same encoding as keys.rs).
local function encode(id)
  return (string.gsub(id, '[%%{}%*%?%[%]\\:]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end

-- The first of the shard's five sorted sets that holds something else, or
-- nil.
local function bad_index()
  for i = 1, 5 do
    local t = key_type(KEYS[i])
    if t ~= 'none' and t ~= 'zset' then return KEYS[i] end
  end
  return nil
end

-- The reply for a thread key that failed a read (caught with pcall): its
-- corruption when it holds something other than a hash; any other error
-- is the script's.
local function not_a_thread(key, reply)
  local t = key_type(key)
  if t == 'none' or t == 'hash' then error(reply['err']) end
  return {'corrupt', 'the thread key holds a ' .. t .. ', not a hash'}
end

-- Sorted-set entries a run adds or removes, written once per key at its
-- end (for one member the last wish counts, as if the items had run one
-- after another): index entries (score 0) and expiry-set entries (scored
-- by the time they expire).
local notes, noted = {}, {}

local function note(which, member, add)
  local of_key = notes[which]
  if of_key == nil then
    of_key = {order = {}, want = {}}
    notes[which] = of_key
    noted[#noted + 1] = which
  end
  if of_key.want[member] == nil then of_key.order[#of_key.order + 1] = member end
  of_key.want[member] = add
end

-- Writes the noted entries, last, so that every expiry recorded is at or
-- after its key's own: the entries of the expiry set are scored now + ttl,
-- the others 0.
local function flush_notes(ttl)
  local until_ms
  for _, which in ipairs(noted) do
    local of_key = notes[which]
    local add, remove = {}, {}
    for _, member in ipairs(of_key.order) do
      if of_key.want[member] then
        add[#add + 1] = 0
        add[#add + 1] = member
      else
        remove[#remove + 1] = member
      end
    end
    if which == EXPIRING and #add > 0 then
      until_ms = until_ms or now_ms() + ttl
      for k = 1, #add, 2 do add[k] = until_ms end
    end
    call_in_slices('ZADD', KEYS[which], add)
    call_in_slices('ZREM', KEYS[which], remove)
  end
end

-- A thread's entries in one pair of indexes (all threads, or open ones).
local function note_in(by_kind, by_parent, kind, parent, id, listed)
  note(by_kind, kind .. '\0' .. id, listed)
  if parent ~= '' then note(by_parent, parent .. '\0' .. kind .. '\0' .. id, listed) end
end

local function note_listed(kind, parent, id, listed)
  note_in(IDX_KIND, IDX_PARENT, kind, parent, id, listed)
end

local function note_open(kind, parent, id, open)
  note_in(OPEN_KIND, OPEN_PARENT, kind, parent, id, open)
end

local function expiry_entry(id, kind, parent) return id .. '\n' .. kind .. '\n' .. parent end

-- Applies the retention to a thread that a write leaves with the finished
-- mark `term`, having set the mark to `mark` ('' when it left it alone).
-- A finished thread's key expires `ttl` ms after this write and the expiry
-- set records it; a write without a retention of its own keeps an expiry
-- set earlier (writes to a hash keep its TTL); clearing the mark removes
-- the expiry. `fresh`: the key was created by this write.
local function retain(key, ttl, term, mark, entry, fresh)
  if term == '1' then
    if ttl > 0 then
      redis.call('PEXPIRE', key, ttl)
      note(EXPIRING, entry, true)
    end
  elseif mark ~= '' then
    if not fresh then redis.call('PERSIST', key) end
    note(EXPIRING, entry, false)
  end
end

-- Reads a thread for a write: HMGET of `fields` (head fields) and of the
-- ids of the c messages at ARGV[first..] (pairs of message id, '' for
-- none, and JSON). Returns a reply when the key holds the wrong type, else
-- nil, the values of `fields`, and the set of the message ids already in
-- the thread.
local function read_thread(key, fields, first, c)
  local ids = {}
  for j = first, first + 2 * c - 2, 2 do
    if ARGV[j] ~= '' then ids[#ids + 1] = ARGV[j] end
  end
  local nf = #fields
  local asked = {}
  for k = 1, nf do asked[k] = fields[k] end
  local head_slice = math.min(#ids, SLICE)
  for k = 1, head_slice do asked[nf + k] = 'i:' .. ids[k] end
  local cur = redis.pcall('HMGET', key, unpack(asked))
  if cur['err'] then return not_a_thread(key, cur) end
  local known = {}
  for k = 1, head_slice do
    if cur[nf + k] then known[ids[k]] = true end
  end
  for from = SLICE + 1, #ids, SLICE do
    local more = {}
    for k = from, math.min(from + SLICE - 1, #ids) do more[#more + 1] = 'i:' .. ids[k] end
    local found = redis.call('HMGET', key, unpack(more))
    for k = 1, #found do
      if found[k] then known[ids[from + k - 1]] = true end
    end
  end
  return nil, cur, known
end

-- Adds to `fields` (an HSET argument list) the c messages at ARGV[first..]
-- that are not `known`, numbered after `last_seq`, with their ids. Returns
-- appended, skipped, and the new last sequence number.
local function add_messages(fields, known, first, c, last_seq)
  local appended, skipped = 0, 0
  for j = first, first + 2 * c - 2, 2 do
    local mid = ARGV[j]
    if mid ~= '' and known[mid] then
      skipped = skipped + 1
    else
      last_seq = last_seq + 1
      appended = appended + 1
      local seq = fmt(last_seq)
      fields[#fields + 1] = 'm:' .. seq
      fields[#fields + 1] = ARGV[j + 1]
      if mid ~= '' then
        fields[#fields + 1] = 'i:' .. mid
        fields[#fields + 1] = seq
      end
    end
  end
  return appended, skipped, last_seq
end

-- The head of a thread whose version and sequence number were read as
-- `v` and `seq`: nil when valid, else the reply.
local function invalid_head(v, seq)
  v, seq = tonumber(v), tonumber(seq)
  if v == nil or v < 1 or seq == nil or seq < 0 then
    return {'corrupt', 'the head has no valid version or sequence number'}
  end
  return nil
end

-- Writes a fresh thread (its key is absent): version 1, the c messages at
-- ARGV[first..] numbered from 1 (no id twice).
local function write_fresh(key, id, term, state, kind, meta, parent, first, c)
  local fields = {'v', '1', 'seq', fmt(c), 'term', term, 'state', state,
    'id', id, 'kind', kind, 'meta', meta}
  if parent ~= '' then
    fields[#fields + 1] = 'parent'
    fields[#fields + 1] = parent
  end
  add_messages(fields, {}, first, c, 0)
  call_in_slices('HSET', key, fields)
end

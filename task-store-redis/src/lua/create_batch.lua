-- create_batch (and create, as a batch of one): creates fresh threads,
-- each all or nothing on its own, sharing the type checks of the index
-- keys and the index updates across the run.
--
-- The caller has done everything that does not need the server: ids are
-- valid and distinct within the run, and each thread's messages are those
-- a fresh log appends (repeated ids dropped), numbered from 1 in order.
--
-- KEYS: 1 the expiry set; 2 the open-by-kind and 3 the open-by-parent
-- index; 4 the index of all threads; 5..m+3 the other index keys of the
-- run's threads: one per kind, and per pair of parent and kind the
-- parent's index followed by the parent+kind index; then head, log, mids
-- of each thread, in order.
--
-- ARGV: 1 retention in ms ('0' for none); 2 m; 3 the number of threads n;
-- then per thread: id; finished mark ('0'/'1'); the position in KEYS of its
-- kind's index; the position of its parent's index ('0' for no parent; its
-- parent+kind index follows it); state JSON; kind; metadata JSON; parent
-- ('' for none); the message count c; then c pairs of message id ('' for
-- none) and message JSON.
--
-- Returns one status per thread, in order: 1 created, 0 the id is taken
-- (its head key exists, whatever its type), or the name of a key that is
-- not a sorted set (an index key of the thread, or the expiry set; nothing
-- was written for that thread).
--
-- Cost: per run, one TYPE per index key and one EXISTS over every thread
-- key (when none exists, which is the common case, no thread needs an
-- EXISTS or a DEL of its own); per thread, one HSET each of head, log and
-- mids (and with a retention one PEXPIRE each); per run again, one ZADD per
-- index key and one ZADD or ZREM on the expiry set. Field names and
-- sequence numbers are made here, to keep the arguments few: each argument
-- costs the server time to receive and to turn into a Lua string.

local expiring, open_kind, open_parent = KEYS[1], KEYS[2], KEYS[3]
local ttl = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local n = tonumber(ARGV[3])

-- Keys every thread of the run writes (or may write), then the others.
local shared_bad
for i = 1, 4 do
  if not_zset(KEYS[i]) then shared_bad = KEYS[i]; break end
end
local bad = {}
for i = 5, m + 3 do
  if not_zset(KEYS[i]) then bad[i] = true end
end
local base = m + 4
-- No key of any thread exists (the common case): every thread is fresh
-- and nothing was left behind, so none needs an EXISTS or a DEL of its own.
local clean = redis.call('EXISTS', unpack(KEYS, base, base + 3 * n - 1)) == 0

local out = {}
local p = 4
for i = 1, n do
  local id, term, kind_pos, parent_pos = ARGV[p], ARGV[p + 1], tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
  local state, kind, meta, parent = ARGV[p + 4], ARGV[p + 5], ARGV[p + 6], ARGV[p + 7]
  local c = tonumber(ARGV[p + 8])
  local first = p + 9
  p = first + 2 * c
  local at = base + 3 * (i - 1)
  local head, log, mids = KEYS[at], KEYS[at + 1], KEYS[at + 2]

  local status = 1
  if not clean and redis.call('EXISTS', head) == 1 then status = 0
  elseif shared_bad then status = shared_bad
  elseif bad[kind_pos] then status = KEYS[kind_pos]
  elseif parent_pos > 0 and bad[parent_pos] then status = KEYS[parent_pos]
  elseif parent_pos > 0 and bad[parent_pos + 1] then status = KEYS[parent_pos + 1] end

  if status == 1 then
    -- A missing head means a fresh thread: drop anything left behind.
    if not clean then redis.call('DEL', log, mids) end
    write_fresh(head, log, mids, id, term, state, kind, meta, parent, first, c)
    note(KEYS[4], id, true)
    note(KEYS[kind_pos], id, true)
    if parent_pos > 0 then
      note(KEYS[parent_pos], id, true)
      note(KEYS[parent_pos + 1], id, true)
    end
    if term == '0' then note_open(open_kind, open_parent, kind, parent, id, true) end
    retain(head, log, mids, expiring, ttl, term, term, id .. '\n' .. kind .. '\n' .. parent, true)
  end
  out[i] = status
end

flush_notes(expiring, ttl)
return out

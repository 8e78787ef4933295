-- create_batch (and create, as a batch of one): creates fresh threads of
-- one shard, each all or nothing on its own, sharing the type checks and
-- the index updates across the run.
--
-- The caller has done everything that does not need the server: ids are
-- valid, of this shard and distinct within the run, and each thread's
-- messages are those a fresh log appends (repeated ids dropped).
--
-- KEYS: 1..5 the shard's sorted sets (see the prelude); then the key of
-- each thread, in order.
--
-- ARGV: 1 retention in ms ('0' for none); 2 the number of threads n; then
-- per thread: id; finished mark ('0'/'1'); state JSON; kind; metadata
-- JSON; parent ('' for none); the message count c; then c pairs of message
-- id ('' for none) and message JSON.
--
-- Returns one status per thread, in order: 1 created, 0 the id is taken
-- (its key exists, whatever its type), or the name of a sorted set of the
-- shard that holds another type (nothing was written).
--
-- Cost per run: five TYPEs, one EXISTS over every thread key (when none
-- exists, the common case, no thread needs an EXISTS of its own), one ZADD
-- per sorted set that changed; per thread one HSET (and one PEXPIRE with a
-- retention, for a thread created finished).

local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local bad = bad_index()
local clean = redis.call('EXISTS', unpack(KEYS, 6, 5 + n)) == 0

local out = {}
local p = 3
for i = 1, n do
  local id, term, state, kind = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3]
  local meta, parent, c = ARGV[p + 4], ARGV[p + 5], tonumber(ARGV[p + 6])
  local first = p + 7
  p = first + 2 * c
  local key = KEYS[5 + i]
  local status = 1
  if not clean and redis.call('EXISTS', key) == 1 then status = 0
  elseif bad then status = bad end
  if status == 1 then
    write_fresh(key, id, term, state, kind, meta, parent, first, c)
    note_listed(kind, parent, id, true)
    if term == '0' then note_open(kind, parent, id, true) end
    retain(key, ttl, term, term, expiry_entry(id, kind, parent), true)
  end
  out[i] = status
end

flush_notes(ttl)
return out

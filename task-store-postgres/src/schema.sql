-- task-store-postgres, schema version 1.
--
-- `{s}` stands for the store's schema, as a quoted identifier. Every write
-- of the store is one statement: the batch create of the crate's
-- statements.rs, or a call of one of the functions below, each its own
-- transaction. Thread ids, kinds and parents are `text COLLATE "C"`, so
-- that ids sort in byte order, as the contract lists them. JSON values
-- (metadata, state, message bodies) are kept as the exact text the store
-- wrote, in `text` columns: `jsonb` would reorder keys, drop duplicates and
-- rewrite numbers, and `json` would parse every value once more on each
-- write (measured: about a sixth of the server's time per task) only to
-- keep the same text. Cast to `json`/`jsonb` to query inside them.

CREATE SCHEMA IF NOT EXISTS {s};

CREATE TABLE {s}.schema_version (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     integer NOT NULL,
    migrated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per thread: its head, and the messages its creating write
-- carried (its first log entries, sequence numbers 1 to `first_count`):
-- `first_ids` their ids joined by newlines (ids hold no control characters; an empty
-- line for a message without one), `first_log` their bodies as one JSON
-- array, exactly as written. A thread created with its messages (the task
-- layer writes a short task's whole life as one create) is then one row,
-- with no row or index entry per message. Later messages go to the
-- messages table, numbered on. `terminal` is the finished mark;
-- `expires_at` is set on finished threads when the store has a retention.
-- Room is left in each page so that an update that touches no indexed
-- column (a new state, an appended message) stays on its page (HOT) and
-- writes no index entry.
CREATE TABLE {s}.threads (
    id         text COLLATE "C" NOT NULL PRIMARY KEY,
    kind       text COLLATE "C" NOT NULL,
    parent_id  text COLLATE "C",
    metadata   text NOT NULL,
    state      text NOT NULL,
    version    bigint NOT NULL,
    last_seq   bigint NOT NULL,
    terminal   boolean NOT NULL,
    expires_at timestamptz,
    first_count bigint NOT NULL DEFAULT 0,
    first_ids  text,
    first_log  text
) WITH (fillfactor = 90);

-- Listing by kind and by parent, each in id order, so a page is one range
-- scan from the cursor. Listing by parent and kind reads the parent's index
-- and checks the kind, so it costs the parent's threads, as the contract
-- allows: a third index would cost every write, for listings whose parents
-- (the task layer's owners) hold threads of one kind anyway.
CREATE INDEX threads_by_kind ON {s}.threads (kind, id);
CREATE INDEX threads_by_parent ON {s}.threads (parent_id, id);

-- The open threads: partial indexes hold only threads whose finished mark
-- is not set, so listing open threads costs the open threads (and a thread
-- written finished costs them nothing). A write that sets or clears the
-- mark moves the row out of or into them in the same statement.
CREATE INDEX threads_open ON {s}.threads (id) WHERE NOT terminal;
CREATE INDEX threads_open_by_kind ON {s}.threads (kind, id) WHERE NOT terminal;
CREATE INDEX threads_open_by_parent ON {s}.threads (parent_id, id) WHERE NOT terminal;
CREATE INDEX threads_open_by_parent_kind ON {s}.threads (parent_id, kind, id) WHERE NOT terminal;

-- Finished threads by expiry, for the retention sweep.
CREATE INDEX threads_expiring ON {s}.threads (expires_at) WHERE expires_at IS NOT NULL;

-- The message logs past the first entries. A message id is unique within
-- its thread: the key of de-duplication here, and the append function
-- checks the first entries' ids too, under the thread's row lock. No
-- foreign key: every write that adds messages holds the thread's row, and
-- deleting a thread deletes its log in the same transaction, so the key's
-- per-row check would only cost.
CREATE TABLE {s}.messages (
    thread_id  text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,
    message_id text COLLATE "C",
    body       text NOT NULL,
    PRIMARY KEY (thread_id, seq),
    UNIQUE (thread_id, message_id)
);

-- When a write leaves a thread finished under a retention: now plus the
-- retention; otherwise never.
CREATE FUNCTION {s}.expiry(p_terminal boolean, p_retention_ms bigint)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_terminal AND p_retention_ms > 0
                THEN now() + p_retention_ms * interval '1 millisecond' END
$$;

-- Appends to the log of a thread whose row the caller holds locked: the
-- messages whose id is not in the log yet (neither among its first
-- entries, `p_first_ids`, nor in the messages table), numbered on from
-- `p_last_seq`. (The caller has dropped repeated ids within the list.)
-- Returns how many were appended. The lookup runs after the lock was
-- taken, in a statement of its own, so it sees every message committed
-- before.
CREATE FUNCTION {s}.append_messages(
    p_thread text, p_first_ids text, p_last_seq bigint, p_ids text[], p_bodies text[])
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_appended bigint;
BEGIN
    IF coalesce(cardinality(p_bodies), 0) = 0 THEN
        RETURN 0;
    END IF;
    INSERT INTO {s}.messages (thread_id, seq, message_id, body)
    SELECT p_thread, p_last_seq + row_number() OVER (ORDER BY m.ord), m.mid, m.body
    FROM unnest(p_ids, p_bodies) WITH ORDINALITY AS m (mid, body, ord)
    WHERE m.mid IS NULL
       OR (NOT m.mid = ANY (string_to_array(coalesce(p_first_ids, ''), E'\n'))
           AND NOT EXISTS (SELECT 1 FROM {s}.messages x
                           WHERE x.thread_id = p_thread AND x.message_id = m.mid));
    GET DIAGNOSTICS v_appended = ROW_COUNT;
    RETURN v_appended;
END
$$;

-- Applies appends in order, each on its own thread: the version check,
-- the messages, the state, the finished mark and the expiry. One result
-- row per item: 'n' (no such thread), 'c' (version conflict; the actual
-- version) or 'o' (applied; the version and last sequence number after
-- it, and how many messages were appended). Every thread of the batch is
-- locked first, in id order, so that concurrent batches cannot deadlock.
-- Item i's messages are the next p_counts[i] entries of p_msg_ids and
-- p_msg_bodies. A NULL expected version checks nothing; a NULL state or
-- mark keeps the stored one.
CREATE FUNCTION {s}.append_batch(
    p_ids text[], p_expected bigint[], p_states text[], p_terminals boolean[],
    p_counts integer[], p_msg_ids text[], p_msg_bodies text[], p_retention_ms bigint)
RETURNS TABLE (r_outcome text, r_version bigint, r_last_seq bigint, r_appended bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_first integer := 1;
    v_count integer;
    v_version bigint;
    v_last_seq bigint;
    v_first_ids text;
    v_appended bigint;
BEGIN
    PERFORM 1 FROM {s}.threads t WHERE t.id = ANY (p_ids) ORDER BY t.id FOR UPDATE;
    FOR i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        v_count := p_counts[i];
        SELECT t.version, t.last_seq, t.first_ids INTO v_version, v_last_seq, v_first_ids
        FROM {s}.threads t WHERE t.id = p_ids[i];
        IF NOT FOUND THEN
            r_outcome := 'n'; r_version := NULL; r_last_seq := NULL; r_appended := 0;
        ELSIF p_expected[i] IS NOT NULL AND p_expected[i] <> v_version THEN
            r_outcome := 'c'; r_version := v_version; r_last_seq := v_last_seq; r_appended := 0;
        ELSE
            v_appended := 0;
            IF v_count > 0 THEN
                v_appended := {s}.append_messages(
                    p_ids[i], v_first_ids, v_last_seq,
                    p_msg_ids[v_first : v_first + v_count - 1],
                    p_msg_bodies[v_first : v_first + v_count - 1]);
            END IF;
            IF p_states[i] IS NOT NULL OR p_terminals[i] IS NOT NULL OR v_appended > 0 THEN
                UPDATE {s}.threads t SET
                    state = coalesce(p_states[i], t.state),
                    terminal = coalesce(p_terminals[i], t.terminal),
                    version = t.version + 1,
                    last_seq = t.last_seq + v_appended,
                    expires_at = {s}.expiry(coalesce(p_terminals[i], t.terminal), p_retention_ms)
                WHERE t.id = p_ids[i] AND t.version = v_version
                RETURNING t.version, t.last_seq INTO v_version, v_last_seq;
            END IF;
            r_outcome := 'o'; r_version := v_version; r_last_seq := v_last_seq;
            r_appended := v_appended;
        END IF;
        RETURN NEXT;
        v_first := v_first + v_count;
    END LOOP;
END
$$;

-- Creates or replaces a thread without a precondition: kind, parent,
-- metadata, state and mark replaced, messages appended (skipping known
-- ids), version one up (1 for a new thread).
CREATE FUNCTION {s}.save_thread(
    p_id text, p_kind text, p_parent text, p_metadata text, p_state text,
    p_terminal boolean, p_msg_ids text[], p_msg_bodies text[], p_retention_ms bigint)
RETURNS TABLE (r_version bigint, r_last_seq bigint, r_appended bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_last_seq bigint;
    v_first_ids text;
BEGIN
    LOOP
        SELECT t.last_seq, t.first_ids INTO v_last_seq, v_first_ids
        FROM {s}.threads t WHERE t.id = p_id FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO {s}.threads (id, kind, parent_id, metadata, state, version, last_seq, terminal)
        VALUES (p_id, p_kind, p_parent, p_metadata, p_state, 0, 0, p_terminal)
        ON CONFLICT (id) DO NOTHING;
        IF FOUND THEN
            v_last_seq := 0;
            EXIT;
        END IF;
    END LOOP;
    r_appended := {s}.append_messages(p_id, v_first_ids, v_last_seq, p_msg_ids, p_msg_bodies);
    UPDATE {s}.threads t SET
        kind = p_kind, parent_id = p_parent, metadata = p_metadata,
        state = p_state, terminal = p_terminal,
        version = t.version + 1, last_seq = t.last_seq + r_appended,
        expires_at = {s}.expiry(p_terminal, p_retention_ms)
    WHERE t.id = p_id
    RETURNING t.version, t.last_seq INTO r_version, r_last_seq;
    RETURN NEXT;
END
$$;

-- Deletes a thread and its log. The log is deleted by a second statement,
-- after the row: it then sees every message a writer committed while it
-- waited for the row.
CREATE FUNCTION {s}.delete_thread(p_id text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {s}.threads WHERE id = p_id;
    DELETE FROM {s}.messages WHERE thread_id = p_id;
END
$$;

-- Deletes up to p_limit finished threads whose retention ran out, with
-- their logs; rows a writer holds are left for the next sweep. Returns how
-- many threads were deleted.
CREATE FUNCTION {s}.sweep_expired(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
BEGIN
    WITH gone AS (
        DELETE FROM {s}.threads
        WHERE id IN (SELECT id FROM {s}.threads
                     WHERE expires_at <= now()
                     ORDER BY expires_at LIMIT p_limit
                     FOR UPDATE SKIP LOCKED)
          AND expires_at <= now()
        RETURNING id)
    SELECT array_agg(id) INTO v_ids FROM gone;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM {s}.messages WHERE thread_id = ANY (v_ids);
    RETURN cardinality(v_ids);
END
$$;

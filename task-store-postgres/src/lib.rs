//! `PostgresStore`: the thread storage contract of [`task_store`] on
//! PostgreSQL, each write one statement and one transaction.
//!
//! Use it when tasks must outlive one process or be seen by several and the
//! service already runs PostgreSQL: task records then live in your database,
//! under your backups, beside the data they concern, with no Redis to run.
//! `task-store-redis` writes faster per server core; `task-store-memory` is
//! for one process that needs nothing to survive it. Code written against
//! `Arc<dyn ThreadStore>` works with any of them; `task-core` selects this
//! one with its `postgres` feature and `store::open("postgres://…")`.
//!
//! ```no_run
//! use std::time::Duration;
//! use serde_json::json;
//! use task_store::{ChangeSet, Thread, ThreadReader, ThreadWriter, VersionPrecondition};
//! use task_store_postgres::{PostgresStore, PostgresStoreOptions};
//!
//! # async fn demo() -> task_store::Result<()> {
//! let store = PostgresStore::connect_with(
//!     "postgres://tasks:secret@127.0.0.1:5432/app?schema=myapp_tasks",
//!     PostgresStoreOptions::default().with_retention(Some(Duration::from_secs(7 * 24 * 3600))),
//! )
//! .await?;
//!
//! let created = store
//!     .create(Thread::new("task:1", "task").with_parent("conversation-7"))
//!     .await?;
//! let done = ChangeSet::state(json!({ "status": "completed" })).with_terminal(true);
//! store
//!     .append("task:1", done, VersionPrecondition::Exact(created.version))
//!     .await?;
//! assert_eq!(store.load("task:1").await?.map(|head| head.version), Some(2));
//! # Ok(())
//! # }
//! ```
//!
//! # Connecting
//!
//! [`PostgresStore::connect`] takes `postgres://[user[:password]@]host[:port]/database`
//! (or `postgresql://…`) with libpq's parameters as `tokio-postgres` reads
//! them, plus `?schema=S` for the schema (default [`DEFAULT_SCHEMA`]).
//! [`PostgresStore::connect_with_config`] takes a `tokio_postgres::Config`
//! instead (Unix sockets, several hosts). TLS is not built in:
//! `sslmode=require` is refused with an error that says so.
//!
//! The store runs on a `deadpool-postgres` pool of `tokio-postgres`
//! connections shared by every clone of the store
//! ([`max_connections`](PostgresStoreOptions::max_connections)). Each
//! statement is prepared once per connection and reused. A connection that
//! the server closed (a restart, `pg_terminate_backend`) is dropped from
//! the pool and replaced on the next call; the call that met it fails with
//! a retryable error. Every call is bounded: the server cancels a statement
//! after [`statement_timeout`](PostgresStoreOptions::statement_timeout), and
//! the client gives up after
//! [`response_timeout`](PostgresStoreOptions::response_timeout) (closing
//! that connection), both as the retryable
//! [`Timeout`](task_store::ThreadStoreError::Timeout). As the contract says,
//! a write that failed with a retryable error may have been applied: retry
//! it as it was (versions and message ids make that safe).
//!
//! # Schema
//!
//! The store creates its tables and functions in its schema on connect, and
//! migrates them when a newer build connects: the schema records its
//! version, a migration runs in one transaction under an advisory lock on
//! the schema's name (so processes starting together migrate once), and a
//! store refuses to open a schema whose version is newer than it knows
//! ([`Unsupported`](task_store::ThreadStoreError::Unsupported)). Version 1,
//! for a schema `S` (functions, comments and the version table left out;
//! `src/schema.sql` holds all of it):
//!
//! ```sql
//! CREATE TABLE S.threads (
//!     id          text COLLATE "C" NOT NULL PRIMARY KEY,
//!     kind        text COLLATE "C" NOT NULL,
//!     parent_id   text COLLATE "C",
//!     metadata    text NOT NULL,          -- JSON, exactly as written
//!     state       text NOT NULL,          -- JSON, exactly as written
//!     version     bigint NOT NULL,
//!     last_seq    bigint NOT NULL,
//!     terminal    boolean NOT NULL,       -- the finished mark
//!     expires_at  timestamptz,            -- finished, under a retention
//!     first_count bigint NOT NULL DEFAULT 0,
//!     first_ids   text,                   -- the creating write's message ids
//!     first_log   text                    -- and bodies (a JSON array)
//! ) WITH (fillfactor = 90);
//! CREATE INDEX threads_by_kind ON S.threads (kind, id);
//! CREATE INDEX threads_by_parent ON S.threads (parent_id, id);
//! CREATE INDEX threads_open ON S.threads (id) WHERE NOT terminal;
//! CREATE INDEX threads_open_by_kind ON S.threads (kind, id) WHERE NOT terminal;
//! CREATE INDEX threads_open_by_parent ON S.threads (parent_id, id) WHERE NOT terminal;
//! CREATE INDEX threads_open_by_parent_kind ON S.threads (parent_id, kind, id) WHERE NOT terminal;
//! CREATE INDEX threads_expiring ON S.threads (expires_at) WHERE expires_at IS NOT NULL;
//! CREATE TABLE S.messages (
//!     thread_id  text COLLATE "C" NOT NULL,
//!     seq        bigint NOT NULL,
//!     message_id text COLLATE "C",
//!     body       text NOT NULL,           -- JSON, exactly as written
//!     PRIMARY KEY (thread_id, seq),
//!     UNIQUE (thread_id, message_id)
//! );
//! ```
//!
//! - Ids sort in byte order (`COLLATE "C"`), as the contract lists them;
//!   listing is one scan of an index from the cursor (`id > $after ORDER BY
//!   id LIMIT n + 1`). Listing by parent and kind reads the parent's index
//!   and checks the kind (the contract lets it cost the parent's threads):
//!   a third full index would cost every write.
//! - The open-threads index is the four partial indexes `WHERE NOT
//!   terminal`: a write that sets or clears the finished mark moves the row
//!   out of or into them in the same statement, so `open_only` listings
//!   cost the open threads, never the finished ones; a thread written
//!   finished costs them nothing.
//! - JSON is kept as the exact text the store wrote, in `text` columns, so
//!   that what is written reads back equal: `jsonb` would reorder keys and
//!   rewrite numbers, and `json` would parse every value once more on each
//!   write (measured: about a sixth of the server's time per task) only to
//!   keep the same text. Cast to `json`/`jsonb` to query inside it. The
//!   database must be UTF8.
//! - The messages a thread is created with are its first log entries and
//!   live in its row (`first_*`); later messages go to `messages`, numbered
//!   on. A thread created with its whole log (the task layer writes a short
//!   task's start and finish as one create) is thus one row: no row and no
//!   two index entries per message (measured: about 40% less WAL per task,
//!   and the largest single gain of `persist_postgres`).
//! - `(thread_id, message_id)` is the de-duplication key of `messages`; the
//!   append function also checks the first entries' ids, under the
//!   thread's row lock, so an id is never logged twice in a thread.
//! - There is no foreign key from messages to threads: every write that
//!   adds messages holds its thread's row, and deleting a thread deletes its
//!   log in the same transaction, so the key's per-row check would only
//!   cost.
//!
//! # Statements and round trips
//!
//! Every operation is one statement per call, so one transaction; the
//! writes' rules live in PL/pgSQL functions of the schema (the analogue of
//! Redis's scripts), whose data always comes as parameters. Batches are cut
//! into statements of 128 threads, spread over up to one connection per core
//! and pipelined on each, so a large batch costs one round trip per
//! connection and keeps every server core busy.
//!
//! | operation | round trips | what runs |
//! |---|---|---|
//! | `create`, `create_batch` | 1 (per connection used: one statement per 128 threads, pipelined) | `INSERT … SELECT FROM unnest(…) ORDER BY id ON CONFLICT (id) DO NOTHING RETURNING id`: each head with its messages as first log entries; taken ids come back missing and are `AlreadyExists` |
//! | `append`, `append_batch` | 1 (likewise, a thread's appends in one statement, in order) | `append_batch(…)`: locks the statement's rows in id order (`FOR UPDATE`), then per append, in order: the version check, the messages whose id is in neither the first entries nor `messages` (numbered on), the state, the mark and the expiry, in one `UPDATE … WHERE version = v` |
//! | `save` | 1 | `save_thread(…)`: lock or insert the row, then as an append that also replaces kind, parent and metadata |
//! | `load` | 1 | a primary-key read of the head |
//! | `load_messages` | 1 | the head's `last_seq`, its first entries while the cursor is before their end, and a page of `messages` (`seq > after ORDER BY seq LIMIT n`) by primary key |
//! | `list_threads` | 1 | a scan of the index of the filters (a partial one with `open_only`) |
//! | `delete` | 1 | `delete_thread(…)`: the row, then its log |
//! | `signal` | 1 | `pg_notify` |
//! | [`sweep_expired`](PostgresStore::sweep_expired) | 1 | `sweep_expired(…)`: up to n expired rows (`FOR UPDATE SKIP LOCKED`) and their logs |
//!
//! Concurrency: the version check and the write happen under the row's
//! lock in one statement, so of N concurrent `Exact(v)` writers exactly one
//! commits. A serialization failure or deadlock (the batch statements lock
//! in id order, so they should not deadlock one another) rolls the
//! statement back, and the store runs it again, up to three times, before
//! it reports a retryable `Unavailable`. The sessions run at `READ
//! COMMITTED` (set at connect), which the functions are written for: each
//! of their statements sees what committed before it, after the row lock
//! was taken.
//!
//! # Signals
//!
//! [`ThreadWriter::signals`](task_store::ThreadWriter::signals) is
//! LISTEN/NOTIFY on the channel `<schema>.signal`, the signal's name as the
//! payload. The first `watch` opens one more connection for `LISTEN`; it is
//! reconnected when lost, and every watcher is then woken once, as signals
//! may have been missed meanwhile. Signals are wake-ups only; polling stays
//! the fallback.
//!
//! # Errors
//!
//! PostgreSQL errors are mapped in one place, from their SQLSTATE: timeouts
//! (`57014` statement timeout, `55P03` lock timeout) are
//! [`Timeout`](task_store::ThreadStoreError::Timeout); a dropped or refused
//! connection, a server shutting down, crashed or starting up (`57P0x`,
//! class `08`), too many connections and a read-only standby are
//! [`Unavailable`](task_store::ThreadStoreError::Unavailable); both are
//! retryable. A wrong password or a missing privilege is
//! [`Authentication`](task_store::ThreadStoreError::Authentication). A row
//! that does not decode (metadata that is not an object, a negative
//! version) is [`Corrupt`](task_store::ThreadStoreError::Corrupt) for that
//! thread alone. Anything else is
//! [`Backend`](task_store::ThreadStoreError::Backend), not retryable.
//!
//! # Retention
//!
//! With [`PostgresStoreOptions::retention`] set, every write that leaves a
//! thread finished sets its `expires_at` to now plus the retention (so it
//! counts from the thread's last write), and clearing the mark clears it. A
//! background sweeper (every
//! [`sweep_interval`](PostgresStoreOptions::sweep_interval), 60 s by
//! default, while a clone of the store lives) deletes expired threads with
//! their logs. A finished thread is therefore kept at least its retention,
//! and is gone within one sweep interval after; until then it is listed and
//! loaded as usual.
//!
//! # In production
//!
//! - **A schema of its own**: the store creates `threads`, `messages`,
//!   `schema_version` and six functions in it. The role needs `CREATE` on
//!   the database (or an existing schema it owns) for the first connect and
//!   each migration, and only `USAGE` plus table rights after.
//! - **Durability**: with PostgreSQL's defaults (`fsync = on`,
//!   `synchronous_commit = on`) an acknowledged write survives a crash of
//!   the server or the machine. `synchronous_commit = off` can lose the last
//!   moments of writes on a crash, which the task layer's fencing tolerates
//!   but which loses outcomes.
//! - **Vacuum**: finished task rows are updated once and then only read;
//!   autovacuum's defaults suffice. With a retention, the sweeps delete in
//!   batches of 500.
//! - **Timeouts**: the statement timeout bounds every call; keep it above
//!   your slowest write (a batch of large states) and the response timeout
//!   above it.

mod batch;
mod codec;
mod conn;
mod error;
mod options;
mod schema;
mod signals;
mod statements;
mod store;

pub use options::{DEFAULT_SCHEMA, MAX_SCHEMA_LEN, PostgresStoreOptions};
pub use store::{APPLICATION_NAME, PostgresStore};

//! `RedisStore`: the thread storage contract of [`task_store`] on Redis or
//! Valkey, each write one atomic Lua script.
//!
//! Use it when tasks must outlive one process or be seen by several: many
//! service replicas sharing one set of tasks, or tasks whose outcome must be
//! found again after a restart. For one process that only needs its tasks in
//! memory, `task-store-memory` is simpler and faster. Code written against
//! `Arc<dyn ThreadStore>` works with either; `task-core` selects this one with
//! its `redis` feature and `store::open("redis://…")`.
//!
//! ```no_run
//! use std::time::Duration;
//! use serde_json::json;
//! use task_store::{ChangeSet, Thread, ThreadReader, ThreadWriter, VersionPrecondition};
//! use task_store_redis::{RedisStore, RedisStoreOptions};
//!
//! # async fn demo() -> task_store::Result<()> {
//! let store = RedisStore::connect_with(
//!     "redis://tasks:secret@127.0.0.1:6379/0?prefix=myapp",
//!     RedisStoreOptions::default().with_retention(Some(Duration::from_secs(7 * 24 * 3600))),
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
//! [`RedisStore::connect`] takes `redis://[user][:password@]host[:port][/db]`
//! (ACL user and password, or just a password), `rediss://…` for TLS with the
//! crate feature `tls` (without it, `rediss://` is refused with an error that
//! names the feature to enable), or `redis+unix:///path`.
//!
//! Query parameters:
//!
//! | parameter | meaning | example |
//! |---|---|---|
//! | `prefix` | the key prefix (default [`DEFAULT_PREFIX`]) | `?prefix=myapp` |
//! | `retention` | how long a finished thread is kept after its last write: a positive whole number and a unit, `ms`, `s`, `m`, `h` or `d`; a bare number is seconds (default: kept until deleted) | `?retention=7d` |
//! | `protocol` | passed to `redis-rs`: `resp2` (default) or `resp3` | `?protocol=resp3` |
//! | `db`, `user`, `pass` | passed to `redis-rs`, for `redis+unix://` only | `?db=2` |
//!
//! Any other parameter is refused with an error that names it, so a typo
//! such as `?prefx=…` never falls back to the shared default prefix
//! silently. The URL's parameters override the same fields of
//! [`RedisStoreOptions`], which also sets the connect and response
//! timeouts and the reconnection policy. So `task_core::store::open(
//! "redis://127.0.0.1:6379/0?prefix=myapp&retention=7d")` opens a store
//! under `myapp` that keeps finished tasks for a week.
//!
//! The store runs on one `redis::aio::ConnectionManager`: a multiplexed
//! connection shared by every clone of the store, that reconnects by itself.
//! Commands fail after the response timeout with a retryable
//! [`Timeout`](task_store::ThreadStoreError::Timeout); a dropped or refused
//! connection gives a retryable
//! [`Unavailable`](task_store::ThreadStoreError::Unavailable) after a few
//! quick reconnection attempts, and the next call reconnects again. As the
//! contract says, a write that failed with a retryable error may have been
//! applied: retry it as it was (versions and message ids make that safe).
//!
//! # Features
//!
//! - `tls`: `rediss://` URLs, through rustls (ring), with server certificates
//!   checked against the system's roots.
//! - `tls-insecure`: also accepts `rediss://…#insecure`, which skips the
//!   certificate check; for tests against self-signed certificates only.
//!
//! # Errors
//!
//! Redis errors are mapped in one place: timeouts are
//! [`Timeout`](task_store::ThreadStoreError::Timeout); dropped or refused
//! connections and the server's "not now" answers (`LOADING` after a
//! restart, `BUSY`, `READONLY` after a failover, `TRYAGAIN`, `MASTERDOWN`)
//! are [`Unavailable`](task_store::ThreadStoreError::Unavailable); both are
//! retryable. A refused password (`WRONGPASS`, `NOAUTH`) or an ACL refusal
//! (`NOPERM`, such as a key outside the user's pattern) is
//! [`Authentication`](task_store::ThreadStoreError::Authentication). A key of
//! the wrong type or a record that does not decode is
//! [`Corrupt`](task_store::ThreadStoreError::Corrupt) for that thread alone.
//! Anything else (`OOM`, a script error) is
//! [`Backend`](task_store::ThreadStoreError::Backend), not retryable.
//!
//! # Key layout
//!
//! Every key starts with the prefix `P`. Ids become part of key names only
//! percent-encoded: `%`, `{`, `}`, `*`, `?`, `[`, `]`, `\` and `:` turn into
//! `%XX` (the encoding is injective, so two ids never share a key), so no id
//! can move a hash tag, widen a `SCAN`/ACL pattern or step outside the prefix.
//! Ids are first checked by [`task_store::validate_id`]. Written `E(x)` for the
//! encoded `x`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{E(id)}:head` | hash | `v` version, `seq` last sequence number, `kind`, `parent` (absent for none), `meta` (JSON object), `state` (JSON), `term` (`0`/`1`), `id` |
//! | `P:{E(id)}:log` | hash | sequence number → message JSON `{"id":…, "body":…}` |
//! | `P:{E(id)}:mids` | hash | message id → its sequence number, for de-duplication |
//! | `P:idx:all` | sorted set | every thread id, score 0 |
//! | `P:idx:kind:E(kind)` | sorted set | ids of one kind, score 0 |
//! | `P:idx:parent:E(parent)` | sorted set | ids of one parent, score 0 |
//! | `P:idx:pk:E(parent):E(kind)` | sorted set | ids of one parent and kind, score 0 |
//! | `P:idx:open:kind` | sorted set | `kind\0id` of every open thread (finished mark not set), score 0 |
//! | `P:idx:open:parent` | sorted set | `parent\0kind\0id` of every open thread with a parent, score 0 |
//! | `P:idx:expiring` | sorted set | `id\nkind\nparent` of finished threads with a TTL, scored by their expiry time (ms) |
//!
//! The three keys of a thread share the hash tag `{E(id)}`, so they live in
//! one slot. The open index is kept exact in the same script as the finished
//! mark: every write that sets the mark removes the thread's entries, every
//! write that clears it (or creates or saves an open thread) adds them, and
//! `delete` removes them with the thread; `\0` cannot occur in an id, kind
//! or parent (control characters are refused) and sorts before every other
//! byte, so one kind's, one parent's, or one parent and kind's open threads
//! are one range in id order, and an open listing costs the open threads,
//! never the finished ones. Index members are the raw ids, all with score 0, so
//! `ZRANGEBYLEX` returns them in ascending byte order and the listing cursor
//! (the last id seen) is an exclusive `(` bound.
//!
//! # Scripts and round trips
//!
//! The scripts live in `src/lua/` beside the crate's modules, each file
//! prefixed with a shared prelude (`prelude.lua`: the server's clock, calls
//! in slices, type checks, retention and the message rules every write
//! shares). All data goes to the scripts through `ARGV`, never into their
//! source; the scripts are loaded on connect (`SCRIPT LOAD`) and run by
//! SHA1, reloaded when the server answers `NOSCRIPT` (after a restart). Each
//! script checks the types of its keys before its first write, because
//! Redis does not roll a script back when a command fails half-way.
//! `create` is a `create_batch` of one and `append` an `append_batch` of
//! one, so each rule of a write is written once.
//!
//! | operation | round trips | what runs |
//! |---|---|---|
//! | `create` | 1 | the batch create script with one thread |
//! | `save` | 1 | the save script: existence check, head, messages with id de-duplication, finished mark and TTL, and the index entries (a `save` that changes kind or parent re-runs once with the old index keys) |
//! | `append` | 1 | the batch append script with one append, on the thread's three keys (indexes do not change) |
//! | `append_batch` | 1 per 1024 appends | one pipeline of runs of the batch append script, each applying up to 128 appends (the further appends of a thread join the run of its first, in order), each all or nothing on its own: the head read with one `HMGET`, a message id looked up with one `HEXISTS` (or the item's ids with one `HMGET`), one `HSET` each of log, mids and head, the TTLs of the retention, and the expiry set written once per run (a second round only for scripts the server had forgotten) |
//! | `create_batch` | 1 per 1024 threads | one pipeline of runs of the batch create script, each creating up to 128 threads, each thread all or nothing on its own: the index keys' types checked once per run, one `EXISTS` proving the run's threads fresh, one `HSET` each of a thread's head, log and mids, one `ZADD` per index key for the whole run (a second round only for scripts the server had forgotten) |
//! | `load` | 1 | `HMGET` of the head |
//! | `load_messages` | 1 | a read script: head check and `HMGET` of the page |
//! | `list_threads` with `open_only` | 1 | a read script on the open index: one `ZRANGEBYLEX` for a kind or a parent and kind, one per kind (found by jumping from kind to kind) for a parent or for every open thread |
//! | `list_threads` | 2 (+1) | `ZRANGEBYLEX` of the index, a pipeline of `HMGET kind parent` to drop entries of gone threads (+ a prune script when there were any) |
//! | `delete` | 1 + 1 per index | a script deleting the thread's keys, then a conditional prune of each of its index entries |
//! | [`sweep_expired`](RedisStore::sweep_expired) | 2 + 1 per index touched | the due entries of the expiry set, a conditional prune per index, then forgetting the swept entries |
//!
//! # Retention
//!
//! With [`RedisStoreOptions::retention`] set, every write that leaves a
//! thread marked finished ([`ChangeSet::terminal`](task_store::ChangeSet))
//! sets the TTL of its three keys (all to the same instant, in the same
//! script, so the retention counts from the thread's last write) and records
//! the thread in `P:idx:expiring`; clearing the mark removes both (`PERSIST`).
//! Index entries cannot carry a TTL of their own (a sorted set member has
//! none), so they are cleaned two ways:
//!
//! - `list_threads` checks every entry it returns against its head (present,
//!   and still of the index's kind and parent) and removes stale ones with a
//!   conditional script, so an expired or moved thread is never listed;
//! - a background sweeper (every [`RedisStoreOptions::sweep_interval`],
//!   60 s by default, while any clone of the store lives) runs
//!   [`RedisStore::sweep_expired`], which removes the index entries of the
//!   threads whose expiry has passed, so indexes nobody lists do not keep
//!   entries of expired threads for longer than one interval.
//!
//! Removal always re-checks the head in the same script, so the entry of a
//! thread recreated under the same id is never dropped by mistake.
//!
//! # Redis Cluster
//!
//! A thread's own keys are always in one slot, so every write of a thread's
//! data is one script on one node. On a single node (or a primary with
//! replicas) the same script also updates the indexes. Under Redis Cluster
//! the index keys hash to other slots, which a script may not touch; there
//! the index entries are written in a second step after the thread's script
//! (`ZADD` on create/save, the conditional prune after delete), and listing
//! stays correct because it never trusts an index entry alone: each listed id
//! is checked against its head, so an entry left behind by a crash between
//! the two steps is filtered and cleaned, and a thread whose entry is not yet
//! written is only missing from listings for that moment. This crate connects
//! to a single endpoint today; the cluster mode of the layout is the step
//! above, with the write scripts unchanged. The batch scripts are the
//! exception: one run writes the keys of many threads, so under Cluster
//! their runs would be grouped by slot (or fall back to one write script per
//! thread).
//!
//! # In production
//!
//! - **Eviction**: set `maxmemory-policy noeviction`. Any evicting policy can
//!   silently drop a thread's keys or index entries; with `noeviction` a full
//!   server refuses writes instead (an `OOM` error, not retryable).
//! - **Durability**: enable AOF. With `appendfsync always` no acknowledged
//!   write is lost when one node crashes; with `everysec` up to about a second
//!   of writes can be. Replication is asynchronous: a failover may bring back
//!   an older state, which the task layer's version and attempt checks
//!   (fencing) tolerate.
//! - **ACL**: give the service its own user restricted to its prefix, for
//!   example `ACL SETUSER tasks on >secret ~myapp:* -@all +@read +@write
//!   +@scripting -@dangerous`, and put the user in the URL. Prefixes may not
//!   hold glob characters, so `~P:*` matches exactly the store's keys; do not
//!   use one store's prefix followed by `:` as another store's prefix.
//! - **TLS**: build with the feature `tls` and connect with `rediss://`; the
//!   server certificate is checked against the system's roots.
//! - **Timeouts**: the response timeout bounds every call; keep it above the
//!   slowest write you make (a change set with many large messages) and well
//!   below the time your callers can wait.

mod batch;
mod codec;
mod conn;
mod error;
mod keys;
mod listing;
mod options;
mod reply;
mod retention;
mod scripts;
mod signals;
mod store;
mod url;

pub use options::{DEFAULT_PREFIX, RedisStoreOptions};
pub use store::RedisStore;

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
//! [`RedisStore::connect`] takes, for one server,
//! `redis://[user][:password@]host[:port][/db]` (ACL user and password, or
//! just a password), `rediss://…` for TLS with the crate feature `tls`
//! (without it, `rediss://` is refused with an error that names the
//! feature to enable), or `redis+unix:///path`; and for a Redis Cluster,
//! `redis+cluster://[user][:password@]host:port[,host:port…][/][?params]`
//! (`rediss+cluster://…` for TLS): the seed nodes, any of the cluster's
//! nodes, from which the client learns the whole topology. For example:
//!
//! ```text
//! redis+cluster://tasks:secret@10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000/?prefix=myapp&wait=1
//! ```
//!
//! A malformed cluster URL is refused with an error that says what is
//! wrong: an empty seed, a seed without a port, a path (a cluster has no
//! database number).
//!
//! Query parameters:
//!
//! | parameter | meaning | example |
//! |---|---|---|
//! | `prefix` | the key prefix (default [`DEFAULT_PREFIX`]) | `?prefix=myapp` |
//! | `retention` | how long a finished thread is kept after its last write: a positive whole number and a unit, `ms`, `s`, `m`, `h` or `d`; a bare number is seconds (default: kept until deleted) | `?retention=7d` |
//! | `shards` | how many shards a new store has, 1 to 1024 (default 1 on one server, 16 on a cluster); see [Key layout](#key-layout) | `?shards=32` |
//! | `wait` | how many replicas must acknowledge each write (default 0); see [In production](#in-production) | `?wait=1` |
//! | `wait_timeout` | how long a write waits for them (default 200 ms) | `?wait_timeout=500ms` |
//! | `protocol` | passed to `redis-rs`: `resp2` (default) or `resp3`; one server only | `?protocol=resp3` |
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
//! On one server the store runs on one `redis::aio::ConnectionManager`: a
//! multiplexed connection shared by every clone of the store, that
//! reconnects by itself. On a cluster it runs on `redis-rs`'s cluster
//! connection (`redis::cluster_async`): a multiplexed connection to each
//! master, routing each script to the master of its slot, following
//! `MOVED` and `ASK` during a slot migration and finding the new topology
//! after a failover by itself. Commands fail after the response timeout
//! with a retryable [`Timeout`](task_store::ThreadStoreError::Timeout); a
//! dropped or refused connection, a cluster that is down or a slot in the
//! middle of a migration (`CLUSTERDOWN`, `TRYAGAIN`) gives a retryable
//! [`Unavailable`](task_store::ThreadStoreError::Unavailable) after a few
//! quick attempts, and the next call tries again. As the contract says, a
//! write that failed with a retryable error may have been applied: retry
//! it as it was (versions and message ids make that safe).
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
//! connections, writes too few replicas acknowledged, and the server's
//! "not now" answers (`LOADING` after a restart, `BUSY`, `READONLY` after
//! a failover, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`) are
//! [`Unavailable`](task_store::ThreadStoreError::Unavailable); both are
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
//! Layout 2. Every key starts with the prefix `P`. Ids become part of key
//! names only percent-encoded: `%`, `{`, `}`, `*`, `?`, `[`, `]`, `\` and `:`
//! turn into `%XX` (the encoding is injective, so two ids never share a
//! key), so no id can move a hash tag, widen a `SCAN`/ACL pattern or step
//! outside the prefix. Ids are first checked by [`task_store::validate_id`].
//!
//! The store has `S` shards (1 by default on one server, 16 on a cluster;
//! chosen when the store is created, recorded, and fixed from then on). A
//! thread belongs to shard `FNV-1a-64(id) mod S`, and everything of a shard
//! shares the shard's hash tag `T`, so it lives in one slot: the thread's
//! own key *and the indexes it is listed in*. Every write is therefore one
//! script on one slot, index entries included, exact and atomic on a
//! single server and on a cluster alike. Shard `i`'s tag is the first
//! `i.j` (`j` = 0, 1, …) whose slot lies in the `i`-th of `S` equal parts of
//! the 16,384 slots, so the shards spread over a cluster's masters as
//! evenly as the slots do (`T` is `0.0` for a store of one shard).
//! Written `E(x)` for the encoded `x`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:layout` | string | `layout=2 shards=S` |
//! | `P:{T}:t:E(id)` | hash | the head: `v` version, `seq` last sequence number, `kind`, `parent` (absent for none), `meta` (JSON object), `state` (JSON), `term` (`0`/`1`), `id`; the log: `m:<seq>` → message JSON `{"id":…, "body":…}`; the message ids: `i:<message id>` → its sequence number |
//! | `P:{T}:kind` | sorted set | `kind\0id` of every thread of the shard |
//! | `P:{T}:parent` | sorted set | `parent\0kind\0id` of every thread of the shard with a parent |
//! | `P:{T}:open:kind` | sorted set | the same as `kind`, for open threads (finished mark not set) |
//! | `P:{T}:open:parent` | sorted set | the same as `parent`, for open threads |
//! | `P:{T}:expiring` | sorted set | `id\nkind\nparent` of finished threads with a TTL, scored by their expiry time (ms) |
//!
//! Index members are scored 0, so `ZRANGEBYLEX` returns them in byte
//! order; `\0` cannot occur in an id, kind or parent (control characters
//! are refused) and sorts before every other byte, so one kind's, one
//! parent's, or one parent and kind's threads are one range in id order,
//! and every thread of a kind is found by jumping from kind to kind. A
//! listing reads that range in every shard (one script each, all sent at
//! once) and merges the pages by id; an open listing costs the open
//! threads, never the finished ones. The listing cursor (the last id seen)
//! is an exclusive bound.
//!
//! **Why shard by id, not by owner.** Putting a task with its owner's
//! indexes (a tag per owner) would make a listing by owner one slot, but a
//! `load(id)` does not know the owner, and one busy owner would put all its
//! writes on one master. With shards by id, a batch of writes splits into
//! one script per shard (up to `S` scripts, sent at once, to whichever
//! masters hold them), no key takes every write, and a listing costs `S`
//! range reads. More shards spread writes over more masters and cost more
//! per listing: keep `S` at a few per master.
//!
//! A store of the earlier layout 1 (`P:{E(id)}:head`, `P:idx:all`, …) is
//! refused at connect with an error that says what to do (let its tasks
//! finish with the earlier version and delete its keys, or use another
//! prefix): this version never misreads it.
//!
//! # Scripts and round trips
//!
//! The scripts live in `src/lua/` beside the crate's modules, each file
//! prefixed with a shared prelude (`prelude.lua`: the server's clock, calls
//! in slices, type checks, the index entries, retention, and the message
//! rules every write shares). All data goes to the scripts through `ARGV`,
//! never into their source; the scripts are loaded on connect (`SCRIPT
//! LOAD`, on every master of a cluster) and run by SHA1, reloaded when a
//! server answers `NOSCRIPT` (after a restart or a failover). Each script
//! checks the types of its keys before its first write, because Redis does
//! not roll a script back when a command fails half-way. `create` is a
//! `create_batch` of one and `append` an `append_batch` of one, so each
//! rule of a write is written once.
//!
//! | operation | round trips | what runs |
//! |---|---|---|
//! | `create` | 1 | the batch create script with one thread |
//! | `save` | 1 | the save script: the thread's hash, and its index entries moved with its kind, parent and mark |
//! | `append` | 1 | the batch append script with one append |
//! | `append_batch` | 1 per 8 runs | runs of the batch append script, one shard each, up to 128 appends each (the further appends of a thread join the run of its first, in order), each append all or nothing on its own: one `HMGET` (head fields and the message ids asked about) and one `HSET` per append, one `ZADD`/`ZREM` per changed index per run; the runs of a round trip go as one pipeline per slot, all at once |
//! | `create_batch` | 1 per 8 runs | runs of the batch create script, one shard each, up to 128 threads each, each thread all or nothing on its own: one `EXISTS` proving the run's threads fresh, one `HSET` per thread, one `ZADD` per index per run |
//! | `load` | 1 (2 when no head is found) | `HMGET` of the head fields; when it finds none, the read script tells an absent thread from a hash that lost its head (corrupt) |
//! | `load_messages` | 1 | a read script: the head's sequence number and `HMGET` of the page |
//! | `list_threads` | 1 (one script per shard, at once) | `ZRANGEBYLEX` of the index range, one per kind when the query has no kind; entries of expired threads are skipped and removed |
//! | `delete` | 1 | the delete script: the thread's key and its index entries (of a corrupt thread, which does not name its kind and parent, found by a pass over the shard's sorted sets) |
//! | [`sweep_expired`](RedisStore::sweep_expired) | 1 per shard | the sweep script |
//!
//! A task's life (create, then finish with one message) costs the server
//! one `HSET` to create, one `HMGET` and one `HSET` to finish, and its share
//! of one `ZADD` per index per run (`BENCHMARKS.md` has the measured server
//! time per task).
//!
//! # Retention
//!
//! With [`RedisStoreOptions::retention`] set, every write that leaves a
//! thread marked finished ([`ChangeSet::terminal`](task_store::ChangeSet))
//! sets the TTL of its key (so the retention counts from the thread's last
//! write) and records the thread in its shard's expiry set; clearing the
//! mark removes both (`PERSIST`). Index entries cannot carry a TTL of their
//! own (a sorted set member has none), so they are cleaned two ways:
//!
//! - `list_threads` checks every entry it returns against the thread's key
//!   in the same script, and removes those of threads that are gone, so an
//!   expired thread is never listed;
//! - a background sweeper (every [`RedisStoreOptions::sweep_interval`],
//!   60 s by default, while any clone of the store lives) runs
//!   [`RedisStore::sweep_expired`], which removes the index entries of the
//!   threads whose expiry has passed, so indexes nobody lists do not keep
//!   entries of expired threads for longer than one interval.
//!
//! Both run in one script with the thread's key, so the entry of a thread
//! recreated under the same id is never dropped by mistake.
//!
//! # Redis Cluster
//!
//! Connect with `redis+cluster://` (see [Connecting](#connecting)). Every
//! script touches the keys of one shard, so one slot; batches are split by
//! shard, and the runs of different shards go to their masters at once.
//! Signals use Redis 7's sharded pub/sub (`SPUBLISH` on the channel's own
//! slot, `SSUBSCRIBE` on one shared RESP3 connection per store). After a
//! lost connection the store subscribes every watched channel again until
//! it succeeds, on whichever master now holds its slot: after a master was
//! SIGKILLed, signals reached a watch made before within about a second of
//! its replica taking over. Signals sent meanwhile are lost; the task
//! layer's inbox poll remains the fallback for them. Slot migrations (`MOVED`, `ASK`) are followed by the client; a
//! script whose keys are half-migrated is refused by the server with
//! `TRYAGAIN`, which is a retryable `Unavailable` (the script did not run).
//! Since a shard's threads and indexes share its slot, a shard's writes
//! pause while its slot migrates, and go on once it has moved: about as
//! long as the migration itself, which `MIGRATE` in batches of 100 keys
//! took here at roughly 12 µs a thread (a shard of 10,000 threads: a 137 ms
//! migration, the longest pause between two writes 124 ms; 30,000: 336 and
//! 349 ms). A store with more shards (`?shards=`, chosen when it is
//! created) has fewer threads in each, so shorter pauses.
//! A master that is down makes its slots fail with retryable errors until
//! its replica takes over.
//!
//! # In production
//!
//! - **Eviction**: set `maxmemory-policy noeviction`. Any evicting policy can
//!   silently drop a thread's keys or index entries; with `noeviction` a full
//!   server refuses writes instead (an `OOM` error, not retryable).
//! - **Durability**: enable AOF. With `appendfsync always` no acknowledged
//!   write is lost when one node crashes; with `everysec` up to about a
//!   second of writes can be.
//! - **Replication and failover**: Redis replicates asynchronously. When a
//!   primary dies, its replica takes over with what it had received, so
//!   the writes of the primary's last moments (acknowledged to the store)
//!   can be lost: a task's finish can go back to running, which the task
//!   layer's recovery then treats as a task that died with its process.
//!   With `?wait=N` ([`RedisStoreOptions::wait_for_replicas`]) every write
//!   waits until `N` replicas acknowledged it (`WAIT`), and a write too few
//!   replicas acknowledged within `wait_timeout` fails with a retryable
//!   error, so no write reported done is lost when one primary dies and a
//!   replica that acknowledged it takes over. It costs a replication round
//!   trip per write batch. (`WAIT` does not make Redis strongly consistent:
//!   a failover to a replica that had not acknowledged, which Redis allows
//!   when a replica's data is fresh enough, can still lose a write.)
//! - **ACL**: give the service its own user restricted to its prefix, for
//!   example `ACL SETUSER tasks on >secret ~myapp:* -@all +@read +@write
//!   +@scripting -@dangerous`, and put the user in the URL. Prefixes may not
//!   hold glob characters, so `~P:*` matches exactly the store's keys; do not
//!   use one store's prefix followed by `:` as another store's prefix.
//!   Signals publish on channels under `P:signal:`; where channels are
//!   restricted (Redis 7's default for new users), add `&myapp:signal:*`.
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

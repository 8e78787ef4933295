//! Background tasks owned by conversation threads: spawn work, watch it,
//! wait for it, cancel it with everything it spawned, and find its outcome
//! again after a crash.
//!
//! Use this crate when work outlives the call that started it (a shell
//! command, a sub-agent run, a fetch, an indexing job) and its owner must be
//! able to see and control it. `tokio::spawn` gives a handle and nothing
//! else; a job queue gives durability behind a broker but knows nothing of
//! owners, task trees or in-process cancellation. This crate gives both
//! sides: a live registry ([`BackgroundTaskManager`]) whose transitions are
//! persisted off the spawn path into any thread store ([`TaskStore`] over
//! `task_store::ThreadStore`): in process memory by default, or Redis with
//! the `redis` feature.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use task_core::{BackgroundTaskManager, TaskResult, TaskStatus, TaskStore};
//!
//! let store = task_core::store::open("memory://").await?;
//! let tasks = Arc::new(TaskStore::new(store));
//! let manager = BackgroundTaskManager::builder().task_store(tasks.clone()).build();
//!
//! let id = manager
//!     .spawn("thread-1", "shell", "sleep until cancelled", |ctx| async move {
//!         ctx.cancelled().await;
//!         TaskResult::Cancelled
//!     })
//!     .await?;
//! manager.cancel("thread-1", &id).await?;
//! let done = manager.wait("thread-1", &id).await.expect("known task");
//! assert_eq!(done.status, TaskStatus::Cancelled);
//!
//! manager.flush().await; // every transition is durable now
//! let record = tasks.load_task(&id).await?.expect("persisted");
//! assert_eq!(record.status, TaskStatus::Cancelled);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - A task that panics ends `failed` with the panic message; one that
//!   ignores its cancellation is dropped after the cancel grace and ends
//!   `cancelled`; one whose runtime shuts down under it ends `stopped` or
//!   `failed`. No task stays `running` after its future is gone.
//! - Terminal outcomes are write-once; every durable change is a transition
//!   of the pure state machine in [`state`], written with a version
//!   precondition and retried on conflict; a write of an older attempt is
//!   refused, and an id never changes owner.
//! - The store is never on the spawn path: transitions reach it through an
//!   ordered, bounded outbox per task, retried with backoff (one probe at a
//!   time while the store fails); a failure or a late write shows as
//!   `persistence_error`, and [`BackgroundTaskManager::flush`] waits for
//!   what was queued before it.
//! - Whatever is accepted round-trips exactly through every store; what
//!   cannot (ids too long, JSON nested deeper than [`MAX_JSON_DEPTH`]) is
//!   refused at the boundary with an error that names the field and its
//!   limit.
//!
//! # One process or several
//!
//! A manager with a task store is single-process unless it is given an
//! instance id (see [`BackgroundTaskManagerBuilder`]): it answers from
//! memory and only writes the store. A multi-process manager also holds a
//! lease on the tasks it runs (one renewal write per period for all of
//! them), reads an inbox of requests from other processes, and reaches
//! their tasks: `cancel`, `cancel_tree`, `get`, `wait`,
//! [`watch_owner`](BackgroundTaskManager::watch_owner), `resume`.
//! [`BackgroundTaskManager::recover`] turns the running tasks of a process
//! that stopped renewing into `stopped` or `failed`, and resumes the
//! stopped ones whose type has a handler here. Recovery and remote control
//! read the store's index of open records: they cost the live work, never
//! the history. See `ARCHITECTURE.md` for the lease protocol and its failure
//! cases.
//!
//! # Policies
//!
//! Concurrency limits (per owner, per task type), timeouts, retries and
//! handlers by task type make the manager a job system where one is wanted;
//! see [`policy`].
//!
//! # Features
//!
//! - `memory` (default): re-exports `MemoryStore`; [`store::open`] accepts
//!   `memory://` with or without it.
//! - `redis`: re-exports `RedisStore` and lets [`store::open`] accept
//!   `redis://` URLs (one node, or a primary with replicas) and
//!   `redis+cluster://host:port,host:port/` (a Redis Cluster); with `tls`
//!   also `rediss://` and `rediss+cluster://`.
//! - `postgres`: re-exports `PostgresStore` and lets [`store::open`] accept
//!   `postgres://` and `postgresql://` URLs.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod events;
mod manager;
mod model;
pub mod policy;
mod protocol;
mod records;
pub mod state;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod validate;

pub use error::TaskError;
pub use events::{TaskEvent, TaskEventKind};
pub use manager::core::task::TaskContext;
pub use manager::{
    BackgroundTaskManager, BackgroundTaskManagerBuilder, DEFAULT_CANCEL_GRACE, DEFAULT_LEASE_TTL,
    DEFAULT_OUTBOX_LIMIT, DurablePage, FlushTimeout, ManagerStats, OutboxFull, PendingWrite,
    RecoveryReport, RetentionPolicy, ShutdownReport, TreeCancellation,
};
pub use model::{
    NewTaskSpec, Progress, RunCancellationToken, SpawnParams, TaskId, TaskResult, TaskStatus,
    TaskSummary, new_task_id,
};
pub use policy::{RetryOn, RetryPolicy, TaskPolicy, TaskRequest, WhenLimited};
pub use protocol::TASK_KIND;
pub use records::{OutputEntry, OutputPage, TaskStore, VersionedRecord};
pub use state::{Lease, Rejection, TaskRecord, Transition};
pub use validate::{
    MAX_DESCRIPTION_LEN, MAX_JSON_DEPTH, MAX_METADATA_BYTES, MAX_NAME_LEN, MAX_TASK_ID_LEN,
};

/// The storage contract, re-exported.
pub use ::task_store as thread_store;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use task_store_memory::{MemoryStore, MemoryStoreOptions};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use task_store_redis::RedisStore;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use task_store_postgres::PostgresStore;
